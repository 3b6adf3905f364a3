"""A websockets Sans-I/O protocol driven over a trio stream: the only I/O of the WebSocket edge.

``websockets`` parses and produces bytes; this class moves them. The server and the client both
use it. Writes from several tasks (the writer, the reader answering pings) go through one FIFO
lock, requested in the same synchronous step that takes the protocol's pending bytes, so frames
leave in the order they were made.

Cost per frame is the server's cost per event, so the plain-socket case takes two shortcuts past
trio's stream methods, each with the same semantics: a write tries the socket at once
(``os.write`` on its descriptor, asked for each time) and awaits ``send_all`` only for what did
not fit, and a read waits for readability once and reads once. Other streams (in-memory ones in
the tests) go through the stream's own methods.
"""

from __future__ import annotations

import itertools
import os

from typing import Sequence, Union, cast

import trio
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State

from .messages import CLOSE_INVALID_DATA

RECEIVE_SIZE = 64 * 1024


#: What the protocol parses from a stream: the handshake's ``Request`` or ``Response``, then
#: frames.
Event = Union[Request, Response, Frame]


def _bytes(frame: Frame) -> bytes:
    """A parsed frame's payload: websockets reads it into ``bytes`` (its type says
    ``bytes | bytearray | memoryview`` for frames built to be sent)."""
    return cast(bytes, frame.data)


def _joined(writes: list[bytes]) -> list[bytes]:
    """The protocol's pending writes (one ``bytes`` per frame, ``b""`` for "half-close here")
    as few writes as they can be: the frames before an end joined into one, so that a flush of
    many frames is one ``send()`` (measured: 5 sends per echo turn before, the syscall and
    trio's wrapper around it each time)."""
    if len(writes) < 2:
        return writes
    out: list[bytes] = []
    run: list[bytes] = []
    for data in writes:
        if data:
            run.append(data)
            continue
        if run:
            out.append(b"".join(run))
            run = []
        out.append(data)
    if run:
        out.append(b"".join(run))
    return out


class WebSocketConnection:
    def __init__(self, stream: trio.abc.Stream, protocol: Protocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self._send_lock = trio.StrictFIFOLock()
        self._parts: list[bytes] | None = None
        self._parts_binary = False
        self.eof = False
        self.broken = False  # a write was cancelled part way: no further frame may follow
        self._pong: trio.Event | None = None
        self.message_bytes = 0  # payload size of the last message ``assemble`` completed
        self._ping_data = b""
        self._held: list[Event] = []  # events parsed before anyone asked (``hold``)
        # The socket ``_send_now`` writes to (None: the stream is not a plain socket's).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None

    async def flush(self) -> None:
        """Write whatever the protocol has to send. Raises ``trio.BrokenResourceError`` if the
        peer is gone. Blocks while the peer does not read (that is the backpressure).

        With nothing to send it returns at once, without a checkpoint (the reader flushes after
        every read, for the pongs and closes the protocol makes; most reads make none). The
        pending bytes are taken and the lock requested in one synchronous step, and the lock is
        FIFO: flushes write in the order they took their bytes. A flush cancelled while it
        waits for the lock has taken bytes it will not write: the connection is ``broken``."""
        writes = self.protocol.data_to_send()
        if not writes:
            return
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            try:
                await lock.acquire()
            except trio.Cancelled:
                self.broken = True
                raise
        try:
            for data in _joined(writes):
                if self.broken:
                    return
                if data:
                    sent = self._send_now(data)
                    if sent == len(data):
                        continue
                    try:
                        await self.stream.send_all(memoryview(data)[sent:])
                    except trio.Cancelled:
                        self.broken = True
                        raise
                elif isinstance(self.stream, trio.abc.HalfCloseableStream):  # b"": half-close
                    try:
                        await self.stream.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
        finally:
            lock.release()

    def _send_now(self, data: bytes) -> int:
        """Write what the socket takes now, without waiting: the bytes written (0 when its
        buffer is full, or when the stream is not a socket's: ``flush`` sends the rest with
        ``send_all``, which waits). One ``send()`` and no scheduling round: trio's
        ``send_all`` yields after every send, even one that wrote everything (measured: the
        writer's rounds were a third of a turn's). Only ever called holding the send lock:
        nothing else writes to the socket meanwhile."""
        # The descriptor is asked every time, never kept: once the socket is closed it is -1,
        # where a kept number could by then name another user's connection.
        fd = -1 if self._socket is None else self._socket.fileno()
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:  # reset, broken pipe, or closed under us
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc

    async def _receive_some(self) -> bytes | bytearray:
        """What the socket has, once it has something: one wait for the socket to be readable,
        then one ``read()`` (trio's ``receive_some`` tries a read, waits, reads, and yields once
        more after a read that got data: two scheduling rounds a read). Only the reader reads."""
        sock = self._socket
        if sock is None:
            return await self.stream.receive_some(RECEIVE_SIZE)
        if sock.fileno() < 0:
            raise trio.ClosedResourceError("the socket was closed")
        await trio.lowlevel.wait_readable(sock)  # closed meanwhile: ClosedResourceError
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        try:
            return os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:  # woken with nothing to read after all: wait the usual way
            return await self.stream.receive_some(RECEIVE_SIZE)

    def hold(self, events: Sequence[Event]) -> None:
        """Events already parsed (frames a client sent in the same packet as its handshake):
        the next ``receive`` returns them first, without reading."""
        self._held.extend(events)

    async def receive(self) -> list[Event]:
        """Read once from the stream and return the protocol's new events (a ``Request`` or
        ``Response`` during the handshake, then ``Frame``s). Answers pings and closes."""
        if self._held:
            held, self._held = self._held, []
            await trio.lowlevel.checkpoint()
            return held
        try:
            data = await self._receive_some()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""  # reset, or closed under us: the peer is gone, as at EOF
        if data:
            self.protocol.receive_data(data)
        else:
            self.eof = True
            self.protocol.receive_eof()
        events = self.protocol.events_received()
        for event in events:
            if isinstance(event, Frame) and event.opcode is Opcode.PONG:
                if self._pong is not None and event.data == self._ping_data:
                    self._pong.set()
        try:
            await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.eof = True
        return events

    def assemble(self, frame: Frame) -> tuple[bool, bytes | str] | None:
        """Feed one data frame; returns ``(binary, payload)`` when a message is complete: bytes
        for a binary message, the decoded ``str`` for a text one. The protocol checks the
        sequencing and the size limit across parts, but not UTF-8 (websockets leaves that to
        its asyncio layer): a text message that is not valid UTF-8 fails the connection with
        1007 here, as RFC 6455 section 8.1 says, and returns None."""
        op = frame.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if frame.fin:
                return self._message(op is Opcode.BINARY, _bytes(frame))
            self._parts, self._parts_binary = [_bytes(frame)], op is Opcode.BINARY
        elif op is Opcode.CONT and self._parts is not None:
            self._parts.append(_bytes(frame))
            if frame.fin:
                data, self._parts = b"".join(self._parts), None
                return self._message(self._parts_binary, data)
        return None

    def _message(self, binary: bool, data: bytes) -> tuple[bool, bytes | str] | None:
        self.message_bytes = len(data)  # the size on the wire, for rates and metrics
        if binary:
            return True, data
        try:
            return False, data.decode("utf-8")  # strict: encoded surrogates are refused too
        except UnicodeDecodeError:
            self.protocol.fail(CLOSE_INVALID_DATA, "a text frame must be valid UTF-8")
            return None

    async def keepalive(self, interval: float, timeout: float) -> None:
        """Ping every ``interval`` seconds; return when a pong has not come within ``timeout``
        (the caller closes with 1011) or the connection is no longer open. Never raises for a
        dead peer. Pongs are seen by ``receive``, which the reader calls."""
        for n in itertools.count(1):
            await trio.sleep(interval)
            if not self.open:
                return
            self._ping_data = n.to_bytes(4, "big")
            pong = self._pong = trio.Event()
            with trio.move_on_after(timeout):
                self.protocol.send_ping(self._ping_data)
                try:
                    await self.flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                await pong.wait()
            if not pong.is_set():
                return

    def write(self, payload: bytes, *, binary: bool) -> None:
        """Queue one message (no I/O; ``flush`` sends it). Ignored once the connection is
        no longer open."""
        if self.protocol.state is State.OPEN:
            if binary:
                self.protocol.send_binary(payload)
            else:
                self.protocol.send_text(payload)

    @property
    def open(self) -> bool:
        return self.protocol.state is State.OPEN and not self.eof

    async def close(self, code: int, reason: str, timeout: float) -> None:
        """The closing handshake, bounded by ``timeout``: send a close frame (if still open),
        wait for the peer's, then close the TCP connection. Never raises for a dead peer."""
        with trio.move_on_after(0 if self.broken else timeout):
            try:
                if self.protocol.state is State.OPEN:
                    self.protocol.send_close(code, reason)
                await self.flush()
                while not self.eof and self.protocol.state is not State.CLOSED:
                    await self.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await self.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()
