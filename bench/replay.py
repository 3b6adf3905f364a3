"""A replay storm of large events: the server's memory stays bounded.

One thread on the default store (SQLite) holds ``--events`` events of ``--size`` bytes of data
(200 of about 1 MiB by default); ``--clients`` connections join it with ``since: 0`` at once
and each reads the whole thread. The server (``threadline serve``, its own process) reads each
replay a page at a time, and a page is bounded in bytes by the store's read (``REPLAY_BYTES``),
so what it holds grows with the number of replays, not with the events' sizes times the page's
500 events. Printed: the server's resident memory before the storm, its peak during it (the
kernel's high-water mark, ``VmHWM``, and the largest ``VmRSS`` sampled), their difference in
MiB and ratio, and what a page of 500 such events per replay would have held.

Loopback only; bounded in count (``--clients``, ``--events``) and time (``--timeout``).

Usage: ``python -m bench.replay [--clients 8] [--events 200] [--size 1000000]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from typing import Any

import trio
from websockets.frames import Frame

from threadline.actors.journal import REPLAY_BYTES, REPLAY_PAGE
from threadline.actors.messages import Event, ThreadKey
from threadline.stores import open_journal
from threadline.transport.auth import mint

from .common import progress, write_results
from .loadgen import open_ws
from .servers import SECRET, server_process

MiB = 1024 * 1024
USER, THREAD = "storm", "big"


async def fill(url: str, events: int, size: int) -> None:
    """The thread's events, written straight to the store before the server opens it."""
    key = ThreadKey(USER, THREAD)
    async with open_journal(url) as journal:
        await journal.ensure_thread(key, time.time())
        for seq in range(1, events + 1):
            await journal.append([Event(key, seq, "agent_thinking", "run_storm", time.time(),
                                        {"text": f"{seq}:" + "x" * size})])


async def replay(ws_url: str, events: int) -> int:
    """Join with since=0 and read every event: the bytes of event frames read."""
    conn = await open_ws(ws_url, mint(USER, SECRET))
    conn.write(json.dumps({"type": "join", "thread_id": THREAD, "since": 0}).encode(),
               binary=False)
    await conn.flush()
    got = received = 0
    while got < events:
        for event in await conn.receive():
            message = conn.assemble(event) if isinstance(event, Frame) else None
            if message is not None and message[1][:15] in (b'{"type":"event"', '{"type":"event"'):
                got += 1
                received += len(message[1])
        if conn.eof:
            raise RuntimeError(f"the server closed the connection after {got} events")
    await conn.close(1000, "", 5.0)
    return received


async def storm(ws_url: str, clients: int, events: int, timeout: float) -> int:
    total = 0

    async def one() -> None:
        nonlocal total
        received = await replay(ws_url, events)  # not ``total += await``: that reads total
        total += received                         # before the await, and loses the others

    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(one)
    return total


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak so far) of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out


class Sampler:
    """The largest VmRSS of ``pid`` seen every ``interval`` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, memory_of(self.pid)["VmRSS"])

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--size", type=int, default=1_000_000, help="bytes of data per event")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole storm")
    args = p.parse_args(argv)
    if not (1 <= args.clients <= 200 and 1 <= args.events <= 2000
            and 1 <= args.size <= 1_000_000):
        p.error("at most 200 clients, 2000 events, and 1,000,000 bytes an event")
    with tempfile.TemporaryDirectory(prefix="threadline-replay-") as folder:
        store = f"sqlite:///{folder}/replay.db"
        progress(f"storing {args.events} events of {args.size:,} bytes")
        trio.run(fill, store, args.events, args.size)
        with server_process("threadline", store=store) as (ws_url, proc):
            progress("warming up: one replay of the last event")
            trio.run(replay_last, ws_url, args.events)
            time.sleep(0.5)
            before = memory_of(proc.pid)
            progress(f"{args.clients} clients join with since=0 at once")
            started = time.monotonic()
            with Sampler(proc.pid) as sampler:
                received = trio.run(storm, ws_url, args.clients, args.events, args.timeout)
            seconds = time.monotonic() - started
            after = memory_of(proc.pid)
    base, peak = before["VmRSS"], max(after["VmHWM"], sampler.peak)
    unbounded = args.clients * min(args.events, REPLAY_PAGE) * args.size
    results = {
        "clients": args.clients, "events": args.events, "event_bytes": args.size,
        "replay_bytes_per_page": REPLAY_BYTES, "seconds": round(seconds, 2),
        "received_mib": round(received / MiB, 1),
        "rss_before_mib": round(base / MiB, 1), "peak_hwm_mib": round(after["VmHWM"] / MiB, 1),
        "peak_sampled_mib": round(sampler.peak / MiB, 1),
        "growth_mib": round((peak - base) / MiB, 1), "ratio": round(peak / base, 2),
        "unbounded_pages_mib": round(unbounded / MiB, 1),
    }
    print(f"server RSS before the storm   {results['rss_before_mib']:>8} MiB")
    print(f"server peak during the storm  {round(peak / MiB, 1):>8} MiB "
          f"(VmHWM {results['peak_hwm_mib']}, sampled VmRSS {results['peak_sampled_mib']})")
    print(f"growth                        {results['growth_mib']:>8} MiB "
          f"(peak / before = {results['ratio']})")
    print(f"replayed                      {results['received_mib']:>8} MiB to "
          f"{args.clients} clients in {results['seconds']} s")
    print(f"a page of {REPLAY_PAGE} events per replay would hold "
          f"{results['unbounded_pages_mib']} MiB of data")
    path = write_results("replay", results)
    progress(f"wrote {path}")
    return 0


async def replay_last(ws_url: str, events: int) -> None:
    conn = await open_ws(ws_url, mint(USER, SECRET))
    conn.write(json.dumps({"type": "join", "thread_id": THREAD, "since": events - 1}).encode(),
               binary=False)
    await conn.flush()
    with trio.fail_after(30):
        while True:
            frames = [e for e in await conn.receive() if isinstance(e, Frame)]
            if any(f.data.startswith(b'{"type":"event"') for f in frames) or conn.eof:
                break
    await conn.close(1000, "", 5.0)


if __name__ == "__main__":
    sys.exit(main())
