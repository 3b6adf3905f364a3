"""The front of every connection: its HTTP/1.1 requests, read with h11, and their answers.

Every connection on the server's port (and on the metrics address) begins with a request.
h11 parses it, sans-IO as the rest of the edge: it checks the framing (request line, headers,
``Content-Length`` or chunked body) that a hand-written parser would get wrong, and takes
bodies, which the WebSocket engine's handshake parser does not. The server then routes the
request: a WebSocket upgrade goes on to the websockets engine with the bytes read here
(``raw``), anything else is answered over plain HTTP (``http_api.py``, /healthz, /metrics, the
static files) through the same h11 connection (``RequestReader.answer``), which may then carry
the connection's next request: HTTP/1.1 keep-alive, by h11's own cycle (``our_state`` and
``their_state`` both ``DONE``, then ``start_next_cycle``), never by a state machine of ours.

A body is read one of two ways: whole (``read_body``, for the API's JSON bodies) or as it
arrives (``body``: an async iterator of the pieces h11 hands over, for an upload, which keeps
at most a chunk of it: ``http_attachments.py``). An answer is written whole or as it is read
(``Streamed``: a download).

Invariants:

- A request head is at most ``MAX_HEAD_BYTES`` and one read more (past it: ``Malformed`` 431:
  h11 checks its bound whenever it needs more data); a body at most the limit its route gives
  ``read_body`` or ``body`` (past it: ``Malformed`` 413 as soon as the pieces read pass it, with
  the rest of the body unread; before any of it is read when ``Content-Length`` says so). So a
  connection holds a bounded amount of memory, and every bound is per request: a kept-alive
  connection starts each request from nothing.
- The reader reads only when h11 needs data, ``RECEIVE_SIZE`` at a time, so h11's own buffer
  holds at most one read (requests pipelined behind the one being answered wait there, unread
  by h11 until its answer is written); the caller bounds each request in time
  (``Limits.handshake_timeout`` for the whole request; an upload's body: ``upload_timeout``
  and ``upload_idle_timeout``), so a client that trickles bytes (a slowloris) is cut off
  however it paces them.
- ``raw`` is every byte of the current request's head read from the socket, in order, from its
  first (bytes pipelined behind the previous request included): a WebSocket handshake reaches
  the websockets engine exactly as it came, with whatever the client sent after it in those
  reads (the engine reads on from the socket itself). A body is never added to it.
- ``read_body`` holds a body once: each piece is appended to one ``bytearray``, which is what
  it returns (no copy into ``bytes``, no second buffer): about N bytes plus ``RECEIVE_SIZE``
  for an N-byte body. ``body`` holds none of it: each piece (never empty) is the caller's.
- A client that sent ``Expect: 100-continue`` gets ``100 Continue`` when its body is first
  asked for, never before (a request refused at its head, 413 by ``Content-Length`` included,
  is answered without it, and its client need not send the body at all).
- An answer says ``Connection: keep-alive`` only when the caller allows it, the client's
  request does (HTTP/1.1 without ``Connection: close``: h11's rule, which keeps no HTTP/1.0
  connection alive) and the request was read to its end (h11's ``their_state`` is ``DONE``):
  a body left unread (a request refused before its body: 401, 413, 429...) would be parsed as
  the next request, so its answer says ``Connection: close``, and so does the answer to a
  request that asked for a protocol switch. Only then does h11 start the next cycle
  (``After.NEXT``); the answer says what happens.
- A peer that closes (or resets) the connection in the middle of a body raises ``ClientGone``
  (a ``Malformed`` 400 nobody will read), so the caller can tell it from a malformed body.
- Nothing here raises but ``Malformed`` (answered with its status and reason, which never
  quote the request) and the stream's own errors; a download's answer also what its pieces
  raise.
"""

from __future__ import annotations

import enum
from contextlib import aclosing

import h11
import trio
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .http import Streamed, h11_head, text_response

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; websockets' own bound is per line
HEAD_RECEIVE_SIZE = 8 * 1024  # h11 checks its bound between reads: a head is < 72 KiB
RECEIVE_SIZE = 64 * 1024

__all__ = ["After", "ClientGone", "Malformed", "RequestReader", "answer_plainly",
           "close_gently", "read_head"]


class Malformed(Exception):
    """A request the server answers ``status`` (400, 413, 431, 505) with ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ClientGone(Malformed):
    """The peer closed or reset the connection before the end of its request's body."""

    def __init__(self) -> None:
        super().__init__(400, "the request ended before its body")


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # as h11 writes ``InformationalResponse(100)``


class After(enum.Enum):
    """What follows an answer on its connection (``RequestReader.answer``)."""

    NEXT = "next"    # written whole, ``Connection: keep-alive``: the next request may come
    CLOSE = "close"  # written whole, ``Connection: close``: close gently (``close_gently``)
    CUT = "cut"      # not written whole (not read in time, a download cut short): close now


class RequestReader:
    """A connection's requests, one at a time: ``read_head``, then, if the route takes a body,
    ``read_body`` (whole) or ``body`` (piece by piece), then ``answer``, which may start the
    next request's cycle on the same connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.raw = bytearray()
        self.method = ""  # the current request's; "" until its head is whole
        self.requests = 0  # heads read on this connection
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._length: int | None = None
        self._ended = False  # the peer closed (or reset) the connection

    @property
    def waiting(self) -> bool:
        """No byte of the next request has come yet: the connection is idle between two
        requests (or before its first)."""
        return not self.method and not self.raw

    async def read_head(self) -> Request | None:
        """The request's target and headers (as websockets' ``Request``, which the handshake
        code reads), or None if the peer closed before sending a request. Raises
        ``Malformed``."""
        event = await self._next_event()
        if not isinstance(event, h11.Request):
            return None
        self.requests += 1
        self.method = event.method.decode("ascii")
        headers = Headers()
        for name, value in event.headers.raw_items():
            headers[name.decode("ascii")] = value.decode("latin-1")
        lengths = headers.get_all("Content-Length")
        self._length = int(lengths[0]) if lengths else None  # h11 checked it is one number
        return Request(event.target.decode("latin-1"), headers)

    async def answer(self, answer: Response | Streamed, keep_alive: bool) -> After:
        """Write the answer to the request read (without its body if the request was
        ``HEAD``), each write within ``WRITE_TIMEOUT``. It says ``Connection: keep-alive``
        when ``keep_alive`` (the server's will) and the request allow it (the module's
        invariants), else ``close``; then, if h11 has both sides ``DONE``, starts the next
        cycle: ``After.NEXT``. A download's pieces are read as they are written."""
        keep = keep_alive and self._read_whole()
        data = self._h11.send(h11_head(answer, keep))
        if isinstance(answer, Streamed):
            if not await _send(self.stream, data) or not await self._stream(answer):
                return After.CUT
        else:
            if answer.body and self.method != "HEAD":
                data += self._h11.send(h11.Data(data=bytes(answer.body)))  # bytes: no copy
            if not await _send(self.stream, data + self._h11.send(h11.EndOfMessage())):
                return After.CUT
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self.method, self._length = "", None
            self.raw = bytearray(self._h11.trailing_data[0])  # the next request's, pipelined
            return After.NEXT
        return After.CLOSE

    def _read_whole(self) -> bool:
        """Whether the request was read to its end, taking the end h11 can give without
        another read (that of a request without a body, whose route read none)."""
        if self._h11.their_state is h11.SEND_BODY:
            try:
                self._h11.next_event()  # its end, or a piece of a body nobody read: closed
            except h11.RemoteProtocolError:
                return False
        return self._h11.their_state is h11.DONE

    async def _stream(self, answer: Streamed) -> bool:
        """A download's body, a piece at a time, unless the request was ``HEAD``; False if
        a write timed out or the pieces ended short of its length."""
        if self.method == "HEAD":
            return await _send(self.stream, self._h11.send(h11.EndOfMessage()))
        left = answer.length
        async with aclosing(answer.pieces()) as pieces:  # type: ignore[type-var]
            async for piece in pieces:
                piece = piece[:left]
                if not await _send(self.stream, self._h11.send(h11.Data(data=piece))):
                    return False
                left -= len(piece)
                if not left:
                    break
        if left or not await _send(self.stream, self._h11.send(h11.EndOfMessage())):
            return False
        answer.done()
        return True

    @property
    def length(self) -> int | None:
        """The request's ``Content-Length``, None if it gave none (a chunked body, or none)."""
        return self._length

    def body(self, limit: int) -> BodyPieces:
        """The request's body as it arrives: an async iterator of its pieces (none if it has
        no body). ``Malformed`` 413 at once if ``Content-Length`` is over ``limit``, else from
        the iterator as soon as the pieces pass it."""
        if self._length is not None and self._length > limit:
            raise Malformed(413, f"the body is larger than {limit} bytes")
        self.raw = bytearray()  # a request with a body is no WebSocket handshake
        return BodyPieces(self, limit)

    async def read_body(self, limit: int) -> bytearray:
        """The request's whole body (empty if it has none), the one buffer it was read into;
        ``Malformed`` 413 past ``limit`` bytes."""
        body = bytearray()
        async for piece in self.body(limit):
            body += piece
        return body

    async def _next_event(self) -> object:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._ended and self.method:  # the head was whole: the body was cut
                    raise ClientGone() from None
                status = exc.error_status_hint
                raise Malformed(status, "request header too large" if status == 431
                                else "malformed HTTP request") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE if self.method else
                                                      HEAD_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""  # reset: as at EOF
            self._ended = not data
            if not self.method:  # the head is not whole yet
                self.raw += data
            self._h11.receive_data(bytes(data) if type(data) is not bytes else data)


class BodyPieces:
    """A request's body as h11 hands it over (``RequestReader.body``): each piece once, as
    bytes-like objects, never empty. Raises ``Malformed`` 413 once the pieces pass the limit
    (the piece that passes it is not handed over), ``ClientGone`` for a peer gone, ``Malformed``
    400 for a body that is not HTTP."""

    def __init__(self, reader: RequestReader, limit: int) -> None:
        self._reader = reader
        self.limit = limit
        self.received = 0  # bytes handed over
        self._done = False
        self._asked = False

    def __aiter__(self) -> BodyPieces:
        return self

    async def __anext__(self) -> bytes | bytearray:
        reader = self._reader
        if self._done:
            raise StopAsyncIteration
        if not self._asked:
            self._asked = True
            if reader._h11.they_are_waiting_for_100_continue:
                try:
                    await reader.stream.send_all(reader._h11.send(h11.InformationalResponse(
                        status_code=100, headers=[], reason=b"Continue")))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    raise ClientGone() from None
        while True:
            event = await reader._next_event()
            if isinstance(event, h11.Data):
                if not event.data:
                    continue
                if self.received + len(event.data) > self.limit:
                    self._done = True
                    raise Malformed(413, f"the body is larger than {self.limit} bytes")
                self.received += len(event.data)
                return event.data
            self._done = True
            if isinstance(event, h11.EndOfMessage):
                raise StopAsyncIteration
            # the peer closed mid-body (h11 says so as an error) or upgraded: no body
            raise ClientGone() if reader._ended else Malformed(400, "the request ended "
                                                               "before its body")


async def read_head(reader: RequestReader, deadline: float, linger: float) -> Request | None:
    """The head of the request, or None if none came by ``deadline`` (a silent or slow client
    is dropped, unanswered). A malformed one is answered, then raises ``Malformed``."""
    with trio.CancelScope(deadline=deadline):
        try:
            return await reader.read_head()
        except Malformed as exc:
            await answer_plainly(reader.stream, text_response(exc.status, exc.reason), linger)
            raise
    return None


#: Seconds an answer may take to be written: a client that does not read cannot hold the
#: answer (up to a page of 1,000 events) in the server's memory for longer.
WRITE_TIMEOUT = 10.0


async def answer_plainly(stream: trio.abc.Stream, answer: Response, linger: float) -> None:
    """Write one HTTP answer as it is (saying ``Connection: close``), within ``WRITE_TIMEOUT``,
    then ``close_gently`` if it was written. A kept-alive connection's answers go through
    ``RequestReader.answer``."""
    if await _send(stream, answer.serialize()):
        await close_gently(stream, linger)


async def _send(stream: trio.abc.Stream, data: bytes) -> bool:
    """``data`` written within ``WRITE_TIMEOUT``; False if it could not be."""
    with trio.move_on_after(WRITE_TIMEOUT) as writing:
        await stream.send_all(data)
    return not writing.cancelled_caught


async def close_gently(stream: trio.abc.Stream, linger: float) -> None:
    """After the answer: the client may still be sending (a body not read, e.g. after a 413
    or a 429), and closing with unread data would reset the connection and lose the answer; so
    half-close, and read and drop (never keep) what comes, for at most ``linger`` seconds."""
    with trio.move_on_after(linger):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while await stream.receive_some(RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
