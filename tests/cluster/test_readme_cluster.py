"""docs/cluster.md's three-node cluster, run as written (the store and the ports swapped for the
test's): every node up, the shards shared out, and a token one node printed taken by another."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from tests.cluster.nodes import Node, balanced
from tests.pg import free_port
from threadline.transport.client import open_client

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_PAGE = ROOT / "docs" / "cluster.md"


def cluster_block() -> list[str]:
    section = CLUSTER_PAGE.read_text().split("# Several processes: a cluster", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()


def readme_node(line: str, store: str, port: int) -> Node:
    """A node started from one of the page's lines, with the environment it sets."""
    args = line.removeprefix(".venv/bin/threadline ").removesuffix(" &").split()
    args[args.index("--port") + 1] = str(port)
    return Node(store, argv=args, env={"THREADLINE_STORE": store})


async def test_the_readme_cluster_runs_as_written(pg_dsn):
    lines = cluster_block()
    assert lines[0].startswith("export THREADLINE_STORE=postgresql://")
    serves = [line for line in lines if line.startswith(".venv/bin/threadline serve")]
    assert serves == [f".venv/bin/threadline serve --cluster --port 800{i} &" for i in (1, 2, 3)]
    health = next(line for line in lines if line.startswith("curl "))
    assert re.fullmatch(r"curl -s 127\.0\.0\.1:8002/healthz", health)
    nodes: list[Node] = []
    try:
        tokens = []
        for line in serves:
            node = readme_node(line, pg_dsn, free_port())
            nodes.append(await node.ready())
            with trio.fail_after(10):
                demo = await trio.to_thread.run_sync(node.proc.stdout.readline)
            tokens.append(demo.split(": ", 1)[1].strip())
        await balanced(nodes)
        health = await nodes[1].health()
        assert health["status"] == "ok" and health["cluster"]["shards_owned"] > 0
        assert sorted(health["cluster"]["peers"]) == sorted(n.node_id for n in nodes
                                                            if n is not nodes[1])
        async with open_client(nodes[2].url, tokens[0]) as client:
            await client.join("main")
            await client.send("main", "hello from the README")  # the token of node 1, on 3
            with trio.fail_after(10):
                while (await client.next_event())["event"] != "agent_completed":
                    pass
    finally:
        for node in nodes:
            node.kill()


async def test_the_readme_embedded_node_runs_as_written(pg_dsn):
    """The page's "Embedding a cluster node" block, as written (its port swapped for a free
    one): one node alone owns every shard, answers, shows itself in its health, and leaves."""
    import os
    import subprocess
    import sys

    from tests.runtime.test_readme import block_after
    from tests.servers import SECRET

    code = block_after("## Embedding a cluster node", CLUSTER_PAGE)
    assert "port=8001" in code
    code = code.replace("port=8001", f"port={free_port()}")
    env = {**os.environ, "THREADLINE_STORE": pg_dsn, "THREADLINE_SECRET": SECRET}
    proc = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=90, env=env,
        cwd=ROOT))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["1", "2", "3", "4"], lines
    assert [line.split()[1] for line in lines[:4]] == [
        "user_message", "agent_started", "agent_thinking", "agent_completed"], lines
    assert "'shards_owned': 1024" in lines[4], lines
