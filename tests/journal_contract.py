"""The Journal contract: every journal (memory, SQLite, PostgreSQL) runs this same suite.

A test module subclasses ``JournalContract`` and provides a ``journal`` fixture that yields a
fresh, empty journal.
"""

from __future__ import annotations

import pytest
import trio

from threadline.actors.attachments import Attachment
from threadline.actors.errors import JournalUnavailable, LimitReached, NotFound, Unstorable
from threadline.actors.messages import USER_MESSAGE, Event, ThreadKey
from threadline.actors.tree import Node
from threadline.actors.usage import Usage

A = ThreadKey("alice", "main")
B = ThreadKey("bob", "main")  # same thread id, other user: an unrelated thread


def ev(key: ThreadKey, seq: int, name: str = "agent_thinking", run_id: str | None = "run_1",
       ts: float = 1000.0, **data: object) -> Event:
    return Event(key, seq, name, run_id, ts + seq, dict(data) or {"text": f"e{seq}"})


def msg(key: ThreadKey, seq: int, cid: str | None = None, run_id: str = "run_1",
        text: str = "hi") -> Event:
    data: dict[str, object] = {"message_id": f"msg_{seq}", "text": text}
    if cid is not None:
        data["client_msg_id"] = cid
    return Event(key, seq, USER_MESSAGE, run_id, 1000.0 + seq, data)


class JournalContract:
    async def test_new_thread_starts_empty(self, journal):
        info = await journal.ensure_thread(A, 5.0)
        assert (info.key, info.last_seq, info.created_at, info.updated_at) == (A, 0, 5.0, 5.0)
        assert await journal.last_seq(A) == 0
        assert await journal.read(A, 0) == []

    async def test_run_events_are_one_runs_only_however_many_follow(self, journal):
        await journal.ensure_thread(A, 1.0)
        await journal.ensure_thread(B, 1.0)
        events = [msg(A, 1, run_id="run_w"), ev(A, 2, run_id="run_w")]
        events += [msg(A, seq, run_id=f"run_q{seq}") for seq in range(3, 603)]  # queued behind
        events += [ev(A, 603, run_id="run_w", text="decided")]
        await journal.append(events)
        await journal.append([msg(B, 1, run_id="run_w")])  # another user's run of that id
        got = await journal.run_events(A, "run_w")
        assert [(e.seq, e.run_id) for e in got] == [(1, "run_w"), (2, "run_w"), (603, "run_w")]
        assert got[-1].data == {"text": "decided"}
        assert [e.seq for e in await journal.run_events(A, "run_w", after=2)] == [603]
        assert await journal.run_events(A, "run_none") == []
        assert await journal.run_events(ThreadKey("carol", "x"), "run_w") == []

    async def test_ensure_thread_is_idempotent(self, journal):
        await journal.ensure_thread(A, 5.0)
        await journal.append([ev(A, 1)])
        info = await journal.ensure_thread(A, 99.0)
        assert info.last_seq == 1 and info.created_at == 5.0

    async def test_unknown_thread_reads_as_empty(self, journal):
        assert await journal.last_seq(A) == 0
        assert await journal.read(A, 0) == []
        assert await journal.find_message(A, "x") is None
        assert await journal.threads("alice") == []

    async def test_append_nowait_answers_in_the_order_writes_were_queued(self, journal):
        # A pipelining writer (the thread actor) queues the next events before the last are
        # durable; the answers come in queue order, and ensure_thread waits for them.
        await journal.ensure_thread(A, 1.0)
        await journal.ensure_thread(B, 1.0)
        answers: list[tuple[str, int, object]] = []
        all_answered = trio.Event()

        class Done:
            def __init__(self, event: Event) -> None:
                self.event = event

            def set(self, value: None) -> None:
                answers.append(("stored", self.event.seq, self.event.key))
                if len(answers) == 6:
                    all_answered.set()

            def fail(self, error: BaseException) -> None:
                answers.append((type(error).__name__, self.event.seq, self.event.key))
                if len(answers) == 6:
                    all_answered.set()

        for event in [ev(A, 1), ev(B, 1), ev(A, 2), ev(A, 4), ev(A, 5), ev(B, 2)]:
            journal.append_nowait([event], Done(event))  # A4 does not follow, nor A5 after it
        assert (await journal.ensure_thread(A, 99.0)).last_seq == 2
        with trio.fail_after(10):
            await all_answered.wait()
        assert answers == [("stored", 1, A), ("stored", 1, B), ("stored", 2, A),
                           ("ValueError", 4, A), ("ValueError", 5, A), ("stored", 2, B)]
        assert [e.seq for e in await journal.read(A, 0)] == [1, 2]
        assert [e.seq for e in await journal.read(B, 0)] == [1, 2]

    async def test_append_nowait_refuses_unstorable_data_at_once(self, journal):
        await journal.ensure_thread(A, 1.0)
        got: list[BaseException] = []

        class Done:
            def set(self, value: None) -> None:
                raise AssertionError("stored")

            def fail(self, error: BaseException) -> None:
                got.append(error)

        journal.append_nowait([ev(A, 1, text="nul \x00")], Done())
        assert len(got) == 1 and isinstance(got[0], Unstorable)
        assert await journal.last_seq(A) == 0

    async def test_append_then_read_in_order(self, journal):
        await journal.ensure_thread(A, 1.0)
        events = [ev(A, i) for i in range(1, 6)]
        await journal.append(events[:2])
        await journal.append(events[2:])
        assert await journal.read(A, 0) == events
        assert await journal.read(A, 2) == events[2:]
        assert await journal.read(A, 1, upto=3) == events[1:3]
        assert await journal.read(A, 0, limit=2) == events[:2]
        assert await journal.read(A, 5) == []
        assert await journal.last_seq(A) == 5

    async def test_events_round_trip_exactly(self, journal):
        await journal.ensure_thread(A, 1.0)
        e = Event(A, 1, "tool_completed", "run_x", 1234.5678,
                  {"call_id": "c", "tool": "calculator", "result": 3.5,
                   "nested": {"list": [1, "two", None, True]}, "text": "ünïcode ✓"})
        await journal.append([e])
        assert await journal.read(A, 0) == [e]

    async def test_append_must_follow_last_seq(self, journal):
        await journal.ensure_thread(A, 1.0)
        await journal.append([ev(A, 1)])
        for bad in ([ev(A, 1)], [ev(A, 3)], [ev(A, 2), ev(A, 4)]):
            with pytest.raises((ValueError, JournalUnavailable)):
                await journal.append(bad)
        assert await journal.last_seq(A) == 1  # a refused batch stored nothing
        await journal.append([ev(A, 2)])
        assert await journal.last_seq(A) == 2

    async def test_threads_are_isolated_by_user(self, journal):
        await journal.ensure_thread(A, 1.0)
        await journal.ensure_thread(B, 1.0)
        await journal.append([ev(A, 1), ev(A, 2)])
        await journal.append([ev(B, 1)])
        assert [e.key for e in await journal.read(A, 0)] == [A, A]
        assert [e.key for e in await journal.read(B, 0)] == [B]
        assert [i.key for i in await journal.threads("alice")] == [A]
        assert [i.key for i in await journal.threads("bob")] == [B]

    async def test_find_message_by_client_msg_id(self, journal):
        await journal.ensure_thread(A, 1.0)
        await journal.ensure_thread(B, 1.0)
        await journal.append([msg(A, 1, "c1", "run_a"), ev(A, 2), msg(A, 3)])
        found = await journal.find_message(A, "c1")
        assert (found.key, found.message_id, found.run_id, found.seq) == (A, "msg_1", "run_a", 1)
        assert await journal.find_message(A, "c2") is None
        assert await journal.find_message(B, "c1") is None  # per thread, per user

    async def test_threads_newest_first_with_last_seq(self, journal):
        keys = [ThreadKey("alice", t) for t in ("t1", "t2", "t3")]
        for k in keys:
            await journal.ensure_thread(k, 1.0)
        await journal.append([ev(keys[0], 1, ts=10.0)])
        await journal.append([ev(keys[2], 1, ts=20.0), ev(keys[2], 2, ts=20.0)])
        await journal.append([ev(keys[1], 1, ts=30.0)])
        infos = await journal.threads("alice")
        assert [i.key.thread_id for i in infos] == ["t2", "t3", "t1"]
        assert [i.last_seq for i in infos] == [1, 2, 1]
        assert all(i.created_at == 1.0 for i in infos)
        assert infos[0].updated_at == 31.0

    async def test_concurrent_appends_to_many_threads(self, journal):
        keys = [ThreadKey(f"u{i % 3}", f"t{i}") for i in range(20)]
        for k in keys:
            await journal.ensure_thread(k, 1.0)

        async def writer(k: ThreadKey) -> None:
            for seq in range(1, 11):
                await journal.append([ev(k, seq)])

        async with trio.open_nursery() as n:
            for k in keys:
                n.start_soon(writer, k)
        for k in keys:
            assert [e.seq for e in await journal.read(k, 0)] == list(range(1, 11))

    async def test_open_runs_are_those_without_a_terminal_event(self, journal):
        await journal.ensure_thread(A, 1.0)
        await journal.ensure_thread(B, 1.0)
        await journal.append([msg(A, 1, run_id="r1"), ev(A, 2, "agent_started", "r1"),
                              ev(A, 3, "agent_completed", "r1", text="done"),
                              msg(A, 4, run_id="r2"), ev(A, 5, "agent_started", "r2"),
                              msg(A, 6, run_id="r3")])
        await journal.append([msg(B, 1, run_id="r4"), ev(B, 2, "agent_started", "r4"),
                              ev(B, 3, "agent_failed", "r4", error="x")])
        runs = sorted((r.key, r.run_id, r.started) for r in await journal.open_runs())
        assert runs == [(A, "r2", True), (A, "r3", False)]
        await journal.append([ev(A, 7, "agent_cancelled", "r2", reason="shutdown")])
        assert [(r.run_id, r.started) for r in await journal.open_runs()] == [("r3", False)]
        # Opened in one write, started in the next, started and closed in one more.
        await journal.append([msg(B, 4, run_id="r5")])
        await journal.append([ev(B, 5, "agent_started", "r5")])
        await journal.append([msg(B, 6, run_id="r6")])
        assert sorted((r.run_id, r.started) for r in await journal.open_runs()) == [
            ("r3", False), ("r5", True), ("r6", False)]
        await journal.append([ev(B, 7, "agent_completed", "r5", text="ok"),
                              ev(B, 8, "agent_started", "r6"),
                              ev(B, 9, "agent_failed", "r6", error="x")])
        assert [(r.run_id, r.started) for r in await journal.open_runs()] == [("r3", False)]

    # -- thread_info and delete_thread ------------------------------------------------------

    async def test_thread_info_never_creates(self, journal):
        assert await journal.thread_info(A) is None
        assert await journal.threads("alice") == []
        await journal.ensure_thread(A, 5.0)
        await journal.append([ev(A, 1)])
        info = await journal.thread_info(A)
        assert (info.key, info.last_seq, info.created_at) == (A, 1, 5.0)

    async def test_delete_erases_one_thread_and_its_id_starts_again(self, journal):
        other = ThreadKey("alice", "other")
        for key in (A, B, other):
            await journal.ensure_thread(key, 1.0)
            await journal.append([msg(key, 1, cid="c", run_id="r1"),
                                  ev(key, 2, "agent_started", "r1")])
        assert await journal.delete_thread(A) is True
        assert await journal.delete_thread(A) is False
        assert await journal.thread_info(A) is None
        assert await journal.read(A, 0) == [] and await journal.last_seq(A) == 0
        assert await journal.find_message(A, "c") is None
        assert [i.key for i in await journal.threads("alice")] == [other]
        assert sorted((r.key.user_id, r.key.thread_id) for r in await journal.open_runs()) == [
            ("alice", "other"), ("bob", "main")]
        # B (same thread id, other user) and alice's other thread are untouched
        for key in (B, other):
            assert [e.seq for e in await journal.read(key, 0)] == [1, 2]
            assert (await journal.find_message(key, "c")).seq == 1
        info = await journal.ensure_thread(A, 9.0)
        assert (info.last_seq, info.created_at) == (0, 9.0)
        await journal.append([msg(A, 1, cid="c", run_id="r2")])
        assert (await journal.find_message(A, "c")).run_id == "r2"

    async def test_delete_comes_after_the_writes_queued_before_it(self, journal):
        await journal.ensure_thread(A, 1.0)
        outcomes: list[object] = []

        class Done:
            def set(self, value: None) -> None:
                outcomes.append("stored")

            def fail(self, error: BaseException) -> None:
                outcomes.append(error)

        for seq in range(1, 4):
            journal.append_nowait([ev(A, seq)], Done())
        assert await journal.delete_thread(A) is True
        assert outcomes == ["stored"] * 3  # answered before the delete was
        assert await journal.read(A, 0) == [] and await journal.thread_info(A) is None
        await journal.ensure_thread(A, 2.0)
        await journal.append([ev(A, 1)])  # seq 1 again
        assert [e.seq for e in await journal.read(A, 0)] == [1]

    # -- what no store can hold: refused alike by every store, before it is queued ----------

    BAD = ["a\x00b", "\x00", "lone \ud800 surrogate", "\udfff", "ünï\x00code"]

    async def assert_refused(self, journal, events: list[Event]) -> None:
        key = events[0].key
        before = await journal.read(key, 0)
        with pytest.raises(Unstorable):
            await journal.append(events)
        assert await journal.read(key, 0) == before  # nothing stored
        assert await journal.last_seq(key) == len(before)
        # Not an outage: a write and a read right after succeed.
        await journal.append([ev(key, len(before) + 1)])
        assert [e.seq for e in await journal.read(key, 0)] == list(range(1, len(before) + 2))

    @pytest.mark.parametrize("bad", BAD)
    async def test_unstorable_text_is_refused(self, journal, bad):
        await journal.ensure_thread(A, 1.0)
        await self.assert_refused(journal, [msg(A, 1, text=bad)])

    @pytest.mark.parametrize("bad", BAD)
    async def test_unstorable_client_msg_id_is_refused(self, journal, bad):
        await journal.ensure_thread(A, 1.0)
        await self.assert_refused(journal, [msg(A, 1, cid=bad)])
        assert await journal.find_message(A, bad) is None  # never stored, and no outage
        await journal.append([msg(A, 2, cid="ok")])
        assert (await journal.find_message(A, "ok")).seq == 2

    @pytest.mark.parametrize("bad", BAD)
    async def test_unstorable_tool_result_is_refused(self, journal, bad):
        await journal.ensure_thread(A, 1.0)
        result = {"rows": [1, "fine", {"deep": ["x", bad]}]}
        await self.assert_refused(journal, [ev(A, 1, "tool_completed", call_id="c", tool="t",
                                               result=result)])
        await self.assert_refused(journal, [ev(A, 2, "tool_executing", call_id="c", tool="t",
                                               args={bad: 1})])  # a key, too

    @pytest.mark.parametrize("field", ["event", "run_id"])
    async def test_unstorable_names_are_refused(self, journal, field):
        await journal.ensure_thread(A, 1.0)
        good = ev(A, 1)
        bad = Event(A, 1, "bad\x00" if field == "event" else good.event,
                    "run\ud800" if field == "run_id" else good.run_id, good.ts, good.data)
        await self.assert_refused(journal, [bad])

    async def test_a_refused_event_refuses_its_whole_append(self, journal):
        await journal.ensure_thread(A, 1.0)
        await self.assert_refused(journal, [ev(A, 1), ev(A, 2, text="\x00"), ev(A, 3)])

    @pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
    async def test_numbers_that_are_not_finite_are_refused(self, journal, number):
        await journal.ensure_thread(A, 1.0)
        await self.assert_refused(journal, [ev(A, 1, "tool_completed", result=number)])

    async def test_data_nested_too_deep_or_in_a_cycle_is_refused(self, journal):
        await journal.ensure_thread(A, 1.0)
        deep: list[object] = []
        for _ in range(500):
            deep = [deep]
        cycle: dict[str, object] = {}
        cycle["self"] = cycle
        await self.assert_refused(journal, [ev(A, 1, "tool_completed", result=deep)])
        await self.assert_refused(journal, [ev(A, 2, "tool_completed", result=cycle)])

    @pytest.mark.parametrize("bad", ["t\x00", "\ud800"])
    async def test_an_unstorable_thread_key_is_refused_and_reads_as_empty(self, journal, bad):
        for key in (ThreadKey("alice", bad), ThreadKey(bad, "main")):
            with pytest.raises(Unstorable):
                await journal.ensure_thread(key, 1.0)
            assert await journal.last_seq(key) == 0
            assert await journal.read(key, 0) == []
            assert await journal.find_message(key, "c") is None
        assert await journal.threads(bad) == []
        assert await journal.threads("alice") == []
        await journal.ensure_thread(A, 1.0)  # no outage
        assert [i.key for i in await journal.threads("alice")] == [A]

    # -- reads bounded in bytes ----------------------------------------------------------------

    async def fill(self, journal, key: ThreadKey, sizes: list[int]) -> None:
        """Events 1..n whose data is about ``sizes[i]`` bytes of JSON (a string of that many
        characters: the stores' measures differ by a few bytes of punctuation)."""
        await journal.ensure_thread(key, 1.0)
        await journal.append([ev(key, i + 1, text="x" * size) for i, size in enumerate(sizes)])

    async def test_read_within_max_bytes(self, journal):
        await self.fill(journal, A, [1000] * 10)
        page = await journal.read(A, 0, max_bytes=2500)  # two of ~1010 bytes fit, not three
        assert [e.seq for e in page] == [1, 2]
        assert page[1].data == {"text": "x" * 1000}
        page = await journal.read(A, 2, max_bytes=3100)
        assert [e.seq for e in page] == [3, 4, 5]
        assert [e.seq for e in await journal.read(A, 0, max_bytes=10**9)] == list(range(1, 11))
        assert [e.seq for e in await journal.read(A, 0)] == list(range(1, 11))  # no bound

    async def test_read_with_max_bytes_returns_at_least_one_event(self, journal):
        await self.fill(journal, A, [5000, 10, 10])
        assert [e.seq for e in await journal.read(A, 0, max_bytes=1)] == [1]
        assert [e.seq for e in await journal.read(A, 0, max_bytes=4000)] == [1]
        assert [e.seq for e in await journal.read(A, 1, max_bytes=1)] == [2]
        assert await journal.read(A, 3, max_bytes=1) == []  # past the end: nothing
        assert await journal.read(B, 0, max_bytes=1) == []  # no such thread

    async def test_max_bytes_with_limit_and_upto(self, journal):
        await self.fill(journal, A, [10] * 20)
        assert [e.seq for e in await journal.read(A, 0, limit=3, max_bytes=10**6)] == [1, 2, 3]
        assert [e.seq for e in await journal.read(A, 5, upto=7, max_bytes=10**6)] == [6, 7]
        assert [e.seq for e in await journal.read(A, 0, upto=1, max_bytes=1)] == [1]
        # the bound counts from ``after``, not from the thread's first event
        assert [e.seq for e in await journal.read(A, 15, max_bytes=10**6)] == [16, 17, 18, 19,
                                                                               20]

    async def test_max_bytes_pages_walk_the_whole_thread_once(self, journal):
        sizes = [3000, 10, 10, 4000, 2000, 2000, 10, 6000, 10, 10]
        await self.fill(journal, A, sizes)
        seen: list[int] = []
        after = 0
        for _ in range(len(sizes) + 1):  # bounded: at least one event a page
            page = await journal.read(A, after, max_bytes=4500)
            if not page:
                break
            assert len(page) == 1 or sum(sizes[e.seq - 1] + 20 for e in page) <= 4500 + 40
            seen += [e.seq for e in page]
            after = page[-1].seq
        assert seen == list(range(1, len(sizes) + 1))

    # -- keyset pages of a user's threads ------------------------------------------------------

    async def test_threads_page_newest_first_with_ties_by_thread_id(self, journal):
        for t in ("a", "c", "b", "d"):  # all created at 5.0: a tie, ordered by thread id
            await journal.ensure_thread(ThreadKey("alice", t), 5.0)
        await journal.ensure_thread(ThreadKey("alice", "old"), 1.0)
        await journal.ensure_thread(ThreadKey("bob", "z"), 9.0)
        await journal.append([ev(ThreadKey("alice", "b"), 1, ts=10.0)])  # updated at 11.0
        page = await journal.threads_page("alice", 10)
        assert [i.key.thread_id for i in page] == ["b", "d", "c", "a", "old"]
        assert page[0].last_seq == 1 and page[0].updated_at == 11.0
        assert all(i.key.user_id == "alice" for i in page)
        assert [i.key.thread_id for i in await journal.threads("alice")] == \
            [i.key.thread_id for i in page]  # the same order as the whole list
        # limit + 1 rows: the extra one says a page follows
        assert [i.key.thread_id for i in await journal.threads_page("alice", 2)] == \
            ["b", "d", "c"]
        # strictly below the position, within a tie too
        below = await journal.threads_page("alice", 10, before=(5.0, "c"))
        assert [i.key.thread_id for i in below] == ["a", "old"]
        below = await journal.threads_page("alice", 1, before=(11.0, "b"))
        assert [i.key.thread_id for i in below] == ["d", "c"]
        assert await journal.threads_page("alice", 10, before=(1.0, "old")) == []
        assert await journal.threads_page("carol", 10) == []

    async def test_threads_page_walk_sees_every_thread_once(self, journal):
        ids = [f"t{n:02d}" for n in range(23)]
        for n, t in enumerate(ids):
            await journal.ensure_thread(ThreadKey("alice", t), float(n % 4))  # many ties
        seen: list[str] = []
        before = None
        for _ in range(len(ids)):  # bounded: every page but the last is full
            page = await journal.threads_page("alice", 5, before)
            seen += [i.key.thread_id for i in page[:5]]
            if len(page) <= 5:
                break
            last = page[4]
            before = (last.updated_at, last.key.thread_id)
        expected = sorted(ids, key=lambda t: (int(t[1:]) % 4, t), reverse=True)
        assert seen == expected

    async def test_threads_page_after_deletions(self, journal):
        keys = [ThreadKey("alice", f"t{n}") for n in range(6)]
        for n, k in enumerate(keys):
            await journal.ensure_thread(k, float(n))
        first = await journal.threads_page("alice", 2)
        assert [i.key.thread_id for i in first] == ["t5", "t4", "t3"]
        # the thread the cursor points at, and one after it, are deleted between pages
        assert await journal.delete_thread(keys[4])
        assert await journal.delete_thread(keys[2])
        position = (first[1].updated_at, first[1].key.thread_id)
        rest = await journal.threads_page("alice", 2, before=position)
        assert [i.key.thread_id for i in rest] == ["t3", "t1", "t0"]
        assert [i.key.thread_id for i in await journal.threads_page("alice", 10)] == \
            ["t5", "t3", "t1", "t0"]
        await journal.ensure_thread(keys[4], 100.0)  # created again: at the front
        assert [i.key.thread_id for i in await journal.threads_page("alice", 0)] == ["t4"]

    # -- the conversation tree (``threadline.actors.tree``) --------------------------------------

    async def _tree(self, journal, key: ThreadKey = A) -> None:
        """r1 (a root) answered; r2 follows it; r3 edits r2's message (a sibling: same parent);
        r4 answers r2's message again (a regenerate), its events interleaved with a message
        (r5, a root) stored while it ran; r5 is still open."""
        await journal.ensure_thread(key, 1.0)
        await journal.append([
            tmsg(key, 1, "r1", None, "first"), ev(key, 2, "agent_started", "r1"),
            ev(key, 3, "agent_delta", "r1", offset=0, text="one"),
            ev(key, 4, "agent_completed", "r1", text="one!"),
            tmsg(key, 5, "r2", "r1", "second"), ev(key, 6, "agent_started", "r2"),
            ev(key, 7, "agent_failed", "r2", error="x"),
            tmsg(key, 8, "r3", "r1", "second, edited", cid="c3"),
            ev(key, 9, "agent_started", "r3"), ev(key, 10, "agent_completed", "r3", text="3")])
        await journal.append([  # the regenerate in a later write than its message
            Event(key, 11, "answer_requested", "r4", 1011.0,
                  {"message_id": "m-r2", "client_msg_id": "c4"}),
            ev(key, 12, "agent_started", "r4"), ev(key, 13, "agent_delta", "r4", offset=0,
                                                  text="again"),
            tmsg(key, 14, "r5", None, "x" * 100),
            ev(key, 15, "agent_completed", "r4", text="again!")])

    async def test_every_run_is_a_node_of_the_tree(self, journal):
        await self._tree(journal)
        r1, r2, r3, r4, r5 = [await journal.node(A, f"r{n}") for n in range(1, 6)]
        assert r1 == Node("r1", "m-r1", None, 1, 1, 2, 4)
        assert r2 == Node("r2", "m-r2", "r1", 5, 5, 6, 7)
        assert r3 == Node("r3", "m-r3", "r1", 8, 8, 9, 10)
        assert r4 == Node("r4", "m-r2", "r1", 5, 11, 12, 15)  # its message's place, its own seq
        assert r5 == Node("r5", "m-r5", None, 14, 14)  # open: neither started nor ended
        assert await journal.message_node(A, "m-r2") == r2  # the run that came with it
        assert await journal.newest_node(A) == r5
        assert await journal.node(A, "r9") is None
        assert await journal.message_node(A, "m-r9") is None
        # Another user's thread of the same id holds none of them.
        assert await journal.node(B, "r1") is None and await journal.newest_node(B) is None
        assert await journal.node(A, "r\x00") is None  # an id no store could hold

    async def test_a_regenerate_is_found_by_its_client_msg_id_and_opens_its_run(self, journal):
        await journal.ensure_thread(A, 1.0)
        await journal.append([tmsg(A, 1, "r1", None, "q"), ev(A, 2, "agent_started", "r1"),
                              ev(A, 3, "agent_completed", "r1", text="a"),
                              Event(A, 4, "answer_requested", "r2", 1004.0,
                                    {"message_id": "m-r1", "client_msg_id": "again"})])
        found = await journal.find_message(A, "again")
        assert (found.message_id, found.run_id, found.seq) == ("m-r1", "r2", 4)
        runs = await journal.open_runs(A)
        assert [(r.run_id, r.started, r.seq, r.message_id) for r in runs] == [
            ("r2", False, 4, "m-r1")]

    async def test_a_branch_is_the_path_of_parents(self, journal):
        await self._tree(journal)
        await self._tree(journal, B)  # the same ids in another user's thread
        r1, r4 = await journal.node(A, "r1"), await journal.node(A, "r4")
        assert await journal.branch(A, "r4", 10) == [r4, r1]
        assert await journal.branch(A, "r4", 1) == [r4]
        assert [n.run_id for n in await journal.branch(A, "r3", 10)] == ["r3", "r1"]
        assert await journal.branch(A, "r1", 10) == [r1]
        assert await journal.branch(A, "r9", 10) == []
        assert await journal.branch(ThreadKey("carol", "main"), "r4", 10) == []

    async def test_node_events_are_the_messages_and_each_ended_runs_own(self, journal):
        await self._tree(journal)
        nodes = [await journal.node(A, f"r{n}") for n in (1, 4, 2, 5)]
        got = [(e.seq, e.event, e.run_id) for e in await journal.node_events(A, nodes)]
        assert got == [
            (1, "user_message", "r1"), (2, "agent_started", "r1"), (3, "agent_delta", "r1"),
            (4, "agent_completed", "r1"),
            (5, "user_message", "r2"),  # once, though r2 and r4 both answer it
            (6, "agent_started", "r2"), (7, "agent_failed", "r2"),
            # r4's: not its answer_requested, not r5's message stored while it ran
            (12, "agent_started", "r4"), (13, "agent_delta", "r4"),
            (14, "user_message", "r5"),  # r5's own message: r5 is open, so nothing more
            (15, "agent_completed", "r4")]
        assert await journal.node_events(A, []) == []

    async def test_turns_are_paged_by_seq_with_their_places_among_siblings(self, journal):
        await self._tree(journal)
        placed = await journal.turns(A, 0, 100)
        assert [(p.node.run_id, p.sibling_index, p.sibling_count, p.answer_index,
                 p.answer_count) for p in placed] == [
            ("r1", 0, 2, 0, 1),  # roots: r1 and r5
            ("r2", 0, 2, 0, 2),  # r2's message and r3's share r1
            ("r3", 1, 2, 0, 1),
            ("r4", 0, 2, 1, 2),  # the second answer to r2's message
            ("r5", 1, 2, 0, 1)]
        assert [p.node.run_id for p in await journal.turns(A, 5, 2)] == ["r3", "r4"]
        assert [p.node.run_id for p in await journal.turns(A, 11, 100)] == ["r5"]
        assert await journal.turns(A, 14, 100) == [] and await journal.turns(B, 0, 9) == []

    async def test_a_threads_title_is_its_first_messages_first_80_code_points(self, journal):
        await journal.ensure_thread(B, 1.0)
        await journal.append([tmsg(B, 1, "r1", None, "é" * 90), ev(B, 2, "agent_started", "r1")])
        await journal.append([tmsg(B, 3, "r2", "r1", "later")])
        await journal.ensure_thread(ThreadKey("bob", "empty"), 2.0)
        titles = {i.key.thread_id: i.title for i in await journal.threads("bob")}
        assert titles == {"main": "é" * 80, "empty": None}
        assert [i.title for i in await journal.threads_page("bob", 10)] == ["é" * 80, None]

    async def test_delete_erases_the_tree_too(self, journal):
        await self._tree(journal)
        await self._tree(journal, B)
        assert await journal.delete_thread(A)
        assert await journal.node(A, "r1") is None and await journal.turns(A, 0, 10) == []
        assert await journal.branch(A, "r4", 10) == []
        assert [n.run_id for n in await journal.branch(B, "r4", 10)] == ["r4", "r1"]
        await journal.ensure_thread(A, 9.0)
        await journal.append([tmsg(A, 1, "r1", None, "anew")])
        assert await journal.node(A, "r1") == Node("r1", "m-r1", None, 1, 1)
        assert [i.title for i in await journal.threads("alice")] == ["anew"]


def tmsg(key: ThreadKey, seq: int, run_id: str, parent: str | None, text: str,
         cid: str | None = None) -> Event:
    """A ``user_message`` as a thread writes it (1.1): its message id is ``m-`` + its run's."""
    data: dict[str, object] = {"message_id": f"m-{run_id}", "text": text, "parent": parent}
    if cid is not None:
        data["client_msg_id"] = cid
    return Event(key, seq, USER_MESSAGE, run_id, 1000.0 + seq, data)


class AttachmentContract:
    """Attachments (``threadline.actors.attachments``) in every store."""

    async def _upload(self, journal, user: str, aid: str, data: bytes, *, quota: int = 10**9,
                      now: float = 1.0, chunk: int = 5) -> None:
        await journal.begin_upload(user, aid, f"{aid}.txt", "text/plain", now)
        for n in range(0, max(1, -(-len(data) // chunk))):
            await journal.write_chunk(user, aid, n, data[n * chunk:(n + 1) * chunk], quota)
        await journal.finish_upload(user, aid, len(data), f"sha-{aid}")

    async def test_an_upload_is_visible_once_finished_and_only_to_its_user(self, journal):
        await journal.begin_upload("alice", "a1", "notes.txt", "text/plain", 7.0)
        await journal.write_chunk("alice", "a1", 0, b"hello", 100)
        assert await journal.attachment("alice", "a1") is None  # under way: invisible
        assert await journal.attachment_chunks("alice", "a1", 0, 9) == []
        record = await journal.finish_upload("alice", "a1", 5, "abc")
        assert record == Attachment("alice", "a1", "notes.txt", "text/plain", 5, "abc", 7.0)
        assert await journal.attachment("alice", "a1") == record
        assert await journal.attachment_chunks("alice", "a1", 0, 9) == [b"hello"]
        assert await journal.attachment("bob", "a1") is None
        assert await journal.attachment_chunks("bob", "a1", 0, 9) == []
        assert await journal.attachment("alice", "a\x00") is None

    async def test_chunks_are_read_in_ranges(self, journal):
        data = bytes(range(256)) * 3
        await self._upload(journal, "alice", "a1", data, chunk=100)
        got = [await journal.attachment_chunks("alice", "a1", first, 3) for first in (0, 3, 6)]
        assert [len(page) for page in got] == [3, 3, 2]
        assert b"".join(c for page in got for c in page) == data

    async def test_the_quota_counts_every_chunk_of_the_user_and_erasures_give_back(self, journal):
        await self._upload(journal, "alice", "a1", b"x" * 60, quota=100)
        await journal.begin_upload("alice", "a2", "b", "text/plain", 1.0)
        await journal.write_chunk("alice", "a2", 0, b"y" * 30, 100)
        with pytest.raises(LimitReached):
            await journal.write_chunk("alice", "a2", 1, b"y" * 11, 100)  # 101 > 100
        assert await journal.attachment_bytes("alice") == 90
        await self._upload(journal, "bob", "a9", b"z" * 100, quota=100)  # bob's own count
        await journal.abort_upload("alice", "a2")
        assert await journal.attachment_bytes("alice") == 60
        assert await journal.attachment("alice", "a2") is None
        assert await journal.delete_user_attachments("alice") == 1
        assert await journal.attachment_bytes("alice") == 0
        assert await journal.attachment_bytes("bob") == 100

    async def test_a_claim_makes_them_a_threads_all_or_none(self, journal):
        await self._upload(journal, "alice", "a1", b"one")
        await self._upload(journal, "alice", "a2", b"two")
        await self._upload(journal, "bob", "a1", b"bob's")
        await journal.begin_upload("alice", "half", "h", "text/plain", 1.0)  # unfinished
        got = await journal.claim_attachments("alice", "main", ["a1"])
        assert [(a.attachment_id, a.thread_id) for a in got] == [("a1", "main")]
        assert (await journal.attachment("alice", "a1")).thread_id == "main"
        assert (await journal.attachment("bob", "a1")).thread_id is None  # bob's: untouched
        for ids in (["a2", "a1"], ["a2", "nope"], ["a2", "half"]):  # a1: main's, not other's
            with pytest.raises(NotFound):
                await journal.claim_attachments("alice", "other", ids)
            assert (await journal.attachment("alice", "a2")).thread_id is None  # none taken
        assert [a.attachment_id for a in await journal.claim_attachments(
            "alice", "main", ["a1", "a2"])] == ["a1", "a2"]  # its own again, and a new one
        with pytest.raises(NotFound):
            await journal.claim_attachments("bob", "main", ["a2"])  # alice's

    async def test_two_claims_of_one_attachment_at_once_one_wins(self, journal):
        await self._upload(journal, "alice", "a1", b"one")
        won: list[str] = []

        async def claim(thread: str) -> None:
            try:
                await journal.claim_attachments("alice", thread, ["a1"])
                won.append(thread)
            except NotFound:
                pass

        async with trio.open_nursery() as nursery:
            for thread in ("t1", "t2", "t3"):
                nursery.start_soon(claim, thread)
        assert len(won) == 1 and (await journal.attachment("alice", "a1")).thread_id == won[0]

    async def test_deleting_a_thread_erases_its_attachments_only(self, journal):
        await self._upload(journal, "alice", "a1", b"one")
        await self._upload(journal, "alice", "a2", b"two")
        await self._upload(journal, "bob", "a1", b"bob's")
        await journal.ensure_thread(A, 1.0)
        await journal.claim_attachments("alice", "main", ["a1"])
        await journal.claim_attachments("bob", "main", ["a1"])  # B: same thread id, bob's
        assert await journal.delete_thread(A)
        assert await journal.attachment("alice", "a1") is None
        assert await journal.attachment_bytes("alice") == 3  # a2's, unsent, stays
        assert await journal.attachment("bob", "a1") is not None

    async def test_the_sweeper_erases_the_unsent_and_the_unfinished_by_age(self, journal):
        await self._upload(journal, "alice", "old", b"1", now=10.0)
        await self._upload(journal, "alice", "new", b"2", now=95.0)
        await journal.begin_upload("alice", "cut", "c", "text/plain", 50.0)  # never finished
        await journal.write_chunk("alice", "cut", 0, b"partial", 100)
        await self._upload(journal, "alice", "sent", b"3", now=10.0)
        await journal.claim_attachments("alice", "main", ["sent"])
        assert await journal.sweep_attachments(100.0, unsent_ttl=50.0, upload_ttl=40.0) == 2
        assert [await journal.attachment("alice", a) is not None
                for a in ("old", "new", "sent")] == [False, True, True]
        assert await journal.attachment_bytes("alice") == 2


class UsageContract:
    """Tokens (``threadline.actors.usage``) in every store: a report counts in the run's node
    and in the user's day and month, once; totals are the user's alone; deleting a thread
    keeps them and deleting the user's usage erases them."""

    async def _thread_with_run(self, journal, key: ThreadKey, run_id: str = "run_1") -> None:
        await journal.ensure_thread(key, 1.0)
        await journal.append([msg(key, 1, run_id=run_id)])

    async def test_a_report_counts_in_the_node_and_in_both_periods(self, journal):
        await self._thread_with_run(journal, A)
        await journal.record_usage(A, "run_1", "d2026-12-07", "m2026-12",
                                   Usage(10, 3, 4, "gpt-x"))
        await journal.record_usage(A, "run_1", "d2026-12-07", "m2026-12", Usage(5, 1, 0, None))
        node = await journal.node(A, "run_1")
        assert node.usage == Usage(15, 4, 4, "gpt-x")  # the model reported last, kept
        day, month = await journal.usage_totals("alice", "d2026-12-07", "m2026-12")
        assert day == month == Usage(15, 4, 4)

    async def test_a_node_that_reported_nothing_has_no_usage(self, journal):
        await self._thread_with_run(journal, A)
        assert (await journal.node(A, "run_1")).usage is None

    async def test_periods_are_apart_and_users_are_apart(self, journal):
        await self._thread_with_run(journal, A)
        await self._thread_with_run(journal, B)
        await journal.record_usage(A, "run_1", "d2026-12-07", "m2026-12", Usage(10, 2))
        await journal.record_usage(A, "run_1", "d2026-12-08", "m2026-12", Usage(1, 1))
        await journal.record_usage(B, "run_1", "d2026-12-08", "m2026-12", Usage(100, 100))
        assert await journal.usage_totals("alice", "d2026-12-08", "m2026-12") == (
            Usage(1, 1), Usage(11, 3))
        assert await journal.usage_totals("alice", "d2026-12-09", "m2027-01") == (
            Usage(), Usage())
        assert await journal.usage_totals("carol", "d2026-12-08", "m2026-12") == (
            Usage(), Usage())

    async def test_reports_at_once_all_count(self, journal):
        await self._thread_with_run(journal, A)
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(journal.record_usage, A, "run_1", "d2026-12-07", "m2026-12",
                                   Usage(2, 1))
        assert await journal.usage_totals("alice", "d2026-12-07", "m2026-12") == (
            Usage(100, 50), Usage(100, 50))
        assert (await journal.node(A, "run_1")).usage.tokens == 150

    async def test_deleting_a_thread_keeps_the_users_totals_deleting_the_user_erases_them(
            self, journal):
        await self._thread_with_run(journal, A)
        await journal.record_usage(A, "run_1", "d2026-12-07", "m2026-12", Usage(7, 3))
        assert await journal.delete_thread(A)
        assert await journal.usage_totals("alice", "d2026-12-07", "m2026-12") == (
            Usage(7, 3), Usage(7, 3))
        await journal.delete_user_usage("alice")
        assert await journal.usage_totals("alice", "d2026-12-07", "m2026-12") == (
            Usage(), Usage())

    async def test_a_report_for_a_run_never_stored_still_counts_for_the_user(self, journal):
        await journal.ensure_thread(A, 1.0)
        await journal.record_usage(A, "run_gone", "d2026-12-07", "m2026-12", Usage(4, 4))
        assert (await journal.usage_totals("alice", "d2026-12-07", "m2026-12"))[0] == Usage(4, 4)
