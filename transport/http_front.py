"""The front of every connection: its opening HTTP/1.1 request, read with h11.

Every connection on the server's port (and on the metrics address) begins with one request.
h11 parses it, sans-IO as the rest of the edge: it checks the framing (request line, headers,
``Content-Length`` or chunked body) that a hand-written parser would get wrong, and takes
bodies, which the WebSocket engine's handshake parser does not. The server then routes the
request: a WebSocket upgrade goes on to the websockets engine with the bytes read here
(``raw``), anything else is answered over plain HTTP (``http_api.py``, /healthz, /metrics, the
static files). One request per connection: every answer says ``Connection: close``.

A body is read one of two ways: whole (``read_body``, for the API's JSON bodies) or as it
arrives (``body``: an async iterator of the pieces h11 hands over, for an upload, which keeps
at most a chunk of it: ``http_attachments.py``). An answer is written whole
(``write_answer``) or as it is read (``Streamed``, ``write_streamed``: a download).

Invariants:

- A request head is at most ``MAX_HEAD_BYTES`` and one read more (past it: ``Malformed`` 431:
  h11 checks its bound whenever it needs more data); a body at most the limit its route gives
  ``read_body`` or ``body`` (past it: ``Malformed`` 413 as soon as the pieces read pass it, with
  the rest of the body unread; before any of it is read when ``Content-Length`` says so). So a
  connection holds a bounded amount of memory.
- The reader reads only when h11 needs data, ``RECEIVE_SIZE`` at a time, so h11's own buffer
  holds at most one read; the caller bounds the request in time (``Limits.handshake_timeout``
  for the whole request; an upload's body: ``upload_timeout`` and ``upload_idle_timeout``), so
  a client that trickles bytes (a slowloris) is cut off however it paces them.
- ``raw`` is every byte read from the socket until the head was whole, in order: a WebSocket
  handshake reaches the websockets engine exactly as it came, with whatever the client sent
  after it in those reads (the engine reads on from the socket itself). A body is never added
  to it.
- ``read_body`` holds a body once: each piece is appended to one ``bytearray``, which is what
  it returns (no copy into ``bytes``, no second buffer): about N bytes plus ``RECEIVE_SIZE``
  for an N-byte body. ``body`` holds none of it: each piece (never empty) is the caller's.
- A client that sent ``Expect: 100-continue`` gets ``100 Continue`` when its body is first
  asked for, never before (a request refused at its head, 413 by ``Content-Length`` included,
  is answered without it, and its client need not send the body at all).
- A peer that closes (or resets) the connection in the middle of a body raises ``ClientGone``
  (a ``Malformed`` 400 nobody will read), so the caller can tell it from a malformed body.
- Nothing here raises but ``Malformed`` (answered with its status and reason, which never
  quote the request) and the stream's own errors; ``write_streamed`` also what its pieces
  raise.
"""

from __future__ import annotations

from contextlib import aclosing
from http import HTTPStatus
from typing import AsyncIterator, Callable, Sequence

import attrs
import h11
import trio
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .http import text_response

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; websockets' own bound is per line
HEAD_RECEIVE_SIZE = 8 * 1024  # h11 checks its bound between reads: a head is < 72 KiB
RECEIVE_SIZE = 64 * 1024


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


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class RequestReader:
    """Reads one request from ``stream``: ``read_head``, then, if the route takes a body,
    ``read_body`` (whole) or ``body`` (piece by piece)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.raw = bytearray()
        self.method = ""
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._length: int | None = None
        self._ended = False  # the peer closed (or reset) the connection

    async def read_head(self) -> Request | None:
        """The request's target and headers (as websockets' ``Request``, which the handshake
        code reads), or None if the peer closed before sending a request. Raises
        ``Malformed``."""
        event = await self._next_event()
        if not isinstance(event, h11.Request):
            return None
        self.method = event.method.decode("ascii")
        headers = Headers()
        for name, value in event.headers.raw_items():
            headers[name.decode("ascii")] = value.decode("latin-1")
        lengths = headers.get_all("Content-Length")
        self._length = int(lengths[0]) if lengths else None  # h11 checked it is one number
        return Request(event.target.decode("latin-1"), headers)

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
                    await reader.stream.send_all(CONTINUE)
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
    """``write_answer``, then ``close_gently`` if it was written."""
    if await write_answer(stream, answer):
        await close_gently(stream, linger)


async def write_answer(stream: trio.abc.Stream, answer: Response) -> bool:
    """Write one HTTP answer within ``WRITE_TIMEOUT``; False if it could not be (the caller
    closes the stream)."""
    with trio.move_on_after(WRITE_TIMEOUT) as writing:
        await stream.send_all(answer.serialize())
    return not writing.cancelled_caught


@attrs.frozen
class Streamed:
    """An answer whose body is written as it is read (a download): its status, its headers
    (``Content-Length`` among them: ``length``) and its pieces, made when the body is
    written (never for ``HEAD``). ``done`` is called once the whole body was written."""

    status: int
    headers: tuple[tuple[str, str], ...]
    length: int
    pieces: Callable[[], AsyncIterator[bytes]]
    done: Callable[[], None] = lambda: None

    def with_headers(self, extra: Sequence[tuple[str, str]]) -> Streamed:
        return attrs.evolve(self, headers=(*self.headers, *extra))

    def head(self) -> bytes:
        headers = Headers([("Content-Length", str(self.length)), ("Connection", "close"),
                           *self.headers])
        return Response(self.status, HTTPStatus(self.status).phrase, headers, b"").serialize()


async def write_streamed(stream: trio.abc.Stream, answer: Streamed, head_only: bool) -> bool:
    """The head, then (unless ``head_only``) each piece, each write within ``WRITE_TIMEOUT``
    (a client that reads nothing for that long is cut off, however long the whole takes).
    False if a write timed out or the pieces ended short of ``length``: the caller closes the
    stream, and its client sees a body cut short, never a wrong one."""
    with trio.move_on_after(WRITE_TIMEOUT) as writing:
        await stream.send_all(answer.head())
    if writing.cancelled_caught:
        return False
    if head_only:
        return True
    left = answer.length
    async with aclosing(answer.pieces()) as pieces:  # type: ignore[type-var]
        async for piece in pieces:
            piece = piece[:left]
            with trio.move_on_after(WRITE_TIMEOUT) as writing:
                await stream.send_all(piece)
            if writing.cancelled_caught:
                return False
            left -= len(piece)
            if not left:
                break
    if left:
        return False
    answer.done()
    return True


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
