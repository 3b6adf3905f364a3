"""The whole benchmark suite in one command: ``python -m bench`` (``--quick`` for a smoke run).

Runs every scenario of ``bench/README.md`` with progress on stderr, then prints one table (each
figure, its baseline measured in the same run, the ratio, the target in docs/architecture.md and whether it is
met), writes ``bench/results/suite.json`` and the curves as PNG in ``bench/results/``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from contextlib import ExitStack
from typing import Any

from threadline.tuning import raise_fd_limit, tune_gc

from . import actors as actors_bench
from . import cluster as cluster_bench
from . import http as http_bench
from . import journal as journal_bench
from . import model_client as model_bench
from . import profile as profile_bench
from . import scale as scale_bench
from . import streaming as streaming_bench
from . import ws as ws_bench
from .common import RESULTS, Row, met, progress, table, write_results
from .servers import STORES, Databases, variant
from .ws import measure

TURN_EVENTS = 4  # an echo turn: user_message, agent_started, agent_thinking, agent_completed


DURABLE_AT = "0.50"  # the load at which the durable servers' latency is measured too


def latency(max_events: float, fractions: list[float], connections: int,
            seconds: float) -> dict[str, Any]:
    """Open loop: every connection sends at a fixed interval, whatever the answers do. At
    half the load, also threadline and the peer on SQLite and on PostgreSQL."""
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        databases = Databases(stack)
        for fraction in fractions:
            offered_turns = max_events * fraction / TURN_EVENTS
            interval = connections / offered_turns
            row = {}
            stores = STORES if f"{fraction:.2f}" == DURABLE_AT else ("memory",)
            for kind in ("threadline", "peer"):
                for store in stores:
                    url = databases.fresh(store)
                    if url is None:
                        continue
                    name = variant(kind, store)
                    row[name] = measure(kind, connections, seconds, window=10**6,
                                        interval=interval, store=url)
                    row[name]["offered_events_per_s"] = offered_turns * TURN_EVENTS
            out[f"{fraction:.2f}"] = row
    return out


def _finish(fig: Any, ax: Any, name: str, xlabel: str, ylabel: str, title: str) -> str:
    """Label a plot, save it as ``RESULTS/name``; its path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / name
    fig.savefig(path, dpi=110)
    return str(path)


def plots(results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    tp = results["throughput"]
    levels = [int(n) for n in tp]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = {"threadline": "threadline, memory store", "bare": "bare echo server, same engine",
             "peer": "FastAPI + uvicorn peer, no storage"}
    for store, label in ws_bench.LABELS.items():
        names[variant("threadline", store)] = f"threadline, {label} store"
        names[variant("peer", store)] = f"FastAPI peer, {label} (commit per event)"
    for name, label in names.items():
        if all(name in tp[str(n)] for n in levels):
            ax.plot(levels, [tp[str(n)][name]["events_per_s"] for n in levels],
                    "--" if name.startswith("peer") else "-", marker="o", label=label)
    ax.set_xscale("log")
    written.append(_finish(fig, ax, "throughput.png", "connections",
                           "events delivered per second",
                           "Server throughput (one process each, loopback)"))

    lat = results["latency"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, style in (("threadline", "-"), ("peer", "--")):
        xs = [lat[f][kind]["offered_events_per_s"] for f in lat]
        for pct, marker in (("p50_ms", "o"), ("p99_ms", "s"), ("p999_ms", "^")):
            ax.plot(xs, [lat[f][kind][pct] for f in lat], style, marker=marker,
                    label=f"{kind} {pct.removesuffix('_ms').replace('p999', 'p99.9')}")
    ax.axhline(20, color="grey", linewidth=0.8, label="target: p99 < 20 ms at half load")
    ax.set_yscale("log")
    written.append(_finish(fig, ax, "latency.png", "offered load (events/s)",
                           "send to agent_completed (ms)", "Latency under open-loop load"))
    if "model_client" in results:
        mc = results["model_client"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sides = [("bare SDK under trio, no threadline", mc["bare"], "--")] + [
            (f"threadline --agent openai, {store} store", levels, "-")
            for store, levels in mc["threadline"].items()]
        for label, levels, style in sides:
            ns = sorted(levels, key=int)
            ax.plot([int(n) for n in ns], [levels[n]["p99_ms"] for n in ns], style, marker="o",
                    label=label)
        ax.axhline(mc["p99_target_ms"], color="grey", linewidth=0.8,
                   label=f"sustained: p99 < {mc['p99_target_ms']:.0f} ms")
        ax.set_yscale("log")
        written.append(_finish(
            fig, ax, "model_client.png",
            f"concurrent answers streamed at {mc['rate']:.0f} tokens/s", "p99 piece delay (ms)",
            "A real model client: the official SDK, with and without threadline"))
    return written


def rows(results: dict[str, Any]) -> list[Row]:
    out = actors_bench.rows(results["actors"]) + ws_bench.rows(results["throughput"])
    half = results["latency"][DURABLE_AT]
    for store, label in (("memory", ""), *ws_bench.LABELS.items()):
        t, p = half.get(variant("threadline", store)), half.get(variant("peer", store))
        if t is None or p is None:
            continue
        where = f", {label} store" if label else ""
        out.append((f"p99 ms at half max ({t['offered_events_per_s']:,.0f} events/s "
                    f"offered){where}", f"{t['p99_ms']:.1f}",
                    f"{p['p99_ms']:.1f} {'durable ' if label else ''}FastAPI peer",
                    f"{t['p99_ms'] / p['p99_ms']:.2f}", "< 20 ms", met(t["p99_ms"] < 20)))
    s = results["scale"]["connections"]
    out.append(("concurrent connections, one process", f"{s['connections']:,}", "-", "-",
                ">= 10,000", met(s["connections"] >= 10_000)))
    out.append(("resident bytes per connection", f"{s['bytes_per_connection']:,.0f}", "-", "-",
                "-", "-"))
    pv = results["scale"]["passivation"]
    out.append((f"threads reactivated/s after passivating {pv['threads']:,}",
                f"{pv['reactivated_per_s']:,.0f}", f"{pv['created_per_s']:,.0f} created/s",
                f"{pv['reactivated_per_s'] / pv['created_per_s']:.2f}", "-", "-"))
    out += journal_bench.rows(results["journal"])
    for name, bench in (("streaming", streaming_bench), ("model_client", model_bench),
                        ("http", http_bench), ("profile", profile_bench)):
        if name in results:
            out += bench.rows(results[name])
    return out


def markdown(results: dict[str, Any]) -> str:
    """The table as markdown, for bench/README.md."""
    head = "| figure | threadline | baseline | ratio | target | met |\n|---|---|---|---|---|---|"
    return "\n".join([head, *("| " + " | ".join(r) + " |" for r in rows(results))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller and shorter: a smoke run")
    parser.add_argument("--markdown", metavar="SUITE_JSON",
                        help="print the table of an earlier run as markdown, and stop")
    parser.add_argument("--before", metavar="PYTHON",
                        help="another installed threadline's Python: the profile scenario "
                             "measures it too, for CPU per event before and after")
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return 0
    quick = args.quick
    tune_gc()
    raise_fd_limit()
    t0 = time.perf_counter()
    results: dict[str, Any] = {"quick": quick}

    progress("1/10 in-process actors")
    results["actors"] = {
        "ask": actors_bench.bench_ask(20_000 if quick else 100_000, 3),
        "memory": actors_bench.bench_memory(10_000 if quick else 100_000),
        "activations": actors_bench.bench_activations(10_000 if quick else 50_000, 3),
    }
    gc.collect()

    progress("2/10 server throughput: threadline and the FastAPI peer on memory, SQLite and "
             "PostgreSQL, and the bare echo server")
    levels = [1, 10, 100] if quick else [1, 10, 100, 1000]
    results["throughput"] = ws_bench.throughput(levels, 2.0 if quick else 3.0, 1 if quick else 2,
                                                ("bare", "threadline", "peer"))

    progress("3/10 latency under open-loop load, 100 connections (durable stores at half)")
    max_events = results["throughput"]["100"]["threadline"]["events_per_s"]
    results["latency"] = latency(max_events, [0.25, 0.5, 0.75, 1.0], 100, 2.0 if quick else 4.0)

    progress("4/10 scale: many connections, many threads")
    results["scale"] = {
        "connections": scale_bench.connections(1000 if quick else 10_000),
        "passivation": scale_bench.passivation(10_000 if quick else 100_000),
    }

    progress("5/10 journal: SQLite and PostgreSQL, group commit and a transaction per event")
    results["journal"] = journal_bench.run(2.0 if quick else 4.0, [200] if quick else [200, 1000])

    progress("6/10 streaming: concurrent /stream answers on memory, SQLite and PostgreSQL")
    results["streaming"] = streaming_bench.run(
        [50, 100] if quick else streaming_bench.LEVELS, 400 if quick else 1000, list(STORES))

    progress("7/10 a real model client: --agent openai against a scripted model at 50 "
             "tokens/s, and the bare SDK")
    results["model_client"] = model_bench.run(quick)

    progress("8/10 HTTP API: requests/s kept alive, one per connection, and a FastAPI peer")
    results["http"] = http_bench.run(2.0 if quick else 4.0, quick)

    progress("9/10 where the CPU goes: py-spy on memory and SQLite at 100 connections"
             + (" (and the build before)" if args.before else ""))
    results["profile"] = profile_bench.run(["memory", "sqlite"], 100, 3.0 if quick else 6.0,
                                           args.before)

    progress("10/10 cluster: 1, 2 and 3 nodes on one PostgreSQL (its own table, cluster.json)")
    cluster_bench.main(["--rounds", "1" if quick else "2", "--seconds", "2" if quick else "4",
                        "--latency-seconds", "3" if quick else "6"])

    results["seconds"] = time.perf_counter() - t0
    path = write_results("suite", results)
    pngs = plots(results)
    print(table(rows(results)))
    progress(f"done in {results['seconds'] / 60:.1f} min; figures in {path}; plots "
             + ", ".join(pngs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
