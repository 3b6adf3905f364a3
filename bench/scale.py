"""Scale: 10,000 concurrent connections on one server process (resident memory per connection,
and one message through each), and 100,000 threads passivated and reactivated from SQLite."""

from __future__ import annotations

import gc
import tempfile
import time
from typing import Any

import trio

from threadline.actors.messages import ThreadKey
from threadline import RuntimeConfig, open_runtime
from threadline.stores import open_journal
from threadline.transport.auth import mint

from .common import progress, rss_bytes
from .loadgen import COMPLETED, open_ws
from .servers import SECRET, rss_of, server_process


async def _connections(url: str, pid: int, n: int) -> dict[str, Any]:
    conns: list[Any] = []
    limiter = trio.CapacityLimiter(200)
    before = rss_of(pid)
    t0 = time.perf_counter()

    async def connect(i: int) -> None:
        async with limiter:
            conn = await open_ws(url, mint(f"scale{i}", SECRET))
            conn.write(b'{"type":"join","thread_id":"main"}', binary=False)
            await conn.flush()
            while not any(b'"joined"' in getattr(e, "data", b"") for e in await conn.receive()):
                pass
            conns.append(conn)
            if len(conns) % 2000 == 0:
                progress(f"scale: {len(conns):,} connections joined")

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(connect, i)
    connect_s = time.perf_counter() - t0
    await trio.sleep(1)
    after = rss_of(pid)
    # one message through every connection, all at once
    latencies: list[float] = []

    async def turn(conn: Any) -> None:
        t = time.perf_counter()
        conn.write(b'{"type":"send","thread_id":"main","text":"hello"}', binary=False)
        await conn.flush()
        while True:
            if any(COMPLETED in getattr(e, "data", b"") for e in await conn.receive()):
                latencies.append(time.perf_counter() - t)
                return

    t1 = time.perf_counter()
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(turn, conn)
    wave_s = time.perf_counter() - t1
    for conn in conns:
        await conn.aclose()
    latencies.sort()
    return {"connections": len(conns), "connect_seconds": connect_s,
            "rss_before": before, "rss_after": after,
            "bytes_per_connection": (after - before) / n, "wave_seconds": wave_s,
            "wave_p50_ms": latencies[len(latencies) // 2] * 1000,
            "wave_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


def connections(n: int = 10_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        with server_process("threadline", store=f"sqlite:///{tmp}/scale.db") as (url, proc):
            result = trio.run(_connections, url, proc.pid, n)
    progress(f"scale: {result['connections']:,} connections, "
             f"{result['bytes_per_connection']:,.0f} bytes each; one message through each in "
             f"{result['wave_seconds']:.1f} s")
    return result


async def _passivation(n: int, path: str) -> dict[str, Any]:
    ttl = 10.0
    async with open_journal(f"sqlite:///{path}") as journal:
        async with open_runtime(journal=journal, config=RuntimeConfig(passivate_after=ttl)) as rt:
            limiter = trio.CapacityLimiter(1000)
            keys = [ThreadKey(f"user{i % 1000}", f"t{i}") for i in range(n)]

            async def touch(key: ThreadKey) -> None:
                async with limiter:
                    await rt.gateway.user(key.user_id).thread(key.thread_id).info()

            async def touch_all(label: str) -> float:
                t = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for key in keys:
                        nursery.start_soon(touch, key)
                rate = n / (time.perf_counter() - t)
                progress(f"scale: {label} {n:,} thread actors at {rate:,.0f}/s")
                return rate

            gc.collect()
            base = rss_bytes()
            created = await touch_all("created")
            live_rss = rss_bytes()
            t = time.perf_counter()
            with trio.fail_after(120):
                while len(rt.directory):
                    await trio.sleep(0.1)
            passivated_s = time.perf_counter() - t
            gc.collect()
            idle_rss = rss_bytes()
            progress(f"scale: all {n:,} passivated {passivated_s:.1f} s after going idle "
                     f"(TTL {ttl} s)")
            reactivated = await touch_all("reactivated")
            return {"threads": n, "created_per_s": created, "reactivated_per_s": reactivated,
                    "ttl_seconds": ttl, "passivated_after_seconds": passivated_s,
                    "rss_live_mb": (live_rss - base) / 2**20,
                    "rss_after_passivation_mb": (idle_rss - base) / 2**20,
                    "activations": rt.directory.activations,
                    "passivations": rt.directory.passivations}


def passivation(n: int = 100_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return trio.run(_passivation, n, f"{tmp}/passivation.db")
