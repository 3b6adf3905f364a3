"""The conversation tree in a cluster (PROTOCOL.md 1.1): an edit and a regenerate sent to any
node reach the thread's owner and come back as they would locally (``not_found`` included);
retried only when a ``client_msg_id`` makes asking twice harmless; a thread with branches is
deleted whole, through either node. Two embedded nodes on the real PostgreSQL, each with its
server (the echo agent)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from tests.cluster.test_decide_cluster import owned_by
from tests.cluster.test_embedded_node import balanced, config
from tests.servers import SECRET, http, token, until_run_ends
from threadline.actors.errors import NotFound
from threadline.actors.messages import LATEST, PostMessage, Regenerate
from threadline import RuntimeConfig
from threadline.cluster import open_cluster_runtime
from threadline.cluster.router import _repeatable
from threadline.server import open_server
from threadline.transport.client import NotFound as ClientNotFound
from threadline.transport.client import open_client

ADA = token("ada")


@pytest.mark.parametrize("make, repeatable", [
    (lambda r: Regenerate("msg_1", None, "enqueue", r), False),  # a second run
    (lambda r: Regenerate("msg_1", "c-1", "interrupt", r), True),
    (lambda r: PostMessage("x", None, "enqueue", r, "run_1"), False),
    (lambda r: PostMessage("x", "c-1", "enqueue", r, None), True),
    (lambda r: PostMessage("x", "c-1", "enqueue", r, LATEST), True),
])
def test_a_regenerate_is_asked_again_after_a_lost_link_only_with_a_client_msg_id(make,
                                                                                  repeatable):
    assert _repeatable(make) is repeatable


async def two_nodes(stack: AsyncExitStack, dsn: str, runtime_config: RuntimeConfig | None = None):
    """Nodes a and b on ``dsn``, each with its server, once they share the shards."""
    nodes, servers = [], []
    for name in ("a", "b"):
        node = await stack.enter_async_context(open_cluster_runtime(
            config(dsn, name), runtime_config=runtime_config))
        nodes.append(node)
        servers.append(await stack.enter_async_context(open_server(
            node.runtime, port=0, secret=SECRET)))
    await balanced(nodes)
    return nodes, servers


async def test_edits_and_regenerates_through_the_other_node_reach_the_owner(pg_dsn):
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            (a, b), (server_a, server_b) = await two_nodes(stack, pg_dsn)
            thread_id = owned_by(b, "ada")
            owner = await stack.enter_async_context(open_client(server_b.url, ADA))
            other = await stack.enter_async_context(open_client(server_a.url, ADA))
            await owner.join(thread_id)
            await other.join(thread_id)
            forwarded = a.node.statistics().forwarded

            async def ended(run_id: str) -> list[dict[str, Any]]:
                """The run's events as both tabs saw them: the same, from either node."""
                seen = await until_run_ends(other, run_id)
                assert seen == await until_run_ends(owner, run_id)
                return seen

            hello = await other.send(thread_id, "hello")  # through A, owned by B
            assert (await ended(hello["run_id"]))[0]["data"]["parent"] is None
            world = await other.send(thread_id, "world")  # LATEST crossed as itself
            assert (await ended(world["run_id"]))[0]["data"]["parent"] == hello["run_id"]

            edit = await other.send(thread_id, "earth", parent=hello["run_id"])
            seen = await ended(edit["run_id"])
            assert seen[0]["data"]["parent"] == hello["run_id"]
            assert seen[-1]["data"] == {"text": "earth"}
            root = await other.send(thread_id, "new", parent=None)  # None crossed as itself
            assert (await ended(root["run_id"]))[0]["data"]["parent"] is None

            regen = await other.regenerate(thread_id, hello["message_id"], client_msg_id="r-1")
            again = await other.regenerate(thread_id, hello["message_id"], client_msg_id="r-1")
            assert {k: again[k] for k in ("message_id", "run_id", "seq")} == \
                {k: regen[k] for k in ("message_id", "run_id", "seq")}
            seen = await ended(regen["run_id"])
            assert [(f["seq"], f["event"], f["data"]) for f in seen[:2]] == [
                (regen["seq"], "answer_requested",
                 {"message_id": hello["message_id"], "client_msg_id": "r-1"}),
                (regen["seq"] + 1, "agent_started", {"message_id": hello["message_id"]})]
            assert seen[-1]["data"] == {"text": "hello"}
            assert a.node.statistics().forwarded >= forwarded + 6

            # not_found comes back from the owner as itself, over the socket and in process
            with pytest.raises(ClientNotFound):
                await other.regenerate(thread_id, "msg_nope")
            with pytest.raises(ClientNotFound):
                await other.send(thread_id, "x", parent="run_nope")
            with pytest.raises(NotFound):
                await a.runtime.thread("ada", thread_id).regenerate(hello["run_id"])
            await other.ping()

            # over A's HTTP API: the regenerate route, and the turns read from the store
            path = f"/v1/threads/{thread_id}/messages/{edit['message_id']}/regenerate"
            status, _, acc = await http(server_a, "POST", path, tok=ADA)
            assert status == 200 and acc["message_id"] == edit["message_id"]
            await ended(acc["run_id"])
            for server in (server_a, server_b):
                status, _, page = await http(server, "GET", f"/v1/threads/{thread_id}/turns",
                                             tok=ADA)
                assert status == 200
                assert [(t["run_id"], t["parent"], t["answer_index"], t["answer_count"])
                        for t in page["turns"]] == [
                    (hello["run_id"], None, 0, 2), (world["run_id"], hello["run_id"], 0, 1),
                    (edit["run_id"], hello["run_id"], 0, 2), (root["run_id"], None, 0, 1),
                    (regen["run_id"], None, 1, 2), (acc["run_id"], hello["run_id"], 1, 2)]
            assert a.runtime.statistics().activations == 0  # A never held the thread


async def test_a_thread_with_branches_is_deleted_whole_through_either_node(pg_dsn):
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            (a, b), (server_a, server_b) = await two_nodes(stack, pg_dsn)
            thread_id = owned_by(b, "ada")
            kept = owned_by(a, "ada")
            other = await stack.enter_async_context(open_client(server_a.url, ADA))
            await other.join(thread_id)
            await other.join(kept)
            hello = await other.send(thread_id, "hello")
            await until_run_ends(other, hello["run_id"])
            edit = await other.send(thread_id, "edited", parent=None)
            await until_run_ends(other, edit["run_id"])
            regen = await other.regenerate(thread_id, hello["message_id"])
            await until_run_ends(other, regen["run_id"])
            mine = await other.send(kept, "kept")
            await until_run_ends(other, mine["run_id"])
            turns = f"/v1/threads/{thread_id}/turns"
            status, _, page = await http(server_b, "GET", turns, tok=ADA)
            assert status == 200 and len(page["turns"]) == 3

            status, _, ok = await http(server_a, "DELETE", f"/v1/threads/{thread_id}", tok=ADA)
            assert (status, ok) == (200, {"type": "ok", "thread_id": thread_id})
            left = await other.next_unsolicited(timeout=20)
            assert left == {"type": "left", "thread_id": thread_id, "reason": "deleted"}
            for server in (server_a, server_b):
                for path in (turns, f"/v1/threads/{thread_id}/events",
                             f"/v1/threads/{thread_id}"):
                    status, _, error = await http(server, "GET", path, tok=ADA)
                    assert (status, error["code"]) == (404, "not_found"), path
                status, _, listed = await http(server, "GET", "/v1/threads", tok=ADA)
                assert [t["thread_id"] for t in listed["threads"]] == [kept]
                status, _, page = await http(server, "GET", f"/v1/threads/{kept}/turns", tok=ADA)
                assert status == 200 and [t["run_id"] for t in page["turns"]] == [mine["run_id"]]
            # the id starts again from nothing: the old branches are no part of it
            await other.join(thread_id)
            fresh = await other.send(thread_id, "again")
            seen = await until_run_ends(other, fresh["run_id"])
            assert fresh["seq"] == 1 and seen[0]["data"]["parent"] is None
            with pytest.raises(ClientNotFound):
                await other.regenerate(thread_id, hello["message_id"])
            status, _, page = await http(server_a, "GET", turns, tok=ADA)
            assert [t["run_id"] for t in page["turns"]] == [fresh["run_id"]]
