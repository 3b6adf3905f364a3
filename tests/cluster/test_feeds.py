"""A feed (a subscriber here of a thread another node owns) over a real PostgreSQL journal:
events in order and once, and a thread deleted and made again, even longer than what the feed
had, is never taken for a continuation: the feed is dropped as deleted and given none of the
new thread's events."""

from __future__ import annotations

import trio

from threadline.actors.messages import THREAD_DELETED, Event, ThreadKey
from threadline.cluster.feeds import FeedHub
from threadline.stores import open_journal

KEY = ThreadKey("ada", "main")


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.drops: list[str] = []

    def deliver(self, item: Event) -> None:
        self.events.append(item)

    def dropped(self, key: ThreadKey, reason: str, *, overflow: bool) -> None:
        self.drops.append(reason)


async def write(journal, count: int, text: str) -> float:
    """``count`` events appended to the thread (made if new); its created_at."""
    info = await journal.ensure_thread(KEY, trio.current_time() + 1e9)
    last = await journal.last_seq(KEY)
    await journal.append([Event(KEY, last + i + 1, "agent_thinking", "r", 1.0,
                                {"text": f"{text} {last + i + 1}"}) for i in range(count)])
    return info.created_at


async def settle(hub: FeedHub, sub: Recorder, events: int = 0) -> None:
    hub.mark_all()
    with trio.fail_after(10):
        while len(sub.events) < events and not sub.drops:
            await trio.sleep(0.05)
    await trio.sleep(0.3)  # nothing more comes


async def test_a_feed_follows_its_thread_then_drops_a_longer_one_made_again(pg_dsn):
    async with open_journal(pg_dsn) as journal, trio.open_nursery() as nursery:
        hub = FeedHub(journal)
        await nursery.start(hub.run)
        created = await write(journal, 3, "old")
        sub = Recorder()
        hub.attach(KEY, sub, 1, created)
        await settle(hub, sub, events=2)
        assert [e.seq for e in sub.events] == [2, 3] and sub.drops == []

        await journal.delete_thread(KEY)
        again = await write(journal, 8, "new")  # longer than the 3 the feed had seen
        assert again != created
        await settle(hub, sub)
        assert sub.drops == [THREAD_DELETED]
        assert [e.data["text"] for e in sub.events] == ["old 2", "old 3"]  # none of the new
        assert len(hub) == 0
        nursery.cancel_scope.cancel()


async def test_a_feed_given_no_created_at_takes_the_first_it_reads(pg_dsn):
    async with open_journal(pg_dsn) as journal, trio.open_nursery() as nursery:
        hub = FeedHub(journal)
        await nursery.start(hub.run)
        await write(journal, 2, "old")
        sub = Recorder()
        hub.attach(KEY, sub, 0, None)
        await settle(hub, sub, events=2)
        await journal.delete_thread(KEY)
        await write(journal, 5, "new")
        await settle(hub, sub)
        assert sub.drops == [THREAD_DELETED] and len(sub.events) == 2
        nursery.cancel_scope.cancel()
