"""CORS on the HTTP API for the origins the server allows (the WebSocket's: --allow-origin, or
loopback and the server's own without it), and nothing for the others; preflights included.
Over real loopback sockets, as a browser's requests would come."""

from __future__ import annotations

import json

from tests.servers import SECRET, serving, token
from tests.transport.test_http_head import parsed
from tests.transport.wire import raw_http
from threadline.transport.auth import Authenticator

ADA = token("ada")
APP, EVIL = "https://app.example", "https://evil.example"


async def ask(port: int, method: str, path: str, origin: str | None, *,
              tok: str | None = None, more: str = "", body: bytes = b"") -> tuple[
        int, dict[str, str], bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += f"Origin: {origin}\r\n" if origin else ""
    head += f"Authorization: Bearer {tok}\r\n" if tok else ""
    head += f"Content-Length: {len(body)}\r\n" if body else ""
    return parsed(await raw_http(port, (head + more + "\r\n").encode() + body))


def cors_of(fields: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k.startswith("access-control-") or k == "vary"}


def app_server():
    return serving(auth=Authenticator(secret=SECRET, allowed_origins=[APP]))


async def test_a_refused_token_is_readable_from_an_allowed_origin_only():
    async with app_server() as server:
        status, fields, body = await ask(server.port, "GET", "/v1/auth/check?token=bad", APP)
        assert status == 401 and json.loads(body)["message"] == "malformed token"
        assert cors_of(fields) == {"access-control-allow-origin": APP, "vary": "Origin",
                                   "access-control-expose-headers":
                                       "Retry-After, WWW-Authenticate"}
        status, fields, _ = await ask(server.port, "GET", "/v1/auth/check?token=bad", EVIL)
        assert status == 401 and cors_of(fields) == {}
        status, fields, _ = await ask(server.port, "GET", "/v1/auth/check?token=bad", None)
        assert status == 401 and cors_of(fields) == {}


async def test_the_api_answers_an_allowed_origin_success_and_error_alike():
    async with app_server() as server:
        message = json.dumps({"text": "hi"}).encode()
        status, fields, _ = await ask(server.port, "POST", "/v1/threads/main/messages", APP,
                                      tok=ADA, body=message,
                                      more="Content-Type: application/json\r\n")
        assert status == 200 and fields["access-control-allow-origin"] == APP
        for path, expected in [("/v1/threads/main", 200), ("/v1/threads/none", 404),
                               ("/v1/nowhere", 404)]:
            status, fields, _ = await ask(server.port, "GET", path, APP, tok=ADA)
            assert status == expected and fields["access-control-allow-origin"] == APP, path
            status, fields, _ = await ask(server.port, "GET", path, EVIL, tok=ADA)
            assert status == expected and cors_of(fields) == {}, path


async def test_a_preflight_needs_no_token_and_names_the_routes_methods():
    async with app_server() as server:
        asked = ("Access-Control-Request-Method: POST\r\n"
                 "Access-Control-Request-Headers: authorization, content-type\r\n")
        status, fields, body = await ask(server.port, "OPTIONS", "/v1/threads/main/messages",
                                         APP, more=asked)
        assert (status, body) == (204, b"") and "content-length" not in fields
        assert fields["allow"] == "POST, OPTIONS"
        assert cors_of(fields) == {
            "access-control-allow-origin": APP, "vary": "Origin",
            "access-control-expose-headers": "Retry-After, WWW-Authenticate",
            "access-control-allow-methods": "POST",
            "access-control-allow-headers": "Authorization, Content-Type",
            "access-control-max-age": "600"}
        for path, methods in [("/v1/threads/main", "GET, HEAD, DELETE"),
                              ("/v1/threads", "GET, HEAD"), ("/v1/auth/check", "GET, HEAD")]:
            status, fields, _ = await ask(server.port, "OPTIONS", path, APP, more=asked)
            assert (status, fields["access-control-allow-methods"]) == (204, methods), path
        status, fields, _ = await ask(server.port, "OPTIONS", "/v1/threads/main/messages",
                                      EVIL, more=asked)
        assert status == 204 and cors_of(fields) == {}
        status, fields, _ = await ask(server.port, "OPTIONS", "/v1/nowhere", APP, more=asked)
        assert status == 404 and fields["access-control-allow-origin"] == APP


async def test_without_a_list_loopback_origins_are_allowed_and_others_not(server):
    for origin, allowed in [("http://localhost:5173", True), ("http://127.0.0.1:3000", True),
                            (f"http://127.0.0.1:{server.port}", True), (EVIL, False),
                            ("null", False)]:
        status, fields, _ = await ask(server.port, "GET", f"/v1/auth/check?token={ADA}", origin)
        assert status == 200
        assert fields.get("access-control-allow-origin") == (origin if allowed else None), origin


async def test_two_origins_get_no_cors():
    async with app_server() as server:
        status, fields, _ = await ask(server.port, "GET", f"/v1/auth/check?token={ADA}", APP,
                                      more=f"Origin: {APP}\r\n")
        assert status == 200 and cors_of(fields) == {}
