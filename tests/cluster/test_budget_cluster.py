"""A user's token budget across a cluster's nodes (PROTOCOL.md 1.1): what the user spent in a
thread one node owns refuses a send to a thread the other owns, through either node's server,
within the bound the runtime documents (a node's view of the others' spending is at most a
second old, and read at every check from 80 % of the budget on), and ``GET /v1/usage`` reads
the same totals on both. Two embedded nodes on the real
PostgreSQL, each with its server (the echo agent's ``/usage``: 8 tokens a run)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from tests.cluster.test_decide_cluster import owned_by
from tests.cluster.test_tree_cluster import two_nodes as two_tree_nodes
from tests.servers import http, token, until_run_ends
from threadline import RuntimeConfig
from threadline.actors.usage import REFRESH
from threadline.transport.client import BudgetExceeded, open_client

ADA = token("ada")


async def two_nodes(stack: AsyncExitStack, dsn: str, tokens_per_day: int):
    """Nodes a and b, each with its server, a budget of ``tokens_per_day``, balanced."""
    return await two_tree_nodes(stack, dsn, RuntimeConfig(tokens_per_day=tokens_per_day))


async def test_a_budget_spent_through_one_node_refuses_the_users_sends_on_every_node(pg_dsn):
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            nodes, servers = await two_nodes(stack, pg_dsn, tokens_per_day=16)
            on_a, on_b = owned_by(nodes[0], "ada"), owned_by(nodes[1], "ada")
            async with open_client(servers[0].url, ADA) as client:
                for thread in (on_a, on_b):  # one run on each owner, both through node a
                    await client.join(thread)
                    await _run(client, thread)
            # Each node's view of another node's spending is at most a second old (below 80 %
            # of the budget: ``actors/usage.py``); past it, both refuse, whichever owns.
            await trio.sleep(REFRESH)
            for server in servers:
                async with open_client(server.url, ADA) as client:
                    for thread in (on_a, on_b):
                        await client.join(thread)
                        with pytest.raises(BudgetExceeded):
                            await client.send(thread, "/usage")
                status, _, body = await http(server, "GET", "/v1/usage", tok=ADA)
                assert status == 200 and body["day"] == {
                    "input_tokens": 12, "output_tokens": 4, "budget": 16}
            # Another user is not held to ada's spending, on either node.
            async with open_client(servers[1].url, token("bob")) as bob:
                await bob.join(on_a)
                assert (await bob.send(on_a, "/usage"))["seq"] == 1



async def test_near_the_budget_a_node_reads_the_store_at_every_check(pg_dsn):
    """From 80 % of the budget on, a node's checks read the store: what the other node spent
    a moment ago refuses the next send at once, though this node's own view is fresh."""
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            nodes, servers = await two_nodes(stack, pg_dsn, tokens_per_day=20)
            on_a, on_b = owned_by(nodes[0], "ada"), owned_by(nodes[1], "ada")
            async with open_client(servers[0].url, ADA) as client:
                await client.join(on_a)
                await client.join(on_b)
                await _run(client, on_a)
                await _run(client, on_a)  # a's view: 16 of 20, its own: near the budget
                await _run(client, on_b)  # b: 24 in the store
                with pytest.raises(BudgetExceeded):  # a reads the store, not its 16
                    await client.send(on_a, "/usage")


async def _run(client, thread: str) -> None:
    """A ``/usage`` in ``thread``, to its end (completed: 8 tokens spent)."""
    accepted = await client.send(thread, "/usage")
    assert (await until_run_ends(client, accepted["run_id"]))[-1]["event"] == "agent_completed"
