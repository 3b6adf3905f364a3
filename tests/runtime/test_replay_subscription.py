"""In process as over the WebSocket: a thread deleted while a ``Subscription`` replays it ends
the iteration with ``SubscriberDropped`` (``THREAD_DELETED``), never ``JournalUnavailable``.
Real SQLite store; small replay pages make the replay long; bounded tries."""

from __future__ import annotations

import pytest
import trio

from threadline import open_runtime
from threadline.actors import journal as journal_module
from threadline.actors.errors import SubscriberDropped
from threadline.actors.messages import THREAD_DELETED, Event, ThreadKey
from threadline.stores import open_journal

EVENTS = 1500


async def test_a_delete_during_a_subscription_replay_drops_it_as_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "REPLAY_PAGE", 5)
    async with open_journal(f"sqlite:///{tmp_path}/sub.db") as journal:
        async with open_runtime(journal=journal) as rt:
            cut_short = 0
            for attempt in range(12):
                key = ThreadKey("ada", f"t{attempt}")
                await journal.ensure_thread(key, 1.0)
                for start in range(0, EVENTS, 500):
                    await journal.append([Event(key, s, "agent_thinking", "r", 1.0, {"n": s})
                                          for s in range(start + 1, start + 501)])
                thread = rt.gateway.user("ada").thread(key.thread_id)
                seqs: list[int] = []
                with trio.fail_after(30):
                    async with trio.open_nursery() as nursery:
                        async with thread.open_subscription(since=0) as sub:
                            with pytest.raises(SubscriberDropped) as dropped:
                                async for event in sub:
                                    seqs.append(event.seq)
                                    if len(seqs) == 30:
                                        nursery.start_soon(thread.delete)
                assert str(dropped.value) == THREAD_DELETED
                assert seqs == list(range(1, len(seqs) + 1))
                cut_short += len(seqs) < EVENTS
            assert cut_short > 0
