"""Streaming: how many answers one ``threadline serve`` process streams at once, and how late
each piece reaches its client, on the SQLite store and on PostgreSQL.

Every connection is its own user with its own thread and sends ``/stream N``: the echo agent
writes ``1 2 ... N``, one number per ``run.write``, 200 numbers a second, as a model streams
tokens (``actors/agents.py``). The server coalesces the writes into ``agent_delta`` events (at
most one per run every 50 ms), stores each, then delivers it.

Piece delay: the agent writes number ``i`` at ``t0 + 10 * floor((i - 1) / 10) / 200`` seconds
(it writes ten numbers, then sleeps until their time), where ``t0`` is the ``ts`` of the run's
``agent_thinking``, stamped just before the first write. A delta's delay is the time it arrives
(this process's wall clock, the same machine's) minus the write time of its first number: the
longest any text in it waited. A level is sustained when every answer arrives whole and the
p99 delay is under 150 ms.

Rows per answer: the journal rows one answer of ``N`` numbers (``N`` "tokens") costs, counted
from its events (``user_message``, ``agent_started``, ``agent_thinking``, the deltas,
``agent_completed``).

Usage: ``python -m bench.streaming [--answers 100,250,500,1000] [--numbers 1000]``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import ExitStack
from typing import Any

import trio

from threadline.transport.auth import mint
from threadline.tuning import raise_fd_limit, tune_gc

from .common import Row, met, progress, table, write_results
from .loadgen import ask_and_follow, cpu_seconds, open_ws, process_cpu_seconds
from .servers import SECRET, Databases, server_process

RATE, BATCH = 200.0, 10  # the echo agent's: numbers a second, numbers between two sleeps
P99_TARGET_MS = 150.0
STAGGER = 1.0  # seconds over which the questions of one level are asked
TARGET_ANSWERS = 1000
MIN_ANSWERS = 500
LEVELS = [50, 100, 200, 300, 400, 500, 600, 800, 1000]  # stops at the first not sustained


async def one_answer(url: str, user: str, numbers: int, delays: list[float],
                     go: trio.Event, after: float) -> dict[str, Any]:
    """Stream one answer on a fresh connection, asked ``after`` seconds after ``go``; its
    delta delays go into ``delays``."""
    conn = await open_ws(url, mint(user, SECRET))
    text, t0, deltas, events = "", 0.0, 0, 0

    def on_event(now: float, event: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal text, t0, deltas, events
        events += 1
        name, data = event["event"], event["data"]
        if name == "agent_thinking":
            t0 = event["ts"]
        elif name == "agent_delta" and data["offset"] == len(text):
            first = int(data["text"].split()[0])
            written = t0 + BATCH * math.floor((first - 1) / BATCH) / RATE
            delays.append(now - written)
            text += data["text"]
            deltas += 1
        elif name == "agent_completed":
            whole = data["text"] == text == " ".join(map(str, range(1, numbers + 1)))
            return {"whole": whole, "deltas": deltas, "rows": events}
        return None

    try:
        return await ask_and_follow(conn, f"/stream {numbers}", go, after, numbers / RATE + 60,
                                    on_event) or {"whole": False, "deltas": deltas,
                                                  "rows": events}
    finally:
        await conn.aclose()


async def level(url: str, answers: int, numbers: int, pid: int, tag: str) -> dict[str, Any]:
    delays: list[float] = []
    results: list[dict[str, Any]] = []
    go = trio.Event()
    cpu0, server0, wall0 = cpu_seconds(), process_cpu_seconds(pid), time.perf_counter()

    async def answer(i: int) -> None:
        # Questions arrive spread over STAGGER seconds, as users' do; all at one instant, every
        # answer would write in the same 5 ms of each 50 (the echo agent's clock is exact).
        results.append(await one_answer(url, f"{tag}{answers}u{i}", numbers, delays, go,
                                        STAGGER * i / answers))

    async with trio.open_nursery() as nursery:
        for i in range(answers):
            nursery.start_soon(answer, i)
        await trio.sleep(min(10.0, 0.5 + answers / 200))  # let every connection open and join
        go.set()
    wall = time.perf_counter() - wall0
    delays.sort()
    pct = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))] * 1000 if delays else None  # noqa: E731
    whole = sum(r["whole"] for r in results)
    return {"answers": answers, "whole": whole, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "max_ms": delays[-1] * 1000 if delays else None,
            "rows_per_answer": sum(r["rows"] for r in results) / max(1, len(results)),
            "deltas": len(delays), "server_cpu": (process_cpu_seconds(pid) - server0) / wall,
            "loadgen_cpu": (cpu_seconds() - cpu0) / wall,
            "sustained": whole == answers and pct(0.99) is not None
            and pct(0.99) < P99_TARGET_MS}


def run(answers: list[int], numbers: int, which: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {"numbers": numbers, "stores": {}}
    with ExitStack() as stack:
        databases = Databases(stack)
        for name in which:
            url = databases.fresh(name)
            if url is None:
                continue  # no PostgreSQL here: said by ``Databases``
            rows: dict[str, Any] = {}
            with server_process("threadline", store=url) as (ws_url, proc):
                for n in answers:
                    progress(f"streaming: {n} answers of {numbers} numbers on {name}")
                    rows[str(n)] = trio.run(level, ws_url, n, numbers, proc.pid, name)
                    r = rows[str(n)]
                    progress(f"  whole {r['whole']}/{n}, p99 {r['p99_ms']:.0f} ms, server CPU "
                             f"{r['server_cpu']:.0%}, load generator CPU {r['loadgen_cpu']:.0%}")
                    if not r["sustained"]:
                        break  # past the limit: larger levels only take longer
            results["stores"][name] = rows
    return results


def sustained(levels: dict[str, Any]) -> int:
    return max((int(n) for n, r in levels.items() if r["sustained"]), default=0)


def rows(results: dict[str, Any]) -> list[Row]:
    """A row per durable store, against the memory store measured in the same run (what the
    rest of the path allows)."""
    out: list[Row] = []
    stores = results["stores"]
    base = sustained(stores["memory"]) if "memory" in stores else None
    if base is not None:
        out.append((f"concurrent streaming answers, p99 piece delay < {P99_TARGET_MS:.0f} ms "
                    "(memory)", f"{base:,}", "-", "-", f">= {TARGET_ANSWERS:,}",
                    met(base >= TARGET_ANSWERS)))
    for name, levels in stores.items():
        if name == "memory":
            continue
        best = sustained(levels)
        at = levels[str(best)] if best else next(iter(levels.values()))
        out.append((f"concurrent streaming answers, p99 piece delay < {P99_TARGET_MS:.0f} ms "
                    f"({name})", f"{best:,}", f"{base:,} memory store" if base else "-",
                    f"{best / base:.2f}" if base else "-", f">= {TARGET_ANSWERS:,} "
                    f"(>= {MIN_ANSWERS} required)", met(best >= MIN_ANSWERS)))
        out.append((f"p99 piece delay at {at['answers']:,} answers ({name})",
                    f"{at['p99_ms']:.0f} ms", "-", "-", f"< {P99_TARGET_MS:.0f} ms",
                    met(at["p99_ms"] is not None and at["p99_ms"] < P99_TARGET_MS)))
        out.append((f"journal rows per {results['numbers']:,}-token answer ({name})",
                    f"{at['rows_per_answer']:.0f}", "-", "-", "-", "-"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__.split("\n\n")[0])
    p.add_argument("--answers", default=",".join(map(str, LEVELS)),
                   help="levels of concurrent answers, comma-separated")
    p.add_argument("--numbers", type=int, default=1000, help="numbers (tokens) per answer")
    p.add_argument("--stores", default="memory,sqlite,postgresql",
                   help="memory is the baseline: the path without a store")
    args = p.parse_args(argv)
    raise_fd_limit()
    tune_gc()
    results = run([int(n) for n in args.answers.split(",")], args.numbers,
                  args.stores.split(","))
    print(table(rows(results)))
    print(f"results: {write_results('streaming', results)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
