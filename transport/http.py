"""Plain HTTP answers on the WebSocket port: 404, 401, 503, /healthz, /metrics."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Response

WS_PATH = "/v1/ws"


def response(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Connection", "close"), ("Cache-Control", "no-store")])
    return Response(status, HTTPStatus(status).phrase, headers, body)


def text_response(status: int, text: str) -> Response:
    return response(status, (text + "\n").encode(), "text/plain; charset=utf-8")


def json_response(status: int, obj: Any) -> Response:
    return response(status, json.dumps(obj).encode(), "application/json")


def path_of(target: str) -> str:
    """The path of a request target, without its query."""
    return target.split("?", 1)[0]
