"""Cluster nodes for the tests: ``threadline serve --cluster`` processes on one PostgreSQL, and
what the tests ask the store and the nodes (who owns a thread, the nodes' own figures)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import psycopg
import trio

from tests.servers import ROOT, SECRET, http
from threadline.actors.messages import Event, ThreadKey
from threadline.cluster.shards import SHARDS, shard_of

SCRIPTED = ("--agent", "tests.helpers:scripted_agent")


class Node:
    """One ``threadline serve --cluster`` on a free port; its log goes to a file (a pipe left
    unread would fill and stop the process)."""

    def __init__(self, dsn: str, *args: str, env_secret: str = SECRET,
                 argv: list[str] | None = None, env: dict[str, str] | None = None,
                 module: str = "threadline") -> None:
        """``threadline serve --cluster --store dsn --port 0 *args``, or ``threadline *argv``
        with ``env`` (beside the environment without its ``THREADLINE_*`` variables); or
        ``python -m module *argv``, a program that prints ``ready: URL`` as serve does."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
        if env is None:
            env = {"THREADLINE_SECRET": env_secret}
        if argv is None:
            argv = ["serve", "--cluster", "--store", dsn, "--port", "0", *args]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="threadline-node-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *argv], cwd=ROOT, env={**clean, **env},
            text=True, stdout=subprocess.PIPE, stderr=self.log)
        self.url = ""
        self.port = 0
        self.node_id = ""

    async def ready(self) -> Node:
        with trio.fail_after(60):
            line = await trio.to_thread.run_sync(self.proc.stdout.readline)
        assert line.startswith("ready: "), line + self.logs()
        self.url = line.strip().removeprefix("ready: ")
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.node_id = (await self.health())["cluster"]["node"]
        return self

    async def health(self) -> dict[str, Any]:
        return (await http(self, "GET", "/healthz"))[2]  # type: ignore[arg-type]

    async def metric(self, name: str) -> float:
        body = (await http(self, "GET", "/metrics"))[2]  # type: ignore[arg-type]
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no {name} on /metrics")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def wait(self, timeout: float = 30) -> int:
        with trio.fail_after(timeout):
            return await trio.to_thread.run_sync(self.proc.wait)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot die of SIGKILL late
            self.proc.kill()
            self.proc.wait()

    def logs(self) -> str:
        self.log.seek(0)
        return self.log.read()


@asynccontextmanager
async def open_nodes(dsn: str, count: int, *args: str) -> AsyncIterator[list[Node]]:
    """``count`` nodes, started one after the other, once they have shared the shards out."""
    nodes: list[Node] = []
    try:
        for _ in range(count):
            nodes.append(await Node(dsn, *args).ready())
        await balanced(nodes)
        yield nodes
    except BaseException:
        for node in nodes:  # what each node said, for the failure's report
            print(f"--- log of node {node.node_id or '?'} (port {node.port}) ---")
            print(node.logs()[-6000:])
        raise
    finally:
        for node in nodes:
            node.kill()


async def balanced(nodes: list[Node], timeout: float = 60) -> None:
    """Wait until every shard is owned by one of ``nodes``, each owning some."""
    with trio.fail_after(timeout):
        while True:
            owned = [(await n.health())["cluster"]["shards_owned"] for n in nodes]
            if sum(owned) == SHARDS and all(owned):
                return
            await trio.sleep(0.2)


def owner(dsn: str, key: ThreadKey) -> str | None:
    """The node id the store names as the owner of ``key``'s shard."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT owner FROM shard_leases WHERE shard = %s",
                           (shard_of(key),)).fetchone()
    return row[0]


def threads_owned_by(dsn: str, node: Node, user: str, count: int, prefix: str = "t") -> list[str]:
    """``count`` thread ids of ``user`` whose shards ``node`` owns now."""
    with psycopg.connect(dsn) as conn:
        mine = {s for (s,) in conn.execute("SELECT shard FROM shard_leases WHERE owner = %s",
                                           (node.node_id,))}
    found = []
    for i in itertools.count():
        thread = f"{prefix}{i}"
        if shard_of(ThreadKey(user, thread)) in mine:
            found.append(thread)
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


def stored(dsn: str, key: ThreadKey) -> list[Event]:
    """The thread's events as the store holds them, in seq order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT seq, event, run_id, ts, data FROM events WHERE user_id = %s "
                            "AND thread_id = %s ORDER BY seq", (key.user_id, key.thread_id))
        return [Event(key, *row) for row in rows]


def stored_well_formed(dsn: str, key: ThreadKey) -> list[Event]:
    """``stored``, checked: seq 1, 2, 3, ... with no gap, and every run with its
    ``user_message`` first and exactly one terminal event, last."""
    from tests.helpers import assert_runs_well_formed

    events = stored(dsn, key)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert_runs_well_formed(events)
    return events
