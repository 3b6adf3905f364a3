"""The bundled client under protocol errors, over loopback: every error code comes out as its
own exception from the request it answers, the connection stays up, and nothing a server sends
(a type the client does not know, an answer nobody waits for, a malformed frame, a payload
that is not JSON) can crash the client's task group.

The real server provokes the errors it makes; for frames the real server never sends, a
scripted server written on trio-websocket (an independent WebSocket implementation) sends them.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import pytest
import trio

import threadline
from trio_websocket import ConnectionClosed as WsClosed
from trio_websocket import WebSocketRequest, serve_websocket

from tests.helpers import FailingJournal
from tests.servers import serving, token
from threadline.transport.client import (
    BadFrame,
    Busy,
    ConnectionClosed,
    Internal,
    LimitReached,
    NotJoined,
    RateLimited,
    ServerError,
    UnknownRun,
    open_client,
)
from threadline.transport.limits import Limits

T = TypeVar("T")


async def raised(exc_type: type[ServerError], coro) -> ServerError:
    with pytest.raises(exc_type) as info:
        await coro
    assert isinstance(info.value, ServerError) and info.value.code and info.value.message
    return info.value


# -- the real server ---------------------------------------------------------------------------


async def admitted(request: Callable[[], Awaitable[T]]) -> T:
    """``request()`` again while it is refused for the rate (bounded in count, not time)."""
    for _ in range(100):
        try:
            return await request()
        except RateLimited:
            await trio.sleep(0.25)  # 5 frames/s: one token is back
    raise AssertionError("refused 100 times")


async def test_a_client_over_the_rate_gets_rate_limited_and_talks_on():
    async with serving(limits=Limits(rate=5, burst=5, ping_interval=None)) as server:
        async with open_client(server.url, token("ada")) as client:
            conn = client.conn
            outcomes: list[str] = []
            for _ in range(30):  # 5 frames/s: all 30 pass only if they take 5 s or more
                try:
                    await client.ping()
                    outcomes.append("pong")
                except RateLimited as exc:
                    assert exc.code == "rate_limited"
                    outcomes.append("refused")
            assert outcomes[:5] == ["pong"] * 5 and "refused" in outcomes

            async def ping() -> None:  # concurrent ones too: each gets its own answer
                try:
                    await client.ping()
                    outcomes.append("pong")
                except RateLimited:
                    outcomes.append("refused")

            outcomes.clear()
            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(ping)
            assert len(outcomes) == 12 and "refused" in outcomes
            # The bucket refills; the same connection goes on.
            await admitted(lambda: client.join("main"))
            acc = await admitted(lambda: client.send("main", "still here", client_msg_id="m1"))
            while (event := await client.next_event())["event"] != "agent_completed":
                pass
            assert event["run_id"] == acc["run_id"]
            assert client.conn is conn and conn.open and client.close_code is None


async def test_an_error_raised_in_the_body_comes_out_bare():
    async with serving(limits=Limits(rate=5, burst=5, ping_interval=None)) as server:
        with pytest.raises(RateLimited):
            async with open_client(server.url, token("ada")) as client:
                for _ in range(1000):
                    await client.ping()
        with pytest.raises(KeyError):
            async with open_client(server.url, token("ada")):
                raise KeyError("mine")


async def test_each_error_is_raised_by_the_request_it_answers():
    journal = FailingJournal()
    limits = Limits(max_threads=2, ping_interval=None)
    async with serving(scripted=True, limits=limits, journal=journal) as server:
        async with open_client(server.url, token("ada")) as client:
            assert (await raised(BadFrame, client.request({"type": "dance"}))).code == "bad_frame"
            await raised(NotJoined, client.send("main", "hi"))
            await client.join("main")
            await raised(UnknownRun, client.cancel("main"))
            await client.send("main", "sleep:60")
            while (await client.next_event())["event"] != "agent_started":
                pass
            # Concurrent requests: each error reaches its own request, the others succeed.
            results: dict[str, object] = {}

            async def outcome(name: str, request: Callable[[], Awaitable[object]]) -> None:
                try:
                    results[name] = await request()
                except ServerError as exc:
                    results[name] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(outcome, "busy", lambda: client.send("main", "now",
                                                                      strategy="reject"))
                nursery.start_soon(outcome, "unknown", lambda: client.cancel("main", "run_x"))
                nursery.start_soon(outcome, "ping", client.ping)
                nursery.start_soon(outcome, "not_joined", lambda: client.cancel("other"))
            assert isinstance(results["busy"], Busy)
            assert isinstance(results["unknown"], UnknownRun)
            # The public names catch them too: one ``except`` in process and over a socket.
            assert isinstance(results["busy"], threadline.Busy)
            assert isinstance(results["unknown"], threadline.UnknownRun)
            assert isinstance(results["not_joined"], NotJoined)
            assert results["ping"] is None
            await client.cancel("main")
            await client.join("second")
            await raised(LimitReached, client.join("third"))
            journal.failing = True
            assert (await raised(Internal, client.send("second", "lost"))).code == "internal"
            journal.failing = False
            await client.send("second", "kept")
            await client.ping()
            assert client.conn.open and client.close_code is None


async def test_threads_follows_the_pages():
    async with serving() as server:
        async with open_client(server.url, token("ada")) as client:
            for i in range(105):
                await client.join(f"t{i}")
                await client.leave(f"t{i}")
            page, cursor = await client.threads_page(limit=10)
            assert len(page) == 10 and isinstance(cursor, str)
            rest, _ = await client.threads_page(limit=1000, cursor=cursor)
            assert len(rest) == 95
            every = await client.threads()  # two pages of 100 by default
            assert [t["thread_id"] for t in every] == [t["thread_id"] for t in page + rest]
            assert len({t["thread_id"] for t in every}) == 105


# -- a scripted server -------------------------------------------------------------------------


Script = Callable[[dict], list]


@asynccontextmanager
async def websocket_server(handler: Callable[[WebSocketRequest], Awaitable[None]],
                           ) -> AsyncIterator[str]:
    """A trio-websocket server on loopback; yields its URL."""
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        yield f"ws://127.0.0.1:{ws_server.port}/v1/ws"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[str]:
    """A WebSocket server that answers each frame with ``script(frame)``: a list of objects
    to send as JSON, or of ``str`` to send as they are."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol="threadline.v1.json")
        try:
            while True:
                frame = json.loads(await ws.get_message())
                for out in script(frame):
                    await ws.send_message(out if isinstance(out, str) else json.dumps(out))
        except WsClosed:
            pass

    async with websocket_server(handler) as url:
        yield url


def unexpected_frames(frame: dict) -> list:
    ref = frame.get("ref")
    if ref is None:  # a frame without a ref: refused, and the refusal cannot say which
        return [{"type": "error", "code": "rate_limited", "message": "dropped"}]
    if frame["type"] == "threads":  # pages by cursor: "" -> "a" -> "b" -> end
        cursor = frame.get("cursor", "")
        nxt = {"": "a", "a": "b"}.get(cursor)
        return [{"type": "threads", "ref": ref, "next_cursor": nxt,
                 "threads": [{"thread_id": f"{cursor or 'first'}-{i}"} for i in range(2)]}]
    return [
        {"type": "surprise", "detail": "a type this client does not know"},
        {"type": "error", "code": "busy", "message": "for no one", "ref": 99999},
        {"type": "error", "code": "rate_limited", "message": "for no one", "ref": [1]},
        {"type": "event", "thread_id": "main"},                    # no seq
        {"type": "event", "thread_id": "main", "seq": "1"},       # a seq that is no int
        {"type": "event", "thread_id": ["main"], "seq": 1},
        [1, 2, 3],                                                # not an object
        "null",
        {"type": "pong", "ref": ref},                             # the answer
        {"type": "error", "code": "rate_limited", "message": "late", "ref": ref},  # answered
    ]


async def test_unexpected_frames_do_not_crash_the_client():
    async with scripted(unexpected_frames) as url:
        async with open_client(url, token("ada")) as client:
            await client.ping()
            unsolicited = [await client.next_unsolicited(10) for _ in range(4)]
            assert [f["type"] for f in unsolicited] == ["surprise", "error", "error", "error"]
            assert unsolicited[1]["ref"] == 99999
            assert unsolicited[3]["message"] == "late"
            await client.ping()
            for _ in range(4):
                await client.next_unsolicited(10)
            threads = await client.threads()  # follows next_cursor to the end
            assert [t["thread_id"] for t in threads] == [
                "first-0", "first-1", "a-0", "a-1", "b-0", "b-1"]
            await client.send_frame({"type": "ping"})  # no ref: its refusal is unsolicited
            assert (await client.next_unsolicited(10))["code"] == "rate_limited"
            await client.ping()
            assert client.conn.open and client.close_code is None


async def test_a_server_without_paging_gets_one_threads_request():
    seen = []

    def no_paging(frame: dict) -> list:
        seen.append(frame)
        return [{"type": "threads", "ref": frame["ref"], "threads": [{"thread_id": "main"}]}]

    async with scripted(no_paging) as url:
        async with open_client(url, token("ada")) as client:
            assert await client.threads() == [{"thread_id": "main"}]
    assert seen == [{"type": "threads", "ref": 1}]


async def test_a_frame_that_is_not_json_closes_the_connection():
    def garbage(frame: dict) -> list:
        return ["{not json"] if frame.get("type") == "ping" else []

    async with scripted(garbage) as url:
        async with open_client(url, token("ada")) as client:
            with pytest.raises(ConnectionClosed):
                await client.ping()
            assert client.close_code == 1007
            with pytest.raises(ConnectionClosed):
                await client.next_event(10)
            with pytest.raises(ConnectionClosed):
                await client.ping()


async def test_a_reconnection_refused_for_good_ends_the_client_quietly():
    handshakes = 0

    async def handler(request: WebSocketRequest) -> None:
        nonlocal handshakes
        handshakes += 1
        if handshakes > 1:  # the token expired meanwhile
            await request.reject(401, body=b"token expired")
            return
        ws = await request.accept(subprotocol="threadline.v1.json")
        await ws.get_message()
        await ws.aclose(code=1011, reason="server error")

    async with websocket_server(handler) as url:
        async with open_client(url, token("ada"), reconnect=True) as client:
            with pytest.raises(ConnectionClosed):
                await client.ping()
            with trio.fail_after(30):
                assert [e async for e in client.events()] == []  # ends: no reconnection
            assert handshakes == 2 and client.reconnects == 0
            assert "401" in client.close_reason
            with pytest.raises(ConnectionClosed):
                await client.ping()
