"""Servers under test, each in a process of its own, on loopback: threadline (``threadline
serve``), the bare echo server on the same engine, and the FastAPI peer under uvicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SECRET = "bench-only-secret-0123456789abcdef0123456789"
ROOT = Path(__file__).resolve().parents[1]
KINDS = ("threadline", "bare", "peer")


def rss_of(pid: int) -> int:
    """Resident bytes of a process (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


@contextmanager
def server_process(kind: str, *, store: str = "memory",
                   extra: tuple[str, ...] = ()) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start a server; yields its ws:// URL and process; SIGTERM (then kill) at exit."""
    env = {**os.environ, "THREADLINE_SECRET": SECRET}
    if kind == "threadline":
        # The rate limits protect a server from a client; here the client is the benchmark,
        # so they are lifted.
        lifted = [f"--limit={name}=1e12" for name in (
            "rate", "burst", "byte_rate", "byte_burst", "user_send_rate", "user_send_burst",
            "user_connections", "lane_depth")]
        cmd = [sys.executable, "-m", "threadline", "serve", "--port", "0", "--log", "warning",
               "--store", store, *lifted, *extra]
    elif kind == "bare":
        cmd = [sys.executable, "-m", "bench.echo_server", "--port", "0"]
    elif kind == "peer":
        port = _free_port()
        cmd = [sys.executable, "-m", "uvicorn", "bench.peers.fastapi_app:app", "--host",
               "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    else:
        raise ValueError(kind)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        if kind == "peer":
            _wait_listening(port, proc)
            url = f"ws://127.0.0.1:{port}/v1/ws"
        else:
            line = proc.stdout.readline().strip()
            if not line.startswith("ready: "):
                raise RuntimeError(f"{kind} did not start: {line!r}")
            rest = line.removeprefix("ready: ")
            url = rest if rest.startswith("ws://") else f"ws://127.0.0.1:{rest}/v1/ws"
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
