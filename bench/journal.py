"""Journal throughput: events per second sustained into SQLite and PostgreSQL with group
commit, beside one transaction per event through the same code, in the same run.

The workload is the runtime's: ``--threads`` writers, each appending one event at a time to its
own thread and awaiting durability before the next (as a thread actor does). Throughput is then
the threads writing at once divided by the commit latency, so it is measured at 200 and at
1,000 threads writing at once (a server holding 10,000 connections has that many). SQLite runs with
``synchronous=FULL``, PostgreSQL (a throwaway cluster on loopback, as the tests use) with
``fsync=on``: every acknowledged event is on disk. Target: >= 20,000 events/s for each store.

Usage: ``python -m bench.journal [--seconds 5] [--threads 200]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

import trio

from threadline.actors.messages import Event, ThreadKey
from threadline.stores import MAX_BATCH, open_durable_journal
from threadline.stores.postgres import PostgresBackend
from threadline.stores.sqlite import SQLiteBackend
from threadline.tuning import tune_gc

from .common import Row, met, progress, table, write_results

TARGET = 20_000


async def sustained(backend: Any, max_batch: int, threads: int, seconds: float) -> dict[str, Any]:
    async with open_durable_journal(backend, max_batch=max_batch) as journal:
        keys = [ThreadKey(f"bench{i % 50}", f"t{i}-{time.monotonic_ns()}") for i in range(threads)]
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(journal.ensure_thread, key, time.time())
        count = 0
        batches0, ops0 = journal.batches, journal.operations
        stop_at = trio.current_time() + seconds

        async def writer(key: ThreadKey) -> None:
            nonlocal count
            seq = 0
            while trio.current_time() < stop_at:  # bounded in time; each step awaits a commit
                seq += 1
                await journal.append([Event(key, seq, "agent_thinking", "run_bench", time.time(),
                                            {"text": "x" * 64})])
                count += 1

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(writer, key)
        elapsed = time.perf_counter() - t0
        batches = journal.batches - batches0
        return {"events_per_s": count / elapsed, "events": count, "transactions": batches,
                "events_per_transaction": (journal.operations - ops0) / max(batches, 1)}


def measure(name: str, make: Any, threads: int, seconds: float) -> dict[str, Any]:
    grouped = trio.run(sustained, make(), MAX_BATCH, threads, seconds)
    progress(f"{name}: group commit {grouped['events_per_s']:,.0f} events/s "
             f"({grouped['events_per_transaction']:.0f} per transaction)")
    single = trio.run(sustained, make(), 1, threads, seconds)
    progress(f"{name}: one transaction per event {single['events_per_s']:,.0f} events/s")
    return {"group_commit": grouped, "per_event": single,
            "ratio": grouped["events_per_s"] / single["events_per_s"]}


def run(seconds: float, counts: list[int]) -> dict[str, Any]:
    """Every store at every count of threads writing: group commit and a transaction per event."""
    from tests.pg import Cluster  # the same throwaway cluster the tests use, with fsync on

    results: dict[str, Any] = {"seconds": seconds, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            progress(f"SQLite (synchronous=FULL), {n} threads writing")
            results["runs"][f"sqlite/{n}"] = measure(
                "SQLite", lambda n=n: SQLiteBackend(f"{tmp}/bench{n}.db"), n, seconds)
    progress("starting a PostgreSQL cluster (fsync=on) on loopback")
    try:
        cluster = Cluster(fsync=True).init()
    except RuntimeError as exc:  # no PostgreSQL here: say so in the table, measure the rest
        progress(f"PostgreSQL not run: {exc}")
        results["postgresql_not_run"] = str(exc).splitlines()[0]
        return results
    try:
        for n in counts:
            progress(f"PostgreSQL (fsync=on), {n} threads writing")
            results["runs"][f"postgresql/{n}"] = measure(
                "PostgreSQL", lambda: PostgresBackend(cluster.reset()), n, seconds)
    finally:
        cluster.destroy()
    return results


def rows(results: dict[str, Any]) -> list[Row]:
    """The table rows of this scenario (the suite's table uses them too)."""
    out: list[Row] = []
    for name, r in results["runs"].items():
        store, n = name.split("/")
        g = r["group_commit"]["events_per_s"]
        out.append((f"{store} events/s, {n} threads writing", f"{g:,.0f}",
                    f"{r['per_event']['events_per_s']:,.0f} txn per event", f"{r['ratio']:.1f}",
                    f">= {TARGET:,}", met(g >= TARGET)))
    if "postgresql_not_run" in results:
        out.append(("postgresql events/s", "not run", "-", "-", f">= {TARGET:,}",
                    "NO (no PostgreSQL: bash tests/run.sh installs it)"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.journal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", default="200,1000",
                        help="threads writing at once (comma-separated: one run each)")
    args = parser.parse_args(argv)
    tune_gc()
    results = run(args.seconds, [int(x) for x in args.threads.split(",")])
    path = write_results("journal", results)
    print(table(rows(results)))
    progress(f"figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
