"""Plain HTTP answers on the server's port: the WebSocket refusals (401, 403, 503...), /healthz,
/metrics, the static files and the HTTP API's JSON. Every answer closes its connection (one
request per connection) and is never cached. ``HEAD`` is answered wherever ``GET`` is, with the
same status and headers (``Content-Length`` the GET's) and no body: ``without_body``."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Sequence

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


def without_body(answer: Response) -> Response:
    """The answer to ``HEAD``: the GET's status and headers, no body."""
    return Response(answer.status_code, answer.reason_phrase, answer.headers, b"")


def methods_allowed(*methods: str) -> tuple[str, ...]:
    """``methods`` with ``HEAD`` after ``GET``, when ``GET`` is one."""
    return tuple(m for method in methods
                 for m in ((method, "HEAD") if method == "GET" else (method,)))


def method_not_allowed(*allowed: str) -> Response:
    return text_response(405, "method not allowed", [("Allow", ", ".join(allowed))])


def path_of(target: str) -> str:
    """The path of a request target, without its query."""
    return target.split("?", 1)[0]
