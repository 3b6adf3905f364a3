"""The sans-IO parts of cluster mode: shard hashing, the shard table's transitions and
deadlines, where a request goes, and the NOTIFY payload."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from threadline.actors.messages import ThreadKey
from threadline.cluster.fence import NOTIFY_LIMIT, decode_touched, encode_touched
from threadline.cluster.shards import (SHARDS, TRANSITIONS, Peer, ShardState, ShardTable, Where,
                                       fair_share, key_hash, shard_of)

S = ShardState


def key(i: int) -> ThreadKey:
    return ThreadKey(f"user{i % 7}", f"thread{i}")


def test_the_shard_of_a_key_is_the_same_everywhere():
    # Fixed values: a change here moves every thread of every cluster to another shard.
    assert key_hash(ThreadKey("ada", "main")) == 0x5B5ED93D  # crc32 of "ada\0main"
    assert shard_of(ThreadKey("ada", "main")) == 317
    # The separator keeps ("a", "bc") and ("ab", "c") apart.
    assert key_hash(ThreadKey("a", "bc")) != key_hash(ThreadKey("ab", "c"))
    counts = [0] * SHARDS
    for i in range(50_000):
        counts[shard_of(key(i))] += 1
    assert min(counts) > 0 and max(counts) < 3 * 50_000 / SHARDS


@pytest.mark.parametrize("nodes, share", [(0, 1024), (1, 1024), (2, 512), (3, 342), (7, 147),
                                          (1024, 1), (2000, 1)])
def test_fair_shares_cover_every_shard(nodes, share):
    assert fair_share(nodes) == share
    assert fair_share(nodes) * max(1, nodes) >= SHARDS


def test_a_taken_shard_is_local_only_once_recovered():
    table = ShardTable("me")
    k = key(1)
    s = shard_of(k)
    assert table.locate(k) is Where.WAIT
    table.taken({s: 7})
    assert table.states[s] is S.RECOVERING and table.epochs == {s: 7}
    assert table.locate(k) is Where.WAIT and not table.is_local(k)
    table.move([s], "recovered")
    assert table.locate(k) is Where.LOCAL and table.owned == 1
    table.move([s], "release")
    assert table.locate(k) is Where.WAIT and table.epochs == {s: 7}  # may still write
    table.move([s], "released")
    assert table.states[s] is S.FREE and table.epochs == {} and table.owned == 0


def test_moves_outside_the_table_are_refused():
    table = ShardTable("me")
    with pytest.raises(ValueError):
        table.move([3], "recovered")
    table.taken({3: 1})
    with pytest.raises(ValueError):
        table.move([3], "release")  # not before it is recovered
    assert all((before, event) in TRANSITIONS for before, event in
               [(S.FREE, "taken"), (S.OWNED, "lost"), (S.RELEASING, "lost")])


def test_a_renewal_that_misses_a_shard_loses_it_and_the_epochs_are_replaced_whole():
    table = ShardTable("me", margin=1.0)
    table.taken({1: 1, 2: 1, 3: 1})
    table.move([1, 2, 3], "recovered")
    before = table.epochs
    lost = table.renewed({1: 1, 3: 1}, now=100.0, ttl=10.0)
    assert lost == [2] and table.states[2] is S.FREE
    assert before == {1: 1, 2: 1, 3: 1}  # the writer's thread may hold the old mapping
    assert table.epochs == {1: 1, 3: 1} and table.valid_until == 109.0


def test_past_the_local_deadline_every_shard_is_lost():
    table = ShardTable("me", margin=1.0)
    table.taken({1: 1, 2: 1})
    table.move([1], "recovered")
    table.renewed({1: 1, 2: 1}, now=0.0, ttl=10.0)
    assert table.expired(9.0) == []
    assert sorted(table.expired(9.5)) == [1, 2]
    assert table.epochs == {} and table.held() == []


def test_requests_go_to_the_live_owner_or_wait():
    table = ShardTable("me")
    k = key(5)
    s = shard_of(k)
    peer = Peer("other", ("127.0.0.1", 4000))
    table.seen({s: "other"}, {"other": peer, "me": Peer("me", ("127.0.0.1", 1))})
    assert table.locate(k) == peer and "me" not in table.peers
    table.forget_peer("other")
    assert table.locate(k) is Where.WAIT  # no word from the store yet on who is alive
    table.seen({s: "gone"}, {"other": peer})
    assert table.locate(k) is Where.WAIT  # an owner that is not alive


def test_a_notification_names_the_threads_or_else_their_shards():
    few = [key(i) for i in range(100)]
    payload = encode_touched(few)
    assert payload.startswith("h") and len(payload.encode()) <= NOTIFY_LIMIT
    hashes, shards = decode_touched(payload)
    assert hashes == {key_hash(k) for k in few} and shards == set()
    many = [key(i) for i in range(5000)]
    payload = encode_touched(many)
    assert payload.startswith("s") and len(payload) == 1 + 172
    hashes, shards = decode_touched(payload)
    assert hashes == set() and shards == {shard_of(k) for k in many}
    for bad in ("", "x12", "s!!!", "s" + "A" * 8):
        with pytest.raises(ValueError):
            decode_touched(bad)


@given(st.lists(st.tuples(st.text("ab:.-", min_size=1, max_size=5),
                          st.text("xy_-", min_size=1, max_size=5)), max_size=2000))
def test_every_payload_fits_and_names_every_thread_written(pairs):
    keys = [ThreadKey(u, t) for u, t in pairs]
    payload = encode_touched(keys)
    assert len(payload.encode()) <= NOTIFY_LIMIT
    hashes, shards = decode_touched(payload)
    for k in keys:
        assert key_hash(k) in hashes or shard_of(k) in shards
