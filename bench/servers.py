"""Servers under test, each in a process of its own, on loopback: threadline (``threadline
serve``) on each store, the bare echo server on the same engine, and the FastAPI peers under
uvicorn (in memory, and durable on SQLite or PostgreSQL); and the databases they run on, fresh
for every server (``Databases``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

SECRET = "bench-only-secret-0123456789abcdef0123456789"
#: The interpreter that runs threadline under test: this one, or another environment with an
#: earlier threadline installed, to measure before and after a change in the same run.
SERVER_PYTHON = os.environ.get("THREADLINE_BENCH_PYTHON", sys.executable)
ROOT = Path(__file__).resolve().parents[1]
KINDS = ("threadline", "bare", "peer")
STORES = ("memory", "sqlite", "postgresql")


class Databases:
    """Fresh databases for the servers of one benchmark run: a new SQLite file each time, and
    one throwaway PostgreSQL cluster (the tests', with fsync on), emptied each time. Without
    PostgreSQL binaries on the machine, ``fresh("postgresql")`` is None: said once, and the
    rest runs."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-db-")))
        self.count = 0
        self.cluster: Any = None
        self.missing: str | None = None

    def fresh(self, store: str) -> str | None:
        """A URL for ``store`` (memory, sqlite, postgresql) holding nothing yet."""
        if store == "memory":
            return "memory"
        if store == "sqlite":
            self.count += 1
            return f"sqlite:///{self.dir}/db{self.count}.sqlite3"
        if store != "postgresql":
            raise ValueError(store)
        if self.cluster is None and self.missing is None:
            from tests.pg import Cluster  # the tests' throwaway cluster

            try:
                self.cluster = Cluster(fsync=True).init()
            except RuntimeError as exc:
                self.missing = str(exc).splitlines()[0]
                print(f"PostgreSQL not run: {self.missing}", file=sys.stderr)
            else:
                self.stack.callback(self.cluster.destroy)
        return self.cluster.reset() if self.cluster is not None else None


def variant(kind: str, store: str) -> str:
    """The name of a server on a store in results and tables: ``threadline`` and ``peer`` are
    the memory ones, ``threadline-sqlite``, ``peer-postgresql``... the others."""
    return kind if store == "memory" else f"{kind}-{store}"


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
    """Start a server (``store``: a URL from ``Databases.fresh``); yields its ws:// URL and
    process; SIGTERM (then kill) at exit."""
    env = {**os.environ, "THREADLINE_SECRET": SECRET}
    if kind == "threadline":
        # The rate limits protect a server from a client; here the client is the benchmark,
        # so they are lifted.
        lifted = [f"--limit={name}=1e12" for name in (
            "rate", "burst", "byte_rate", "byte_burst", "user_send_rate", "user_send_burst",
            "user_connections", "lane_depth")]
        cmd = [SERVER_PYTHON, "-m", "threadline", "serve", "--port", "0", "--log", "warning",
               "--store", store, *lifted, *extra]
    elif kind == "bare":
        cmd = [sys.executable, "-m", "bench.echo_server", "--port", "0"]
    elif kind == "peer":
        port = _free_port()
        app = "bench.peers.fastapi_app:app"
        if store != "memory":
            app, env["PEER_DATABASE"] = "bench.peers.durable_app:app", store
        cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
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
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (a server's graceful shutdown), then kill if it is not gone within 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
