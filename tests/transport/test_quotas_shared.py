"""Per-user quotas across the nodes of a cluster, sans-IO: two and three ``UserQuotas`` (one
per node) that exchange their reports as the nodes do every ``REPORT_INTERVAL``. Connections,
sends per second and stored threads hold for a user across all of them, within one interval.
Virtual time; real journals (the user's stored threads are read from one)."""

from __future__ import annotations

import pytest
import trio

from threadline import open_runtime
from threadline.actors.errors import LimitReached, RateLimited
from threadline.transport.limits import Limits
from threadline.transport.quotas import UserQuotas, UserUsage

LIMITS = Limits(user_connections=5, user_send_rate=10.0, user_send_burst=10, user_threads=6)


def exchange(nodes: dict[str, UserQuotas]) -> None:
    """One round of reports: every node tells every other one."""
    reports = {name: quotas.take_report() for name, quotas in nodes.items()}
    for name, report in reports.items():
        for other, quotas in nodes.items():
            if other != name:
                quotas.observe(name, report)


@pytest.mark.parametrize("count", [2, 3])
async def test_connections_hold_across_nodes(autojump_clock, count):
    async with open_runtime() as rt:
        nodes = {f"n{i}": UserQuotas(LIMITS) for i in range(count)}
        ada = rt.user("ada")
        held = [nodes["n0"].open(ada) for _ in range(3)]
        exchange(nodes)
        for name in list(nodes)[1:]:
            assert nodes[name].slots_elsewhere("ada") == 3
        nodes["n1"].open(ada)
        nodes["n1"].open(ada)
        exchange(nodes)
        for quotas in nodes.values():  # 5 open across the cluster: the sixth is refused
            with pytest.raises(LimitReached):
                quotas.open(ada)
            with pytest.raises(LimitReached):  # and an HTTP request would need a slot too
                quotas.open_request(ada)
        nodes["n0"].release(held[0])
        exchange(nodes)
        nodes[list(nodes)[-1]].open(ada)  # a slot is free again, on any node
        assert nodes["n0"].slots_elsewhere("bob") == 0  # another user is counted apart


async def test_sends_share_one_rate_across_nodes(autojump_clock):
    async with open_runtime() as rt:
        a, b = UserQuotas(LIMITS), UserQuotas(LIMITS)
        nodes = {"a": a, "b": b}
        qa, qb = a.open(rt.user("ada")), b.open(rt.user("ada"))
        for _ in range(10):
            qa.admit_send()  # a's burst, all of it
        exchange(nodes)
        with pytest.raises(RateLimited):  # b heard: the user's bucket is empty there too
            qb.admit_send()
        sent = 0
        for _ in range(40):  # 4 s at the rate, both nodes sending as fast as allowed
            await trio.sleep(0.1)
            for quota in (qa, qb):
                try:
                    quota.admit_send()
                    sent += 1
                except RateLimited:
                    pass
            if _ % 10 == 9:
                exchange(nodes)
        # 10/s for 4 s across the cluster, within one interval's worth of each node.
        assert 40 <= sent <= 40 + 2 * 10, sent


async def test_stored_threads_are_counted_across_nodes(autojump_clock):
    async with open_runtime() as rt:
        a, b = UserQuotas(LIMITS), UserQuotas(LIMITS)
        qa, qb = a.open(rt.user("ada")), b.open(rt.user("ada"))
        for i in range(3):
            await qa.admit_thread(f"a{i}")
        await qb.admit_thread("b0")  # b loaded the user's (empty) list before a's threads
        exchange({"a": a, "b": b})
        await qb.admit_thread("b1")  # 3 on a + 2 on b: 5 of 6
        await qb.admit_thread("b2")
        with pytest.raises(LimitReached):
            await qb.admit_thread("b3")
        exchange({"a": a, "b": b})
        with pytest.raises(LimitReached):
            await qa.admit_thread("a3")
        await qa.admit_thread("b1")  # one that exists is never refused


async def test_a_node_that_leaves_is_forgotten(autojump_clock):
    async with open_runtime() as rt:
        a, b = UserQuotas(LIMITS), UserQuotas(LIMITS)
        for _ in range(5):
            a.open(rt.user("ada"))
        exchange({"a": a, "b": b})
        with pytest.raises(LimitReached):
            b.open(rt.user("ada"))
        b.forget_node("a")
        b.open(rt.user("ada"))


def test_a_users_usage_crosses_the_wire_as_made():
    usage = UserUsage(2, 7, ("main", "other"))
    assert UserUsage.from_wire(usage.to_wire()) == usage
    for bad in ([1, 2], [-1, 0, []], [1, 2, [3]], "x", [True, 0, []]):
        with pytest.raises(ValueError):
            UserUsage.from_wire(bad)
