"""The conversation tree: a run's history on a 10,000-turn, 500-branch thread (issue 22).

One thread of ``--turns`` turns (10,000) that fork into ``--branches`` branches (500) is
written straight into the store (``ensure_thread``, then ``append`` in batches of whole turns),
event for event as the runtime writes them: each turn a ``user_message`` {message_id, text,
parent} (or, for a regenerate, an ``answer_requested`` {message_id} of a stored message),
``agent_started`` {message_id}, three ``agent_delta`` {offset, text} and ``agent_completed``
{text}. The tree's shape is drawn from a seeded ``random.Random``: most turns continue the
newest branch (8 in 10) or else a random one; a new branch forks (an edit: a new message
beside a stored one; one in five a regenerate: another run answering it) from the newest
branch or a random one, a few turns back from its tip (5 on average). So the tree is wide
(``--branches`` leaves) and deep: the deepest path holds several hundred turns.

Then, on the same journal (the stores' own reads, worker threads and connection pools),
one read at a time:

- ``read_history(journal, key, run_id, limit)`` (``run.history``) for the runs at the ends of
  branches: the deepest one, and random ones; at the OpenAI agent's limit
  (``OpenAIConfig.history_turns``, 50) and for the whole path (limit 10,000). Milliseconds
  per read (median, p99) and the turns returned; each read's turns are checked against the
  path computed from the tree as it was drawn.
- ``journal.turns(key, after, 100)`` and ``read_turns`` (the turns plus their events, what
  ``GET /v1/threads/{id}/turns`` serves): every page of the thread, in order.
- The baseline, in the same run: the whole thread read with ``journal.read`` in pages of 500
  events from seq 0 to the end, which is what a history read cost before the tree (it read
  back through the thread, and on a thread with branches the ancestors can be anywhere in
  it). The ratio is baseline / history read.
- The write cost: the build rate (events/s, 100 turns a transaction) and the store's size
  (SQLite: the file, and each table and index by ``dbstat``; PostgreSQL: each table with its
  indexes).
- The plans of the queries (``branch``, ``node_events``, ``turns``, and ``read`` for the
  baseline): SQLite's ``EXPLAIN QUERY PLAN``, PostgreSQL's ``EXPLAIN (ANALYZE, BUFFERS)``,
  written to the results (``--explain`` prints them).

Stores: SQLite (a file in a temporary folder, ``synchronous=FULL``: the default store users
run) and PostgreSQL (the tests' throwaway cluster, ``tests/pg.py``, fsync on, on loopback;
``ANALYZE`` once the thread is written, as autovacuum would within a minute: without
statistics its planner takes the big tables for small ones); with no PostgreSQL binaries on
the machine it says so in one line and measures SQLite only.
Loopback only; bounded in count (``--reads``, ``--walks``) and in time (``--seconds`` per
measured phase: about 50 s for both stores by default).

Usage: ``python -m bench.tree [--turns 10000] [--branches 500] [--stores sqlite,postgresql]
[--reads 400] [--seconds 5] [--seed 1] [--explain]``. Progress goes to stderr, the table to
stdout, the figures to ``bench/results/tree.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Any, Awaitable, Callable, Sequence

import attrs
import trio

from threadline.actors.history import read_history, read_turns
from threadline.actors.journal import REPLAY_PAGE, Journal
from threadline.actors.messages import (AGENT_COMPLETED, AGENT_DELTA, AGENT_STARTED,
                                        ANSWER_REQUESTED, USER_MESSAGE, Event, ThreadKey)
from threadline.stores import open_journal, sql
from threadline.tuning import tune_gc

from .common import progress, write_results

try:  # the limit the OpenAI agent asks for
    from threadline.agents.openai import OpenAIConfig

    AGENT_LIMIT: int = attrs.fields(OpenAIConfig).history_turns.default
except ImportError:  # the openai extra is not installed: its default, as written there
    AGENT_LIMIT = 50

KEY = ThreadKey("tree-user", "tree-thread")
WHOLE = 10_000        # the limit of a whole-path read
PAGE = 100            # turns per page of ``turns`` / ``read_turns``
TURNS_PER_APPEND = 100  # the build's transactions
DELTAS = 3            # agent_delta events per answer
P_CURRENT = 0.8       # a turn (or a fork) is on the newest branch, else on a random one
BACK = 5.0            # a fork is this many turns back from its branch's tip, on average
REGENERATE = 0.2      # of forks: another answer to a stored message, else an edited one
STORES = ("sqlite", "postgresql")


# -- the tree ------------------------------------------------------------------------------


@attrs.define(slots=True)
class Planned:
    """One run as drawn: its place and its texts (the expected history is read from these)."""

    run_id: str
    message_id: str
    parent: int | None  # index of the parent run
    depth: int          # runs on its path, itself included
    text: str           # the message it answers
    answer: str


@attrs.define
class Tree:
    runs: list[Planned]
    tips: list[int]         # the run at the end of each branch
    events: list[Event]     # in seq order
    regenerates: int

    def path(self, run: int) -> list[Planned]:
        """The run's ancestors, root first (what its history is made of)."""
        out: list[Planned] = []
        at = self.runs[run].parent
        while at is not None:
            out.append(self.runs[at])
            at = self.runs[at].parent
        return out[::-1]


def draw(turns: int, branches: int, seed: int) -> Tree:
    """The thread's runs and events (see the module header for the shape)."""
    rng = random.Random(seed)
    forks = set(rng.sample(range(1, turns), branches - 1))
    runs: list[Planned] = []
    tips: list[int] = []
    events: list[Event] = []
    regenerates = 0
    ts = 1_700_000_000.0

    def add(event: str, run_id: str, data: dict[str, Any]) -> None:
        nonlocal ts
        ts += 0.001
        events.append(Event(KEY, len(events) + 1, event, run_id, ts, data))

    def turn(parent: int | None, regenerate_of: Planned | None) -> int:
        i = len(runs)
        run_id = f"run_{i:06d}"
        words = rng.randrange(10, 40)
        if regenerate_of is None:
            message_id, text = f"msg_{i:06d}", f"turn {i}: " + "ask " * words
            add(USER_MESSAGE, run_id, {"message_id": message_id, "text": text,
                                       "parent": runs[parent].run_id if parent is not None
                                       else None})
        else:
            message_id, text = regenerate_of.message_id, regenerate_of.text
            add(ANSWER_REQUESTED, run_id, {"message_id": message_id})
        add(AGENT_STARTED, run_id, {"message_id": message_id})
        pieces = [f"answer {i}.{k} " + "word " * rng.randrange(20, 60) for k in range(DELTAS)]
        offset = 0
        for piece in pieces:
            add(AGENT_DELTA, run_id, {"offset": offset, "text": piece})
            offset += len(piece)
        answer = "".join(pieces)
        add(AGENT_COMPLETED, run_id, {"text": answer})
        depth = runs[parent].depth + 1 if parent is not None else 1
        runs.append(Planned(run_id, message_id, parent, depth, text, answer))
        return i

    def branch_at() -> int:
        return len(tips) - 1 if rng.random() < P_CURRENT else rng.randrange(len(tips))

    for t in range(turns):
        if t == 0:
            tips.append(turn(None, None))
        elif t in forks:
            at = tips[branch_at()]
            for _ in range(min(int(rng.expovariate(1 / BACK)), runs[at].depth - 1)):
                at = runs[at].parent  # type: ignore[assignment]
            beside = runs[at]  # the new run's message or answer is its sibling
            if rng.random() < REGENERATE:
                regenerates += 1
                tips.append(turn(beside.parent, beside))
            else:
                tips.append(turn(beside.parent, None))
        else:
            b = branch_at()
            tips[b] = turn(tips[b], None)
    return Tree(runs, tips, events, regenerates)


def leaves(tree: Tree) -> int:
    parents = {r.parent for r in tree.runs}
    return sum(1 for i in range(len(tree.runs)) if i not in parents)


# -- measuring ---------------------------------------------------------------------------------


def ms_figures(samples: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in samples)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    return {"reads": len(ms), "median_ms": round(statistics.median(ms), 3),
            "p99_ms": round(p99, 3), "max_ms": round(ms[-1], 3)}


async def timed(calls: Sequence[Callable[[], Awaitable[Any]]], seconds: float,
                check: Callable[[int, Any], int]) -> dict[str, Any]:
    """Each call in turn, timed, until they are done or ``seconds`` have passed;
    ``check(i, result)`` (not timed) checks a result and says how many turns it holds."""
    samples, sizes = [], []
    deadline = time.perf_counter() + seconds
    for i, call in enumerate(calls):
        t0 = time.perf_counter()
        result = await call()
        samples.append(time.perf_counter() - t0)
        sizes.append(check(i, result))
        if time.perf_counter() > deadline:
            break
    out = ms_figures(samples)
    out["turns_median"] = statistics.median(sizes)
    out["turns_max"] = max(sizes)
    return out


def expected(tree: Tree, run: int, limit: int) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = []
    for p in tree.path(run):
        turns += [("user", p.text), ("assistant", p.answer)]
    return turns[-limit:]


async def build(journal: Journal, tree: Tree) -> dict[str, Any]:
    await journal.ensure_thread(KEY, time.time())
    per = TURNS_PER_APPEND * (DELTAS + 3)
    t0 = time.perf_counter()
    for start in range(0, len(tree.events), per):
        await journal.append(tree.events[start:start + per])
    seconds = time.perf_counter() - t0
    return {"events": len(tree.events), "seconds": round(seconds, 2),
            "events_per_s": round(len(tree.events) / seconds),
            "turns_per_s": round(len(tree.runs) / seconds)}


async def measure(journal: Journal, tree: Tree, reads: int, walks: int, seconds: float,
                  seed: int) -> dict[str, Any]:
    rng = random.Random(seed + 1)
    deepest = max(tree.tips, key=lambda t: tree.runs[t].depth)
    sample = [rng.choice(tree.tips) for _ in range(reads)]
    out: dict[str, Any] = {}

    def history(runs: list[int], limit: int) -> list[Callable[[], Awaitable[Any]]]:
        return [lambda r=r: read_history(journal, KEY, tree.runs[r].run_id, limit) for r in runs]

    def check_history(runs: list[int], limit: int) -> Callable[[int, Any], int]:
        def check(i: int, got: Any) -> int:
            want = expected(tree, runs[i], limit)
            if [(t.role, t.text) for t in got] != want:
                raise AssertionError(f"history of {tree.runs[runs[i]].run_id} (limit {limit}):"
                                     f" {len(got)} turns, expected {len(want)}")
            return len(got)
        return check

    # Warm up: the pool's connections opened, the statements prepared, the pages cached.
    for r in tree.tips[:3]:
        await read_history(journal, KEY, tree.runs[r].run_id, AGENT_LIMIT)
        await read_history(journal, KEY, tree.runs[r].run_id, WHOLE)
    for name, limit, count in (("limit", AGENT_LIMIT, reads), ("whole", WHOLE, reads // 4)):
        for which, runs in (("deepest", [deepest] * max(count // 10, 5)),
                            ("random", sample[:count])):
            label = f"history_{name}_{which}"
            progress(f"  {label}: {len(runs)} reads at limit {limit}")
            out[label] = await timed(history(runs, limit), seconds, check_history(runs, limit))
            out[label]["limit"] = limit
    out["history_deepest_depth"] = tree.runs[deepest].depth

    async def walk(reader: Callable[[int], Awaitable[list[Any]]],
                   deadline: float) -> list[float]:
        """The pages of the thread's turns, in order, until the last or the deadline: the
        seconds of each."""
        samples: list[float] = []
        after, seen = 0, 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            page = await reader(after)
            if not page:
                if seen != len(tree.runs):
                    raise AssertionError(f"the pages held {seen} turns, expected "
                                         f"{len(tree.runs)}")
                break  # the last, empty page is not one a client renders: not counted
            samples.append(time.perf_counter() - t0)
            seen += len(page)
            after = page[-1].node.seq if hasattr(page[-1], "node") else page[-1].seq
        return samples

    for label, reader in (("turns", lambda a: journal.turns(KEY, a, PAGE)),
                          ("read_turns", lambda a: read_turns(journal, KEY, a, PAGE))):
        progress(f"  {label}: up to {walks} walks of every page of {PAGE}")
        samples: list[float] = []
        deadline = time.perf_counter() + seconds
        for _ in range(walks):
            samples += await walk(reader, deadline)
        out[label] = ms_figures(samples)
        out[label]["page"] = PAGE

    async def whole_thread() -> int:
        after, got = 0, 0
        while True:
            page = await journal.read(KEY, after, limit=REPLAY_PAGE)
            if not page:
                return got
            got += len(page)
            after = page[-1].seq

    progress(f"  baseline: the whole thread read in pages of {REPLAY_PAGE} events")
    def check_thread(i: int, events: int) -> int:
        if events != len(tree.events):
            raise AssertionError(f"the thread held {events} events, expected "
                                 f"{len(tree.events)}")
        return events

    baseline = await timed([whole_thread] * max(walks, 3), seconds, check_thread)
    baseline["events"] = baseline.pop("turns_max")
    del baseline["turns_median"]
    out["baseline_whole_thread"] = baseline
    return out


# -- the stores --------------------------------------------------------------------------------


class Recorder:
    """A cursor that keeps the statement a query function would run, and runs nothing."""

    def __init__(self) -> None:
        self.query, self.params = "", ()

    def execute(self, query: str, params: Any = ()) -> None:
        self.query, self.params = query, params

    def fetchall(self) -> list[Any]:
        return []


def statements(tree: Tree) -> dict[str, tuple[str, Any]]:
    """The statements whose plans are looked at: those of a history read at the agent's
    limit for the deepest branch, a middle page of turns, and a page of the baseline."""
    from threadline.actors.tree import Node

    deepest = max(tree.tips, key=lambda t: tree.runs[t].depth)
    path = tree.path(deepest)[-(AGENT_LIMIT // 2 + 1):]
    seqs = {e.run_id: e.seq for e in tree.events if e.event in (USER_MESSAGE, ANSWER_REQUESTED)}
    message_seq = {e.data["message_id"]: e.seq for e in tree.events if e.event == USER_MESSAGE}
    nodes = [Node(p.run_id, p.message_id, None, message_seq[p.message_id], seqs[p.run_id],
                  seqs[p.run_id] + 1, seqs[p.run_id] + DELTAS + 2) for p in path]
    out: dict[str, tuple[str, Any]] = {}
    for name, fn, args in (
            ("branch", sql.branch, (KEY, tree.runs[deepest].run_id, AGENT_LIMIT // 2 + 2)),
            ("node_events", sql.node_events, (KEY, nodes, lambda d: d)),
            ("turns", sql.turns, (KEY, len(tree.events) // 2, PAGE)),
            ("read (baseline)", sql.read, (KEY, len(tree.events) // 2, None, REPLAY_PAGE,
                                           lambda d: d))):
        rec = Recorder()
        fn(rec, *args)
        out[name] = (rec.query, rec.params)
    return out


def sqlite_facts(path: str, tree: Tree) -> dict[str, Any]:
    """The file's size, each table's and index's, and the plans (on a connection of our
    own, once the journal is closed)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes = {name: size for name, size in conn.execute(
            "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")}
        plans = {}
        for name, (query, params) in statements(tree).items():
            rows = conn.execute("EXPLAIN QUERY PLAN " + query.replace("%s", "?"),
                                params).fetchall()
            plans[name] = [f"{'  ' * depth_of(rows, r)}{r[3]}" for r in rows]
        return {"file_bytes": os.path.getsize(path), "objects_bytes": sizes, "plans": plans}
    finally:
        conn.close()


def depth_of(rows: list[tuple[Any, ...]], row: tuple[Any, ...]) -> int:
    parents = {r[0]: r[1] for r in rows}
    depth, at = 0, row[1]
    while at in parents:
        depth, at = depth + 1, parents[at]
    return depth


def postgres_facts(dsn: str, tree: Tree) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        sizes = {t: conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0]
                 for t in ("events", "turns", "threads", "open_runs", "client_ids")}
        analyzed = {t: a is not None or b is not None for t, a, b in conn.execute(
            "SELECT relname, last_analyze, last_autoanalyze FROM pg_stat_user_tables "
            "WHERE relname IN ('events', 'turns')")}
        plans = {}
        for name, (query, params) in statements(tree).items():
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query,
                                params).fetchall()
            plans[name] = [r[0] for r in rows]
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"database_bytes": size, "tables_bytes": sizes, "analyzed_when_planned": analyzed,
            "plans": plans}


def analyze(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE events")
        conn.execute("ANALYZE turns")


async def one_store(url: str, tree: Tree, args: argparse.Namespace) -> dict[str, Any]:
    async with open_journal(url) as journal:
        progress(f"  writing {len(tree.events):,} events, {TURNS_PER_APPEND} turns an append")
        built = await build(journal, tree)
        progress(f"  built in {built['seconds']} s ({built['events_per_s']:,} events/s)")
        if not url.startswith("sqlite"):
            # What autovacuum does within a minute of such a load: with no statistics yet the
            # planner takes the thread's 10,000 turns for a handful (see bench/README.md).
            progress("  ANALYZE events, turns")
            await trio.to_thread.run_sync(analyze, url)
        figures = await measure(journal, tree, args.reads, args.walks, args.seconds, args.seed)
    return {"build": built, **figures}


def run_store(store: str, tree: Tree, args: argparse.Namespace,
              stack: ExitStack) -> dict[str, Any] | str:
    """The figures of one store, or the one line saying why it was not measured."""
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="threadline-tree-"))
    if store == "sqlite":
        path = f"{folder}/tree.db"
        progress(f"SQLite {path} (synchronous=FULL)")
        out = trio.run(one_store, f"sqlite:///{path}", tree, args)
        out["store"] = sqlite_facts(path, tree)
        return out
    from tests.pg import Cluster  # the tests' throwaway cluster

    try:
        cluster = Cluster(fsync=True).init()
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    stack.callback(cluster.destroy)
    progress(f"PostgreSQL on 127.0.0.1:{cluster.port} (fsync on)")
    dsn = cluster.reset()
    out = trio.run(one_store, dsn, tree, args)
    out["store"] = postgres_facts(dsn, tree)
    return out


# -- the report --------------------------------------------------------------------------------

READS = (("history_limit_deepest", f"history, limit {AGENT_LIMIT}, deepest branch"),
         ("history_limit_random", f"history, limit {AGENT_LIMIT}, random branches"),
         ("history_whole_deepest", "history, whole path, deepest branch"),
         ("history_whole_random", "history, whole path, random branches"),
         ("turns", f"journal.turns, page of {PAGE}"),
         ("read_turns", f"read_turns, page of {PAGE}"),
         ("baseline_whole_thread", f"baseline: whole thread, pages of {REPLAY_PAGE}"))


def times(ratio: float) -> str:
    return f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.2g}"


def report(results: dict[str, Any]) -> str:
    head = ("store", "read", "reads", "median ms", "p99 ms", "turns", "x baseline")
    rows: list[tuple[str, ...]] = []
    for store, r in results["stores"].items():
        if isinstance(r, str):
            continue  # said under the table
        base = r["baseline_whole_thread"]["median_ms"]
        for key, label in READS:
            f = r[key]
            if key == "baseline_whole_thread":
                turns = f"{f['events']:,} events"
            elif "turns_median" in f:
                turns = f"{f['turns_median']:g} (max {f['turns_max']})"
            else:
                turns = str(PAGE)
            rows.append((store, label, str(f["reads"]), f"{f['median_ms']:.2f}",
                         f"{f['p99_ms']:.2f}", turns, times(base / f["median_ms"])))
        b = r["build"]
        size = (r["store"].get("file_bytes") or r["store"].get("database_bytes")) / 2**20
        rows.append((store, "build (100 turns an append)", "", "", "",
                     f"{b['events_per_s']:,} events/s", f"{size:.1f} MiB stored"))
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    notes = [f"{store}: not run ({r})" for store, r in results["stores"].items()
             if isinstance(r, str)]
    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, rows),
                      *notes])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tree", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--turns", type=int, default=10_000)
    p.add_argument("--branches", type=int, default=500)
    p.add_argument("--stores", default=",".join(STORES), help="comma-separated: sqlite, "
                   "postgresql (default both)")
    p.add_argument("--reads", type=int, default=400, help=f"history reads at limit "
                   f"{AGENT_LIMIT} of random branches (a quarter as many of whole paths)")
    p.add_argument("--walks", type=int, default=3, help="walks of every page of turns, and "
                   "whole-thread reads of the baseline")
    p.add_argument("--seconds", type=float, default=5.0, help="at most this long a phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--explain", action="store_true", help="print the query plans too")
    args = p.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not (2 <= args.turns <= 100_000 and 1 <= args.branches < args.turns
            and 1 <= args.reads <= 10_000 and 1 <= args.walks <= 100
            and 0 < args.seconds <= 120 and stores and set(stores) <= set(STORES)):
        p.error("at most 100,000 turns, fewer branches than turns, 10,000 reads, 100 walks, "
                "120 s a phase; stores among sqlite, postgresql")
    tune_gc()
    t0 = time.perf_counter()
    tree = draw(args.turns, args.branches, args.seed)
    depths = sorted(tree.runs[t].depth for t in tree.tips)
    shape = {"turns": len(tree.runs), "branches": leaves(tree), "events": len(tree.events),
             "regenerates": tree.regenerates, "roots": sum(r.parent is None for r in tree.runs),
             "path_turns_deepest": depths[-1], "path_turns_median": statistics.median(depths),
             "path_turns_shallowest": depths[0]}
    progress(f"the tree: {shape['turns']:,} turns, {shape['branches']} branches "
             f"({shape['regenerates']} by a regenerate), paths of {depths[0]} to {depths[-1]} "
             f"turns (median {shape['path_turns_median']:g}), {len(tree.events):,} events")
    results: dict[str, Any] = {"args": vars(args), "agent_limit": AGENT_LIMIT, "shape": shape,
                               "stores": {}}
    with ExitStack() as stack:
        for store in stores:
            out = run_store(store, tree, args, stack)
            if isinstance(out, str):
                print(f"PostgreSQL not measured: {out}", file=sys.stderr)
            results["stores"][store] = out
    results["seconds"] = round(time.perf_counter() - t0, 1)
    path = write_results("tree", results)
    print(report(results))
    if args.explain:
        for store, r in results["stores"].items():
            if isinstance(r, dict):
                for name, plan in r["store"]["plans"].items():
                    print(f"\n{store} {name}:\n  " + "\n  ".join(plan))
    progress(f"done in {results['seconds']:.0f} s; figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
