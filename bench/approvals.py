"""Runs waiting for a person's approval, in one process: what a waiting run costs, and how fast
decisions resume them.

- memory: resident bytes per thread whose run waits for approval (the echo agent's
  ``/confirm 6*7``, which is resumable: the run parks, with no task) against per idle thread
  actor (activated by one completed run, ``/calc 6*7``, the same run without the wait, then
  idle), N of each. Both threads are live actors that have run one run; the waiting one also
  holds its parked run (``RunControl`` and its ``Waiting``). Target (issue 21): a waiting run
  costs no more than an idle thread, i.e. a ratio <= 1.
- decisions: all N waiting runs decided (``ThreadHandle.decide``, approved) at once, timed from
  the first decision to the N-th ``agent_completed``; each resumption stores
  ``approval_decided``, reads the run's stored events back, calls the agent again, runs the
  calculator and completes. Baseline: the same N runs without the wait (``/calc 6*7``, sent at
  once, to the N-th ``agent_completed``) on the idle side.

The store is the default one, SQLite (a fresh file per side, in a temporary directory): a
waiting run is worth measuring only where it survives a restart, and on the memory store every
stored event would sit in the process's heap and be counted against the threads. The embedded
runtime (``open_runtime``) is used with no server: the figures are the actors' and the store's,
not the WebSocket's. Each side runs in a fresh process (freed memory of one would flatter the
other), with the garbage collector tuned as ``threadline serve`` runs it, and threads kept
loaded (``passivate_after=None``: an idle thread, or one whose run waits with no expiry, would
otherwise be unloaded after 300 s, and then cost nothing in memory at all).

Usage: ``python -m bench.approvals [--runs N] [--quick]``. Progress goes to stderr, the table
to stdout, the figures to ``bench/results/approvals.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from threadline import Runtime, RuntimeConfig, open_runtime
from threadline.actors.messages import APPROVAL_REQUESTED, ThreadKey
from threadline.stores import open_journal
from threadline.tuning import tune_gc

from .common import Row, met, progress, rss_bytes, table, write_results

USERS = 1000          # threads are spread over this many users (10 per user at 10,000)
CONCURRENCY = 500     # sends and decisions in flight at once
MEMORY_TARGET = 1.0   # a waiting run's thread / an idle thread
TIMEOUT = 600         # seconds any one phase may take


def key_of(i: int) -> ThreadKey:
    return ThreadKey(f"user{i % USERS}", f"t{i}")


async def _each(n: int, fn: Any) -> None:
    """``fn(i)`` for every i < n, ``CONCURRENCY`` at once."""
    limit = trio.CapacityLimiter(CONCURRENCY)

    async def one(i: int) -> None:
        async with limit:
            await fn(i)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)


async def _until(rt: Runtime, done: Any, what: str) -> None:
    with trio.fail_after(TIMEOUT):
        while not done(rt.statistics()):
            await trio.sleep(0.01)
    progress(f"  {what}")


def _completed(stats: Any) -> int:
    return stats.runs_ended.get("agent_completed", 0)


async def _settled_rss() -> int:
    await trio.sleep(0.5)  # the store's writer and the actors have nothing left to do
    gc.collect()
    return rss_bytes()


async def _side(kind: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="threadline-bench-approvals-") as tmp:
        url = f"sqlite:///{tmp}/approvals.db"
        config = RuntimeConfig(passivate_after=None)
        async with open_journal(url) as journal, open_runtime(journal=journal,
                                                              config=config) as rt:
            gc.collect()
            before = rss_bytes()
            text = "/confirm 6*7" if kind == "waiting" else "/calc 6*7"
            run_ids: list[str] = [""] * n

            async def send(i: int) -> None:
                k = key_of(i)
                run_ids[i] = (await rt.thread(k.user_id, k.thread_id).send(text)).run_id

            t0 = time.perf_counter()
            await _each(n, send)
            if kind == "idle":
                await _until(rt, lambda s: _completed(s) == n, f"{n:,} runs completed")
                runs_per_s = n / (time.perf_counter() - t0)
                per = (await _settled_rss() - before) / n
                assert len(rt.directory) == n and rt.statistics().runs_active == 0
                return {"bytes_per_thread": per, "runs_per_s": runs_per_s}
            await _until(rt, lambda s: s.approvals_waiting == n and s.runs_active == 0,
                         f"{n:,} runs wait for approval, parked")
            per = (await _settled_rss() - before) / n
            assert len(rt.directory) == n and _completed(rt.statistics()) == 0

            calls: list[str] = [""] * n  # the call ids, read from the store (not timed)

            async def call_of(i: int) -> None:
                events = await journal.read(key_of(i), 0, limit=10)
                calls[i] = next(e.data["call_id"] for e in events
                                if e.event == APPROVAL_REQUESTED and e.run_id == run_ids[i])

            await _each(n, call_of)
            decided: list[float] = []

            async def decide(i: int) -> None:
                k = key_of(i)
                started = time.perf_counter()
                await rt.thread(k.user_id, k.thread_id).decide(run_ids[i], calls[i], True)
                decided.append(time.perf_counter() - started)

            t0 = time.perf_counter()
            await _each(n, decide)
            await _until(rt, lambda s: _completed(s) == n, f"{n:,} decided runs completed")
            elapsed = time.perf_counter() - t0
            stats = rt.statistics()
            assert stats.approvals_waiting == 0 and stats.approvals_decided == {"approved": n}
            assert stats.runs_ended == {"agent_completed": n}
            decided.sort()
            return {"bytes_per_thread": per, "decisions_per_s": n / elapsed,
                    "decide_ok_p50_ms": decided[len(decided) // 2] * 1000,
                    "decide_ok_p99_ms": decided[int(len(decided) * 0.99)] * 1000}


def child(kind: str, n: int) -> None:
    print(json.dumps(trio.run(_side, kind, n)))


def side(kind: str, n: int) -> dict[str, Any]:
    progress(f"{kind}: {n:,} threads in a fresh process")
    proc = subprocess.run([sys.executable, "-m", "bench.approvals", "--child", kind, str(n)],
                          stdout=subprocess.PIPE, text=True, check=True, timeout=3 * TIMEOUT)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    progress(f"{kind}: {out['bytes_per_thread']:,.0f} bytes each")
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    n, idle, waiting = results["n"], results["idle"], results["waiting"]
    ratio = waiting["bytes_per_thread"] / idle["bytes_per_thread"]
    return [
        (f"bytes per waiting run's thread, {n:,}", f"{waiting['bytes_per_thread']:,.0f}",
         f"{idle['bytes_per_thread']:,.0f} idle thread", f"{ratio:.2f}",
         f"<= {MEMORY_TARGET} x idle", met(ratio <= MEMORY_TARGET)),
        (f"decisions/s, decide -> agent_completed, {n:,}", f"{waiting['decisions_per_s']:,.0f}",
         f"{idle['runs_per_s']:,.0f} runs/s no wait",
         f"{waiting['decisions_per_s'] / idle['runs_per_s']:.2f}", "-", "-"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.approvals", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000, help="waiting runs (and idle "
                        "threads); default 10,000")
    parser.add_argument("--quick", action="store_true", help="1,000 runs, for a smoke run")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tune_gc()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    n = 1_000 if args.quick else args.runs
    t0 = time.perf_counter()
    results: dict[str, Any] = {"n": n, "store": "sqlite", "idle": side("idle", n),
                               "waiting": side("waiting", n)}
    results["ratio_bytes"] = (results["waiting"]["bytes_per_thread"]
                              / results["idle"]["bytes_per_thread"])
    results["seconds"] = time.perf_counter() - t0
    path = write_results("approvals", results)
    print(table(rows(results)))
    w = results["waiting"]
    print(f"decide -> ok (approval_decided stored): p50 {w['decide_ok_p50_ms']:.1f} ms, "
          f"p99 {w['decide_ok_p99_ms']:.1f} ms, {CONCURRENCY} decisions in flight")
    progress(f"done in {results['seconds']:.0f} s; figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
