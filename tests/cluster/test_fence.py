"""The fence and the notifications of every group-commit transaction, on a real PostgreSQL: two
journals stand for two nodes, and the lease table says which one may write."""

from __future__ import annotations

import psycopg
import pytest
import trio

from threadline.actors.errors import Fenced
from threadline.actors.messages import Event, ThreadKey
from threadline.cluster import leases
from threadline.cluster.fence import Fence, decode_touched
from threadline.cluster.interest import Followers, events_channel
from threadline.cluster.shards import SHARDS, ShardTable, key_hash, shard_of
from threadline.stores import open_durable_journal
from threadline.stores.postgres import PostgresBackend

ADA = ThreadKey("ada", "main")


def event(key: ThreadKey, seq: int) -> Event:
    return Event(key, seq, "user_message", f"run{seq}", float(seq),
                 {"message_id": f"m{seq}", "text": "hi"})


def sql(dsn: str, fn, *args):
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        return fn(cur, *args)


def owning(dsn: str, node: str, shards: dict[int, int]) -> ShardTable:
    table = ShardTable(node)
    table.taken(shards)
    table.move(list(shards), "recovered")
    return table


class Heard:
    def __init__(self) -> None:
        self.shards: list[set[int]] = []

    def __call__(self, shards: set[int]) -> None:
        self.shards.append(shards)


async def test_a_node_that_lost_a_shard_writes_nothing_more_there(pg_dsn):
    other = next(ThreadKey("bob", f"t{i}") for i in range(100)
                 if shard_of(ThreadKey("bob", f"t{i}")) != shard_of(ADA))
    async with open_durable_journal(PostgresBackend(pg_dsn)):
        pass  # the schema
    sql(pg_dsn, leases.setup, "s" * 40)
    taken = sql(pg_dsn, leases.take, "a", 60.0, SHARDS)
    heard_a = Heard()
    table_a = owning(pg_dsn, "a", taken)
    fence_a = Fence(table_a, heard_a)
    async with open_durable_journal(PostgresBackend(pg_dsn), fence=fence_a) as a:
        await a.ensure_thread(ADA, 0.0)
        await a.ensure_thread(other, 0.0)
        await a.append([event(ADA, 1)])
        # b takes ada's shard over (as after a's lease ran out): the epoch goes up.
        s = shard_of(ADA)
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("UPDATE shard_leases SET owner = 'b', epoch = epoch + 1 "
                         "WHERE shard = %s", (s,))
        # a still thinks it owns the shard: the store refuses, the rest of the batch goes on.
        refused: list[Exception] = []

        async def append_refused() -> None:
            with pytest.raises(Fenced) as caught:
                await a.append([event(ADA, 2)])
            refused.append(caught.value)

        async with trio.open_nursery() as nursery:  # one transaction for both
            nursery.start_soon(a.append, [event(other, 1)])
            nursery.start_soon(append_refused)
        assert len(refused) == 1
        assert heard_a.shards == [{s}]
        assert fence_a.refused == 1
        assert await a.last_seqs([ADA, other]) == {ADA: 1, other: 1}
        table_b = owning(pg_dsn, "b", {s: taken[s] + 1})
        async with open_durable_journal(PostgresBackend(pg_dsn),
                                        fence=Fence(table_b, Heard())) as b:
            await b.append([event(ADA, 2), event(ADA, 3)])
        # a learns it lost the shard; its cache forgets the thread, and once it takes the
        # shard back (a new epoch), it starts from the store, not from what it cached.
        table_a.renewed({k: v for k, v in taken.items() if k != s}, 0.0, 60.0)
        a.forget(lambda key: shard_of(key) == s)
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("UPDATE shard_leases SET owner = 'a', epoch = epoch + 1 "
                         "WHERE shard = %s", (s,))
        table_a.taken({s: taken[s] + 2})
        table_a.move([s], "recovered")
        assert (await a.ensure_thread(ADA, 0.0)).last_seq == 3
        await a.append([event(ADA, 4)])
    assert [e.seq for e in await _read(pg_dsn, ADA)] == [1, 2, 3, 4]


async def test_a_transaction_notifies_only_the_nodes_that_follow_what_it_wrote(pg_dsn):
    async with open_durable_journal(PostgresBackend(pg_dsn)):
        pass
    sql(pg_dsn, leases.setup, "s" * 40)
    table = owning(pg_dsn, "a", sql(pg_dsn, leases.take, "a", 60.0, SHARDS))
    followers = Followers()
    fence = Fence(table, Heard(), followers=followers)
    keys = [ThreadKey("ada", f"t{i}") for i in range(40)]
    b_follows = frozenset(shard_of(k) for k in keys[:10])
    c_follows = frozenset(shard_of(k) for k in keys[5:15])
    listeners = {}
    for name in ("b", "c", "d"):
        listeners[name] = psycopg.connect(pg_dsn, autocommit=True)
        listeners[name].execute(f"LISTEN {events_channel(name)}")
    try:
        async with open_durable_journal(PostgresBackend(pg_dsn), fence=fence) as journal:
            async with trio.open_nursery() as nursery:
                for k in keys:
                    nursery.start_soon(journal.ensure_thread, k, 0.0)
            async with trio.open_nursery() as nursery:  # nobody follows anything: no NOTIFY
                for k in keys:
                    nursery.start_soon(journal.append, [event(k, 1)])
            assert fence.notifications == fence.notified == 0
            followers.follow("link-b", "b", b_follows)
            followers.follow("link-c", "c", c_follows)
            followers.follow("link-d", "d", frozenset({shard_of(keys[-1])}))
            followers.forget("link-d")  # its link ended
            async with trio.open_nursery() as nursery:
                for k in keys:
                    nursery.start_soon(journal.append, [event(k, 2)])
            sent = fence.notifications
            assert 1 <= sent <= len(keys) and sent <= fence.notified <= 2 * sent

        def heard(name: str) -> set[int]:
            named: set[int] = set()
            for note in listeners[name].notifies(timeout=1.0, stop_after=sent):
                hashes, shards = decode_touched(note.payload)
                assert not shards
                named |= hashes
            return named

        for name, follows in (("b", b_follows), ("c", c_follows), ("d", frozenset())):
            named = await trio.to_thread.run_sync(heard, name)
            assert named == {key_hash(k) for k in keys if shard_of(k) in follows}, name
    finally:
        for conn in listeners.values():
            conn.close()


async def _read(dsn: str, key: ThreadKey):
    async with open_durable_journal(PostgresBackend(dsn)) as journal:
        return await journal.read(key, 0)
