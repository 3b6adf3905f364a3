"""What token budgets cost (issue 24): events/s of one ``threadline serve`` process with budgets
off and on, in the same run, on the default store (SQLite) and in memory.

A budget is checked against the store before every ``send`` stores anything (two key look-ups
of the user's day and month rows) and before every model call; every report of tokens is one
more write through the store's writer. So two loads, each with budgets off and on:

- ``hello``: the echo agent's plain answer (``agent_started``, ``agent_thinking``,
  ``agent_completed``): with budgets on, only the check before the send is added;
- ``/usage``: the echo agent's report of 8 tokens through ``Run.model_call`` (a second check)
  and ``Run.report_usage`` (a write of the run's node and the user's two rows): a model's turn
  as threadline counts it, without the model.

The budget set is far above what the load spends (10^15 tokens a day), so nothing is refused:
the figures are the checks' cost, not refusals'. Every connection is its own user with its own
thread and keeps ``--window`` turns in flight (``bench/ws.py``'s load); the four servers
alternate over ``--rounds`` and the median round is kept, so that drift on a shared machine
hits all alike. Loopback only; bounded by ``--seconds`` a measurement.

Usage: ``python -m bench.budgets [--connections 100] [--seconds 4] [--rounds 3]
[--stores sqlite,memory]``. Progress goes to stderr, the table to stdout, the figures to
``bench/results/budgets.json``.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from typing import Any

import trio

from .common import Row, progress, table, write_results
from .servers import Databases, server_process
from .ws import load, median_run

BUDGET = ("--limit=user_tokens_per_day=1000000000000000",)
LOADS = ("hello", "/usage")


def measure(store: str, url: str, text: str, budgets: bool, connections: int, seconds: float,
            window: int) -> dict[str, Any]:
    with server_process("threadline", store=url, extra=BUDGET if budgets else ()) as (
            ws_url, proc):
        result = trio.run(load, ws_url, "threadline", connections, seconds, window, proc.pid,
                          None, text)
    progress(f"{store:7s} {text:7s} budgets {'on ' if budgets else 'off'}: "
             f"{result['events_per_s']:9,.0f} events/s, cpu server {result['server_cpu']:.2f}")
    return result


def run(stores: tuple[str, ...], connections: int, seconds: float, rounds: int,
        window: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        databases = Databases(stack)
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(rounds):
            for store in stores:
                for text in LOADS:
                    for budgets in (False, True):
                        url = databases.fresh(store)
                        if url is None:
                            continue
                        name = f"{store} {text} {'on' if budgets else 'off'}"
                        runs.setdefault(name, []).append(measure(
                            store, url, text, budgets, connections, seconds, window))
        out = {name: median_run(r) for name, r in runs.items()}
    return out


def rows(results: dict[str, dict[str, Any]], stores: tuple[str, ...]) -> list[Row]:
    out: list[Row] = []
    for store in stores:
        for text in LOADS:
            off, on = results.get(f"{store} {text} off"), results.get(f"{store} {text} on")
            if off is None or on is None:
                continue
            ratio = on["events_per_s"] / off["events_per_s"]
            out.append((f"events/s, {store}, {text!r}, budgets on", f"{on['events_per_s']:,.0f}",
                        f"{off['events_per_s']:,.0f} budgets off", f"{ratio:.2f}", "-", "-"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.budgets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--stores", default="sqlite,memory")
    args = parser.parse_args(argv)
    stores = tuple(s for s in args.stores.split(",") if s)
    results = run(stores, args.connections, args.seconds, args.rounds, args.window)
    print(table(rows(results, stores)))
    path = write_results("budgets", {"connections": args.connections, "seconds": args.seconds,
                                     "rounds": args.rounds, "results": results})
    progress(f"figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
