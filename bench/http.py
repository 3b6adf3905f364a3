"""HTTP API throughput: requests answered per second by one ``threadline serve`` process over
kept-alive connections, beside the same server with one request per connection and a FastAPI
peer (``bench/peers/fastapi_http.py``, uvicorn as its documentation runs it, in memory), in
the same run.

Each server runs in its own process on loopback; this process is the load generator: ``clients``
concurrent clients, each its own user on its own thread, each with one request in flight,
repeating one turn: ``POST /v1/threads/{id}/messages`` (the echo agent answers it), then ``GET
/v1/threads/{id}/events?after=SEQ-1`` (the run's events stored so far, as HTTP.md tells a client
to read them). threadline runs on the memory store, as the peer keeps its events in memory.
Kept alive, a client sends every request on one connection and opens another only when an
answer says ``Connection: close`` (threadline's 1,000th); ``close`` sends ``Connection: close``
and opens a connection per request. Requests are counted after a warm-up, over ``seconds``;
the servers alternate over the rounds (medians), so that drift on a shared machine hits all.

The client is a minimal HTTP/1.1 client on trio sockets (a request is bytes made once; an
answer is read by its ``Content-Length``): it costs little per request, and its CPU time is
reported beside the server's to show which side is the bottleneck.

Usage: ``python -m bench.http [--clients 50] [--seconds 5] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

import attrs
import trio

from threadline.transport.auth import mint
from threadline.tuning import raise_fd_limit, tune_gc

from .common import Row, met, progress, table, write_results
from .loadgen import cpu_seconds, process_cpu_seconds
from .servers import ROOT, SECRET, _free_port, _wait_listening, server_process, stop

WARMUP = 1.0
CLIENTS = 50
#: name -> (server kind, whether the clients keep their connections)
VARIANTS = {"threadline": ("threadline", True), "threadline-close": ("threadline", False),
            "peer": ("peer", True)}
LABELS = {"threadline": "threadline, kept alive", "threadline-close":
          "threadline, one request per connection", "peer": "FastAPI peer, kept alive"}


class Broken(Exception):
    """An answer that is not HTTP as the client reads it, or a connection closed early."""


@attrs.define
class Tally:
    requests: int = 0      # answered 2xx during the window
    errors: int = 0        # answered otherwise during the window
    connections: int = 0   # opened during the whole run
    latencies: list[float] = attrs.Factory(list)  # seconds, request written -> answer read


class Client:
    """One connection at a time to ``127.0.0.1:port``; one request in flight."""

    def __init__(self, port: int, keep_alive: bool, tally: Tally) -> None:
        self.port, self.keep_alive, self.tally = port, keep_alive, tally
        self.stream: trio.SocketStream | None = None
        self.buffer = bytearray()

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """``data`` written, its answer read: status and body."""
        if self.stream is None:
            self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            self.buffer = bytearray()
            self.tally.connections += 1
        await self.stream.send_all(data)
        status, close, body = await self._answer()
        if close or not self.keep_alive:
            await self.aclose()
        return status, body

    async def _answer(self) -> tuple[int, bool, bytes]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            await self._more()
        head = bytes(self.buffer[:end]).lower()
        del self.buffer[:end + 4]
        if not head.startswith(b"http/1.1 "):
            raise Broken(head[:80])
        start = head.find(b"\r\ncontent-length:") + 17
        if start < 17:
            raise Broken("no content-length")
        end = head.find(b"\r\n", start)
        length = int(head[start:end if end >= 0 else len(head)])
        while len(self.buffer) < length:
            await self._more()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return int(head[9:12]), b"\r\nconnection: close" in head, body

    async def _more(self) -> None:
        assert self.stream is not None
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise Broken("closed before the answer")
        self.buffer += chunk

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None


CLOSE = "Connection: close\r\n"


def post(thread: str, token: str, text: str, close: bool) -> bytes:
    body = json.dumps({"text": text}).encode()
    return (f"POST /v1/threads/{thread}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{CLOSE if close else ''}\r\n").encode() + body


def get(path: str, token: str, close: bool) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"{CLOSE if close else ''}\r\n").encode()


async def drive(client: Client, user: int, deadline: float, stop_at: float) -> None:
    """Turns (a message posted, its run's events read) until ``stop_at``; what is answered
    after ``deadline`` (the warm-up's end) is counted."""
    token, thread, close = mint(f"http{user}", SECRET), f"t{user}", not client.keep_alive
    message = post(thread, token, "hello", close)
    tally = client.tally
    try:
        while trio.current_time() < stop_at:
            started = time.perf_counter()
            status, body = await client.request(message)
            counted = trio.current_time() >= deadline
            _count(tally, counted, status, started)
            if status != 200:
                continue
            seq = json.loads(body)["seq"]
            started = time.perf_counter()
            status, _ = await client.request(
                get(f"/v1/threads/{thread}/events?after={seq - 1}", token, close))
            _count(tally, counted and trio.current_time() < stop_at, status, started)
    finally:
        await client.aclose()


def _count(tally: Tally, counted: bool, status: int, started: float) -> None:
    if not counted:
        return
    if 200 <= status < 300:
        tally.requests += 1
        tally.latencies.append(time.perf_counter() - started)
    else:
        tally.errors += 1


async def load(port: int, keep_alive: bool, clients: int, seconds: float,
               server_pid: int) -> dict[str, Any]:
    tally = Tally()
    start = trio.current_time()
    deadline, stop_at = start + WARMUP, start + WARMUP + seconds
    cpu0, server_cpu0 = cpu_seconds(), process_cpu_seconds(server_pid)
    wall0 = time.perf_counter()
    with trio.fail_after(WARMUP + seconds + 30):
        async with trio.open_nursery() as nursery:
            for user in range(clients):
                nursery.start_soon(drive, Client(port, keep_alive, tally), user, deadline,
                                   stop_at)
    wall = time.perf_counter() - wall0
    lat = sorted(tally.latencies)

    def pct(p: float) -> float | None:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None

    return {"requests_per_s": tally.requests / seconds, "requests": tally.requests,
            "errors": tally.errors, "connections": tally.connections,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "server_cpu": (process_cpu_seconds(server_pid) - server_cpu0) / wall,
            "loadgen_cpu": (cpu_seconds() - cpu0) / wall}


@contextmanager
def peer_process() -> Iterator[tuple[int, subprocess.Popen]]:
    """uvicorn serving ``bench.peers.fastapi_http:app`` on a free loopback port, as FastAPI's
    documentation runs it (one process, uvicorn's standard extras); SIGTERM (then kill) at
    exit."""
    port = _free_port()
    env = {**os.environ, "THREADLINE_SECRET": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.peers.fastapi_http:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env)
    try:
        _wait_listening(port, proc)
        yield port, proc
    finally:
        stop(proc)


@contextmanager
def started(kind: str) -> Iterator[tuple[int, subprocess.Popen]]:
    if kind == "peer":
        with peer_process() as (port, proc):
            yield port, proc
        return
    with server_process("threadline", store="memory") as (url, proc):
        yield int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]), proc


def measure(name: str, clients: int, seconds: float) -> dict[str, Any]:
    kind, keep_alive = VARIANTS[name]
    with started(kind) as (port, proc):
        result = trio.run(load, port, keep_alive, clients, seconds, proc.pid)
    progress(f"{name:17s} {clients:4d} clients: {result['requests_per_s']:8,.0f} requests/s "
             f"({result['errors']} errors, {result['connections']:,} connections), p50 "
             f"{result['p50_ms'] or 0:.2f} ms, p99 {result['p99_ms'] or 0:.2f} ms; cpu server "
             f"{result['server_cpu']:.2f}, load generator {result['loadgen_cpu']:.2f}")
    return result


def run(seconds: float, quick: bool) -> dict[str, Any]:
    """Every variant over the rounds (1 when ``quick``, with 20 clients, else 3 with
    ``CLIENTS``): ``{"clients", "seconds", "servers": {name: the median run, with every
    run's rate}}``."""
    clients, rounds = (20, 1) if quick else (CLIENTS, 3)
    return measure_all(clients, seconds, rounds)


def measure_all(clients: int, seconds: float, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for name in VARIANTS:
            runs.setdefault(name, []).append(measure(name, clients, seconds))
    servers = {}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r["requests_per_s"])
        servers[name] = {**ordered[len(ordered) // 2],
                         "all_requests_per_s": [r["requests_per_s"] for r in results]}
    return {"clients": clients, "seconds": seconds, "rounds": rounds, "servers": servers}


def rows(results: dict[str, Any]) -> list[Row]:
    """No target in docs/architecture.md yet: the peer's ratio is reported, and kept-alive
    connections must at least beat a connection per request."""
    servers, n = results["servers"], results["clients"]
    mine = servers["threadline"]["requests_per_s"]
    out: list[Row] = []
    for name, target in (("threadline-close", 1.0), ("peer", None)):
        base = servers[name]["requests_per_s"]
        ratio = mine / base if base else float("inf")
        out.append((f"HTTP requests/s, {n} clients, kept alive", f"{mine:,.0f}",
                    f"{base:,.0f} {LABELS[name]}", f"{ratio:.2f}",
                    f"> {target:g} x" if target is not None else "-",
                    met(ratio > target) if target is not None else "-"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="the servers alternate this many times; medians reported")
    args = parser.parse_args(argv)
    tune_gc()
    raise_fd_limit()
    results = measure_all(args.clients, args.seconds, args.rounds)
    path = write_results("http", results)
    print(table(rows(results)))
    progress(f"figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
