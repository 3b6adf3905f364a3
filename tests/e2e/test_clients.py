"""The protocol, not our client, is what is tested: JSON and msgpack give the same
conversation, and trio-websocket (an independent client) holds a whole one."""

from __future__ import annotations

import json

import msgpack
import pytest
from trio_websocket import open_websocket_url

from tests.servers import token
from threadline.transport.client import BadFrame, NotJoined, open_client

STABLE = ("type", "thread_id", "seq", "event")


def shape(frame: dict) -> dict:
    """A frame without what differs between two runs (ids and times)."""
    data = {k: v for k, v in frame.get("data", {}).items()
            if k not in ("message_id", "call_id", "parent")}  # ids: they differ between runs
    return {**{k: frame.get(k) for k in STABLE}, "data": data}


async def conversation(url: str, encoding: str) -> list[dict]:
    async with open_client(url, token(f"user-{encoding}"), encoding=encoding) as client:
        assert client.codec.subprotocol == f"threadline.v1.{encoding}"
        await client.join("main")
        frames = []
        for text in ("hello", "/calc (1 + 2) * 3.5", "/calc 1/0"):
            await client.send("main", text, client_msg_id=text)
            while True:
                frames.append(await client.next_event())
                if frames[-1]["event"] == "agent_completed":
                    break
        again = await client.send("main", "hello", client_msg_id="hello")  # idempotent
        assert again["seq"] == 1
        threads = await client.threads()
        assert [(t["thread_id"], t["last_seq"]) for t in threads] == [("main", len(frames))]
        return frames


async def test_json_and_msgpack_give_the_same_conversation(server):
    as_json = await conversation(server.url, "json")
    as_msgpack = await conversation(server.url, "msgpack")
    assert [shape(f) for f in as_json] == [shape(f) for f in as_msgpack]
    assert [f["data"].get("result") for f in as_json if f["event"] == "tool_completed"] == [10.5, None]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_typed_errors_and_thread_pages_in_either_encoding(server, encoding):
    async with open_client(server.url, token(f"pager-{encoding}"), encoding=encoding) as client:
        with pytest.raises(NotJoined):
            await client.send("main", "hi")
        with pytest.raises(BadFrame):
            await client.threads_page(limit=0)
        for i in range(3):
            await client.join(f"t{i}")
        page, cursor = await client.threads_page(limit=2)
        assert [t["thread_id"] for t in page] == ["t2", "t1"] and isinstance(cursor, str)
        assert await client.threads_page(limit=2, cursor=cursor) == (
            [t for t in await client.threads() if t["thread_id"] == "t0"], None)
        assert [t["thread_id"] for t in await client.threads()] == ["t2", "t1", "t0"]


async def test_trio_websocket_holds_a_whole_conversation(server):
    url = f"{server.url}?token={token('ada')}"  # the browser form of auth
    async with open_websocket_url(url, subprotocols=["threadline.v1.json"]) as ws:
        assert ws.subprotocol == "threadline.v1.json"

        async def ask(frame: dict) -> dict:
            await ws.send_message(json.dumps(frame))
            while True:
                answer = json.loads(await ws.get_message())
                if answer.get("ref") == frame.get("ref"):
                    return answer
                events.append(answer)

        events: list[dict] = []
        assert await ask({"type": "ping", "ref": "p"}) == {"type": "pong", "ref": "p"}
        joined = await ask({"type": "join", "thread_id": "main", "ref": 1})
        assert isinstance(joined.pop("created_at"), float)
        assert joined == {"type": "joined", "thread_id": "main", "last_seq": 0, "ref": 1}
        accepted = await ask({"type": "send", "thread_id": "main", "text": "/calc 6*7", "ref": 2})
        assert accepted["type"] == "accepted" and accepted["seq"] == 1
        while not events or events[-1].get("event") != "agent_completed":
            events.append(json.loads(await ws.get_message()))
        assert [e["event"] for e in events] == [
            "user_message", "agent_started", "agent_thinking", "tool_executing",
            "tool_completed", "agent_completed"]
        assert all(e["run_id"] == accepted["run_id"] for e in events)
        assert events[-1]["data"] == {"text": "42"}
        assert isinstance(events[0]["ts"], float)
        error = await ask({"type": "cancel", "thread_id": "main", "ref": 3})
        assert error == {"type": "error", "code": "unknown_run", "message": error["message"],
                         "ref": 3}
        threads = await ask({"type": "threads", "ref": 4})
        assert threads["threads"][0]["thread_id"] == "main"
        assert await ask({"type": "leave", "thread_id": "main", "ref": 5}) == {
            "type": "left", "thread_id": "main", "ref": 5}


async def test_trio_websocket_without_a_subprotocol_gets_json(server):
    async with open_websocket_url(f"{server.url}?token={token('ada')}") as ws:
        assert ws.subprotocol is None
        await ws.send_message('{"type":"ping"}')
        assert json.loads(await ws.get_message()) == {"type": "pong"}


async def test_trio_websocket_in_msgpack(server):
    async with open_websocket_url(f"{server.url}?token={token('ada')}",
                                  subprotocols=["threadline.v1.msgpack"]) as ws:
        assert ws.subprotocol == "threadline.v1.msgpack"
        await ws.send_message(msgpack.packb({"type": "ping", "ref": 1}))
        answer = await ws.get_message()
        assert isinstance(answer, bytes) and msgpack.unpackb(answer) == {"type": "pong", "ref": 1}
        await ws.send_message('{"type":"ping"}')  # a text frame on msgpack: bad_frame
        error = msgpack.unpackb(await ws.get_message())
        assert error["code"] == "bad_frame"
