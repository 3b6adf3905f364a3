"""What tracing costs: events per second through one server process under the echo load of
``bench.ws``, with tracing off (``NO_TRACING``: the baseline), on with every span dropped (an
SDK provider whose exporter throws each batch away: the cost of making the spans), and on with
the OTLP/HTTP exporter sending to a receiver on loopback (making, encoding and sending them),
in the same run.

Each server is ``python -m bench.tracing --serve MODE``: ``open_runtime(tracing=...)`` and
``open_server`` as an embedding program writes them, the per-connection rate limits lifted as
``bench.ws`` lifts them, on ``--store`` (memory by default: the store costs nothing there, so
tracing's share is the largest it can be). The OTLP one is configured by the environment
alone (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), its batches going to ``python -m
tests.otlp_receiver`` (counting only), in a process of its own. Each connection is its own
user on its own thread and keeps ``--window`` turns in flight; a turn is a ``send`` of
``hello`` answered by the echo agent's 4 events and an ``accepted``: two spans (``send``,
``invoke_agent echo_agent``), the worst case (no model call, no tool, no text: nothing but
the runtime's own work to hide tracing's cost behind). The modes alternate over ``--rounds``
rounds (medians reported), so that drift on a shared machine hits all alike.

Besides events/s: the server's CPU per turn (its CPU seconds over the turns it completed), its
resident memory at the end, and for the OTLP mode the spans the receiver got per run the server
started (2.0: none dropped; the ``BatchSpanProcessor`` drops spans when its queue is full).

Loopback only; bounded in count (levels, rounds) and time (``--seconds`` a measure, 30 s for a
process to start or stop). About 2 minutes at the defaults.

Usage: ``python -m bench.tracing [--connections 10,100] [--seconds 5] [--rounds 3] [--window 4]
[--store memory]``. Progress on stderr, the table on stdout, the figures in
``bench/results/tracing.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack, contextmanager
from typing import Any, Iterator, Sequence

import trio

from threadline.tuning import raise_fd_limit, tune_gc

from .common import Row, median, progress, table, write_results
from .servers import ROOT, SECRET, rss_of
from .ws import load

MODES = ("off", "dropped", "otlp")
LABELS = {"off": "tracing off (NO_TRACING)", "dropped": "spans made, dropped",
          "otlp": "spans sent by OTLP/HTTP"}
SPANS_PER_TURN = 2  # send, invoke_agent
START_TIMEOUT = 30.0


# -- the server process ------------------------------------------------------------------------


def _dropping_provider() -> Any:
    """An SDK provider whose exporter drops every batch (through a ``BatchSpanProcessor``, as
    the OTLP mode's provider, so that only the export itself differs)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (BatchSpanProcessor, SpanExporter,
                                                SpanExportResult)

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    return provider


async def serve(mode: str, store: str) -> None:
    """Serve on a free port with tracing as ``mode`` says; print ``ready: URL``; on SIGTERM,
    close (spans flushed) and print ``runs: N``."""
    from threadline import open_runtime
    from threadline.otel import open_tracing
    from threadline.server import open_server
    from threadline.stores import open_journal
    from threadline.transport.limits import Limits

    lifted = Limits(rate=1e12, burst=10**9, byte_rate=1e12, byte_burst=10**9,
                    user_send_rate=1e12, user_send_burst=10**9, user_connections=10**9,
                    lane_depth=10**9)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with AsyncExitStack() as stack:
            tracing = None
            if mode == "dropped":
                provider = _dropping_provider()
                stack.callback(provider.shutdown)
                tracing = await stack.enter_async_context(open_tracing(
                    tracer_provider=provider))
            elif mode == "otlp":
                tracing = await stack.enter_async_context(open_tracing())
            journal = await stack.enter_async_context(open_journal(store))
            rt = await stack.enter_async_context(open_runtime(journal=journal,
                                                              tracing=tracing))
            server = await stack.enter_async_context(open_server(
                rt, port=0, secret=SECRET, limits=lifted))
            print(f"ready: {server.url}", flush=True)
            async for _ in signals:
                break
            runs = rt.statistics().runs_started
        print(f"runs: {runs}", flush=True)


# -- the processes, from the load generator's side ---------------------------------------------


def _clean_env() -> dict[str, str]:
    """This environment without OTEL_* (only what a mode sets counts) and without proxies (the
    exporter would send loopback traffic through one)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("OTEL_") and k.lower() not in ("http_proxy", "https_proxy",
                                                               "all_proxy")}


@contextmanager
def receiver_process() -> Iterator[tuple[int, subprocess.Popen]]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.otlp_receiver"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env=_clean_env())
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not line.startswith("ready: "):
            raise RuntimeError(f"the OTLP receiver did not start: {line!r}")
        yield int(line.removeprefix("ready: ")), proc
    finally:
        proc.terminate()
        proc.wait(START_TIMEOUT)


def received_spans(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/stats")
        return int(json.loads(conn.getresponse().read())["spans"])
    finally:
        conn.close()


@contextmanager
def server_process(mode: str, store: str, receiver: int) -> Iterator[tuple[str, subprocess.Popen,
                                                                          dict[str, Any]]]:
    """The server of ``mode``; yields its URL, its process and a dict that gets, once it has
    stopped, ``runs`` (started) and ``rss_bytes`` (taken just before the stop)."""
    env = _clean_env()
    if mode == "otlp":
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{receiver}/v1/traces"
    proc = subprocess.Popen([sys.executable, "-m", "bench.tracing", "--serve", mode,
                             "--store", store], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=env)
    after: dict[str, Any] = {}
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not line.startswith("ready: "):
            raise RuntimeError(f"the {mode} server did not start: {line!r}")
        yield line.removeprefix("ready: "), proc, after
        after["rss_bytes"] = rss_of(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    for line in out.splitlines():
        if line.startswith("runs: "):
            after["runs"] = int(line.removeprefix("runs: "))


def measure(mode: str, connections: int, args: argparse.Namespace,
            receiver: int) -> dict[str, Any]:
    before = received_spans(receiver)
    with server_process(mode, args.store, receiver) as (url, proc, after):
        result = trio.run(load, url, "threadline", connections, args.seconds, args.window,
                          proc.pid)
    result["rss_mb"] = after.get("rss_bytes", 0) / 2**20
    turns = result["turns_per_s"]
    result["cpu_us_per_turn"] = result["server_cpu"] / turns * 1e6 if turns else None
    runs = after.get("runs")
    spans = received_spans(receiver) - before
    result["spans_per_run"] = spans / runs if mode == "otlp" and runs else None
    dropped = "" if result["spans_per_run"] is None else (
        f", {spans:,} spans received, {result['spans_per_run']:.2f} a run")
    progress(f"{mode:8s} {connections:4d} conns: {result['events_per_s']:9,.0f} events/s, "
             f"server cpu {result['server_cpu']:.2f} ({result['cpu_us_per_turn'] or 0:,.0f} "
             f"us a turn), {result['rss_mb']:.0f} MB{dropped}")
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds, and every round's events/s."""
    keys = ("events_per_s", "server_cpu", "loadgen_cpu", "cpu_us_per_turn", "rss_mb",
            "spans_per_run", "p50_ms", "p99_ms")
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = median(values) if values else None
    out["all_events_per_s"] = [round(r["events_per_s"]) for r in runs]
    return out


def rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    out: list[Row] = []
    for n, by_mode in results.items():
        off = by_mode["off"]
        for mode in MODES[1:]:
            r = by_mode[mode]
            out.append((f"events/s, {n} connections, {LABELS[mode]}",
                        f"{r['events_per_s']:,.0f}", f"{off['events_per_s']:,.0f} off",
                        f"{r['events_per_s'] / off['events_per_s']:.2f}", "-", "-"))
            if r["cpu_us_per_turn"] and off["cpu_us_per_turn"]:
                out.append((f"server CPU us a turn, {n} connections, {LABELS[mode]}",
                            f"{r['cpu_us_per_turn']:,.0f}", f"{off['cpu_us_per_turn']:,.0f} off",
                            f"{r['cpu_us_per_turn'] / off['cpu_us_per_turn']:.2f}", "-", "-"))
        otlp = by_mode["otlp"]
        if otlp["spans_per_run"] is not None:
            out.append((f"spans received a run, {n} connections", f"{otlp['spans_per_run']:.2f}",
                        f"{SPANS_PER_TURN} made", f"{otlp['spans_per_run'] / SPANS_PER_TURN:.2f}",
                        "-", "-"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="10,100")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--store", default="memory",
                        help="memory (default), sqlite (a fresh file for each server)")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)  # a server process
    args = parser.parse_args(argv)
    tune_gc()
    raise_fd_limit()
    if args.serve is not None:
        logging.basicConfig(level=logging.WARNING)
        trio.run(serve, args.serve, args.store)
        return 0
    levels = [int(x) for x in args.connections.split(",")]
    if not (levels and all(1 <= n <= 1000 for n in levels) and 1 <= args.rounds <= 20
            and 0 < args.seconds <= 60 and 1 <= args.window <= 100):
        parser.error("1 to 1,000 connections a level, 1 to 20 rounds, up to 60 s a measure")
    results: dict[str, dict[str, Any]] = {}
    store = args.store
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as folder, \
            receiver_process() as (receiver, _):
        for n in levels:
            runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
            for i in range(args.rounds):
                for mode in MODES:
                    if store == "sqlite":  # a fresh file for every server
                        args.store = f"sqlite:///{folder}/{mode}-{n}-{i}.sqlite3"
                    runs[mode].append(measure(mode, n, args, receiver))
            results[str(n)] = {mode: summarize(r) for mode, r in runs.items()}
    args.store = store
    path = write_results("tracing", {"args": {k: v for k, v in vars(args).items()
                                              if k != "serve"}, "throughput": results})
    print(table(rows(results)))
    progress(f"figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
