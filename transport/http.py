"""Plain HTTP answers on the server's port: the WebSocket refusals (401, 403, 503...), /healthz,
/metrics, the static files and the HTTP API's JSON. Every answer closes its connection (one
request per connection) and is never cached."""

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


def method_not_allowed(*allowed: str) -> Response:
    return text_response(405, "method not allowed", [("Allow", ", ".join(allowed))])


def path_of(target: str) -> str:
    """The path of a request target, without its query."""
    return target.split("?", 1)[0]
