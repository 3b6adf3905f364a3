"""The node-to-node link on trio sockets: ``PeerClients`` makes calls (``peer_server.py``
answers them), and what both sides share: ``Link`` and ``write_frames``.

One TCP connection per pair of nodes carries every call between them, each with its id, answered
in any order, once each side has proved it holds the cluster secret (a server closes a peer that
has not within ``handshake_timeout``, with a warning naming its address, never the secret or a
proof), and never past a bad frame. Its writes go through one writer task fed by a memory
channel: frames never interleave, a cancelled caller never leaves half a frame, and a stream the
writer finds broken is closed, which ends its reader. Server: each call runs in its own task, at
most ``MAX_IN_FLIGHT`` per connection (beyond that nothing more is read until one is answered);
a connection that ends cancels its calls. Client: one task per address opens the connection when
first needed (callers meanwhile share its outcome) and again after a break. ``PeerUnreachable``:
no link, never sent; ``PeerLost``: the link broke after the call was queued, it may have been
handled. A caller cancelled by its own scope only forgets its id; a late answer is dropped.
``send_usage`` queues one-way frames (``usage.py``) on the same link: nothing waits for them.

With TLS (``tls.py``: a ``PeerTLS``'s contexts) the stream under all of this is a
``trio.SSLStream`` (``https_compatible=False``: an end without ``close_notify`` is a broken
link), its handshake done before the HMAC one and within the same bound, the client checking
the server's certificate against the address it connects to (the one the node advertises).
A failed TLS handshake is refused like a failed HMAC one: one line, its ``ssl`` reason.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import os
import ssl
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import trio

from threadline.actors.messages import ThreadKey, ThreadRequest
from threadline.actors.reply import Reply
from threadline.actors.stats import SECONDS_BUCKETS, Histogram

from .tls import tls_problem
from .wire import (MAX_FRAME, NONCE_BYTES, Challenge, Failure, Follow, FrameDecoder, Hello,
                   Message, PeerLost, PeerUnreachable, Proof, Result, WireError, call_of,
                   client_proof, encode, error_of, server_proof, shards_bitmap)

log = logging.getLogger("threadline.cluster.peers")

HANDSHAKE_SECONDS = 5.0     # the server's bound on a peer's handshake
CONNECT_SECONDS = 2.0       # the client's bound on connecting and its handshake
MAX_IN_FLIGHT = 1024        # calls running at once per connection, on the server
MAX_HANDSHAKING = 64        # connections not yet proved, at once, on the server
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)

#: The node's local-only ask: runs the request ``make(reply)`` builds on the thread's actor.
Handle = Callable[[ThreadKey, Callable[[Reply], ThreadRequest]], Awaitable[Any]]
Address = tuple[str, int]


class Link:
    """A stream and the messages read from it but not yet taken."""

    def __init__(self, stream: trio.abc.Stream, max_frame: int = MAX_FRAME) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame)
        self._ready: deque[Message] = deque()

    def allow(self, max_frame: int) -> None:
        self._decoder.max_frame = max_frame

    async def receive(self) -> Message | None:
        """The next message; None once the peer has closed. Raises ``WireError``, ``_BROKEN``."""
        while not self._ready:
            data = await self.stream.receive_some(64 * 1024)
            if not data:
                return None
            self._ready.extend(self._decoder.feed(bytes(data) if type(data) is not bytes else data))
        return self._ready.popleft()


async def write_frames(stream: trio.abc.Stream, frames: trio.MemoryReceiveChannel[bytes]) -> None:
    """Send the queued frames, in order, one whole frame at a time."""
    try:
        async for frame in frames:
            await stream.send_all(frame)
    except _BROKEN:
        await trio.aclose_forcefully(stream)  # so that its reader sees the end


def address_of(stream: trio.SocketStream) -> str:
    with contextlib.suppress(OSError):
        return "%s:%s" % stream.socket.getpeername()[:2]
    return "an address already gone"


class _Connection:
    """To one address: opening until ``opened`` is set, then open (``link`` set) or ended."""

    def __init__(self) -> None:
        self.opened = trio.Event()
        self.link: Link | None = None
        self.outbox, self.frames = trio.open_memory_channel[bytes](MAX_IN_FLIGHT)
        self.waiting: dict[int, Reply[Result | Failure]] = {}
        self.reason = "the peer clients were closed"
        self.following: frozenset[int] = frozenset()  # what the peer took on this link


class PeerClients:
    """Calls to other nodes, one connection per address, its tasks in ``nursery``. Figures:
    ``calls`` made, ``failures`` (calls that got no answer: ``PeerUnreachable``, ``PeerLost``),
    ``seconds`` (round trips of the calls answered, with a ``Result`` or a ``Failure``)."""

    def __init__(self, nursery: trio.Nursery, node_id: str, secret: bytes, *,
                 connect_timeout: float = CONNECT_SECONDS,
                 tls: ssl.SSLContext | None = None) -> None:
        self.node_id = node_id
        self._tls = tls
        self._nursery = nursery
        self._secret = secret
        self._connect_timeout = connect_timeout
        self._connections: dict[Address, _Connection] = {}
        self._ids = itertools.count(1)
        self.calls = self.failures = 0
        self.seconds = Histogram(SECONDS_BUCKETS)

    async def call(self, address: Address, key: ThreadKey, msg: ThreadRequest) -> Any:
        """Ask the node at ``address`` to run ``msg`` (its ``reply`` is not used) on ``key``'s
        actor: its value, or the error it failed with (see ``wire.error_of``)."""
        frame = encode(call_of(call_id := next(self._ids), key, msg))
        self.calls += 1
        try:
            _, answer, seconds = await self._round_trip(address, call_id, frame)
        except (PeerUnreachable, PeerLost):
            self.failures += 1
            raise
        self.seconds.observe(seconds)
        if isinstance(answer, Failure):
            raise error_of(answer)
        return answer.value

    def following(self, address: Address) -> frozenset[int]:
        """The shards the node at ``address`` took from ``follow`` on the link open now
        (none without one: a new link starts from nothing)."""
        connection = self._connections.get(address)
        return connection.following if connection is not None and \
            connection.link is not None else frozenset()

    async def follow(self, address: Address, shards: frozenset[int]) -> None:
        """Tell the node at ``address`` that this one follows ``shards`` (``interest.py``);
        ``PeerUnreachable`` or ``PeerLost`` as ``call``, ``PeerError`` for any other answer."""
        frame = encode(Follow(call_id := next(self._ids), shards_bitmap(shards)))
        connection, answer, _ = await self._round_trip(address, call_id, frame)
        if isinstance(answer, Failure):
            raise error_of(answer)
        if answer.value is not None:
            raise PeerLost("a bad answer")
        connection.following = shards

    async def send_usage(self, address: Address, frames: Sequence[bytes]) -> None:
        """Queue ``frames`` (``usage.usage_frames``: one-way, never answered) on the link to
        the node at ``address``, opening it if need be; waits while the writer is
        ``MAX_IN_FLIGHT`` frames behind. ``PeerUnreachable``: no link, or it ended first."""
        connection = await self._connection(address)
        try:
            for frame in frames:
                await connection.outbox.send(frame)
        except _BROKEN:
            raise PeerUnreachable(f"the link to {address[0]}:{address[1]} ended") from None

    async def _round_trip(self, address: Address, call_id: int, frame: bytes
                          ) -> tuple[_Connection, Result | Failure, float]:
        connection = await self._connection(address)
        connection.waiting[call_id] = reply = Reply()
        started = trio.current_time()
        try:
            await connection.outbox.send(frame)
            answer = await reply.wait()
        except _BROKEN:  # the connection ended before the frame was queued
            raise PeerUnreachable(f"the link to {address[0]}:{address[1]} ended") from None
        finally:
            connection.waiting.pop(call_id, None)
        return connection, answer, trio.current_time() - started

    async def _connection(self, address: Address) -> _Connection:
        if self._nursery.cancel_scope.cancel_called:  # closed
            raise PeerUnreachable("the peer clients are closed")
        connection = self._connections.get(address)
        if connection is None:
            connection = self._connections[address] = _Connection()
            self._nursery.start_soon(self._run_connection, address, connection)
        await connection.opened.wait()
        if connection.link is None:
            raise PeerUnreachable(f"no link to {address[0]}:{address[1]}: {connection.reason}")
        return connection

    async def _run_connection(self, address: Address, connection: _Connection) -> None:
        """Open the connection, read its answers until it ends, then fail its waiters."""
        try:
            try:
                connection.link = await self._open(address)
            finally:
                connection.opened.set()
            self._nursery.start_soon(write_frames, connection.link.stream, connection.frames)
            while (message := await connection.link.receive()) is not None:
                if type(message) is not Result and type(message) is not Failure:
                    raise WireError(f"a {type(message).__name__} as an answer")
                reply = connection.waiting.pop(message.id, None)
                if reply is not None:  # else its caller gave up: dropped
                    reply.set(message)
            connection.reason = "the peer closed it"
        except (PeerUnreachable, WireError) as exc:
            connection.reason = str(exc)
        except _BROKEN:
            connection.reason = "the connection broke"
        finally:
            del self._connections[address]
            connection.frames.close()  # ends the writer; a caller queueing now: PeerUnreachable
            lost = f"the link to {address[0]}:{address[1]} broke: {connection.reason}"
            for reply in connection.waiting.values():
                reply.fail(PeerLost(lost))
            if connection.link is not None:
                await trio.aclose_forcefully(connection.link.stream)

    async def _open(self, address: Address) -> Link:
        """Connect and do the handshake within ``connect_timeout``, or ``PeerUnreachable``."""
        try:
            with trio.fail_after(self._connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(*address)
                try:
                    if self._tls is not None:
                        stream = trio.SSLStream(stream, self._tls, server_hostname=address[0])
                        await stream.do_handshake()
                    link = Link(stream)
                    nonce = os.urandom(NONCE_BYTES)
                    await stream.send_all(encode(Hello(self.node_id, nonce)))
                    challenge = await link.receive()
                    if type(challenge) is not Challenge or not hmac.compare_digest(
                            challenge.proof, server_proof(self._secret, nonce, challenge.nonce)):
                        raise WireError("the peer refused the handshake or has another secret")
                    await stream.send_all(encode(Proof(
                        client_proof(self._secret, challenge.nonce, nonce))))
                    return link
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        except trio.TooSlowError as exc:
            raise PeerUnreachable(f"no link within {self._connect_timeout} s") from exc
        except (OSError, WireError, *_BROKEN) as exc:
            raise PeerUnreachable(tls_problem(exc) or str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        """Close every connection: calls waiting get ``PeerLost``, later ``PeerUnreachable``."""
        self._nursery.cancel_scope.cancel()
        await trio.lowlevel.checkpoint()


async def _hold(task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


@contextlib.asynccontextmanager
async def open_peer_clients(node_id: str, secret: bytes, *,
                            connect_timeout: float = CONNECT_SECONDS,
                            tls: ssl.SSLContext | None = None) -> AsyncIterator[PeerClients]:
    """``PeerClients`` whose tasks run in a nursery of their own (``aclose`` cancels it, never
    the caller's code); leaving closes every connection."""
    async with trio.open_nursery() as outer:
        nursery = await outer.start(_hold)
        clients = PeerClients(nursery, node_id, secret, connect_timeout=connect_timeout,
                              tls=tls)
        try:
            yield clients
        finally:
            with trio.CancelScope(shield=True):
                await clients.aclose()
