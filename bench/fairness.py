"""Fairness under one user's load: what other users wait while one user streams answers in
hundreds of threads at once, with the per-user bound on active runs (``--limit user_runs``, 10
by default) and without it, on the default store (SQLite).

The hog: one user, ``--hog`` threads (over 3 connections), each asked ``/stream N`` at once (the
echo agent writes N numbers, 200 a second, coalesced into ``agent_delta`` events). The others:
``--users`` users, one connection and thread each, sending a short message every 0.5 s for
``--seconds`` seconds, after the hog's runs started. For each message: send -> ``accepted`` and
send -> ``agent_completed``. The baseline is the same others with no hog, in the same run; the
figure is the others' p99 with the hog over that baseline.

Usage: ``python -m bench.fairness [--hog 300] [--users 20] [--seconds 10] [--numbers 20000]``
(about a minute; loopback only, every loop bounded in count and time).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from typing import Any

import trio

from threadline.transport.auth import mint
from threadline.transport.client import ServerError, open_client

from .common import progress, write_results
from .servers import SECRET, Databases, server_process

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def hog(url: str, threads: int, numbers: int, started: trio.Event) -> None:
    """One user starts ``/stream numbers`` in ``threads`` threads, 100 per connection."""
    async with trio.open_nursery() as nursery:
        for first in range(0, threads, 100):
            nursery.start_soon(_hog_connection, url, range(first, min(first + 100, threads)),
                               numbers)
        started.set()


async def _hog_connection(url: str, ids: range, numbers: int) -> None:
    """Start the runs, then go: they go on without a client (reading 100 streams here would
    cost the benchmark's own process, on the same 2 cores, more than the server)."""
    async with open_client(url, mint("hog", SECRET)) as client:
        for i in ids:
            await client.join(f"h{i}")
            await client.send(f"h{i}", f"/stream {numbers}")
            await client.leave(f"h{i}")


async def other(url: str, user: str, seconds: float, out: dict[str, list[float]]) -> None:
    async with open_client(url, mint(user, SECRET)) as client:
        await client.join("main")
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            sent = time.perf_counter()
            try:
                accepted = await client.send("main", "hello")
            except ServerError as exc:
                out["errors"].append(1.0)
                progress(f"{user}: {exc.code}")
                await trio.sleep(0.5)
                continue
            out["accepted"].append((time.perf_counter() - sent) * 1000)
            with trio.move_on_after(30):
                while True:
                    event = await client.next_event(30)
                    if event["run_id"] == accepted["run_id"] and event["event"] in TERMINAL:
                        out["completed"].append((time.perf_counter() - sent) * 1000)
                        break
            await trio.sleep(max(0.0, 0.5 - (time.perf_counter() - sent)))


async def measure(url: str, hog_threads: int, users: int, seconds: float,
                  numbers: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {"accepted": [], "completed": [], "errors": []}
    async with trio.open_nursery() as nursery:
        if hog_threads:
            started = trio.Event()
            nursery.start_soon(hog, url, hog_threads, numbers, started)
            await started.wait()
            await trio.sleep(2.0)  # the hog's runs are going
        with trio.fail_after(seconds + 60):
            async with trio.open_nursery() as others:
                for i in range(users):
                    others.start_soon(other, url, f"u{i}", seconds, out)
        nursery.cancel_scope.cancel()
    return {"messages": len(out["accepted"]), "errors": len(out["errors"]),
            "accepted_p50_ms": pct(out["accepted"], 0.5),
            "accepted_p99_ms": pct(out["accepted"], 0.99),
            "completed_p50_ms": pct(out["completed"], 0.5),
            "completed_p99_ms": pct(out["completed"], 0.99)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    cases = [("no hog", 0, None), (f"hog, user_runs={args.user_runs}", args.hog, args.user_runs),
             ("hog, no bound", args.hog, 1_000_000)]
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        databases = Databases(stack)
        for name, threads, bound in cases:
            store = databases.fresh("sqlite")
            extra = ("--limit", f"user_runs={bound}") if bound else ()
            progress(f"{name}: {threads} streaming threads, {args.users} others, "
                     f"{args.seconds:g} s")
            with server_process("threadline", store=store, extra=extra) as (url, _):
                results[name] = trio.run(measure, url, threads, args.users, args.seconds,
                                         args.numbers)
            progress(f"{name}: {results[name]}")
    return results


def render(results: dict[str, Any]) -> str:
    base = results["no hog"]
    lines = ["| case | messages | errors | accepted p50 / p99 ms | completed p50 / p99 ms "
             "| completed p99 / no hog |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        ratio = r["completed_p99_ms"] / base["completed_p99_ms"]
        lines.append(f"| {name} | {r['messages']} | {r['errors']} | "
                     f"{r['accepted_p50_ms']:.1f} / {r['accepted_p99_ms']:.1f} | "
                     f"{r['completed_p50_ms']:.1f} / {r['completed_p99_ms']:.1f} | "
                     f"{ratio:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.split("\n\n")[0])
    p.add_argument("--hog", type=int, default=300, help="threads the hog streams in")
    p.add_argument("--users", type=int, default=20, help="other users")
    p.add_argument("--seconds", type=float, default=10.0, help="how long the others send")
    p.add_argument("--numbers", type=int, default=20_000, help="/stream N of each hog thread")
    p.add_argument("--user-runs", type=int, default=10, help="the bound tried")
    args = p.parse_args(argv)
    results = run(args)
    path = write_results("fairness", {"args": vars(args), "results": results})
    print(render(results))
    progress(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
