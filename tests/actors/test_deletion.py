"""Deleting threads through the runtime (ThreadHandle.delete, Runtime.delete_user), in memory."""

from __future__ import annotations

import pytest
import trio

from threadline import THREAD_DELETED, SubscriberDropped, open_runtime
from tests.helpers import names, scripted_agent, test_tools, until_terminal


async def test_delete_cancels_the_active_run_drops_pending_ones_and_tells_subscribers():
    async with open_runtime(agent=scripted_agent, tools=test_tools()) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as sub:
            active = await thread.send("sleep:30")
            await thread.send("sleep:30")  # pending: dropped
            seen = []
            with trio.fail_after(10):
                while "agent_started" not in names(seen):
                    seen.append(await sub.next())
                await thread.delete()
                with pytest.raises(SubscriberDropped, match=THREAD_DELETED):
                    async for event in sub:
                        seen.append(event)
        cancelled = {e.run_id: e.data for e in seen if e.event == "agent_cancelled"}
        assert cancelled.get(active.run_id) == {"reason": "deleted"}
        assert all(d == {"reason": "deleted"} for d in cancelled.values())
        assert "agent_completed" not in names(seen)  # neither the active run nor the pending one
        assert await thread.stored_info() is None
        assert await rt.user("ada").threads() == []
        assert ("ada", "main") not in {(k.user_id, k.thread_id) for k in
                                       (r.key for r in rt.directory.refs())}


async def test_a_deleted_thread_starts_again_from_seq_1_and_others_are_untouched():
    async with open_runtime() as rt:
        ada, bob = rt.thread("ada", "main"), rt.thread("bob", "main")
        for thread in (ada, bob):
            async with thread.open_subscription() as sub:
                await thread.send("hello")
                await until_terminal(sub)
        await ada.delete()
        async with ada.open_subscription() as sub:
            accepted = await ada.send("again")
            events = await until_terminal(sub)
        assert accepted.seq == 1 and events[0].seq == 1 and events[0].data["text"] == "again"
        assert [e.data.get("text") for e in await bob.history()][:1] == ["hello"]


async def test_delete_user_deletes_every_thread_of_that_user_only():
    async with open_runtime() as rt:
        for user, thread_id in [("ada", "a"), ("ada", "b"), ("bob", "a")]:
            thread = rt.thread(user, thread_id)
            async with thread.open_subscription() as sub:
                await thread.send("x")
                await until_terminal(sub)
        assert await rt.delete_user("ada") == 2
        assert await rt.user("ada").threads() == []
        assert [i.key.thread_id for i in await rt.user("bob").threads()] == ["a"]
        assert await rt.delete_user("nobody") == 0
        with pytest.raises(ValueError):
            await rt.delete_user("not a user!")
