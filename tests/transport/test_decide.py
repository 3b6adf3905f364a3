"""``decide`` over real WebSockets (PROTOCOL.md 1.1, "Tool approval"): two tabs of one user,
one the bundled trio client and one trio-websocket (an independent client), both joined to the
thread the echo agent's ``/confirm 6*7`` waits in. Both see the request, one decides, both see
the decision and the end; the other tab's decision comes too late (``unknown_call``). Also:
``not_joined``, calls that do not wait, another user, and bad frames, each answered and the
connection kept."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.servers import token
from threadline.transport.client import NotJoined, ServerError, open_client

ADA = token("ada")
TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


class Tab:
    """trio-websocket with JSON frames: what a browser tab would send and read."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.held: list[dict[str, Any]] = []  # events read while waiting for an answer

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(frame))

    async def receive(self) -> dict[str, Any]:
        with trio.fail_after(10):
            return json.loads(await self.ws.get_message())

    async def answer(self, ref: str) -> dict[str, Any]:
        """The frame that answers ``ref`` (events meanwhile are held for ``events_until``)."""
        for _ in range(100):
            frame = await self.receive()
            if frame.get("ref") == ref:
                return frame
            assert frame["type"] == "event", frame
            self.held.append(frame)
        raise AssertionError(f"no answer to {ref}")

    async def events_until(self, *names: str) -> list[dict[str, Any]]:
        """Event frames up to and including the first one named in ``names``."""
        seen: list[dict[str, Any]] = []
        for _ in range(100):
            frame = self.held.pop(0) if self.held else await self.receive()
            assert frame["type"] == "event", frame
            seen.append(frame)
            if frame["event"] in names:
                return seen
        raise AssertionError(f"no {names}")


async def client_events_until(client, *names: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for _ in range(100):
        seen.append(await client.next_event(timeout=10))
        if seen[-1]["event"] in names:
            return seen
    raise AssertionError(f"no {names}")


async def two_tabs_waiting(client, tab: Tab, text: str = "/confirm 6*7"):
    """Both tabs joined to ``main``; ``text`` sent; the ``approval_requested`` both saw."""
    await client.join("main")
    await tab.send({"type": "join", "thread_id": "main", "ref": "j"})
    assert (await tab.answer("j"))["type"] == "joined"
    accepted = await client.send("main", text)
    mine = (await client_events_until(client, "approval_requested"))[-1]
    theirs = (await tab.events_until("approval_requested"))[-1]
    assert mine == theirs and mine["run_id"] == accepted["run_id"]
    assert mine["data"] == {"call_id": mine["data"]["call_id"], "tool": "calculator",
                            "args": {"expression": text.split(" ", 1)[1]}, "expires_at": None}
    return accepted["run_id"], mine["data"]["call_id"]


async def test_approved_in_one_tab_both_see_it_and_the_other_tab_is_too_late(server):
    with trio.fail_after(30):
        async with open_client(server.url, ADA) as client, \
                open_websocket_url(server.url + f"?token={ADA}") as ws:
            tab = Tab(ws)
            run_id, call_id = await two_tabs_waiting(client, tab)
            await tab.send({"type": "decide", "thread_id": "main", "run_id": run_id,
                            "call_id": call_id, "approved": True, "ref": "d"})
            ok = await tab.answer("d")
            assert ok == {"type": "ok", "thread_id": "main", "run_id": run_id,
                          "call_id": call_id, "ref": "d"}
            mine = await client_events_until(client, *TERMINAL)
            theirs = await tab.events_until(*TERMINAL)
            assert mine == theirs
            assert [(f["event"], f["data"]) for f in mine] == [
                ("approval_decided", {"call_id": call_id, "approved": True}),
                ("tool_executing", {"call_id": call_id, "tool": "calculator",
                                    "args": {"expression": "6*7"}}),
                ("tool_completed", {"call_id": call_id, "tool": "calculator", "result": 42}),
                ("agent_completed", {"text": "42"})]
            with pytest.raises(ServerError) as late:
                await client.decide("main", run_id, call_id, False, reason="no")
            assert late.value.code == "unknown_call"
            await client.ping()  # the connection stays
            with pytest.raises(trio.TooSlowError):  # and the late decision stored nothing
                await client.next_event(timeout=0.3)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_denied_with_a_reason_the_tool_never_runs(server, encoding):
    with trio.fail_after(30):
        async with open_client(server.url, ADA, encoding=encoding) as client, \
                open_websocket_url(server.url + f"?token={ADA}") as ws:
            tab = Tab(ws)
            run_id, call_id = await two_tabs_waiting(client, tab, "/confirm 2**10")
            ok = await client.decide("main", run_id, call_id, False, reason="not today ✓")
            assert {k: ok[k] for k in ("type", "thread_id", "run_id", "call_id")} == {
                "type": "ok", "thread_id": "main", "run_id": run_id, "call_id": call_id}
            mine = await client_events_until(client, *TERMINAL)
            theirs = await tab.events_until(*TERMINAL)
            assert mine == theirs
            assert [(f["event"], f["data"]) for f in mine] == [
                ("approval_decided", {"call_id": call_id, "approved": False,
                                      "reason": "not today ✓"}),
                ("tool_completed", {"call_id": call_id, "tool": "calculator",
                                    "error": "denied: not today ✓"}),
                ("agent_completed", {"text": "denied: not today ✓"})]
            await tab.send({"type": "decide", "thread_id": "main", "run_id": run_id,
                            "call_id": call_id, "approved": True, "ref": "late"})
            late = await tab.answer("late")
            assert (late["type"], late["code"]) == ("error", "unknown_call")
            await tab.send({"type": "ping", "ref": "p"})
            assert (await tab.answer("p"))["type"] == "pong"


async def test_not_joined_other_calls_and_another_user_leave_the_run_waiting(server):
    with trio.fail_after(30):
        async with open_client(server.url, ADA) as client, \
                open_client(server.url, ADA) as elsewhere, \
                open_client(server.url, token("bob")) as bob, \
                open_websocket_url(server.url + f"?token={ADA}") as ws:
            run_id, call_id = await two_tabs_waiting(client, Tab(ws))
            with pytest.raises(NotJoined):  # the same user, a connection that did not join
                await elsewhere.decide("main", run_id, call_id, True)
            await bob.join("main")  # bob's own "main": ada's run is not in it
            with pytest.raises(ServerError) as other:
                await bob.decide("main", run_id, call_id, True)
            assert other.value.code == "unknown_call"
            for wrong_run, wrong_call in [(run_id, "call_nope"), ("run_nope", call_id)]:
                with pytest.raises(ServerError) as unknown:
                    await client.decide("main", wrong_run, wrong_call, True)
                assert unknown.value.code == "unknown_call"
            # Still waiting: nothing was stored meanwhile, and the real decision works.
            with pytest.raises(trio.TooSlowError):
                await client.next_event(timeout=0.3)
            await client.decide("main", run_id, call_id, True)
            end = await client_events_until(client, *TERMINAL)
            assert end[-1]["data"] == {"text": "42"}


async def test_bad_decide_frames_are_answered_and_the_connection_stays(server):
    with trio.fail_after(30):
        async with open_client(server.url, ADA) as client, \
                open_websocket_url(server.url + f"?token={ADA}") as ws:
            tab = Tab(ws)
            run_id, call_id = await two_tabs_waiting(client, tab)
            good = {"type": "decide", "thread_id": "main", "run_id": run_id,
                    "call_id": call_id, "approved": True}
            for i, change in enumerate([{"approved": "yes"}, {"approved": 1},
                                        {"approved": None}, {"call_id": None},
                                        {"run_id": 7}, {"reason": "x" * 1025},
                                        {"reason": ["x"]}, {"thread_id": "a b"}]):
                frame = {k: v for k, v in {**good, **change, "ref": f"b{i}"}.items()
                         if v is not None}
                await tab.send(frame)
                answer = await tab.answer(f"b{i}")
                assert (answer["type"], answer["code"]) == ("error", "bad_frame"), change
            # None of them decided anything: the run still waits, and a good frame decides it.
            await tab.send({**good, "reason": "é" * 512, "ref": "ok"})  # 1 KiB exactly
            assert (await tab.answer("ok"))["type"] == "ok"
            end = await client_events_until(client, *TERMINAL)
            assert end[0]["data"] == {"call_id": call_id, "approved": True,
                                      "reason": "é" * 512}
            assert end[-1]["data"] == {"text": "42"}
