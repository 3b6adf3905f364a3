"""A run waiting for approval outlives its server: real ``threadline serve`` processes (the
default agent, echo, which is resumable), stopped with SIGTERM or killed with SIGKILL while the
echo agent's ``/confirm 6*7`` waits, on SQLite and on PostgreSQL. Started again on the same
store, the waiting run is parked (no task holds it), a ``decide`` over the WebSocket resumes it,
the calculator runs exactly once, and the thread's history is gapless with one terminal event a
run.

The expiry of a wait while the server was down is tested in process
(``tests/actors/test_parked_runs.py``, ``test_an_expiry_that_passed_while_the_server_was_down``):
no helper agent that ``threadline serve --agent`` can load has a tool with an
``approval_timeout``, and the echo agent's ``/confirm`` waits with no limit."""

from __future__ import annotations

import signal

import pytest

from tests.servers import port_of, until_event as until
from tests.helpers import assert_runs_well_formed
from tests.servers import ServeProcess, http, token
from threadline.actors.messages import TERMINAL_EVENTS, Event, ThreadKey
from threadline.transport.client import ServerError, open_client

ADA = token("ada")
THREAD = "main"




async def metric(url: str, name: str) -> float:
    body = (await http(port_of(url), "GET", "/metrics"))[2]
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} on /metrics")




async def history(url: str) -> list[dict]:
    async with open_client(url, ADA) as client:
        joined = await client.join(THREAD, since=0)
        return [await client.next_event(10) for _ in range(joined["last_seq"])]


def assert_thread_well_formed(frames: list[dict]) -> None:
    """The thread's events gapless from seq 1, each run with its one terminal event."""
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert_runs_well_formed(as_events(frames))


def stop_now(server: ServeProcess, how: str) -> None:
    """SIGTERM (a graceful stop) or SIGKILL (none at all)."""
    if how == "sigterm":
        server.signal(signal.SIGTERM)
    else:
        server.kill()


def as_events(frames: list[dict]) -> list[Event]:
    return [Event(ThreadKey("ada", f["thread_id"]), f["seq"], f["event"], f["run_id"], f["ts"],
                  f["data"]) for f in frames]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    return request.getfixturevalue("pg_dsn")


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_a_waiting_run_survives_the_server_and_runs_its_tool_once(store, stop):
    # -- the first server: one run completes, a second waits for approval ---------------------
    server = ServeProcess("--store", store, "--grace", "0.5")
    try:
        url = await server.ready()
        async with open_client(url, ADA) as client:
            await client.join(THREAD)
            await client.send(THREAD, "/calc 1+1")
            before = await until(client, *TERMINAL_EVENTS)
            assert (before[-1]["event"], before[-1]["data"]) == ("agent_completed", {"text": "2"})
            accepted = await client.send(THREAD, "/confirm 6*7")
            waiting = await until(client, "approval_requested")
            asked = waiting[-1]
            run_id, call_id = accepted["run_id"], asked["data"]["call_id"]
            assert asked["run_id"] == run_id
            assert asked["data"] == {"call_id": call_id, "tool": "calculator",  # no expiry
                                     "args": {"expression": "6*7"}, "expires_at": None}
            assert await metric(url, "threadline_approvals_waiting") == 1
            assert await metric(url, "threadline_runs_active") == 0  # parked: no task
            seen = before + waiting
            if stop == "sigterm":
                server.signal(signal.SIGTERM)
                after = [e async for e in client.events()]
                assert after == []  # the waiting run is not ended by the stop
            else:
                server.kill()  # SIGKILL: no shutdown at all
        if stop == "sigterm":
            assert await server.wait() == 0
    finally:
        server.kill()

    # -- the second server, on the same store: the run still waits; decided, it goes on -------
    server = ServeProcess("--store", store, "--grace", "0.5")
    try:
        url = await server.ready()
        frames = await history(url)
        assert frames == seen  # everything the client saw survived, and nothing was added
        async with open_client(url, ADA) as client:
            await client.join(THREAD, since=seen[-1]["seq"])
            assert await metric(url, "threadline_approvals_waiting") == 1  # parked again
            assert await metric(url, "threadline_runs_active") == 0
            ok = await client.decide(THREAD, run_id, call_id, True)
            assert {k: ok[k] for k in ("type", "thread_id", "run_id", "call_id")} == {
                "type": "ok", "thread_id": THREAD, "run_id": run_id, "call_id": call_id}
            end = await until(client, *TERMINAL_EVENTS)
            assert [(f["event"], f["run_id"], f["data"]) for f in end] == [
                ("approval_decided", run_id, {"call_id": call_id, "approved": True}),
                ("tool_executing", run_id, {"call_id": call_id, "tool": "calculator",
                                            "args": {"expression": "6*7"}}),
                ("tool_completed", run_id, {"call_id": call_id, "tool": "calculator",
                                            "result": 42}),
                ("agent_completed", run_id, {"text": "42"})]
            assert end[0]["seq"] == seen[-1]["seq"] + 1
            with pytest.raises(ServerError) as late:  # decided once: a second is refused
                await client.decide(THREAD, run_id, call_id, False)
            assert late.value.code == "unknown_call"
            assert await metric(url, "threadline_approvals_waiting") == 0
            # The thread goes on as any other.
            await client.send(THREAD, "hello")
            after = await until(client, *TERMINAL_EVENTS)
            assert (after[-1]["event"], after[-1]["data"]) == ("agent_completed",
                                                               {"text": "hello"})
        frames = await history(url)
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    finally:
        server.kill()

    # -- the whole thread -----------------------------------------------------------------------
    assert_thread_well_formed(frames)
    assert frames == seen + end + after
    executed = [f for f in frames if f["event"] == "tool_executing"
                and f["data"]["call_id"] == call_id]
    assert len(executed) == 1  # the calculator ran once for the call
    ends = [f for f in frames if f["run_id"] == run_id and f["event"] in TERMINAL_EVENTS]
    assert [(f["event"], f["data"]) for f in ends] == [("agent_completed", {"text": "42"})]


async def test_a_waiting_run_survives_two_kills_in_a_row(tmp_path):
    """Killed while it waits, started, killed again before anything decided it: still one
    wait, and the decision after the third start resumes it."""
    store = ("--store", f"sqlite:///{tmp_path}/t.db")
    server = ServeProcess(*store)
    try:
        url = await server.ready()
        async with open_client(url, ADA) as client:
            await client.join(THREAD)
            run_id = (await client.send(THREAD, "/confirm 6*7"))["run_id"]
            call_id = (await until(client, "approval_requested"))[-1]["data"]["call_id"]
    finally:
        server.kill()
    for _ in range(2):
        server = ServeProcess(*store)
        try:
            url = await server.ready()
            frames = await history(url)  # loads the thread: its run parks again
            assert frames[-1]["event"] == "approval_requested" and len(frames) == 4
            assert await metric(url, "threadline_approvals_waiting") == 1
        finally:
            server.kill()
    server = ServeProcess(*store)
    try:
        url = await server.ready()
        async with open_client(url, ADA) as client:
            await client.join(THREAD, since=4)
            await client.decide(THREAD, run_id, call_id, True)
            end = await until(client, *TERMINAL_EVENTS)
        assert (end[-1]["event"], end[-1]["data"]) == ("agent_completed", {"text": "42"})
        frames = await history(url)
        assert_thread_well_formed(frames)
        assert [f["event"] for f in frames].count("tool_executing") == 1
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    finally:
        server.kill()



@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_a_message_queued_behind_a_waiting_run_gets_its_one_end(tmp_path, stop):
    """A message sent while a run waits is queued behind it; the server stops: the queued run
    ends once (after a graceful stop as a graceful stop ends runs, after a crash as recovery
    does), and the waiting run still goes on once decided."""
    store = ("--store", f"sqlite:///{tmp_path}/t.db")
    server = ServeProcess(*store, "--grace", "0.5")
    try:
        url = await server.ready()
        async with open_client(url, ADA) as client:
            await client.join(THREAD)
            run_id = (await client.send(THREAD, "/confirm 6*7"))["run_id"]
            call_id = (await until(client, "approval_requested"))[-1]["data"]["call_id"]
            behind = [(await client.send(THREAD, text))["run_id"]  # each ends once
                      for text in ("behind", "behind too")]
            if stop == "sigterm":
                server.signal(signal.SIGTERM)
                [e async for e in client.events()]
            else:
                server.kill()
        if stop == "sigterm":
            assert await server.wait() == 0
    finally:
        server.kill()
    server = ServeProcess(*store)
    try:
        url = await server.ready()
        async with open_client(url, ADA) as client:
            await client.join(THREAD)
            await client.decide(THREAD, run_id, call_id, True)
            while True:
                frame = await client.next_event(20)
                if frame["run_id"] == run_id and frame["event"] in TERMINAL_EVENTS:
                    break
        assert (frame["event"], frame["data"]) == ("agent_completed", {"text": "42"})
        frames = await history(url)
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    finally:
        server.kill()
    assert_thread_well_formed(frames)
    assert [f["event"] for f in frames].count("tool_executing") == 1
    ends = [(f["run_id"], f["event"], f["data"]) for f in frames
            if f["run_id"] in behind and f["event"] in TERMINAL_EVENTS]
    if stop == "sigterm":
        assert ends == [(r, "agent_cancelled", {"reason": "shutdown"}) for r in behind]
    else:
        assert ends == [(r, "agent_failed", {"error": "server restarted"}) for r in behind]


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_the_openai_agents_waiting_run_survives_a_restart_and_the_model_gets_the_result(
        request, tmp_path, stop, store):
    """``threadline serve --agent`` the OpenAI agent, against the scripted model server: the
    model calls a tool that needs approval, the server is stopped (SIGTERM, or kill -9) and
    started again on the same store, the decision comes, the tool runs once, the model receives
    its result, and the answer completes."""
    import json

    from tests.llm_server import Answer, ToolCall, open_llm_server

    async with open_llm_server() as llm:
        llm.script(Answer(calls=(ToolCall("calculator", {"expression": "6*7"}),)),
                   Answer(pieces=("It is 42.",)))
        env = {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test"}
        url = (f"sqlite:///{tmp_path}/t.db" if store == "sqlite"
               else request.getfixturevalue("pg_dsn"))
        args = ("--store", url, "--agent",
                "tests.approval_agents:OPENAI", "--grace", "0.5")
        server = ServeProcess(*args, env=env)
        try:
            async with open_client(await server.ready(), ADA) as client:
                await client.join(THREAD)
                run_id = (await client.send(THREAD, "what is 6*7?"))["run_id"]
                call = (await until(client, "approval_requested"))[-1]["data"]
                assert call["tool"] == "calculator"
                stop_now(server, stop)
            if stop == "sigterm":
                assert await server.wait() == 0
        finally:
            server.kill()
        assert len(llm.requests) == 1  # nothing is asked of the model while a person decides
        server = ServeProcess(*args, env=env)
        try:
            async with open_client(await server.ready(), ADA) as client:
                joined = await client.join(THREAD, since=0)
                for _ in range(joined["last_seq"]):
                    await client.next_event(10)
                await client.decide(THREAD, run_id, call["call_id"], True)
                rest = await until(client, *TERMINAL_EVENTS)
            frames = await history(server.url)
        finally:
            server.kill()
    assert rest[-1]["event"] == "agent_completed" and rest[-1]["data"]["text"] == "It is 42."
    ours = [f for f in frames if f["run_id"] == run_id]
    assert [f["event"] for f in ours].count("tool_executing") == 1
    assert [f["data"].get("result") for f in ours if f["event"] == "tool_completed"] == [42]
    assert_thread_well_formed(frames)
    second = llm.requests[-1].body["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "tool"]
    assert json.loads(second[-1]["content"]) == 42
