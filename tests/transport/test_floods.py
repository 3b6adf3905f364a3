"""Issue 8: floods and quotas (item 11, "operating" 6), paged thread lists (item 8), tokens that
expire on a live connection ("operating" 3), metrics behind a token or elsewhere (item 9), and
ids that leak nothing ("operating" 5). All over loopback against a real server."""

from __future__ import annotations

import json
import time

import trio
from trio_websocket import open_websocket_url

from threadline.actors.engine import new_id
from tests.servers import SECRET, http_get, serving, token
from tests.transport.wire import closed_code, still_serves
from threadline.transport.auth import Authenticator
from threadline.transport.limits import Limits


async def ask(ws, frame: dict) -> dict:  # type: ignore[no-untyped-def]
    """Send a frame with a ref; the answer to it (events in between are skipped)."""
    await ws.send_message(json.dumps(frame))
    while True:
        answer = json.loads(await ws.get_message())
        if answer.get("ref") == frame.get("ref") and answer["type"] != "event":
            return answer


def url(server, user: str = "ada", **kw) -> str:  # type: ignore[no-untyped-def]
    return f"{server.url}?token={token(user, **kw)}"


async def test_the_byte_rate_drops_a_frame_before_it_is_decoded():
    limits = Limits(ping_interval=None, byte_rate=1000, byte_burst=3000)
    async with serving(limits=limits) as server:
        async with open_websocket_url(url(server)) as ws:
            big_garbage = "{" + "x" * 2500  # not JSON: decoding it would say bad_frame
            await ws.send_message(big_garbage)
            first = json.loads(await ws.get_message())
            assert first["code"] == "bad_frame"  # within the burst: decoded, refused
            await ws.send_message(big_garbage)
            second = json.loads(await ws.get_message())
            assert second["code"] == "rate_limited", second  # over the byte rate: not read
            assert server.server.stats.bad_frames == 1
            await trio.sleep(0.1)
            assert (await ask(ws, {"type": "ping", "ref": 1}))["type"] == "pong"


async def test_a_user_cannot_open_more_connections_than_allowed():
    async with serving(limits=Limits(ping_interval=None, user_connections=2)) as server:
        async with open_websocket_url(url(server)) as a, open_websocket_url(url(server)) as b:
            async with open_websocket_url(url(server)) as c:
                frame = json.loads(await c.get_message())
                assert frame["code"] == "limit_reached" and "2 connections" in frame["message"]
                assert await closed_code(c) == 1008
            async with open_websocket_url(url(server, "bob")) as other:  # per user
                assert (await ask(other, {"type": "ping", "ref": 1}))["type"] == "pong"
            for ws in (a, b):
                assert (await ask(ws, {"type": "ping", "ref": 1}))["type"] == "pong"
        async with open_websocket_url(url(server)) as again:  # slots come back on close
            assert (await ask(again, {"type": "ping", "ref": 1}))["type"] == "pong"


async def test_a_user_cannot_store_more_threads_than_allowed_by_joining_and_leaving():
    async with serving(limits=Limits(ping_interval=None, user_threads=3)) as server:
        await server.runtime.thread("ada", "old").info()  # stored before she connects
        async with open_websocket_url(url(server)) as a, open_websocket_url(url(server)) as b:
            for ws, tid in ((a, "t1"), (b, "t2")):
                assert (await ask(ws, {"type": "join", "thread_id": tid, "ref": 1}))["type"] \
                    == "joined"
                assert (await ask(ws, {"type": "leave", "thread_id": tid, "ref": 2}))["type"] \
                    == "left"
            refused = await ask(b, {"type": "join", "thread_id": "t3", "ref": 3})
            assert refused["code"] == "limit_reached" and "3 threads per user" in refused["message"]
            for tid in ("old", "t1", "t2"):  # the stored ones stay reachable
                assert (await ask(a, {"type": "join", "thread_id": tid, "ref": 4}))["type"] \
                    == "joined"
        infos = await server.runtime.user("ada").threads()
        assert sorted(i.key.thread_id for i in infos) == ["old", "t1", "t2"]


async def test_sends_are_rate_limited_per_user_across_connections():
    limits = Limits(ping_interval=None, user_send_rate=0.001, user_send_burst=3)
    async with serving(limits=limits) as server:
        async with open_websocket_url(url(server)) as a, open_websocket_url(url(server)) as b:
            codes = []
            for i, ws in enumerate((a, b, a, b, a)):
                await ask(ws, {"type": "join", "thread_id": "main", "ref": f"j{i}"})
                answer = await ask(ws, {"type": "send", "thread_id": "main", "text": "hi",
                                        "ref": i})
                codes.append(answer.get("code", answer["type"]))
            assert codes == ["accepted"] * 3 + ["rate_limited"] * 2
        async with open_websocket_url(url(server, "bob")) as other:
            await ask(other, {"type": "join", "thread_id": "main", "ref": 1})
            assert (await ask(other, {"type": "send", "thread_id": "main", "text": "hi",
                                      "ref": 2}))["type"] == "accepted"


async def test_ten_thousand_threads_come_in_pages_below_the_frame_limit():
    async with serving() as server:
        user = server.runtime.user("ada")
        async with trio.open_nursery() as nursery:
            for i in range(10_000):
                nursery.start_soon(user.thread(f"t{i:05}").info)
        async with open_websocket_url(url(server), max_message_size=1024 * 1024) as ws:
            first = await ask(ws, {"type": "threads", "ref": 0})
            assert len(first["threads"]) == 100 and first["next_cursor"]
            seen, cursor, pages = [], None, 0
            while True:
                frame = {"type": "threads", "ref": pages, "limit": 1000}
                if cursor:
                    frame["cursor"] = cursor
                page = await ask(ws, frame)
                seen += [t["thread_id"] for t in page["threads"]]
                pages += 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert pages == 10 and len(seen) == len(set(seen)) == 10_000
            bad = await ask(ws, {"type": "threads", "ref": "b", "cursor": "nonsense!"})
            assert bad["code"] == "bad_frame"
            too_many = await ask(ws, {"type": "threads", "ref": "c", "limit": 1001})
            assert too_many["code"] == "bad_frame"


async def test_a_token_that_expires_closes_its_live_connection_with_4001():
    # A connection lives until exp + leeway (transport/auth.py); no leeway here, to be quick.
    async with serving(auth=Authenticator(secret=SECRET, leeway=0)) as server:
        async with open_websocket_url(url(server, ttl=1.5)) as ws:
            assert (await ask(ws, {"type": "ping", "ref": 1}))["type"] == "pong"
            started = time.time()
            assert await closed_code(ws) == 4001
            assert time.time() - started < 20
        await still_serves(server)


async def test_metrics_behind_a_token_and_on_their_own_address():
    async with serving(metrics_token="scrape-secret-0123456789") as server:
        status, _, _ = await http_get(server, "/metrics")
        assert status == 401
        status, _, body = await http_get(server, "/metrics", {
            "Authorization": "Bearer scrape-secret-0123456789"})
        assert status == 200 and b"threadline_" in body
    async with serving(metrics_address=("127.0.0.1", 0)) as server:
        status, _, _ = await http_get(server, "/metrics")
        assert status == 404  # not on the public port
        assert server.metrics_port and server.metrics_port != server.port
        status, _, body = await http_get(server, "/metrics", port=server.metrics_port)
        assert status == 200 and b"threadline_" in body


def test_ids_are_random_not_counted():
    ids = [new_id("msg") for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    tails = [int(i.removeprefix("msg_"), 16) for i in ids]
    assert all(len(i) == len("msg_") + 24 for i in ids)  # 96 bits
    # A counter (the old ids: a fixed prefix and +1 each) shows up as tiny differences.
    assert min(abs(a - b) for a, b in zip(tails, tails[1:])) > 2**32
