"""Plain HTTP answers on the server's port: the WebSocket refusals (401, 403, 503...), /healthz,
/metrics, the static files and the HTTP API's JSON; and what an answer is as h11 sends it.

An answer is built saying ``Connection: close``, which is the truth for one written as it is
(``Response.serialize``: a refusal before a WebSocket, a malformed request's 400), after which
the connection closes. One written on a kept-alive connection (``RequestReader.answer``) goes
through h11 instead, as ``h11_head`` makes it: its ``Connection`` says what that connection
does next (``keep-alive`` or ``close``; h11 turns ``keep-alive`` into ``close`` when the
client's request does not allow it). Answers are never cached. ``HEAD`` is answered wherever
``GET`` is, with the same status and headers (``Content-Length`` the GET's) and no body
(``RequestReader.answer`` leaves it out)."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, AsyncIterator, Callable, Iterable, Sequence

import attrs
import h11
from websockets.datastructures import Headers
from websockets.http11 import Response

WS_PATH = "/v1/ws"


def response(status: int, body: bytes, content_type: str,
             extra: Sequence[tuple[str, str]] = ()) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Connection", "close"), ("Cache-Control", "no-store"), *extra])
    return Response(status, HTTPStatus(status).phrase, headers, body)


def text_response(status: int, text: str, extra: Sequence[tuple[str, str]] = ()) -> Response:
    return response(status, (text + "\n").encode(), "text/plain; charset=utf-8", extra)


def json_response(status: int, obj: Any, extra: Sequence[tuple[str, str]] = ()) -> Response:
    return response(status, json.dumps(obj, ensure_ascii=False, separators=(",", ":")
                                       ).encode(), "application/json", extra)


def no_content(extra: Sequence[tuple[str, str]] = ()) -> Response:
    """204, with neither a body nor ``Content-Length`` (RFC 9110 §8.6 forbids it there)."""
    headers = Headers([("Connection", "close"), ("Cache-Control", "no-store"), *extra])
    return Response(204, HTTPStatus(204).phrase, headers, b"")


def methods_allowed(*methods: str) -> tuple[str, ...]:
    """``methods`` with ``HEAD`` after ``GET``, when ``GET`` is one."""
    return tuple(m for method in methods
                 for m in ((method, "HEAD") if method == "GET" else (method,)))


def method_not_allowed(*allowed: str) -> Response:
    return text_response(405, "method not allowed", [("Allow", ", ".join(allowed))])


def path_of(target: str) -> str:
    """The path of a request target, without its query."""
    return target.split("?", 1)[0]


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



def h11_head(answer: Response | Streamed, keep_alive: bool) -> h11.Response:
    """The head of ``answer`` as h11 sends it, saying ``Connection: keep-alive`` if
    ``keep_alive``, else ``close`` (whatever ``Connection`` the answer had)."""
    if isinstance(answer, Streamed):
        status, reason = answer.status, HTTPStatus(answer.status).phrase
        fields: Iterable[tuple[str, str]] = (("Content-Length", str(answer.length)),
                                             *answer.headers)
    else:
        status, reason, fields = answer.status_code, answer.reason_phrase, \
            answer.headers.raw_items()
    headers = [(name.encode("ascii"), _wire(value)) for name, value in fields
               if name.lower() != "connection"]
    headers.append((b"Connection", b"keep-alive" if keep_alive else b"close"))
    return h11.Response(status_code=status, reason=reason.encode("ascii"), headers=headers)


def _wire(value: str) -> bytes:
    """A header's value as bytes: latin-1, as a request's values were read (an ``Origin``
    echoed back goes out as it came); UTF-8 for what latin-1 cannot hold, as
    ``Response.serialize`` writes it."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()
