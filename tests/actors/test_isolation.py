"""Isolation as a property: random interleavings of many users, threads, messages, subscribes,
leaves, cancels and strategies. Every subscriber sees exactly its own thread's events, gapless
and in order; every run is well formed; nothing of another thread ever shows up."""

from __future__ import annotations

from collections import defaultdict

import attrs
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from threadline.actors.errors import Busy, UnknownRun
from threadline.actors.memory_journal import MemoryJournal
from threadline.actors.messages import STRATEGIES, Event, ThreadKey
from threadline import RuntimeConfig, open_runtime
from tests.helpers import assert_gapless, assert_runs_well_formed, scripted_agent, test_tools

USERS = ["alice", "bob", "carol"]
THREADS = ["main", "side"]  # every user has the same thread ids: they must never meet
SLOTS = 6

keys = st.builds(ThreadKey, st.sampled_from(USERS), st.sampled_from(THREADS))
script = st.lists(
    st.one_of(st.just("think:x"), st.just("sleep:0.3"), st.just("tool:add:{\"a\":1,\"b\":2}"),
              st.just("raise:boom")),
    min_size=0, max_size=4,
).map(lambda steps: ";".join(steps) or "hello")
operations = st.lists(
    st.one_of(
        st.tuples(st.just("subscribe"), st.integers(0, SLOTS - 1), keys,
                  st.none() | st.integers(0, 12)),
        st.tuples(st.just("leave"), st.integers(0, SLOTS - 1)),
        st.tuples(st.just("send"), keys, script, st.sampled_from(STRATEGIES)),
        st.tuples(st.just("cancel"), keys),
        st.tuples(st.just("tick"), st.sampled_from([0.0, 0.1, 0.5, 3.0])),
    ),
    max_size=40,
)


@attrs.define
class Watcher:
    key: ThreadKey
    since: int | None
    scope: trio.CancelScope
    events: list[Event] = attrs.Factory(list)
    joined_at: int | None = None
    live: bool = True


async def watch(handle, w: Watcher, task_status=trio.TASK_STATUS_IGNORED) -> None:
    with w.scope:
        async with handle.open_subscription(since=w.since) as sub:
            w.joined_at = sub.joined_at
            task_status.started()
            async for event in sub:
                w.events.append(event)


async def play(ops) -> None:
    journal = MemoryJournal()
    config = RuntimeConfig(passivate_after=2.0)
    accepted: dict[ThreadKey, set[str]] = defaultdict(set)
    watchers: list[Watcher] = []
    slots: dict[int, Watcher] = {}
    async with open_runtime(journal=journal, agent=scripted_agent, tools=test_tools(),
                            config=config) as rt:
        async with trio.open_nursery() as nursery:
            for op in ops:
                kind = op[0]
                if kind == "subscribe":
                    _, slot, key, since = op
                    if slot in slots:
                        old = slots.pop(slot)
                        old.live = False
                        old.scope.cancel()
                    w = Watcher(key, since, trio.CancelScope())
                    await nursery.start(watch, rt.thread(key.user_id, key.thread_id), w)
                    slots[slot] = w
                    watchers.append(w)
                elif kind == "leave" and op[1] in slots:
                    w = slots.pop(op[1])
                    w.live = False
                    w.scope.cancel()
                elif kind == "send":
                    _, key, text, strategy = op
                    try:
                        acc = await rt.thread(key.user_id, key.thread_id).send(text, strategy=strategy)
                    except Busy:
                        assert strategy == "reject"
                    else:
                        assert acc.key == key
                        accepted[key].add(acc.run_id)
                elif kind == "cancel":
                    try:
                        await rt.thread(op[1].user_id, op[1].thread_id).cancel()
                    except UnknownRun:
                        pass
                elif kind == "tick":
                    await trio.sleep(op[1])
            await trio.sleep(100)  # every run ends (scripts sleep at most 1.2 s)
            await trio.testing.wait_all_tasks_blocked()
            for w in slots.values():
                w.scope.cancel()

    all_runs: dict[str, ThreadKey] = {}
    for key in {ThreadKey(u, t) for u in USERS for t in THREADS}:
        history = await journal.read(key, 0, limit=10**6)
        assert all(e.key == key for e in history)
        assert_gapless(history)
        assert_runs_well_formed(history)
        runs = {e.run_id for e in history}
        assert runs == accepted[key]  # every accepted run, and nothing else, is here
        for run_id in runs:
            assert all_runs.setdefault(run_id, key) == key  # no run in two threads
    for w in watchers:
        assert all(e.key == w.key for e in w.events), "an event of another thread"
        start = w.joined_at if w.since is None else min(w.since, w.joined_at)
        assert_gapless(w.events, first=start + 1)
        expected = await journal.read(w.key, start, upto=start + len(w.events), limit=10**6)
        assert w.events == expected
        if w.live:  # stayed subscribed to the end: saw everything
            assert start + len(w.events) == await journal.last_seq(w.key)


@given(operations)
def test_isolation_under_random_interleavings(ops):
    trio.run(play, ops, clock=trio.testing.MockClock(autojump_threshold=0))
