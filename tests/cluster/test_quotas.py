"""Per-user quotas across the nodes of a cluster: nodes embedded with ``open_cluster_runtime``,
each serving with ``open_server(quotas=cluster.quotas)`` over the real PostgreSQL, real
clients on loopback. A user's connections, sends per second and stored threads hold across
the nodes once they have exchanged reports (``usage.py``); a killed node stops counting when
its link ends."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator, Callable

import attrs
import pytest
import trio

from tests.cluster.nodes import Node
from tests.helpers import scripted_agent
from tests.servers import SECRET, http, token
from threadline.cluster import ClusterConfig, ClusterRuntime, open_cluster_runtime
from threadline.server import RunningServer, open_server
from threadline.transport.client import LimitReached, RateLimited, open_client
from threadline.transport.limits import Limits

TTL = 3.0


@attrs.frozen
class Served:
    cluster: ClusterRuntime
    server: RunningServer

    @property
    def url(self) -> str:
        return self.server.url

    def slots_elsewhere(self, user: str) -> int:
        return self.cluster.quotas.slots_elsewhere(user)

    def received(self) -> int:
        return self.cluster.node.statistics().usage_reports_received


@asynccontextmanager
async def open_served(dsn: str, names: list[str], limits: Limits,
                      ttl: float = TTL) -> AsyncIterator[list[Served]]:
    """One embedded node per name, each with its server, once they all see each other."""
    async with AsyncExitStack() as stack:
        nodes = []
        for name in names:
            config = ClusterConfig(dsn, node_id=name, lease_ttl=ttl, handover_grace=0.5)
            cluster = await stack.enter_async_context(open_cluster_runtime(
                config, agent=scripted_agent, limits=limits))
            server = await stack.enter_async_context(open_server(
                cluster.runtime, port=0, secret=SECRET, limits=limits, quotas=cluster.quotas,
                extra_metrics=cluster.extra_metrics, extra_health=cluster.extra_health))
            nodes.append(Served(cluster, server))
        await until(lambda: all(len(n.cluster.node.table.peers) >= len(names) - 1
                                for n in nodes))
        yield nodes


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.05)


async def heard(node: Served, reports: int = 2) -> None:
    """Until ``node`` has counted ``reports`` more reports: with one peer, the second of them
    was taken after what the caller did before."""
    start = node.received()
    await until(lambda: node.received() >= start + reports)


async def metric(node: Served, name: str) -> float:
    """A figure from the node's ``/metrics``, as its server serves it."""
    body = (await http(node.server, "GET", "/metrics"))[2]
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} on /metrics")


async def refusal(url: str, user: str) -> dict[str, object]:
    """What a server says to a connection of ``user`` it refuses (then it closes it)."""
    async with open_client(url, token(user)) as client:
        return await client.next_unsolicited(10)


async def hold(url: str, user: str, release: trio.Event, *,
               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A connection of ``user``, admitted (it answers a ping), until ``release`` is set."""
    async with open_client(url, token(user)) as client:
        await client.ping()
        task_status.started()
        await release.wait()


@pytest.mark.parametrize("spread", [[3, 1], [2, 1, 1]], ids=["two nodes", "three nodes"])
async def test_a_users_connections_are_counted_across_the_nodes(pg_dsn, spread):
    limits = Limits(ping_interval=None, user_connections=4)
    names = [f"q{i}" for i in range(len(spread))]
    with trio.fail_after(120):
        async with open_served(pg_dsn, names, limits) as nodes, trio.open_nursery() as held:
            releases = []
            for node, count in zip(nodes, spread):  # 4 across the cluster, all admitted
                for _ in range(count):
                    releases.append(trio.Event())
                    await held.start(hold, node.url, "ada", releases[-1])
            await until(lambda: all(n.slots_elsewhere("ada") == 4 - count
                                    for n, count in zip(nodes, spread)))
            for node in nodes:  # the fifth is refused on every node
                frame = await refusal(node.url, "ada")
                assert frame["code"] == "limit_reached", frame
                assert "4 connections per user" in str(frame["message"])
            async with open_client(nodes[-1].url, token("bob")) as bob:
                await bob.ping()  # another user is counted apart
            releases[0].set()  # one of ada's on the first node closes
            last = nodes[-1]
            await until(lambda: last.slots_elsewhere("ada") == 3 - spread[-1])
            again = trio.Event()
            await held.start(hold, last.url, "ada", again)  # free again, on another node
            await until(lambda: nodes[0].slots_elsewhere("ada") == 5 - spread[0])
            assert (await refusal(nodes[0].url, "ada"))["code"] == "limit_reached"
            for release in (*releases, again):
                release.set()


async def test_a_users_sends_share_one_rate_across_two_nodes(pg_dsn):
    limits = Limits(ping_interval=None, user_send_rate=0.2, user_send_burst=3)
    with trio.fail_after(120):
        async with open_served(pg_dsn, ["qa", "qb"], limits) as (a, b), \
                open_client(b.url, token("ada")) as on_b, \
                open_client(a.url, token("ada")) as on_a:
            await on_b.join("main")  # her record on b is there before a's reports
            for i in range(3):  # the burst, all of it, through a
                await on_a.join(f"s{i}")
                await on_a.send(f"s{i}", "hi")
            with pytest.raises(RateLimited):
                await on_a.send("s0", "hi")  # as on one node
            await heard(b)
            with pytest.raises(RateLimited):  # b heard: her bucket is empty there too
                await on_b.send("main", "hi")
            assert await metric(a, "threadline_cluster_usage_reports_sent_total") >= 2
            assert await metric(b, "threadline_cluster_usage_reports_received_total") >= 2


async def test_a_users_stored_threads_are_counted_across_two_nodes(pg_dsn):
    limits = Limits(ping_interval=None, user_threads=4)
    with trio.fail_after(120):
        async with open_served(pg_dsn, ["qa", "qb"], limits) as (a, b), \
                open_client(b.url, token("ada")) as on_b, \
                open_client(a.url, token("ada")) as on_a:
            await on_b.join("b0")  # b reads her threads now, before a has made any
            for thread in ("a0", "a1", "a2"):
                await on_a.join(thread)
            await heard(b)
            with pytest.raises(LimitReached, match="4 threads per user"):
                await on_b.join("b1")  # 3 made through a, 1 through b
            assert (await on_b.join("a0"))["type"] == "joined"  # one that exists: never refused


async def test_a_killed_node_stops_counting_once_its_link_ends(pg_dsn):
    """Node A, a process of its own, holds two of ada's three connections; node B, here,
    counts them until A is killed and its link ends. Their lease TTL is far longer than the
    wait, so A stays on B's live list meanwhile: only the link's end can free the slots."""
    limits = Limits(ping_interval=None, user_connections=3)
    killed = Node(pg_dsn, module="tests.cluster.quota_node",
                  argv=[pg_dsn, "qa", "120", "user_connections=3"])
    try:
        await killed.ready()
        with trio.fail_after(120):
            async with open_served(pg_dsn, ["qb"], limits, ttl=120.0) as [b]:
                await until(lambda: "qa" in b.cluster.node.table.peers)
                async with open_client(killed.url, token("ada")) as one, \
                        open_client(killed.url, token("ada")) as two, \
                        open_client(b.url, token("ada")) as here:
                    for client in (one, two, here):
                        await client.ping()
                    await until(lambda: b.slots_elsewhere("ada") == 2)
                    assert (await refusal(b.url, "ada"))["code"] == "limit_reached"
                    killed.kill()
                    await until(lambda: b.slots_elsewhere("ada") == 0, timeout=30)
                    assert "qa" in b.cluster.node.table.peers  # still live: the link ended
                    async with open_client(b.url, token("ada")) as more, \
                            open_client(b.url, token("ada")) as most:
                        await more.ping()
                        await most.ping()
                        assert (await refusal(b.url, "ada"))["code"] == "limit_reached"
    except BaseException:
        print(killed.logs()[-6000:])
        raise
    finally:
        killed.kill()


async def test_the_attachment_quota_holds_across_nodes(pg_dsn):
    """A user's stored attachment bytes are the store's count: an upload on one node takes
    from what an upload on the other may store, at once (no report to wait for)."""
    limits = Limits(user_attachment_bytes=300_000)
    async with open_served(pg_dsn, ["qa", "qb"], limits) as (a, b):
        tok = token("ada")
        headers = {"content-type": "text/plain"}
        status, _, first = await http(a.server, "POST", "/v1/attachments?name=a.txt", tok=tok,
                                      body=b"a" * 200_000, headers=headers)
        assert status == 201, first
        status, _, refused = await http(b.server, "POST", "/v1/attachments?name=b.txt",
                                        tok=tok, body=b"b" * 200_000, headers=headers)
        assert (status, refused["code"]) == (429, "limit_reached")
        status, _, other = await http(b.server, "POST", "/v1/attachments?name=b.txt",
                                      tok=token("bob"), body=b"b" * 200_000, headers=headers)
        assert status == 201  # another user's bytes are counted apart
        # The first one is readable from the other node, and nobody else's.
        status, _, got = await http(b.server, "GET", f"/v1/attachments/{first['attachment_id']}",
                                    tok=tok)
        assert status == 200 and got == b"a" * 200_000
        status, _, _ = await http(b.server, "GET", f"/v1/attachments/{first['attachment_id']}",
                                  tok=token("bob"))
        assert status == 404
