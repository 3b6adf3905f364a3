"""The node-to-node link on trio sockets: ``PeerServer`` answers calls, ``PeerClients`` makes them.

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
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import os
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable

import trio

from threadline.actors.messages import ThreadKey, ThreadRequest
from threadline.actors.reply import Reply
from threadline.actors.stats import SECONDS_BUCKETS, Histogram

from .wire import (INTERNAL, INTERNAL_MESSAGE, NONCE_BYTES, Call, Challenge, Failure,
                   FrameDecoder, Hello, Message, PeerLost, PeerUnreachable, Proof, Result,
                   WireError, call_of, client_proof, encode, error_of, failure_of, make_of,
                   server_proof)

log = logging.getLogger("threadline.cluster.peers")

HANDSHAKE_SECONDS = 5.0     # the server's bound on a peer's handshake
CONNECT_SECONDS = 2.0       # the client's bound on connecting and its handshake
MAX_IN_FLIGHT = 1024        # calls running at once per connection, on the server
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)

#: The node's local-only ask: runs the request ``make(reply)`` builds on the thread's actor.
Handle = Callable[[ThreadKey, Callable[[Reply], ThreadRequest]], Awaitable[Any]]
Address = tuple[str, int]


class _Link:
    """A stream and the messages read from it but not yet taken."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._ready: deque[Message] = deque()

    async def receive(self) -> Message | None:
        """The next message; None once the peer has closed. Raises ``WireError``, ``_BROKEN``."""
        while not self._ready:
            data = await self.stream.receive_some(64 * 1024)
            if not data:
                return None
            self._ready.extend(self._decoder.feed(data))
        return self._ready.popleft()


async def _write(stream: trio.SocketStream, frames: trio.MemoryReceiveChannel[bytes]) -> None:
    """Send the queued frames, in order, one whole frame at a time."""
    try:
        async for frame in frames:
            await stream.send_all(frame)
    except _BROKEN:
        await trio.aclose_forcefully(stream)  # so that its reader sees the end


def _address(stream: trio.SocketStream) -> str:
    with contextlib.suppress(OSError):
        return "%s:%s" % stream.socket.getpeername()[:2]
    return "an address already gone"


class PeerServer:
    """Answers other nodes' calls with ``handle``; ``serve`` runs until cancelled."""

    def __init__(self, node_id: str, secret: bytes, handle: Handle, *,
                 handshake_timeout: float = HANDSHAKE_SECONDS) -> None:
        self.node_id = node_id
        self._secret = secret
        self._handle = handle
        self._handshake_timeout = handshake_timeout

    async def serve(self, listeners: list[trio.SocketListener], *,
                    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Like ``trio.serve_listeners``: ``task_status.started(listeners)`` once listening."""
        await trio.serve_listeners(self._connection, listeners, task_status=task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        peer, link = _address(stream), _Link(stream)
        async with stream:
            refused: str | None = f"no handshake within {self._handshake_timeout} s"
            with trio.move_on_after(self._handshake_timeout):
                refused = await self._handshake(link)
            if refused is not None:
                log.warning("peer link from %s refused: %s", peer, refused)
                return
            send, frames = trio.open_memory_channel[bytes](MAX_IN_FLIGHT)
            slots = trio.Semaphore(MAX_IN_FLIGHT)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write, stream, frames)
                try:
                    while (message := await link.receive()) is not None:
                        if type(message) is not Call:
                            raise WireError(f"a {type(message).__name__} after the handshake")
                        await slots.acquire()  # at MAX_IN_FLIGHT: read no more until one is done
                        nursery.start_soon(self._answer, message, send, slots)
                except WireError as exc:
                    log.warning("peer link from %s closed: %s", peer, exc)
                except _BROKEN:
                    pass
                nursery.cancel_scope.cancel()  # the link is gone: nobody is left to answer

    async def _handshake(self, link: _Link) -> str | None:
        """None once the peer has proved it holds the secret, else why it has not."""
        try:
            hello = await link.receive()
            if type(hello) is not Hello or len(hello.nonce) != NONCE_BYTES:
                what = "nothing" if hello is None else f"a {type(hello).__name__}"
                return f"it sent {what}, not a hello with a {NONCE_BYTES}-byte nonce"
            nonce = os.urandom(NONCE_BYTES)
            proof = server_proof(self._secret, hello.nonce, nonce)
            await link.stream.send_all(encode(Challenge(self.node_id, nonce, proof)))
            answer = await link.receive()
        except WireError as exc:
            return f"not this protocol ({exc})"
        except _BROKEN:
            return "the connection broke during the handshake"
        expected = client_proof(self._secret, nonce, hello.nonce)
        if type(answer) is not Proof or not hmac.compare_digest(answer.proof, expected):
            return f"node {hello.node_id[:64]!r} gave no proof or a wrong one (another secret?)"
        return None

    async def _answer(self, call: Call, send: trio.MemorySendChannel[bytes],
                      slots: trio.Semaphore) -> None:
        """Run the call and queue its answer (cancelled only with its connection: no finally)."""
        try:
            key, make = make_of(call)
            frame = encode(Result(call.id, await self._handle(key, make)))
        except Exception as exc:
            failure = failure_of(call.id, exc)
            if failure.code == INTERNAL:
                log.error("a call from a peer failed", exc_info=exc)
            try:
                frame = encode(failure)
            except ValueError:  # a message msgpack cannot hold (a lone surrogate)
                frame = encode(Failure(call.id, INTERNAL, INTERNAL_MESSAGE))
        await send.send(frame)  # waits while the writer is MAX_IN_FLIGHT frames behind
        slots.release()  # (and the slot is held meanwhile: a slow reader slows our reading)


class _Connection:
    """To one address: opening until ``opened`` is set, then open (``link`` set) or ended."""

    def __init__(self) -> None:
        self.opened = trio.Event()
        self.link: _Link | None = None
        self.outbox, self.frames = trio.open_memory_channel[bytes](MAX_IN_FLIGHT)
        self.waiting: dict[int, Reply[Result | Failure]] = {}
        self.reason = "the peer clients were closed"


class PeerClients:
    """Calls to other nodes, one connection per address, its tasks in ``nursery``. Figures:
    ``calls`` made, ``failures`` (calls that got no answer: ``PeerUnreachable``, ``PeerLost``),
    ``seconds`` (round trips of the calls answered, with a ``Result`` or a ``Failure``)."""

    def __init__(self, nursery: trio.Nursery, node_id: str, secret: bytes, *,
                 connect_timeout: float = CONNECT_SECONDS) -> None:
        self.node_id = node_id
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
        except (PeerUnreachable, PeerLost):
            self.failures += 1
            raise
        self.seconds.observe(trio.current_time() - started)
        if type(answer) is Failure:
            raise error_of(answer)
        return answer.value

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
            self._nursery.start_soon(_write, connection.link.stream, connection.frames)
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

    async def _open(self, address: Address) -> _Link:
        """Connect and do the handshake within ``connect_timeout``, or ``PeerUnreachable``."""
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await trio.open_tcp_stream(*address)
                try:
                    link = _Link(stream)
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
            raise PeerUnreachable(str(exc) or type(exc).__name__) from exc

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
                            connect_timeout: float = CONNECT_SECONDS) -> AsyncIterator[PeerClients]:
    """``PeerClients`` whose tasks run in a nursery of their own (``aclose`` cancels it, never
    the caller's code); leaving closes every connection."""
    async with trio.open_nursery() as outer:
        nursery = await outer.start(_hold)
        clients = PeerClients(nursery, node_id, secret, connect_timeout=connect_timeout)
        try:
            yield clients
        finally:
            with trio.CancelScope(shield=True):
                await clients.aclose()
