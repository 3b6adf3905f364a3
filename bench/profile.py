"""Where a server's time goes per event: ``threadline serve`` on a store under the throughput
load (``ws.py``: connections each with its own thread and ``--window`` turns in flight), sampled
with py-spy, the samples sorted into the parts of the path, in microseconds of CPU per event
delivered.

A sample is counted in the first part, in the order below, whose code is on its stack (py-spy
sees coroutine frames without always their caller, so a sample is classified by the functions
it shows, not by its task); the rest is trio's scheduling and I/O polling. Worker threads are
sampled too (the stores' SQL runs there, mostly with the GIL released).

Usage: ``python -m bench.profile [--store sqlite] [--connections 100] [--seconds 6]
[--before PYTHON]`` (``--before``: another installed threadline, profiled in the same run)
(needs ``py-spy``, in the ``bench`` extra; as root, or with ptrace allowed).
"""

from __future__ import annotations

import argparse
import collections
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import trio

from threadline.tuning import raise_fd_limit

from .common import Row, met, progress
from .servers import Databases, server_process
from .ws import load

#: (part, functions that put a sample in it), first match wins.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("store: SQL and commit (worker thread)", ("WorkerThread._work",)),
    ("store: batching and answers (writer task)", ("DurableJournal.run_writer",)),
    ("socket send", ("SocketStream.send_all", "WebSocketConnection._send_now")),
    ("socket receive", ("SocketStream.receive_some", "WebSocketConnection._receive_some")),
    ("connection writer: encode and frame", ("Outbox.run_writer", "Session._writer")),
    ("connection reader: decode and route", ("Session._reader", "Lanes._run")),
    ("thread actor: mailbox, numbering, delivery",
     ("ThreadActor.", "Sequencer.", "_Write.", "Directory._run")),
    ("engine and echo agent", ("execute", "echo_agent", "run_queued")),
]
OTHER = "trio: scheduling, timers, I/O polling"
#: py-spy beside this Python (a venv's bin/, which is not always on PATH), else on PATH.
PY_SPY_RATE = "200"  # samples per second
PY_SPY = next((str(p) for p in [Path(sys.executable).parent / "py-spy"] if p.exists()), "py-spy")


def account(raw: Path) -> dict[str, float]:
    """Shares of the samples in a py-spy ``raw`` file, by part."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [f.split(" (")[0] for f in stack.split(";")]
        part = next((name for name, marks in PARTS
                     if any(f.startswith(m) for f in frames for m in marks)), OTHER)
        counts[part] += int(n)
    total = sum(counts.values()) or 1
    return {name: counts[name] / total for name, _ in [*PARTS, (OTHER, ())]}


def profile(store: str, connections: int, seconds: float, window: int,
            keep: Path | None = None) -> dict[str, Any]:
    with ExitStack() as stack:
        url = Databases(stack).fresh(store)
        if url is None:
            raise SystemExit(f"no {store} here")
        raw = (keep / f"profile-{store}.raw" if keep is not None else
               Path(stack.enter_context(tempfile.TemporaryDirectory())) / "profile.raw")
        with server_process("threadline", store=url) as (ws_url, proc):
            spy = subprocess.Popen([PY_SPY, "record", "-p", str(proc.pid), "-r", PY_SPY_RATE,
                                    "--nonblocking", "--format", "raw", "-o", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result = trio.run(load, ws_url, "threadline", connections, seconds, window, proc.pid)
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(30)
        shares = account(raw)
    per_event = result["server_cpu"] / result["events_per_s"] * 1e6  # CPU µs per event
    return {"store": store, "events_per_s": result["events_per_s"],
            "server_cpu": result["server_cpu"], "cpu_us_per_event": per_event,
            "parts_us": {name: share * per_event for name, share in shares.items()}}


def run(stores: list[str], connections: int, seconds: float, before: str | None = None,
        ) -> dict[str, Any]:
    """For the suite: each store profiled, and with ``before`` (another installed threadline's
    Python, as ``THREADLINE_BENCH_PYTHON``) that build too, alternating, in the same run."""
    from . import servers

    out: dict[str, Any] = {}
    for store in stores:
        out[store] = {"after": profile(store, connections, seconds, 4)}
        if before is not None:
            mine, servers.SERVER_PYTHON = servers.SERVER_PYTHON, before
            try:
                out[store]["before"] = profile(store, connections, seconds, 4)
            finally:
                servers.SERVER_PYTHON = mine
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for store, r in results.items():
        after, before = r["after"], r.get("before")
        label = "memory store" if store == "memory" else f"{store} store"
        value = f"{after['cpu_us_per_event']:.0f} us"
        if before is None:
            out.append((f"CPU per event delivered, {label} (bench.profile)", value, "-", "-",
                        "-", "-"))
            continue
        ratio = after["cpu_us_per_event"] / before["cpu_us_per_event"]
        target = "<= 0.5 x before" if store == "memory" else "-"
        out.append((f"CPU per event delivered, {label} (bench.profile)", value,
                    f"{before['cpu_us_per_event']:.0f} us before", f"{ratio:.2f}", target,
                    met(ratio <= 0.5) if store == "memory" else "-"))
    return out


def parts_table(results: dict[str, Any]) -> str:
    """µs of CPU per event by part, each store before and after, as markdown."""
    columns = [(store, which) for store, r in results.items() for which in ("before", "after")
               if which in r]
    head = "| µs of CPU per event | " + " | ".join(f"{s} {w}" for s, w in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for part in [name for name, _ in PARTS] + [OTHER]:
        lines.append(f"| {part} | " + " | ".join(
            f"{results[s][w]['parts_us'][part]:.1f}" for s, w in columns) + " |")
    lines.append("| **total** (server CPU / events) | " + " | ".join(
        f"**{results[s][w]['cpu_us_per_event']:.0f}**" for s, w in columns) + " |")
    return "\n".join(lines)


def report(p: dict[str, Any]) -> str:
    lines = [f"{p['store']}: {p['events_per_s']:,.0f} events/s at {p['server_cpu']:.0%} CPU, "
             f"{p['cpu_us_per_event']:.0f} µs of CPU per event"]
    lines += [f"  {us:6.1f} µs  {name}" for name, us in p["parts_us"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="memory,sqlite,postgresql")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep py-spy's raw samples in DIR (profile-STORE.raw)")
    parser.add_argument("--before", metavar="PYTHON",
                        help="another installed threadline's Python, profiled after each store "
                             "(a table of both, by part, at the end)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.before:
        results = run(args.store.split(","), args.connections, args.seconds, args.before)
        print(parts_table(results))
        return 0
    for store in args.store.split(","):
        progress(f"profiling threadline on {store}, {args.connections} connections")
        print(report(profile(store, args.connections, args.seconds, args.window, args.keep)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
