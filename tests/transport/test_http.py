"""Authentication in the handshake, routing and /healthz, over real sockets (/metrics:
test_metrics.py)."""

import json

import pytest
import trio

from tests.servers import SECRET, http_get, token
from threadline.transport.auth import mint
from threadline.transport.client import HandshakeRejected, connect, open_client

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def rejected(server, tok, path="/v1/ws"):
    with pytest.raises(HandshakeRejected) as info:
        conn = await connect(server.url.replace("/v1/ws", path), tok)
        await conn.aclose()
    return info.value


async def test_no_token_is_401(server):
    status, headers, body = await http_get(server, "/v1/ws", UPGRADE)
    assert status == 401 and body == b"missing token\n"
    assert headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("tok, reason", [
    ("garbage", "malformed token"),
    ("", "malformed token"),
    (mint("ada", "some-other-secret-0123456789abcdef0123"), "invalid token signature"),
    (mint("ada", SECRET, ttl=-3600), "token expired"),  # past the 30 s leeway
])
async def test_bad_tokens_are_401_with_a_reason(server, tok, reason):
    exc = await rejected(server, tok)
    assert (exc.status, exc.body) == (401, reason)


async def test_a_token_without_a_valid_sub_is_401(server):
    import jwt
    no_sub = jwt.encode({"exp": 9999999999}, SECRET, algorithm="HS256")
    bad_sub = jwt.encode({"sub": "not allowed!"}, SECRET, algorithm="HS256")
    assert (await rejected(server, no_sub)).body == "token has no sub claim"
    assert (await rejected(server, bad_sub)).body.startswith("sub must be")


async def test_a_token_signed_with_another_algorithm_is_refused(server):
    import jwt
    none_alg = jwt.encode({"sub": "ada"}, None, algorithm="none")
    assert (await rejected(server, none_alg)).status == 401


async def test_header_and_query_forms_both_work(server):
    async with open_client(server.url, token("ada")) as client:  # Authorization: Bearer
        await client.ping()
    status, headers, _ = await http_get(server, f"/v1/ws?token={token('ada')}", UPGRADE)
    assert status == 101 and headers["upgrade"].lower() == "websocket"


async def test_the_header_wins_over_the_query(server):
    exc = await rejected(server, "garbage-in-header", path=f"/v1/ws?token={token('ada')}")
    assert (exc.status, exc.body) == (401, "malformed token")
    status, _, body = await http_get(server, f"/v1/ws?token={token('ada')}",
                                     {**UPGRADE, "Authorization": "Basic YWRhOmFkYQ=="})
    assert (status, body) == (401, b"malformed token\n")


async def test_other_paths_are_404_never_a_websocket(server):
    assert (await rejected(server, token("ada"), path="/ws")).status == 404
    status, _, body = await http_get(server, "/")
    assert status == 404 and body == b"not found\n"


async def test_a_plain_get_of_the_websocket_path_is_refused(server):
    status, _, _ = await http_get(server, f"/v1/ws?token={token('ada')}")
    assert status in (400, 426)


async def test_healthz(server):
    status, headers, body = await http_get(server, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers["content-type"] == "application/json"
    server.server.drain()
    status, _, body = await http_get(server, "/healthz")
    assert status == 503 and json.loads(body) == {"status": "draining"}
    assert (await rejected(server, token("ada"))).status == 503


async def test_a_silent_connection_is_dropped_after_the_handshake_timeout():
    from tests.servers import serving
    from threadline.transport.limits import Limits

    async with serving(limits=Limits(handshake_timeout=0.5, ping_interval=None)) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""  # closed by the server
        await stream.aclose()
