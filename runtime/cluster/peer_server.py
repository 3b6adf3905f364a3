"""The server side of the node-to-node link: ``PeerServer`` answers other nodes' calls.

A connection must prove it holds the cluster secret within ``handshake_timeout`` (else it is
closed with a warning naming its address, never the secret or a proof); until then it may send
frames of ``HANDSHAKE_FRAME`` bytes at most, and at most ``MAX_HANDSHAKING`` connections may be
at that stage at once, so that a stranger can hold neither much memory nor many tasks. Then
each call runs in its own task, at most ``MAX_IN_FLIGHT`` per connection (beyond that nothing
more is read until one is answered), answered in any order through one writer task; a
connection that ends cancels its calls. The answer is the handle's value, or its error mapped
by ``wire.failure_of`` (an unexpected one is logged here, and sent without its text).

With TLS (a ``tls.PeerTLS``'s server context) the TLS handshake comes first, inside the same
bound and the same slot: a peer without a certificate from the cluster's CA (none, self-signed,
another CA's, expired) is refused with one warning naming its address and the ``ssl`` reason,
before it can send a frame. The HMAC handshake then runs inside TLS, as without it.

A proved peer's ``Follow`` (the shards its node follows, ``interest.py``) goes to
``followers`` under the node id its hello named, is answered at once, and is forgotten when
the link ends. Its ``Usage`` (what its node's users use, ``usage.py``) goes to ``usage`` under
that node id, unanswered; when the link ends, so does what the node reported on it.
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
from typing import Any

import trio

from .peers import _BROKEN, HANDSHAKE_SECONDS, MAX_HANDSHAKING, MAX_IN_FLIGHT, Handle, Link, \
    address_of, write_frames
from .tls import tls_problem
from .interest import Followers
from .usage import UsageBook
from .wire import (HANDSHAKE_FRAME, INTERNAL, INTERNAL_MESSAGE, MAX_FRAME, NONCE_BYTES, Call,
                   Challenge, Failure, Follow, Hello, Proof, Result, Usage, WireError,
                   bitmap_shards, client_proof, encode, failure_of, make_of, server_proof)

log = logging.getLogger("threadline.cluster.peers")


class PeerServer:
    """Answers other nodes' calls with ``handle``; ``serve`` runs until cancelled."""

    def __init__(self, node_id: str, secret: bytes, handle: Handle, *,
                 handshake_timeout: float = HANDSHAKE_SECONDS,
                 tls: ssl.SSLContext | None = None,
                 followers: Followers | None = None, usage: UsageBook | None = None) -> None:
        self.node_id = node_id
        self.followers = followers if followers is not None else Followers()
        self.usage = usage  # None: peers' reports are read and not counted
        self._tls = tls
        self._secret = secret
        self._handle = handle
        self._handshake_timeout = handshake_timeout
        # A stranger may connect: until it has proved the secret it gets small frames and
        # one of a few slots, so that it can hold neither much memory nor many tasks.
        self._handshaking = trio.CapacityLimiter(MAX_HANDSHAKING)

    async def serve(self, listeners: list[trio.SocketListener], *,
                    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Like ``trio.serve_listeners``: ``task_status.started(listeners)`` once listening."""
        await trio.serve_listeners(self._connection, listeners, task_status=task_status)

    async def _connection(self, transport: trio.SocketStream) -> None:
        peer = address_of(transport)
        stream: trio.abc.Stream = transport
        if self._tls is not None:
            stream = trio.SSLStream(transport, self._tls, server_side=True)
        link = Link(stream, HANDSHAKE_FRAME)
        async with transport:  # closed whatever happens; TLS's close_notify only once proved
            refused: str | None = f"no handshake within {self._handshake_timeout} s"
            peer_id = ""
            try:
                self._handshaking.acquire_nowait()
            except trio.WouldBlock:
                log.warning("peer link from %s refused: %d others are in their handshake",
                            peer, MAX_HANDSHAKING)
                return
            try:
                with trio.move_on_after(self._handshake_timeout):
                    refused, peer_id = await self._handshake(link)
            finally:
                self._handshaking.release()
            if refused is not None:
                log.warning("peer link from %s refused: %s", peer, refused)
                return
            try:
                await self._serve_link(peer, peer_id, link)
            finally:
                self.followers.forget(link)  # what it followed on this link
                if self.usage is not None:
                    self.usage.forget(link)  # and what it reported on it
                if stream is not transport:
                    with trio.move_on_after(1.0):  # close_notify, unless the peer is stuck
                        await stream.aclose()

    async def _serve_link(self, peer: str, peer_id: str, link: Link) -> None:
        """The calls of a proved peer, until the link ends."""
        stream = link.stream
        link.allow(MAX_FRAME)
        send, frames = trio.open_memory_channel[bytes](MAX_IN_FLIGHT)
        slots = trio.Semaphore(MAX_IN_FLIGHT)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_frames, stream, frames)
            try:
                while (message := await link.receive()) is not None:
                    if type(message) is Follow:  # answered in order, at once: no task
                        self.followers.follow(link, peer_id, bitmap_shards(message.shards))
                        await send.send(encode(Result(message.id, None)))
                        continue
                    if type(message) is Usage:  # one-way: counted at once, never answered
                        if self.usage is not None:
                            self.usage.observe(link, peer_id, message.users)
                        continue
                    if type(message) is not Call:
                        raise WireError(f"a {type(message).__name__} after the handshake")
                    await slots.acquire()  # at MAX_IN_FLIGHT: read no more until one is done
                    nursery.start_soon(self._answer, message, send, slots)
            except WireError as exc:
                log.warning("peer link from %s closed: %s", peer, exc)
            except _BROKEN:
                pass
            nursery.cancel_scope.cancel()  # the link is gone: nobody is left to answer

    async def _handshake(self, link: Link) -> tuple[str | None, str]:
        """``(None, its node id)`` once the peer has proved it holds the secret, else why it
        has not."""
        if isinstance(link.stream, trio.SSLStream):
            try:
                await link.stream.do_handshake()
            except _BROKEN as exc:
                return tls_problem(exc) or "the connection broke during the TLS handshake", ""
        try:
            hello = await link.receive()
            if type(hello) is not Hello or len(hello.nonce) != NONCE_BYTES:
                what = "nothing" if hello is None else f"a {type(hello).__name__}"
                return f"it sent {what}, not a hello with a {NONCE_BYTES}-byte nonce", ""
            nonce = os.urandom(NONCE_BYTES)
            proof = server_proof(self._secret, hello.nonce, nonce)
            await link.stream.send_all(encode(Challenge(self.node_id, nonce, proof)))
            try:
                answer = await link.receive()
            except _BROKEN:  # over TLS, a peer that gives up closes without close_notify
                answer = None
        except WireError as exc:
            return f"not this protocol ({exc})", ""
        except _BROKEN:
            return "the connection broke during the handshake", ""
        expected = client_proof(self._secret, nonce, hello.nonce)
        if type(answer) is not Proof or not hmac.compare_digest(answer.proof, expected):
            return (f"node {hello.node_id[:64]!r} gave no proof or a wrong one "
                    "(another secret?)", "")
        return None, hello.node_id

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
