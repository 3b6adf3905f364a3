"""Cluster: 1, 2 and 3 ``threadline serve --cluster`` nodes on one PostgreSQL (the tests'
throwaway cluster, ``fsync=on``), on loopback. 1. Throughput: ``bench/ws.py``'s workload, the
connections dealt round-robin over the nodes (so (N-1)/N of the threads live on a node other
than their client's), and ``routed``: each connection on a thread its node owns; beside a plain
``threadline serve`` on the same database; alternating over ``--rounds``, medians reported.
2. Cross-node latency, 2 nodes, open loop at 0.1 and 0.5 of the 2-node throughput (``--latency-at``):
half the connections on a thread their node owns, half on one the other node owns.

Invariants: every cluster starts on an emptied database, and nothing is measured before the
nodes' ``/healthz`` show 1,024 shards in all, none above its fair share; every load loop ends by
``stop_at + 5`` s; the nodes stop when their ``with`` block ends. CPU is from /proc over the
measured window (each node, every PostgreSQL process, this process: the load generator, on the
same cores); the store's figures from the nodes' ``/metrics``, among them the notifying commits
(``threadline_cluster_notifications_sent_total``: transactions that sent a ``NOTIFY``, which
PostgreSQL commits one at a time, cluster-wide).

Usage: ``python -m bench.cluster [--nodes 1,2,3] [--connections 100] [--seconds 4] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager, suppress
from typing import Any, Iterator

import psycopg
import trio
from websockets.frames import Frame

from threadline.actors.messages import ThreadKey
from threadline.cluster.shards import SHARDS, shard_of
from threadline.transport.auth import mint
from threadline.tuning import raise_fd_limit, tune_gc

from .common import RESULTS, Row, progress, table, write_results
from .loadgen import COMPLETED, Tally, cpu_seconds, drive, open_ws, process_cpu_seconds, summary
from .servers import SECRET, Databases, server_process
from .ws import WARMUP, measure, median_run

MAX_IN_FLIGHT = 64  # open loop: a connection with this many turns unanswered skips a send
FORWARD, COMMIT = "threadline_cluster_forward_seconds", "threadline_store_commit_seconds"
BACKENDS = "SELECT count(*) - 1 FROM pg_stat_activity WHERE backend_type = 'client backend'"
Node = tuple[str, str, int]  # node id, ws:// URL (from its ``ready:`` line), pid


def http_get(node: Node, path: str) -> str:
    with urllib.request.urlopen(node[1].replace("ws://", "http://").removesuffix("/v1/ws")
                                + path, timeout=10) as r:
        return r.read().decode()


def postgres_cpu(databases: Databases) -> dict[int, float]:
    """CPU seconds of the postmaster and of each of its children (backends, WAL writer...)."""
    master, out = int((databases.cluster.data / "postmaster.pid").read_text().split()[0]), {}
    with open(f"/proc/{master}/task/{master}/children") as f:
        for pid in [master, *map(int, f.read().split())]:
            with suppress(OSError):  # a process that ended meanwhile
                out[pid] = process_cpu_seconds(pid)
    return out


def measured(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """CPU (in cores) and the nodes' counters (per second, all nodes) between two snapshots."""
    wall, pairs = b["wall"] - a["wall"], list(zip(a["metrics"], b["metrics"]))
    diff = lambda name: sum(y.get(name, 0.0) - x.get(name, 0.0) for x, y in pairs)  # noqa
    forwarded, commits = diff(FORWARD + "_count") or math.nan, diff(COMMIT + "_count") or math.nan
    return {"node_cpu": [(y - x) / wall for x, y in zip(a["nodes"], b["nodes"])],
            "postgres_cpu": sum(v - a["postgres"].get(p, 0.0)
                                for p, v in b["postgres"].items()) / wall,
            "loadgen_cpu": (b["loadgen"] - a["loadgen"]) / wall,
            **{f"{name}_per_s": diff(f"threadline_{name}_total") / wall for name in (
                "store_transactions", "store_operations", "cluster_forwarded_requests",
                "cluster_notifications_sent", "cluster_notifications_received",
                "cluster_feed_reads")},
            "commit_ms_mean": diff(COMMIT + "_sum") / commits * 1e3,
            "forward_ms_mean": diff(FORWARD + "_sum") / forwarded * 1e3}


@contextmanager
def open_cluster(databases: Databases, size: int) -> Iterator[list[Node]]:
    """``size`` nodes on an emptied database, once balanced; stopped at exit."""
    store = databases.fresh("postgresql")
    with ExitStack() as stack:
        started = [stack.enter_context(server_process("threadline", store=store, extra=(
            "--cluster", "--node-id", f"node{i}", "--grace", "1"))) for i in range(size)]
        nodes = [(f"node{i}", url, proc.pid) for i, (url, proc) in enumerate(started)]
        fair, t0, owned = math.ceil(SHARDS / size), time.monotonic(), []
        while not (sum(owned) == SHARDS and all(0 < o <= fair for o in owned)):
            if time.monotonic() - t0 > 60:
                raise RuntimeError(f"shards not balanced after 60 s: {owned}")
            time.sleep(0.2)
            owned = [json.loads(http_get(n, "/healthz"))["cluster"]["shards_owned"] for n in nodes]
        progress(f"{size} node(s) balanced in {time.monotonic() - t0:.1f} s: {owned}")
        yield nodes


async def run_load(nodes: list[Node], databases: Databases, users: list[str], seconds: float,
                   driver: Any) -> dict[str, Any]:
    """``driver(i, conn, deadline, stop_at)`` for connection i (``users[i]``, node ``i % N``)."""
    conns = [await open_ws(nodes[i % len(nodes)][1], mint(u, SECRET)) for i, u in enumerate(users)]
    marks: list[dict[str, Any]] = []

    def snapshot() -> dict[str, Any]:
        return {"wall": time.perf_counter(), "loadgen": cpu_seconds(), "postgres":
                postgres_cpu(databases), "nodes": [process_cpu_seconds(n[2]) for n in nodes],
                "metrics": [{k: float(v) for k, _, v in (line.rpartition(" ") for line in http_get(
                    n, "/metrics").splitlines() if line[:1] != "#")} for n in nodes]}

    async def sample(*at: float) -> None:
        for t in at:
            await trio.sleep_until(t)
            marks.append(await trio.to_thread.run_sync(snapshot))

    deadline = trio.current_time() + WARMUP
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample, deadline, deadline + seconds)
        for i, conn in enumerate(conns):
            nursery.start_soon(driver, i, conn, deadline, deadline + seconds)
    for conn in conns:
        await conn.aclose()
    return measured(*marks)


def threads_on(nodes: list[Node], users: list[str], db: Any, local: list[bool]) -> list[str]:
    """A thread id for each user i, owned (``local[i]``) or not by connection i's node."""
    owners = dict(db.execute("SELECT shard, owner FROM shard_leases").fetchall())
    return [next(t for t in (f"c{k}" for k in range(SHARDS * 20)) if (owners[shard_of(ThreadKey(
        u, t))] == nodes[i % len(nodes)][0]) == local[i]) for i, u in enumerate(users)]


def throughput(databases: Databases, sizes: list[int], connections: int, seconds: float,
               rounds: int, window: int) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for _ in range(rounds):
        runs["plain"].append(measure("threadline", connections, seconds, window,
                                     store=databases.fresh("postgresql")))
        for size, routed in [(n, r) for n in sizes for r in (False, True)[:n]]:  # routed: 2+ nodes
            tally, users = Tally(), [f"load{i}" for i in range(connections)]

            async def closed(i: int, conn: Any, deadline: float, stop_at: float) -> None:
                await drive(conn, threadline=True, thread_id=threads[i], window=window,
                            deadline=deadline, stop_at=stop_at, tally=tally, max_turns=10**7)

            with open_cluster(databases, size) as nodes, psycopg.connect(
                    databases.cluster.dsn) as db:
                threads = threads_on(nodes, users, db, [True] * connections) if routed else [
                    f"t{i}" for i in range(connections)]  # round-robin: (N-1)/N elsewhere
                r = trio.run(run_load, nodes, databases, users, seconds, closed) | summary(
                    tally, seconds) | {"errors": tally.errors}
                r["pg_connections_per_node"] = db.execute(BACKENDS).fetchone()[0] / size
            runs[f"{size}{' routed' if routed else ''}"].append(r)
            progress(f"{size} node(s){' routed' * routed}: {r['events_per_s']:,.0f} events/s")
    return {size: median_run(r) for size, r in runs.items()}


def latency(databases: Databases, connections: int, seconds: float,
            events_per_s: float) -> dict[str, Any]:
    """2 nodes, open loop at ``events_per_s`` offered; figures per group (local, remote)."""
    interval = connections * 4 / events_per_s  # an echo turn delivers 4 events
    groups = {g: collections.defaultdict(list) for g in ("local", "remote")}
    users = [f"lat{i}" for i in range(connections)]
    local = [(i // 2) % 2 == 0 for i in range(connections)]  # half of each node's connections

    async def timed(i: int, conn: Any, deadline: float, stop_at: float) -> None:
        """Open loop: seconds to ``accepted`` and ``agent_completed``; ends by stop_at + 5."""
        times, ids, sent = groups["local" if local[i] else "remote"], itertools.count(), {}
        pending: collections.deque[float] = collections.deque()  # a thread runs turns in order

        async def receive() -> None:
            while not conn.eof:
                for data in [e.data for e in await conn.receive() if isinstance(e, Frame)]:
                    now, counting = time.perf_counter(), trio.current_time() >= deadline
                    if COMPLETED in data:
                        started = pending.popleft()
                        times["completed"].extend([now - started] if counting else [])
                    elif not data.startswith(b'{"type":"event"'):
                        frame = json.loads(data)
                        started = sent.pop(frame.get("ref"), None)
                        if frame["type"] == "accepted" and started is not None and counting:
                            times["accepted"].append(now - started)
                        elif frame["type"] == "error":
                            times["errors"].append(now)
                            if started is not None:
                                pending.remove(started)

        msg = {"type": "send", "thread_id": threads[i], "text": "hello"}
        conn.write(json.dumps({"type": "join", "thread_id": threads[i]}).encode(), binary=False)
        with trio.move_on_at(stop_at + 5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                next_at = trio.current_time() + interval * i / connections
                while (next_at := next_at + interval) < stop_at:
                    await trio.sleep_until(next_at)
                    if len(pending) >= MAX_IN_FLIGHT:
                        times["skipped"].append(next_at)
                        continue
                    conn.write(json.dumps(msg | {"ref": (ref := next(ids))}).encode(), binary=False)
                    pending.append(sent.setdefault(ref, time.perf_counter()))
                    await conn.flush()
                while pending and not conn.eof:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

    with open_cluster(databases, 2) as nodes, psycopg.connect(databases.cluster.dsn) as db:
        threads = threads_on(nodes, users, db, local)
        out = trio.run(run_load, nodes, databases, users, seconds, timed)
        out["owners_moved"] = threads_on(nodes, users, db, local) != threads
    pct = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1e3  # noqa: E731
    for name, g in groups.items():
        out[name] = {f"{w}_p{p}_ms": pct(g[w], p / 100) for w in ("accepted", "completed")
                     for p in (50, 99)} | {w: len(g[w]) for w in ("completed", "errors", "skipped")}
    for w in ("accepted", "completed"):
        out[f"{w}_p99_added_ms"] = out["remote"][f"{w}_p99_ms"] - out["local"][f"{w}_p99_ms"]
    return out | {"offered_events_per_s": events_per_s, "connections": connections}


def rows(results: dict[str, Any]) -> list[Row]:
    tp, out, dash = results["throughput"], [], ("-",) * 3
    for size, r in ((s, r) for s, r in tp.items() if s != "plain"):
        base, label = (tp["plain"], "plain serve") if size == "1" else (tp["1"], "1 node")
        out += [(f"events/s, {size.split()[0]} node(s){', clients on the owner' * (' ' in size)}",
                 f"{r['events_per_s']:,.0f}", f"{base['events_per_s']:,.0f} {label}",
                 f"{r['events_per_s'] / base['events_per_s']:.2f}", "-", "-"),
                ("  turn p50 / p99 ms", f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}",
                 f"{base['p50_ms']:.0f} / {base['p99_ms']:.0f} {label}", *dash),
                ("  cpu: each node | postgres | load generator; txn/s, commit ms", " ".join(
                    f"{c:.2f}" for c in r["node_cpu"]) + f" | {r['postgres_cpu']:.2f} | "
                 f"{r['loadgen_cpu']:.2f}; {r['store_transactions_per_s']:,.0f}, "
                 f"{r['commit_ms_mean']:.0f}", "-", *dash),
                ("  notifying commits/s (all nodes), notifications received/s",
                 f"{r['cluster_notifications_sent_per_s']:,.1f}, "
                 f"{r['cluster_notifications_received_per_s']:,.1f}", "-", *dash)]
    for fraction, lat in results["latency"].items():
        rem, loc, at = lat["remote"], lat["local"], f"{float(fraction):g} of the 2-node maximum"
        for w, name in (("accepted", "send->accepted"), ("completed", "send->agent_completed")):
            out += [(f"{name} p50 / p99 ms, owner on the other node (2 nodes, "
                     f"{lat['offered_events_per_s']:,.0f} events/s offered: {at})",
                     f"{rem[f'{w}_p50_ms']:.1f} / {rem[f'{w}_p99_ms']:.1f}",
                     f"{loc[f'{w}_p50_ms']:.1f} / {loc[f'{w}_p99_ms']:.1f} same node",
                     f"{rem[f'{w}_p99_ms'] / loc[f'{w}_p99_ms']:.2f}", "-", "-"),
                    ("  cross-node p99 added ms", f"{lat[f'{w}_p99_added_ms']:.1f}", "-", *dash)]
        out.append(("  forwarded request round trip, mean ms (/metrics)",
                    f"{lat['forward_ms_mean']:.1f}", "-", *dash))
    return out


def plot(results: dict[str, Any]) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tp, path = results["throughput"], RESULTS / "cluster.png"
    sizes = sorted({int(s.split()[0]) for s in tp if s != "plain"})
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, what in zip(axes, ("events_per_s", "p99_ms"), (
            "events delivered per second", "send to agent_completed, p99 (ms)")):
        for routed, label in (("", "clients round-robin"), (" routed", "clients on the owner")):
            ax.plot(sizes, [tp.get(f"{n}{routed}", tp[str(n)])[key] for n in sizes], "-o",
                    label=label)
        ax.axhline(tp["plain"][key], color="grey", ls="--", label="plain serve (no --cluster)")
        ax.set(xlabel="nodes (one PostgreSQL)", ylabel=what, xticks=sizes, ylim=(0, None),
               title=f"{results['connections']} connections, {results['window']} turns each")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,2,3", help="cluster sizes (1 and 2 always run)")
    for name, kind, default in (("connections", int, 100), ("seconds", float, 4.0),
                                ("rounds", int, 3), ("window", int, 4),
                                ("latency-seconds", float, 6.0), ("latency-at", str, "0.1,0.5")):
        parser.add_argument(f"--{name}", type=kind, default=default)  # latency-at: fractions
    args = parser.parse_args(argv)
    tune_gc()
    raise_fd_limit()
    t0, sizes = time.perf_counter(), sorted({1, 2, *map(int, args.nodes.split(","))})
    results: dict[str, Any] = dict(vars(args))
    with ExitStack() as stack:
        databases = Databases(stack)
        if databases.fresh("postgresql") is None:
            return 1  # no PostgreSQL here: ``Databases`` said why
        tp = results["throughput"] = throughput(databases, sizes, args.connections,
                                                args.seconds, args.rounds, args.window)
        results["latency"] = {f"{f:.2f}": latency(
            databases, args.connections, args.latency_seconds, tp["2"]["events_per_s"] * f)
            for f in map(float, args.latency_at.split(","))}
    results["wall_seconds"] = time.perf_counter() - t0
    path = write_results("cluster", results)
    print(table(rows(results)))
    try:
        png = plot(results)
    except ImportError:  # no matplotlib here: the table and the JSON are the figures
        png = "none (no matplotlib)"
    progress(f"done in {results['wall_seconds']:.0f} s; figures in {path}, plot {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
