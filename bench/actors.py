"""In-process actor benchmarks, each beside a bare-trio baseline measured in the same run.

- ask: round trips through a ThreadActor (``ActorRef.ask(GetInfo)``, with its default
  timeout) against a ping-pong over two bare trio memory channels. Target: >= 0.7 of bare.
- memory: resident bytes per idle live ThreadActor at 100,000 actors (its task, mailbox,
  directory entry and key; the threads already exist in the journal, whose storage is not the
  actor's) against a bare trio task waiting on a memory channel. Each side runs in a fresh
  process, and every actor has loaded and answered one request before memory is read.
  Target: <= 6 KB per actor.
- activations: new thread actors per second, each loaded from the journal and answering one
  ask, against bare trio tasks that each open a channel and answer one message.
  Target: >= 10,000/s.

Everything runs with the garbage collector tuned as ``threadline serve`` runs it
(``threadline.tuning.tune_gc``); activations are measured once more with CPython's default
thresholds, since that is where the collector shows most.

Usage: ``python -m bench.actors [--quick]``. Progress goes to stderr, the table to stdout,
the figures to ``bench/results/actors.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from typing import Any

import trio

from threadline.actors.memory_journal import MemoryJournal
from threadline.actors.reply import Reply
from threadline.actors.messages import GetInfo, ThreadKey
from threadline import Runtime, RuntimeConfig, open_runtime
from threadline.tuning import GC_THRESHOLD, tune_gc

from .common import Row, met, median, progress, rss_bytes, table, write_results

ASK_TARGET = 0.7
MEMORY_TARGET = 6 * 1024
ACTIVATION_TARGET = 10_000
CPYTHON_GC_THRESHOLD = (700, 10, 10)

# -- ask round trips ---------------------------------------------------------------------------


async def bare_ping_pong(n: int) -> float:
    to_server, server_in = trio.open_memory_channel[int](1)
    to_client, client_in = trio.open_memory_channel[int](1)

    async def server() -> None:
        async for m in server_in:
            await to_client.send(m)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        t0 = time.perf_counter()
        for i in range(n):
            await to_server.send(i)
            await client_in.receive()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return n / elapsed


async def actor_asks(n: int) -> float:
    async with open_runtime(config=RuntimeConfig(passivate_after=None)) as rt:
        ref = rt.directory.get_or_spawn(ThreadKey("bench", "ask"))
        await ref.ask(GetInfo)  # activated and loaded
        t0 = time.perf_counter()
        for _ in range(n):
            await ref.ask(GetInfo)
        return n / (time.perf_counter() - t0)


def bench_ask(n: int, rounds: int) -> dict[str, Any]:
    bare, actor = [], []
    for r in range(rounds):  # interleaved, so drift on a shared machine hits both alike
        bare.append(trio.run(bare_ping_pong, n))
        actor.append(trio.run(actor_asks, n))
        progress(f"ask round {r + 1}/{rounds}: bare {bare[-1]:,.0f}/s, actor {actor[-1]:,.0f}/s")
    b, a = median(bare), median(actor)
    return {"bare_round_trips_per_s": b, "actor_round_trips_per_s": a, "ratio": a / b,
            "rounds": rounds, "n": n}


async def activate(rt: Runtime, n: int) -> None:
    """Activate ``n`` new thread actors and await one answer from each: all asks are queued
    first, then awaited, so activations overlap as they would under load."""
    replies = []
    for i in range(n):
        reply: Reply[Any] = Reply()
        rt.directory.get_or_spawn(ThreadKey(f"user{i % 1000}", f"t{i}")).tell(GetInfo(reply))
        replies.append(reply)
    for reply in replies:
        await reply.wait()


# -- memory (each side in a fresh process: freed memory of one would flatter the other) ----


async def _memory_bare(n: int) -> float:
    async def task(receive: trio.MemoryReceiveChannel[int]) -> None:
        async for _ in receive:
            pass

    async with trio.open_nursery() as nursery:
        gc.collect()
        before = rss_bytes()
        keep = []
        for _ in range(n):
            send, receive = trio.open_memory_channel[int](1000)
            keep.append(send)
            nursery.start_soon(task, receive)
        await trio.sleep(0.5)
        gc.collect()
        per = (rss_bytes() - before) / n
        nursery.cancel_scope.cancel()
    return per


async def _memory_actors(n: int) -> float:
    journal = MemoryJournal()
    for i in range(n):  # the threads exist in the store: their storage is not the actor's
        await journal.ensure_thread(ThreadKey(f"user{i % 1000}", f"t{i}"), 0.0)
    async with open_runtime(journal=journal, config=RuntimeConfig(passivate_after=None)) as rt:
        gc.collect()
        before = rss_bytes()
        # Fresh key objects: the address each actor holds counts against the actor.
        await activate(rt, n)  # every actor is live, loaded and idle in its mailbox
        gc.collect()
        per = (rss_bytes() - before) / n
        assert len(rt.directory) == n
        return per


def memory_child(kind: str, n: int) -> None:
    per = trio.run(_memory_bare if kind == "bare" else _memory_actors, n)
    print(json.dumps({"bytes_per_actor": per}))


def bench_memory(n: int) -> dict[str, Any]:
    out = {}
    for kind in ("bare", "actors"):
        progress(f"memory: {n:,} {kind} in a fresh process")
        proc = subprocess.run([sys.executable, "-m", "bench.actors", "--memory-child", kind,
                               str(n)], capture_output=True, text=True, check=True)
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])["bytes_per_actor"]
        progress(f"memory: {kind} {out[kind]:,.0f} bytes each")
    return {"bare_bytes_per_task": out["bare"], "actor_bytes": out["actors"],
            "ratio": out["actors"] / out["bare"], "n": n}


# -- activations ----------------------------------------------------------------------------


async def bare_activations(n: int) -> float:
    async def task(receive: trio.MemoryReceiveChannel[Reply[int]]) -> None:
        async for reply in receive:
            reply.set(1)

    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        replies = []
        for _ in range(n):
            send, receive = trio.open_memory_channel[Reply[int]](1000)
            nursery.start_soon(task, receive)
            reply: Reply[int] = Reply()
            send.send_nowait(reply)
            replies.append(reply)
        for reply in replies:
            await reply.wait()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return n / elapsed


async def actor_activations(n: int) -> float:
    async with open_runtime(config=RuntimeConfig(passivate_after=None)) as rt:
        t0 = time.perf_counter()
        await activate(rt, n)
        return n / (time.perf_counter() - t0)


def bench_activations(n: int, rounds: int, label: str = "") -> dict[str, Any]:
    bare, actor = [], []
    for r in range(rounds):
        bare.append(trio.run(bare_activations, n))
        actor.append(trio.run(actor_activations, n))
        progress(f"activations{label} round {r + 1}/{rounds}: bare {bare[-1]:,.0f}/s, "
                 f"actors {actor[-1]:,.0f}/s")
    b, a = median(bare), median(actor)
    return {"bare_tasks_per_s": b, "actor_activations_per_s": a, "ratio": a / b, "n": n}


def rows(results: dict[str, Any]) -> list[Row]:
    """The table rows of this scenario (the suite's table uses them too)."""
    ask, mem = results["ask"], results["memory"]
    out = [
        ("ask round trips/s through a ThreadActor", f"{ask['actor_round_trips_per_s']:,.0f}",
         f"{ask['bare_round_trips_per_s']:,.0f} bare channels", f"{ask['ratio']:.2f}",
         f">= {ASK_TARGET} x bare", met(ask["ratio"] >= ASK_TARGET)),
        (f"bytes per idle actor, {mem['n']:,} live", f"{mem['actor_bytes']:,.0f}",
         f"{mem['bare_bytes_per_task']:,.0f} bare task", f"{mem['ratio']:.2f}",
         f"<= {MEMORY_TARGET:,}", met(mem["actor_bytes"] <= MEMORY_TARGET)),
    ]
    for key, label in (("activations", "thread actor activations/s"),
                       ("activations_default_gc", "activations/s, CPython's default gc")):
        if key in results:
            a = results[key]
            out.append((label, f"{a['actor_activations_per_s']:,.0f}",
                         f"{a['bare_tasks_per_s']:,.0f} bare tasks", f"{a['ratio']:.2f}",
                         f">= {ACTIVATION_TARGET:,}",
                         met(a["actor_activations_per_s"] >= ACTIVATION_TARGET)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.actors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--memory-child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tune_gc()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return 0
    quick = args.quick
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "gc_threshold": list(GC_THRESHOLD),
        "ask": bench_ask(20_000 if quick else 100_000, 3 if quick else 5),
        "memory": bench_memory(10_000 if quick else 100_000),
        "activations": bench_activations(10_000 if quick else 50_000, 3),
    }
    gc.set_threshold(*CPYTHON_GC_THRESHOLD)
    gc.unfreeze()
    results["activations_default_gc"] = bench_activations(10_000 if quick else 50_000, 3,
                                                          " (default gc)")
    results["seconds"] = time.perf_counter() - t0
    path = write_results("actors", results)
    print(table(rows(results)))
    progress(f"done in {results['seconds']:.0f} s; figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
