"""The conversation tree, embedded (``ThreadHandle.send(parent=)``, ``regenerate``, ``turns``;
PROTOCOL.md 1.1): edits and regenerates on the memory store and SQLite, the default parent
under queued sends, every strategy for a regenerate while a run is active, idempotent retries,
``not_found``, an agent's history on a branch, the OpenAI agent's request on a branch (the
scripted model server on loopback), and a regenerate left open by a crash closed by recovery."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from tests.llm_server import Answer, open_llm_server
from threadline import open_runtime
from threadline.actors.errors import Busy, NotFound
from threadline.actors.messages import TERMINAL_EVENTS, Event, ThreadKey
from threadline.agents.openai import OpenAIAgent, OpenAIConfig
from threadline.stores import open_journal

KEY = ThreadKey("ada", "main")
SEEN: dict[str, list[tuple[str, str]]] = {}  # run id: the history its agent was given


@pytest.fixture(autouse=True)
def clear_seen():
    SEEN.clear()


async def recorder(run) -> str:
    """Writes down its history; ``slow`` waits until cancelled (or 2 s)."""
    SEEN[run.context.run_id] = [(t.role, t.text) for t in await run.history()]
    if run.text.startswith("slow"):
        await trio.sleep(2)
    return f"re: {run.text}"


@asynccontextmanager
async def thread(tmp_path, store: str, agent=recorder):
    url = "memory" if store == "memory" else f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(journal=journal, agent=agent) as rt:
        handle = rt.thread(KEY.user_id, KEY.thread_id)
        async with handle.open_subscription() as sub:
            yield handle, sub, journal


async def until_ended(sub, *run_ids: str) -> list[Event]:
    """The events up to the terminal events of every one of ``run_ids``."""
    left, out = set(run_ids), []
    with trio.fail_after(10):
        async for event in sub:
            out.append(event)
            if event.event in TERMINAL_EVENTS:
                left.discard(event.run_id)
                if not left:
                    return out
    raise AssertionError("unreachable")


STORES = pytest.mark.parametrize("store", ["memory", "sqlite"])


@STORES
async def test_edit_and_regenerate_make_siblings_and_each_run_sees_its_branch(tmp_path, store):
    async with thread(tmp_path, store) as (t, sub, journal):
        one = await t.send("one")
        two = await t.send("two")
        await until_ended(sub, one.run_id, two.run_id)
        edited = await t.send("two, edited", parent=one.run_id)  # an edit of "two"
        events = await until_ended(sub, edited.run_id)
        assert events[0].data["parent"] == one.run_id
        again = await t.regenerate(two.message_id)
        events = await until_ended(sub, again.run_id)
        assert [(e.event, e.data) for e in events[:2]] == [
            ("answer_requested", {"message_id": two.message_id}),
            ("agent_started", {"message_id": two.message_id})]
        assert again.seq == events[0].seq and again.message_id == two.message_id
        assert events[-1].data == {"text": "re: two"}  # it answered the message's text
        three = await t.send("three")  # follows the newest run: the regenerate's
        await until_ended(sub, three.run_id)
        views = await t.turns()
    assert SEEN[edited.run_id] == SEEN[again.run_id] == [("user", "one"), ("assistant", "re: one")]
    assert SEEN[three.run_id] == [("user", "one"), ("assistant", "re: one"), ("user", "two"),
                                  ("assistant", "re: two")]
    assert [(v.text, v.answer, v.parent, v.sibling_index, v.sibling_count, v.answer_index,
             v.answer_count) for v in views] == [
        ("one", "re: one", None, 0, 1, 0, 1),
        ("two", "re: two", one.run_id, 0, 2, 0, 2),
        ("two, edited", "re: two, edited", one.run_id, 1, 2, 0, 1),
        ("two", "re: two", one.run_id, 0, 2, 1, 2),
        ("three", "re: three", again.run_id, 0, 1, 0, 1)]
    assert all(v.outcome == "completed" for v in views)


@STORES
async def test_the_default_parent_follows_the_latest_accepted_also_while_runs_queue(
        tmp_path, store):
    async with thread(tmp_path, store) as (t, sub, journal):
        slow = await t.send("slow one")
        queued = [await t.send(f"q{n}") for n in range(3)]  # behind the running one
        again = await t.regenerate(queued[0].message_id)  # queued too
        after = await t.send("after")
        root = await t.send("a new root", parent=None)
        events = await until_ended(sub, slow.run_id, *(a.run_id for a in queued),
                                   again.run_id, after.run_id, root.run_id)
    parents = {e.run_id: e.data["parent"] for e in events if e.event == "user_message"}
    assert [parents[a.run_id] for a in queued] == [slow.run_id, queued[0].run_id,
                                                   queued[1].run_id]
    assert parents[after.run_id] == again.run_id and parents[root.run_id] is None
    # Each saw its own branch, its parents' answers ended before it ran.
    assert SEEN[after.run_id] == [
        ("user", "slow one"), ("assistant", "re: slow one"), ("user", "q0"),
        ("assistant", "re: q0")]  # the regenerate's answer to q0, not q1 or q2
    assert SEEN[root.run_id] == []


async def test_the_default_parent_is_read_back_after_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(journal=journal, agent=recorder) as rt:
        first = await rt.thread("ada", "main").send("first")
        again = await rt.thread("ada", "main").regenerate(first.message_id)
    async with open_journal(url) as journal, open_runtime(journal=journal, agent=recorder) as rt:
        later = await rt.thread("ada", "main").send("later")
        node = await journal.node(KEY, later.run_id)
    assert node is not None and node.parent == again.run_id


@pytest.mark.parametrize("strategy", ["enqueue", "interrupt", "reject"])
async def test_a_regenerate_of_the_message_whose_run_is_active(tmp_path, strategy):
    async with thread(tmp_path, "sqlite") as (t, sub, journal):
        slow = await t.send("slow answer")
        with trio.fail_after(5):
            async for event in sub:
                if event.event == "agent_started":
                    break
        if strategy == "reject":
            with pytest.raises(Busy):
                await t.regenerate(slow.message_id, strategy="reject")
            events = await until_ended(sub, slow.run_id)
            assert "answer_requested" not in [e.event for e in events]  # nothing stored
            assert events[-1].event == "agent_completed"
            return
        again = await t.regenerate(slow.message_id, strategy=strategy)
        events = await until_ended(sub, slow.run_id, again.run_id)
    ends = {e.run_id: e for e in events if e.event in TERMINAL_EVENTS}
    if strategy == "interrupt":
        assert ends[slow.run_id].event == "agent_cancelled"
        assert ends[slow.run_id].data == {"reason": "interrupt"}
    else:  # enqueue: stored while the first ran, it runs after it
        assert ends[slow.run_id].event == "agent_completed"
        start = next(i for i, e in enumerate(events)
                     if e.event == "agent_started" and e.run_id == again.run_id)
        assert events.index(ends[slow.run_id]) < start
    assert ends[again.run_id].event == "agent_completed"
    assert ends[again.run_id].data == {"text": "re: slow answer"}
    assert SEEN[again.run_id] == []  # the message is a root: no history


@STORES
async def test_retries_with_a_client_msg_id_answer_the_same_and_start_no_second_run(
        tmp_path, store):
    async with thread(tmp_path, store) as (t, sub, journal):
        one = await t.send("one", client_msg_id="c1")
        await until_ended(sub, one.run_id)
        edit = await t.send("one, edited", parent=None, client_msg_id="c2")
        assert await t.send("one, edited", parent=None, client_msg_id="c2") == edit
        again = await t.regenerate(one.message_id, client_msg_id="c3")
        assert await t.regenerate(one.message_id, client_msg_id="c3") == again
        await until_ended(sub, edit.run_id, again.run_id)
        assert await t.regenerate(one.message_id, client_msg_id="c3") == again
        views = await t.turns()
    assert len(views) == 3


@STORES
async def test_not_found_stores_nothing(tmp_path, store):
    async with thread(tmp_path, store) as (t, sub, journal):
        one = await t.send("one")
        await until_ended(sub, one.run_id)
        other = t.gateway.user("bob").thread("main")  # the same thread id, another user
        with pytest.raises(NotFound):
            await other.send("mine?", parent=one.run_id)
        with pytest.raises(NotFound):
            await other.regenerate(one.message_id)
        with pytest.raises(NotFound):
            await t.regenerate("msg_unknown")
        with pytest.raises(NotFound):
            await t.send("x", parent="run_unknown")
        with pytest.raises(NotFound):
            await t.regenerate(one.run_id)  # a run id is not a message id
        assert await journal.last_seq(KEY) == 3  # one turn: message, start, answer
        assert await journal.last_seq(ThreadKey("bob", "main")) == 0


async def test_the_openai_agent_sends_the_model_exactly_the_branch(tmp_path):
    async with open_llm_server() as llm:
        agent = OpenAIAgent(OpenAIConfig("test-model", base_url=llm.base_url, api_key="sk-t",
                                         max_retries=0))
        try:
            async with thread(tmp_path, "sqlite", agent=agent) as (t, sub, journal):
                llm.script(*(Answer(pieces=(f"answer {n}",)) for n in range(5)))
                one = await t.send("one")
                two = await t.send("two")
                await until_ended(sub, one.run_id, two.run_id)
                edit = await t.send("two, edited", parent=one.run_id)
                await until_ended(sub, edit.run_id)
                again = await t.regenerate(two.message_id)
                await until_ended(sub, again.run_id)
                deeper = await t.send("deeper", parent=edit.run_id)
                await until_ended(sub, deeper.run_id)
        finally:
            await agent.aclose()
    bodies = [r.body["messages"] for r in llm.requests]
    assert bodies[3] == [{"role": "user", "content": "one"},  # the regenerate of "two"
                         {"role": "assistant", "content": "answer 0"},
                         {"role": "user", "content": "two"}]
    assert bodies[4] == [{"role": "user", "content": "one"},
                         {"role": "assistant", "content": "answer 0"},
                         {"role": "user", "content": "two, edited"},
                         {"role": "assistant", "content": "answer 2"},
                         {"role": "user", "content": "deeper"}]


async def test_a_regenerate_a_crash_left_open_is_closed_at_the_next_start(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal:
        await journal.ensure_thread(KEY, 1.0)
        await journal.append([
            Event(KEY, 1, "user_message", "r1", 1.0, {"message_id": "m1", "text": "q",
                                                      "parent": None}),
            Event(KEY, 2, "agent_started", "r1", 2.0, {"message_id": "m1"}),
            Event(KEY, 3, "agent_completed", "r1", 3.0, {"text": "a"}),
            Event(KEY, 4, "answer_requested", "r2", 4.0, {"message_id": "m1"})])
    async with open_journal(url) as journal, open_runtime(journal=journal):
        events = await journal.read(KEY, 4)
        node = await journal.node(KEY, "r2")
    assert [(e.event, e.run_id, e.data) for e in events] == [
        ("agent_started", "r2", {"message_id": "m1"}),
        ("agent_failed", "r2", {"error": "server restarted"})]
    assert node is not None and (node.started_seq, node.ended_seq) == (5, 6)
