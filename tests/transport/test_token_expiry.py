"""One expiry rule (issue: tokens in the leeway were accepted, then kicked at once): a token is
accepted by the handshake and by HTTP while ``now < exp + leeway``, and a connection it opened
is closed with 4001 at ``exp + leeway``, not at ``exp``. Real short-lived tokens against a real
server on loopback: the wall clock is the token's clock, so the waits are real (a few seconds).
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.servers import SECRET, http, serving
from tests.transport.wire import closed_code
from threadline.transport.auth import Authenticator
from threadline.transport.client import HandshakeRejected, connect

LEEWAY = 2.5
PAST = 1.0  # the token's exp is this long ago when the test starts: already "expired"


def token_past_exp() -> tuple[str, float]:
    exp = time.time() - PAST
    return jwt.encode({"sub": "ada", "exp": exp}, SECRET, algorithm="HS256"), exp


async def test_a_token_in_the_leeway_lives_until_exp_plus_leeway_then_4001():
    async with serving(auth=Authenticator(secret=SECRET, leeway=LEEWAY)) as server:
        token, exp = token_past_exp()
        async with open_websocket_url(f"{server.url}?token={token}") as ws:
            await ws.send_message(json.dumps({"type": "ping", "ref": 1}))
            assert json.loads(await ws.get_message())["type"] == "pong"
            # Not kicked at exp (already past): only when exp + leeway passes.
            assert await closed_code(ws, timeout=LEEWAY + 10) == 4001
            closed_at = time.time()
        assert closed_at >= exp + LEEWAY, closed_at - (exp + LEEWAY)
        # From that instant the same token is refused, by the handshake and by HTTP alike.
        with pytest.raises(HandshakeRejected) as refused:
            await connect(server.url, token)
        assert refused.value.status == 401 and "token expired" in refused.value.body
        status, _, body = await http(server, "GET", "/v1/auth/check", tok=token)
        assert status == 401 and "token expired" in json.dumps(body)


async def test_http_and_the_handshake_accept_a_token_in_the_leeway_and_it_is_not_kicked():
    async with serving(auth=Authenticator(secret=SECRET, leeway=30)) as server:
        token = jwt.encode({"sub": "ada", "exp": time.time() - 5}, SECRET, algorithm="HS256")
        status, _, body = await http(server, "GET", "/v1/auth/check", tok=token)
        assert status == 200 and body["user_id"] == "ada"
        async with open_websocket_url(f"{server.url}?token={token}") as ws:
            with trio.move_on_after(0.5):  # a kick "at exp" comes at once, 25 s too early
                try:
                    await ws.get_message()
                except ConnectionClosed as exc:
                    pytest.fail(f"closed in the leeway: {exc.reason}")
            await ws.send_message(json.dumps({"type": "ping", "ref": 1}))
            assert json.loads(await ws.get_message())["type"] == "pong"


async def test_without_leeway_the_connection_closes_at_exp():
    async with serving(auth=Authenticator(secret=SECRET, leeway=0)) as server:
        exp = time.time() + 1.0
        token = jwt.encode({"sub": "ada", "exp": exp}, SECRET, algorithm="HS256")
        async with open_websocket_url(f"{server.url}?token={token}") as ws:
            assert await closed_code(ws, timeout=10) == 4001
            assert time.time() >= exp
