"""The conversation tree (issue 22, PROTOCOL.md 1.1 "The conversation tree") as a hypothesis
property: for random sequences of sends (to the newest run, to a new root, to a run of another
branch), edits, regenerates, cancels, waits, idempotent retries, unknown parents and restarts of
the runtime over the same store, every run's history (what ``run.history()`` gave its agent)
equals the path computed independently from the stored events, and seq stays gapless.

The model reads the thread's events with ``Journal.read`` only (never ``branch``,
``node_events`` or ``turns``, which are what is under test): a ``user_message`` is a message
(its text, its ``parent``) and the run it starts; an ``answer_requested`` a new run answering
a stored message; a run's answer is its ``agent_completed`` text, or what it streamed
(``agent_delta`` laid at its offsets) when it failed or was cancelled. The history of a run is
the path from the root to its message, its own message excluded: for each ancestor run, root
first, its message, then its answer if that run had ended before the run started (its
terminal event's seq is before the run's ``agent_started``); ``run.history(limit)`` is the
last ``limit`` turns of it. A run cancelled before its agent was called was given nothing.

Also checked after each example: seq is gapless from 1; every run begins with its
``user_message`` or ``answer_requested``, then ``agent_started`` naming the message it answers,
and ends with exactly one terminal event; a message's ``parent`` is None or a run asked for
before it; a plain send follows the run of the previous ``Accepted`` (send or regenerate, as
the client saw them, across restarts); a retried ``client_msg_id`` answers the same
``Accepted``; and ``ThreadHandle.turns`` (whole, and by pages) gives the same tree: each run's
message, parent, answer, outcome and places among its siblings.

SQLite runs on the real clock (its writes go through worker threads), the memory store on
trio's ``MockClock`` (waits cost nothing, so it takes more and longer examples)."""

from __future__ import annotations

import itertools
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from threadline import RuntimeConfig, open_journal, open_runtime
from threadline.actors.errors import AgentError, Busy, NotFound, UnknownRun
from threadline.actors.memory_journal import MemoryJournal
from threadline.actors.messages import ThreadKey

USER, THREAD = "ada", "main"
TERMINALS = {"agent_completed": "completed", "agent_failed": "failed",
             "agent_cancelled": "cancelled"}
STRATEGIES = ["enqueue", "interrupt", "reject"]
HISTORY_LIMIT = 100  # ``Run.history``'s default: the last 100 turns
SHORT_LIMITS = (1, 2, 3)  # ``Run.history(limit)``: the last ``limit`` turns of the same path

# -- what a client does ------------------------------------------------------------------------

modes = st.sampled_from(["fast", "slow", "fail"])  # how the agent answers the message
strategies = st.sampled_from(STRATEGIES)
index = st.integers(0, 1000)  # of an earlier message or run, modulo how many there are


def operations(ticks: list[float], max_size: int) -> st.SearchStrategy:
    send = st.tuples(st.just("send"), modes, strategies)           # parent: the newest run
    edit = st.tuples(st.just("edit"), index, modes, strategies)    # a sibling of a message
    regenerate = st.tuples(st.just("regenerate"), index, strategies)
    tick = st.tuples(st.just("tick"), st.sampled_from(ticks))
    step = st.one_of(
        send, send, send, edit, edit, regenerate, regenerate, tick, tick,
        st.tuples(st.just("root"), modes, strategies),           # parent None: a new root
        st.tuples(st.just("reply"), index, modes, strategies),   # go on from any run
        st.tuples(st.just("cancel")),
        st.tuples(st.just("retry"), index, strategies),          # a client_msg_id again
        st.tuples(st.just("unknown"), st.booleans()),            # NotFound, nothing stored
        st.tuples(st.just("restart")),
    )
    return st.lists(step, min_size=max_size // 3, max_size=max_size)


# -- the agent: writes down what it was given, answers deterministically --------------------------


@attrs.define
class Seen:
    """What a run's agent was given: the text and message it answers, and its history."""

    text: str
    message_id: str
    history: list[tuple]      # run.history()
    short: list[list[tuple]]  # run.history(limit) for each of SHORT_LIMITS


def make_agent(seen: dict[str, Seen], pause: float):
    async def agent(run) -> str | None:
        run_id = run.context.run_id
        read = [[(t.role, t.text, t.run_id, t.seq, t.outcome, t.calls)
                 for t in await run.history(limit)]
                for limit in (HISTORY_LIMIT, *SHORT_LIMITS)]
        seen[run_id] = Seen(run.text, run.context.request_id, read[0], read[1:])
        answer = f"a({run.text})@{run_id}"
        mode = run.text.rsplit(" ", 1)[-1]
        if mode == "fast":
            return answer
        for piece in (answer[:3], answer[3:9], answer[9:]):  # streamed, slowly
            await run.write(piece)
            await trio.sleep(pause)
        if mode == "fail":
            raise AgentError("the agent broke")
        return None  # completes with what it wrote

    return agent


# -- the client's side, kept across restarts ---------------------------------------------------


@attrs.define
class Client:
    """What the test saw: every ``Accepted`` (in order), the parent it expects for each run's
    message, and the run of the latest ``Accepted`` (the default parent, PROTOCOL.md)."""

    accepted: list[Any] = attrs.Factory(list)          # Accepted, in the order answered
    calls: list[tuple] = attrs.Factory(list)           # how each was asked (for a retry)
    parent_of_message: dict[str, str | None] = attrs.Factory(dict)  # message_id -> parent
    newest: str | None = None
    numbers: Any = attrs.Factory(itertools.count)  # of texts
    ids: Any = attrs.Factory(itertools.count)      # of client_msg_ids

    def text(self, mode: str) -> str:
        return f"m{next(self.numbers)} {mode}"

    def messages(self) -> list[str]:
        return list(self.parent_of_message)

    def took(self, accepted, call: tuple, parent: str | None = None) -> None:
        self.accepted.append(accepted)
        self.calls.append(call)
        if call[0] == "send":
            self.parent_of_message[accepted.message_id] = parent
        self.newest = accepted.run_id


async def apply(thread, client: Client, op: tuple) -> None:
    kind = op[0]
    if kind in ("send", "root", "edit", "reply"):
        mode, strategy = op[-2], op[-1]
        if kind == "send":
            parent: Any = client.newest  # expected: the default parent is the newest run
        elif kind == "root":
            parent = None
        elif kind == "edit":
            messages = client.messages()
            if not messages:
                return
            parent = client.parent_of_message[messages[op[1] % len(messages)]]
        else:
            if not client.accepted:
                return
            parent = client.accepted[op[1] % len(client.accepted)].run_id
        text, cmid = client.text(mode), f"c{next(client.ids)}"
        try:
            if kind == "send":
                accepted = await thread.send(text, client_msg_id=cmid, strategy=strategy)
            else:
                accepted = await thread.send(text, client_msg_id=cmid, strategy=strategy,
                                             parent=parent)
        except Busy:
            assert strategy == "reject"
            return
        client.took(accepted, ("send", text, cmid, parent if kind != "send" else "LATEST"),
                    parent)
    elif kind == "regenerate":
        messages = client.messages()
        if not messages:
            return
        message_id = messages[op[1] % len(messages)]
        cmid = f"r{next(client.ids)}"
        try:
            accepted = await thread.regenerate(message_id, client_msg_id=cmid,
                                               strategy=op[2])
        except Busy:
            assert op[2] == "reject"
            return
        assert accepted.message_id == message_id
        client.took(accepted, ("regenerate", message_id, cmid))
    elif kind == "retry":
        if not client.accepted:
            return
        i = op[1] % len(client.accepted)
        call, first = client.calls[i], client.accepted[i]
        if call[0] == "send":
            _, text, cmid, parent = call
            again = await thread.send(text, client_msg_id=cmid, strategy=op[2],
                                      **({} if parent == "LATEST" else {"parent": parent}))
        else:
            again = await thread.regenerate(call[1], client_msg_id=call[2], strategy=op[2])
        assert again == first, (again, first)  # the same answer, and no second run
    elif kind == "unknown":
        try:
            if op[1]:
                await thread.send("lost", parent="run_nosuch", client_msg_id="lost")
            else:
                await thread.regenerate("msg_nosuch", client_msg_id="lost")
        except NotFound:
            pass
        else:
            raise AssertionError("an unknown parent or message was accepted")
    elif kind == "cancel":
        try:
            await thread.cancel()
        except UnknownRun:
            pass
    elif kind == "tick":
        await trio.sleep(op[1])
    else:
        raise AssertionError(op)


async def segments(open_store, ops: list[tuple], agent, grace: float, client: Client) -> list:
    """Play ``ops``, a runtime per stretch between restarts over the store ``open_store``
    opens each time. Returns the thread's events once every runtime closed (so every run
    ended), and its turns as ``ThreadHandle.turns`` gives them, read whole and by pages."""
    config = RuntimeConfig(shutdown_grace=grace)
    chunks: list[list[tuple]] = [[]]
    for op in ops:
        if op[0] == "restart":
            chunks.append([])
        else:
            chunks[-1].append(op)
    for chunk in chunks:
        async with open_store() as journal:
            async with open_runtime(journal=journal, agent=agent, config=config) as rt:
                thread = rt.thread(USER, THREAD)
                for op in chunk:
                    await apply(thread, client, op)
    async with open_store() as journal:
        events = await journal.read(ThreadKey(USER, THREAD), 0, limit=10**6)
        async with open_runtime(journal=journal, agent=agent, config=config) as rt:
            thread = rt.thread(USER, THREAD)
            turns = await thread.turns(0, limit=10**6)
            paged: list = []  # the same, a page of 3 at a time
            while page := await thread.turns(paged[-1].seq if paged else 0, limit=3):
                assert len(page) <= 3
                paged += page
            assert paged == turns
    return [events, turns]


# -- the model: the tree from the stored events alone --------------------------------------------


@attrs.define
class Msg:
    message_id: str
    text: str
    parent: str | None
    seq: int
    run_id: str


@attrs.define
class RunModel:
    run_id: str
    message_id: str
    first_seq: int        # its user_message or answer_requested
    started: int | None = None
    ended: int | None = None
    outcome: str | None = None
    completed_text: str | None = None
    error: str | None = None
    streamed: str = ""

    def answer(self) -> str:
        return self.completed_text if self.outcome == "completed" else self.streamed


def model_of(events) -> tuple[dict[str, Msg], dict[str, RunModel]]:
    """Messages and runs from the events, checking the invariants of their order on the way."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "seq is not gapless"
    messages: dict[str, Msg] = {}
    runs: dict[str, RunModel] = {}
    for e in events:
        assert e.run_id is not None, e
        run = runs.get(e.run_id)
        if e.event in ("user_message", "answer_requested"):
            assert run is None, f"run {e.run_id} asked for twice"
            mid = e.data["message_id"]
            if e.event == "user_message":
                assert mid not in messages, f"message {mid} stored twice"
                parent = e.data["parent"]
                # A parent is None or a run asked for before it: every walk ends at a root.
                assert parent is None or parent in runs, (e.seq, parent)
                messages[mid] = Msg(mid, e.data["text"], parent, e.seq, e.run_id)
            else:
                assert mid in messages, f"answer_requested for an unknown message {mid}"
            runs[e.run_id] = RunModel(e.run_id, mid, e.seq)
            continue
        assert run is not None, f"{e.event} of run {e.run_id} before its first event"
        assert run.ended is None, f"{e.event} (seq {e.seq}) after run {e.run_id} ended"
        if e.event == "agent_started":
            assert run.started is None, f"run {e.run_id} started twice"
            assert e.data["message_id"] == run.message_id, (e, run)
            run.started = e.seq
            continue
        assert run.started is not None, f"{e.event} of run {e.run_id} before agent_started"
        if e.event == "agent_delta":
            if e.data["offset"] == len(run.streamed):  # laid at its offset, as a client does
                run.streamed += e.data["text"]
        elif e.event in TERMINALS:
            run.ended, run.outcome = e.seq, TERMINALS[e.event]
            if e.event == "agent_completed":
                run.completed_text = e.data["text"]
            elif e.event == "agent_failed":
                run.error = e.data["error"]
    for run in runs.values():
        assert run.ended is not None, f"run {run.run_id} has no terminal event"
    return messages, runs


def path_history(messages: dict[str, Msg], runs: dict[str, RunModel], run_id: str) -> list:
    """What run ``run_id`` should have been given: its branch, its own message excluded."""
    run = runs[run_id]
    path: list[str] = []
    parent = messages[run.message_id].parent
    while parent is not None:
        path.append(parent)
        parent = messages[runs[parent].message_id].parent
    turns: list[tuple] = []
    for ancestor_id in reversed(path):
        ancestor = runs[ancestor_id]
        message = messages[ancestor.message_id]
        turns.append(("user", message.text, ancestor_id, message.seq, None, ()))
        if ancestor.ended is not None and ancestor.ended < run.started:
            turns.append(("assistant", ancestor.answer(), ancestor_id, ancestor.ended,
                          ancestor.outcome, ()))
    return turns[-HISTORY_LIMIT:]  # (no path here is that long)


def check(events, turns, seen: dict[str, Seen], client: Client) -> None:
    messages, runs = model_of(events)
    # Every Accepted is a run stored as answered, and there is no other run.
    by_seq = {e.seq: e for e in events}
    assert set(runs) == {a.run_id for a in client.accepted}
    for accepted, call in zip(client.accepted, client.calls):
        first = by_seq[accepted.seq]
        assert (first.run_id, first.data["message_id"]) == (accepted.run_id,
                                                            accepted.message_id)
        assert first.event == ("user_message" if call[0] == "send" else "answer_requested")
        if call[0] == "send":
            # The parent asked for, or by default the run of the previous Accepted (as the
            # client saw them, across restarts).
            assert first.data["parent"] == client.parent_of_message[accepted.message_id], (
                call, first)
            assert first.data["text"] == call[1]
    # What each agent was given: the path, as computed from the events.
    for run_id, what in seen.items():
        run = runs[run_id]
        assert run.started is not None
        assert (what.message_id, what.text) == (run.message_id,
                                                messages[run.message_id].text)
        path = path_history(messages, runs, run_id)
        assert what.history == path, run_id
        for limit, short in zip(SHORT_LIMITS, what.short):
            assert short == path[-limit:], (run_id, limit, path)
    for run in runs.values():
        if run.outcome == "failed":  # only as the agent fails, after it read its history
            assert run.run_id in seen and "the agent broke" in (run.error or ""), run
        if run.outcome == "completed":
            assert run.run_id in seen  # the agent ran (and read its history first)
            assert run.completed_text == f"a({messages[run.message_id].text})@{run.run_id}"
            if run.streamed:
                assert run.streamed == run.completed_text
    # The tree as ``turns`` gives it to a client, against the same model.
    expected = []
    ordered = sorted(runs.values(), key=lambda r: r.first_seq)
    for run in ordered:
        message = messages[run.message_id]
        siblings = sorted((m for m in messages.values() if m.parent == message.parent),
                          key=lambda m: m.seq)
        answers = [r for r in ordered if r.message_id == run.message_id]
        expected.append((run.run_id, run.message_id, message.parent, run.first_seq,
                         message.seq, message.text, run.answer(), run.outcome,
                         siblings.index(message), len(siblings), answers.index(run),
                         len(answers)))
    got = [(t.run_id, t.message_id, t.parent, t.seq, t.message_seq, t.text, t.answer,
            t.outcome, t.sibling_index, t.sibling_count, t.answer_index, t.answer_count)
           for t in turns]
    assert got == expected


# -- the properties ----------------------------------------------------------------------------

_files = itertools.count()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(operations([0.0, 0.01, 0.05], max_size=30))
@example(ops=[("send", "fast", "enqueue"), ("tick", 0.05), ("edit", 0, "slow", "enqueue"),
              ("regenerate", 0, "enqueue"), ("send", "fail", "enqueue"), ("restart",),
              ("send", "fast", "enqueue"), ("regenerate", 1, "interrupt"), ("tick", 0.05),
              ("reply", 2, "fast", "enqueue"), ("retry", 1, "reject"), ("restart",),
              ("send", "fast", "enqueue")])
def test_histories_follow_the_tree_on_sqlite_across_restarts(tmp_path, ops):
    url = f"sqlite:///{tmp_path}/tree{next(_files)}.db"
    seen: dict[str, Seen] = {}
    client = Client()

    async def main():
        return await segments(lambda: open_journal(url), ops, make_agent(seen, 0.01), 0.02,
                              client)

    events, turns = trio.run(main)
    check(events, turns, seen, client)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations([0.0, 0.1, 1.0], max_size=30), st.sampled_from([0.0, 0.15, 5.0]))
# A message sent with ``interrupt`` runs before the messages queued ahead of it, which are its
# ancestors: its history holds them without answers.
@example(ops=[("send", "slow", "enqueue"), ("tick", 0.0), ("send", "fast", "enqueue"),
              ("send", "fast", "enqueue"), ("send", "fast", "interrupt"), ("tick", 1.0)],
         grace=5.0)
def test_histories_follow_the_tree_in_memory(ops, grace):
    journal = MemoryJournal()  # what outlives each runtime: the store

    @asynccontextmanager
    async def open_store():
        yield journal

    seen: dict[str, Seen] = {}
    client = Client()

    async def main():
        return await segments(open_store, ops, make_agent(seen, 0.1), grace, client)

    events, turns = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    check(events, turns, seen, client)
