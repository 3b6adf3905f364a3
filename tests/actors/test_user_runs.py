"""At most ``user_runs`` runs of one user at once, across the user's threads: the others are
accepted and wait their turn (no ``agent_started``) in the order they came; a waiting run can
be cancelled or deleted; another user's runs never wait behind them. Virtual time."""

from __future__ import annotations

import trio

from tests.helpers import assert_runs_well_formed, scripted_agent, test_tools
from threadline import RuntimeConfig, open_runtime
from threadline.actors.messages import AGENT_STARTED, TERMINAL_EVENTS
from threadline.actors.user_runs import UserRuns


async def started(rt, user: str, threads: list[str]) -> list[str]:
    """The threads of ``threads`` whose run has an ``agent_started`` stored."""
    out = []
    for thread in threads:
        events = await rt.journal.read(rt.thread(user, thread).key, 0)
        if any(e.event == AGENT_STARTED for e in events):
            out.append(thread)
    return out


async def test_one_users_runs_beyond_the_bound_wait_and_others_do_not(autojump_clock):
    config = RuntimeConfig(user_runs=3)
    async with open_runtime(agent=scripted_agent, tools=test_tools(), config=config) as rt:
        hog = [f"t{i}" for i in range(8)]
        runs = {t: await rt.thread("hog", t).send("sleep:10") for t in hog}
        await trio.sleep(1)
        assert await started(rt, "hog", hog) == hog[:3]  # in the order they came
        assert rt._env.user_runs.waiting == 5
        stats = rt.statistics()  # what /metrics shows: a run waiting has not started
        assert (stats.runs_active, stats.runs_waiting, stats.runs_started) == (3, 5, 3)

        # Another user is not behind them.
        other = rt.thread("ada", "main")
        async with other.open_subscription() as events:
            accepted = await other.send("think:hi")
            with trio.fail_after(1):
                async for event in events:
                    if event.run_id == accepted.run_id and event.event in TERMINAL_EVENTS:
                        assert event.event == "agent_completed"
                        break

        # A waiting run is cancelled without running; a waiting thread can be deleted.
        assert await rt.thread("hog", "t5").cancel(runs["t5"].run_id) == runs["t5"].run_id
        await rt.thread("hog", "t6").delete()
        await trio.sleep(1)
        assert await started(rt, "hog", hog) == hog[:3] + ["t5"]
        t5 = await rt.journal.read(rt.thread("hog", "t5").key, 0)
        assert [e.event for e in t5] == ["user_message", "agent_started", "agent_cancelled"]

        await trio.sleep(10)  # the first three end: the next ones start, three at a time
        assert await started(rt, "hog", hog) == hog[:6] + ["t7"]  # t6 is gone
        await trio.sleep(30)
        for t in hog:
            assert_runs_well_formed(await rt.journal.read(rt.thread("hog", t).key, 0))
        assert rt._env.user_runs._limiters == {}  # nothing kept for a user with no runs


async def test_no_bound(autojump_clock):
    async with open_runtime(agent=scripted_agent, tools=test_tools(),
                            config=RuntimeConfig(user_runs=None)) as rt:
        for i in range(30):
            await rt.thread("hog", f"t{i}").send("sleep:10")
        await trio.sleep(1)
        assert len(await started(rt, "hog", [f"t{i}" for i in range(30)])) == 30


def test_a_bound_below_one_is_refused():
    import pytest

    with pytest.raises(ValueError):
        UserRuns(0)


async def test_one_user_streaming_in_many_threads_over_http_leaves_others_served():
    """The red-team's finding, over a real server: one user, within every quota, starts
    ``/stream 100000`` in 40 threads over HTTP; at most ``user_runs`` of them run, and another
    user's message over the WebSocket is answered meanwhile."""
    from tests.servers import http, serving, token
    from threadline.transport.client import open_client

    async with serving() as server:
        hog = token("hog")
        for i in range(40):
            status, _, answer = await http(server, "POST", f"/v1/threads/t{i}/messages",
                                           tok=hog, body={"text": "/stream 100000"})
            assert status == 200 and answer["type"] == "accepted", answer
        rt = server.runtime
        await trio.sleep(0.5)
        assert len(await started(rt, "hog", [f"t{i}" for i in range(40)])) == 10
        async with open_client(server.url, token("ada")) as client:
            await client.join("main")
            accepted = await client.send("main", "hello")
            while True:
                event = await client.next_event(30)
                if event["run_id"] == accepted["run_id"] and event["event"] in TERMINAL_EVENTS:
                    assert (event["event"], event["data"]["text"]) == ("agent_completed", "hello")
                    break
        await rt.delete_user("hog")  # ends every run, waiting or not
