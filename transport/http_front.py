"""The front of every connection: its opening HTTP/1.1 request, read with h11.

Every connection on the server's port (and on the metrics address) begins with one request.
h11 parses it, sans-IO as the rest of the edge: it checks the framing (request line, headers,
``Content-Length`` or chunked body) that a hand-written parser would get wrong, and takes
bodies, which the WebSocket engine's handshake parser does not. The server then routes the
request: a WebSocket upgrade goes on to the websockets engine with the bytes read here
(``raw``), anything else is answered over plain HTTP (``http_api.py``, /healthz, /metrics, the
static files). One request per connection: every answer says ``Connection: close``.

Invariants:

- A request head is at most ``MAX_HEAD_BYTES`` and one read more (past it: ``Malformed`` 431:
  h11 checks its bound whenever it needs more data); a body at most the
  limit its route gives ``read_body`` (past it: ``Malformed`` 413, before any of it is read
  when ``Content-Length`` says so). So a connection holds a bounded amount of memory.
- The reader reads only when h11 needs data, ``RECEIVE_SIZE`` at a time; the caller bounds the
  whole request in time (``Limits.handshake_timeout``), so a client that trickles bytes (a
  slowloris) is cut off however it paces them.
- ``raw`` is every byte read from the socket until the head was whole, in order: a WebSocket
  handshake reaches the websockets engine exactly as it came, with whatever the client sent
  after it in those reads (the engine reads on from the socket itself). A body is never added
  to it.
- A body is held once: each piece h11 hands over is appended to one ``bytearray``, which is
  what ``read_body`` returns (no copy into ``bytes``, no second buffer). With h11's own buffer
  (one read at most) a request of an N-byte body holds about N bytes plus ``RECEIVE_SIZE``.
- Nothing here raises but ``Malformed`` (answered with its status and reason, which never
  quote the request) and the stream's own errors.
"""

from __future__ import annotations

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


class RequestReader:
    """Reads one request from ``stream``: ``read_head``, then ``read_body`` if the route
    takes a body."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.raw = bytearray()
        self.method = ""
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._length: int | None = None

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

    async def read_body(self, limit: int) -> bytearray:
        """The request's whole body (empty if it has none), the one buffer it was read into;
        ``Malformed`` 413 past ``limit`` bytes."""
        if self._length is not None and self._length > limit:
            raise Malformed(413, f"the body is larger than {limit} bytes")
        self.raw = bytearray()  # a request with a body is no WebSocket handshake
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise Malformed(413, f"the body is larger than {limit} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return body
            else:  # the peer closed mid-body (h11 says so as an error) or upgraded: no body
                raise Malformed(400, "the request ended before its body")

    async def _next_event(self) -> object:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
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
            if not self.method:  # the head is not whole yet
                self.raw += data
            self._h11.receive_data(data)


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
