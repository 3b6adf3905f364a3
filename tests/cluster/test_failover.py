"""Failover with real processes: ``kill -9`` of a node under load, a graceful stop, and a node
paused past its lease (SIGSTOP) that must write nothing for the shards it lost."""

from __future__ import annotations

import signal

import psycopg
import pytest
import trio

from tests.cluster.nodes import (SCRIPTED, Node, balanced, open_nodes, stored_well_formed,
                                 threads_owned_by)
from tests.servers import token
from threadline.actors.messages import ThreadKey
from threadline.transport.client import ConnectionClosed, ServerError, open_client

USERS = 9


class Writer:
    """One user on one thread: sends with a ``client_msg_id`` until accepted (moving to another
    node when its own goes away and joining again with ``since``), and keeps what it saw."""

    def __init__(self, user: str, thread: str, nodes: list[Node], home: int) -> None:
        self.user, self.thread, self.nodes, self.home = user, thread, nodes, home
        self.accepted: list[dict] = []
        self.seqs: list[int] = []   # seqs of the events received, in order
        self.first_after: float | None = None  # when a send was first accepted after the kill

    async def run(self, stop: trio.Event, killed: list[float], dead: set[int]) -> None:
        k = 0
        while not stop.is_set() and k < 300:
            node = self.home
            while node in dead:
                node = (node + 1) % len(self.nodes)
            try:
                async with open_client(self.nodes[node].url, token(self.user)) as client:
                    joined = await client.join(self.thread, since=self.seqs[-1] if self.seqs
                                               else 0)
                    assert joined["last_seq"] >= (self.seqs[-1] if self.seqs else 0)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._read, client)
                        while not stop.is_set() and k < 300:
                            cmid = f"{self.user}-{k}"
                            try:
                                self.accepted.append(await client.send(
                                    self.thread, f"message {k}", client_msg_id=cmid))
                                k += 1
                                if killed and self.first_after is None:
                                    self.first_after = trio.current_time() - killed[0]
                            except ServerError:
                                await trio.sleep(0.05)  # the same client_msg_id again
                            await trio.sleep(0.05)
                        nursery.cancel_scope.cancel()
            except* (ConnectionClosed, OSError):
                pass  # its node is gone: another one
            await trio.sleep(0.1)

    async def _read(self, client) -> None:
        while True:
            frame = await client.next_event(60)
            self.seqs.append(frame["seq"])


async def no_open_runs(dsn: str, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while True:
            with psycopg.connect(dsn) as conn:
                if conn.execute("SELECT count(*) FROM open_runs").fetchone()[0] == 0:
                    return
            await trio.sleep(0.2)


def check_store(dsn: str, writer: Writer) -> None:
    """Every accepted message stored exactly once, seq gapless, one terminal event a run."""
    events = stored_well_formed(dsn, ThreadKey(writer.user, writer.thread))
    messages = [e for e in events if e.event == "user_message"]
    ids = [e.data["client_msg_id"] for e in messages]
    assert len(ids) == len(set(ids))
    by_run = {e.run_id: e.seq for e in messages}
    for a in writer.accepted:
        assert by_run.get(a["run_id"]) == a["seq"], a


async def test_kill_9_of_a_node_under_load_loses_nothing_accepted(pg_dsn):
    async with open_nodes(pg_dsn, 3, *SCRIPTED) as nodes:  # the default lease TTL: 10 s
        victim = nodes[1]
        writers = [Writer(f"w{i}", threads_owned_by(pg_dsn, victim, f"w{i}", 1, prefix="k")[0],
                          nodes, i % 3) for i in range(USERS)]
        stop, killed, dead = trio.Event(), [], set()
        async with trio.open_nursery() as nursery:
            for w in writers:
                nursery.start_soon(w.run, stop, killed, dead)
            await trio.sleep(2)
            dead.add(1)
            victim.kill()
            killed.append(trio.current_time())
            with trio.fail_after(40):
                while any(w.first_after is None for w in writers):
                    await trio.sleep(0.1)
            await trio.sleep(1)
            stop.set()
        unavailable = max(w.first_after for w in writers)
        print(f"\nthreads of the killed node were unavailable for at most {unavailable:.1f} s")
        await no_open_runs(pg_dsn)
        for w in writers:
            check_store(pg_dsn, w)
            # What each client saw: gapless across its moves, every seq once.
            assert w.seqs == list(range(1, len(w.seqs) + 1))
            assert w.accepted
        await balanced([nodes[0], nodes[2]])


@pytest.mark.parametrize("stopping", [1, 2], ids=["one-of-three", "two-of-three-at-once"])
async def test_a_graceful_stop_moves_its_threads_with_no_failed_request(pg_dsn, stopping):
    # Two at once once made the staying node's lease renewal and its own writer lock lease
    # rows in different orders: a deadlock that failed whole group commits.
    async with open_nodes(pg_dsn, 3, *SCRIPTED, "--lease-ttl", "3") as nodes:
        leaving = nodes[1:1 + stopping]
        staying = [n for n in nodes if n not in leaving]
        owners = [*leaving, staying[0]]  # threads on the leaving nodes, and on the staying one
        owned = [threads_owned_by(pg_dsn, owners[i % len(owners)], f"g{i}", 1, prefix="g")[0]
                 for i in range(8)]
        failures: list[Exception] = []
        accepted: list[list[dict]] = [[] for _ in owned]

        async def client(i: int, thread: str) -> None:
            url = staying[i % len(staying)].url
            async with open_client(url, token(f"g{i}")) as c:
                await c.join(thread)
                for k in range(40):
                    try:
                        accepted[i].append(await c.send(thread, f"m{k}"))
                    except ServerError as exc:
                        failures.append(exc)
                    await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            for i, thread in enumerate(owned):
                nursery.start_soon(client, i, thread)
            await trio.sleep(0.7)
            for node in leaving:
                node.signal(signal.SIGTERM)
        for node in leaving:
            assert await node.wait() == 0
        assert failures == []
        await no_open_runs(pg_dsn)
        for i, thread in enumerate(owned):
            events = stored_well_formed(pg_dsn, ThreadKey(f"g{i}", thread))
            assert len(accepted[i]) == 40
            assert {a["seq"] for a in accepted[i]} == \
                {e.seq for e in events if e.event == "user_message"}
        await balanced(staying)


async def test_a_node_paused_past_its_lease_writes_nothing_for_the_shards_it_lost(pg_dsn):
    async with open_nodes(pg_dsn, 2, *SCRIPTED, "--lease-ttl", "2") as (a, b):
        (thread,) = threads_owned_by(pg_dsn, a, "pat", 1, prefix="p")
        key = ThreadKey("pat", thread)
        async with open_client(a.url, token("pat")) as on_a:
            await on_a.join(thread)
            await on_a.send(thread, "before the pause")
            a.signal(signal.SIGSTOP)
            await balanced([b], timeout=30)  # b took every shard over
            async with open_client(b.url, token("pat")) as on_b:
                joined = await on_b.join(thread)  # b's own actor now
                answers: list = []

                async def send_through_a() -> None:
                    try:
                        answers.append(await on_a.send(thread, "sent to the paused node",
                                                       client_msg_id="paused"))
                    except (ServerError, ConnectionClosed) as exc:
                        answers.append(exc)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_through_a)
                    await trio.sleep(0.5)  # the frame waits in a's socket
                    a.signal(signal.SIGCONT)
                    await on_b.send(thread, "sent to the new owner")
                with trio.fail_after(20):
                    while len(answers) == 0:
                        await trio.sleep(0.1)
                await no_open_runs(pg_dsn)
                seen = []
                with trio.move_on_after(2):
                    while True:
                        seen.append(await on_b.next_event(2))
        events = stored_well_formed(pg_dsn, key)
        # Everything stored after b took over went through b's actor: b's subscriber saw it all.
        after = [(e.seq, e.event, e.run_id) for e in events if e.seq > joined["last_seq"]]
        assert after == [(f["seq"], f["event"], f["run_id"]) for f in seen]
        texts = [e.data["text"] for e in events if e.event == "user_message"]
        assert texts.count("sent to the paused node") == (1 if isinstance(answers[0], dict)
                                                          else 0)
        assert texts.count("sent to the new owner") == 1


async def test_a_long_run_on_a_stopping_node_holds_back_only_its_own_thread(pg_dsn):
    async with open_nodes(pg_dsn, 2, *SCRIPTED, "--lease-ttl", "3", "--grace", "20") as (a, b):
        busy, idle = threads_owned_by(pg_dsn, a, "ada", 2, prefix="h")
        async with open_client(b.url, token("ada")) as client:
            await client.join(busy)
            await client.join(idle)
            await client.send(busy, "sleep:60")
            a.signal(signal.SIGTERM)  # its busy thread's run gets 20 s
            await trio.sleep(0.5)
            with trio.fail_after(8):  # well within the grace: the idle thread moved at once
                accepted = await client.send(idle, "think:elsewhere")
            assert accepted["seq"] == 1
            with trio.fail_after(40):  # the run ends with the grace, as on one node
                while (frame := await client.next_event(40))["thread_id"] != busy or \
                        frame["event"] != "agent_cancelled":
                    pass
            assert frame["data"] == {"reason": "shutdown"}
        assert await a.wait(40) == 0
