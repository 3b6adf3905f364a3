"""A run waiting for approval outlives the node that owned it: two ``threadline serve --cluster``
processes on the real PostgreSQL, the default agent (echo, resumable). The owner of a thread
whose ``/confirm 6*7`` waits is killed with SIGKILL; once its leases run out (``--lease-ttl 3``:
the survivor takes the shards within a few seconds) the survivor recovers the shard without
closing the waiting run, a decision sent to the survivor resumes it there, and the calculator
runs exactly once: the run completes with 42. A decision sent to the survivor at once, before
the leases ran out, waits there for the move and does the same."""

from __future__ import annotations

import pytest
import trio

from tests.servers import until_event as until
from tests.cluster.nodes import (balanced, open_nodes, owner, stored, stored_well_formed,
                                 threads_owned_by)
from tests.cluster.test_failover import no_open_runs
from tests.helpers import assert_runs_well_formed
from tests.servers import token
from threadline.actors.messages import TERMINAL_EVENTS, Event, ThreadKey
from threadline.transport.client import ServerError, open_client

ADA = token("ada")




@pytest.mark.parametrize("when", ["after_the_move", "at_once"])
async def test_a_waiting_run_moves_with_its_shard_and_completes_on_the_new_owner(pg_dsn, when):
    """Decided on the survivor once it owns the shard, or at once after the kill (the
    decision then waits for the move)."""
    with trio.fail_after(180):
        async with open_nodes(pg_dsn, 2, "--lease-ttl", "3") as (survivor, victim):
            thread, idle = threads_owned_by(pg_dsn, victim, "ada", 2, prefix="a")
            key = ThreadKey("ada", thread)
            async with open_client(survivor.url, ADA) as watcher:
                await watcher.join(thread)  # a tab on the other node: a feed of the owner's
                async with open_client(victim.url, ADA) as on_victim:
                    await on_victim.join(thread)
                    await on_victim.join(idle)  # a second thread of the victim's, its run done
                    await on_victim.send(idle, "before")
                    await until(on_victim, *TERMINAL_EVENTS, thread=idle)
                    accepted = await on_victim.send(thread, "/confirm 6*7")
                    run_id = accepted["run_id"]
                    asked = (await until(on_victim, "approval_requested", thread=thread))[-1]
                    call_id = asked["data"]["call_id"]
                    assert asked == (await until(watcher, "approval_requested",
                                                 thread=thread))[-1]
                    assert await victim.metric("threadline_approvals_waiting") == 1
                    victim.kill()  # SIGKILL while the run waits on it
                killed = trio.current_time()

                if when == "after_the_move":
                    await balanced([survivor], timeout=60)  # the victim's leases ran out
                    moved = trio.current_time() - killed
                    assert owner(pg_dsn, key) == survivor.node_id
                    # The shard's recovery kept the waiting run open; nothing was added to it.
                    before = stored_well_formed_open(pg_dsn, key)
                    assert before[-1].event == "approval_requested"
                    assert before[-1].run_id == run_id and before[-1].seq == asked["seq"]
                    # The thread loads on the survivor: its run parks there, with no task.
                    async with open_client(survivor.url, ADA) as tab:
                        joined = await tab.join(thread, since=0)
                        assert joined["last_seq"] == asked["seq"]
                        assert await survivor.metric("threadline_approvals_waiting") == 1
                        assert await survivor.metric("threadline_runs_active") == 0
                    ok = await watcher.decide(thread, run_id, call_id, True)
                else:
                    # Decided at once: the survivor holds the request until the shard is its
                    # own (the router's WAIT). A request lost with the dead peer's link is the
                    # client's to send again; it cannot have been stored by a dead node.
                    with trio.fail_after(60):
                        while True:
                            try:
                                ok = await watcher.decide(thread, run_id, call_id, True)
                                break
                            except ServerError as exc:
                                assert exc.code != "unknown_call", exc
                                await trio.sleep(0.2)
                    moved = trio.current_time() - killed
                    assert owner(pg_dsn, key) == survivor.node_id
                assert (ok["type"], ok["run_id"], ok["call_id"]) == ("ok", run_id, call_id)
                end = await until(watcher, *TERMINAL_EVENTS, thread=thread)
                assert [(f["event"], f["run_id"], f["data"]) for f in end] == [
                    ("approval_decided", run_id, {"call_id": call_id, "approved": True}),
                    ("tool_executing", run_id, {"call_id": call_id, "tool": "calculator",
                                                "args": {"expression": "6*7"}}),
                    ("tool_completed", run_id, {"call_id": call_id, "tool": "calculator",
                                                "result": 42}),
                    ("agent_completed", run_id, {"text": "42"})]
                assert end[0]["seq"] == asked["seq"] + 1
                try:
                    await watcher.decide(thread, run_id, call_id, False)
                    raise AssertionError("decided twice")
                except ServerError as exc:
                    assert exc.code == "unknown_call"
                assert await survivor.metric("threadline_approvals_waiting") == 0
            print(f"\n{when}: {moved:.1f} s from the kill to "
                  + ("the survivor owning every shard" if when == "after_the_move"
                     else "the decision's ok"))
            await no_open_runs(pg_dsn)
            events = stored_well_formed(pg_dsn, key)
            executing = [e for e in events if e.event == "tool_executing"]
            assert [e.data["call_id"] for e in executing] == [call_id]  # the calculator ran once
            ends = [e for e in events if e.run_id == run_id and e.event in TERMINAL_EVENTS]
            assert [(e.event, e.data) for e in ends] == [("agent_completed", {"text": "42"})]
            stored_well_formed(pg_dsn, ThreadKey("ada", idle))


def stored_well_formed_open(dsn: str, key: ThreadKey) -> list[Event]:
    """The thread's stored events while its last run still waits: gapless, and well formed
    with that run unfinished."""
    events = stored(dsn, key)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert_runs_well_formed(events, finished=False)
    return events
