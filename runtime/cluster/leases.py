"""The SQL of shard leases and of the ``cluster_nodes`` table (tables: ``stores/schema.py``,
migration 2). Every function is blocking, runs in a worker thread on the node's own lease
connection (never the journal's writer), and is one transaction the caller commits.

Invariants:

- Time is the database's (``clock_timestamp()``), never a node's: nodes on different machines
  compare expiry times on one clock. A node keeps a local deadline on top (``ShardTable``), so
  that a paused node stops on its own before the store gives its shards away.
- A lease is taken only when it is free (``owner`` NULL) or expired, and every take bumps its
  ``epoch``: the writer's fence (``fence.py``) refuses writes under an older epoch. Takes lock
  the rows they take (``FOR UPDATE SKIP LOCKED``), so two nodes never take the same shard in
  one moment, and a take waits for a writer's transaction that holds the row ``FOR SHARE``.
- Renewal and release name the epoch they hold: a shard taken over meanwhile is neither
  renewed nor released by its old owner.
- Takes and releases ``NOTIFY threadline_shards`` (delivered at commit), so that the other
  nodes look at the leases at once rather than at their next round.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs
import psycopg
import trio

from threadline.stores.postgres import stuck_options

from .shards import SHARDS, Peer

NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
SHARDS_CHANNEL = "threadline_shards"


@attrs.frozen
class Round:
    """What one renewal saw, on the database's clock."""

    now: float
    kept: dict[int, int]          # our shards still ours, with their epochs
    owners: dict[int, str]        # every shard with a lease not expired, and its owner
    soonest_expiry: float | None  # the first lease of another node to run out
    peers: dict[str, Peer]        # the live nodes (a heartbeat within the TTL), us included
    free: list[int]               # shards free or expired
    expired_owners: list[str]     # nodes named by leases that ran out


#: The lease rows of ``held`` still ours at their epochs, locked in shard order. Every
#: transaction that locks lease rows and waits for them locks them in shard order (the
#: writer's fence too): two of them can then never wait for each other (a deadlock aborted
#: whole group commits). Takes do not wait (``SKIP LOCKED``).
HELD_IN_ORDER = ("SELECT l.shard FROM shard_leases l JOIN unnest(%s::int[], %s::bigint[]) AS "
                 "h(shard, epoch) ON l.shard = h.shard AND l.epoch = h.epoch WHERE l.owner = %s "
                 "ORDER BY l.shard FOR NO KEY UPDATE OF l")


def _held(held: Mapping[int, int], node_id: str) -> tuple[list[int], list[int], str]:
    shards = sorted(held)
    return shards, [held[s] for s in shards], node_id


def setup(cur: Any, secret: str) -> str:
    """Make the 1,024 lease rows if they are not there, and the peers' secret if there is
    none; the secret every node uses (the first node's)."""
    cur.execute("INSERT INTO shard_leases (shard, owner, epoch, expires_at) "
                "SELECT s, NULL, 0, 0 FROM generate_series(0, %s) AS s ON CONFLICT DO NOTHING",
                (SHARDS - 1,))
    return setting(cur, "peer_secret", secret)


def renew(cur: Any, node_id: str, peer_address: str, http_url: str, started_at: float,
          ttl: float, held: Mapping[int, int], present: bool = True) -> Round:
    """Heartbeat (or, not ``present``: a node leaving, take its row away, so that the others
    share the shards out without it), renew the leases in ``held`` (shard: epoch) that are
    still ours, and read who owns what and which nodes are alive."""
    if not present:
        leave(cur, node_id, started_at)
    else:
            cur.execute(f"INSERT INTO cluster_nodes (node_id, peer_address, http_url, started_at, "
                    f"heartbeat_at) VALUES (%s, %s, %s, %s, {NOW}) ON CONFLICT (node_id) DO "
                    f"UPDATE SET heartbeat_at = {NOW}, peer_address = EXCLUDED.peer_address, "
                    f"http_url = EXCLUDED.http_url, started_at = EXCLUDED.started_at",
                    (node_id, peer_address, http_url, started_at))
    cur.execute(f"UPDATE shard_leases SET expires_at = {NOW} + %s WHERE shard IN "
                f"({HELD_IN_ORDER}) RETURNING shard, epoch", (ttl, *_held(held, node_id)))
    kept = {shard: epoch for shard, epoch in cur.fetchall()}
    cur.execute(f"SELECT {NOW}")
    now = cur.fetchone()[0]
    cur.execute("SELECT shard, owner, expires_at FROM shard_leases")
    owners: dict[int, str] = {}
    free: list[int] = []
    expired: set[str] = set()
    soonest: float | None = None
    for shard, owner, expires_at in cur.fetchall():
        if owner is None or expires_at < now:
            free.append(shard)
            if owner is not None and owner != node_id:
                expired.add(owner)
            continue
        owners[shard] = owner
        if owner != node_id and (soonest is None or expires_at < soonest):
            soonest = expires_at
    cur.execute("SELECT node_id, peer_address FROM cluster_nodes WHERE heartbeat_at > %s",
                (now - ttl,))
    peers = {n: Peer(n, parse_address(a)) for n, a in cur.fetchall()}
    # A node gone for a long while is forgotten (its row was only ever a heartbeat).
    cur.execute("DELETE FROM cluster_nodes WHERE heartbeat_at < %s", (now - 100 * ttl,))
    return Round(now, kept, owners, soonest, peers, free, sorted(expired))


def take(cur: Any, node_id: str, ttl: float, count: int) -> dict[int, int]:
    """Take up to ``count`` free or expired shards (chosen at random, so that nodes taking at
    once spread over different rows); ``{shard: new epoch}``."""
    if count <= 0:
        return {}
    cur.execute(f"UPDATE shard_leases SET owner = %s, epoch = epoch + 1, expires_at = {NOW} + %s "
                f"WHERE shard IN (SELECT shard FROM shard_leases WHERE owner IS NULL OR "
                f"expires_at < {NOW} ORDER BY random() LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"RETURNING shard, epoch", (node_id, ttl, count))
    taken = {shard: epoch for shard, epoch in cur.fetchall()}
    if taken:
        cur.execute("SELECT pg_notify(%s, %s)", (SHARDS_CHANNEL, f"take {node_id}"))
    return taken


def application_name(node_id: str) -> str:
    """What a node's connections call themselves in ``pg_stat_activity``."""
    return f"threadline {node_id}"[:63]


def end_stuck(cur: Any, owners: list[str], stuck_after: float) -> int:
    """End the transactions of ``owners`` (nodes whose leases ran out) that have been open
    more than ``stuck_after`` seconds; how many. A paused or cut-off node can hold lease rows
    locked in its writer's transaction (``FOR SHARE``), and a ``COPY`` it stopped in the
    middle of is never timed out by the server: its shards could not be taken until then.
    Its writes are refused by the fence anyway; this frees the rows."""
    if not owners:
        return 0
    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                "application_name = ANY(%s) AND pid <> pg_backend_pid() AND xact_start < "
                "clock_timestamp() - make_interval(secs => %s)",
                ([application_name(o) for o in owners], stuck_after))
    return sum(1 for (ended,) in cur.fetchall() if ended)


def release(cur: Any, node_id: str, held: Mapping[int, int]) -> list[int]:
    """Let go of the leases in ``held`` (shard: epoch) that are still ours; the shards let go."""
    if not held:
        return []
    cur.execute(f"UPDATE shard_leases SET owner = NULL, expires_at = 0 WHERE shard IN "
                f"({HELD_IN_ORDER}) RETURNING shard", _held(held, node_id))
    released = [row[0] for row in cur.fetchall()]
    if released:
        cur.execute("SELECT pg_notify(%s, %s)", (SHARDS_CHANNEL, f"release {node_id}"))
    return released


def setting(cur: Any, name: str, default: str) -> str:
    """The cluster setting ``name``, made ``default`` if there is none (the first one wins)."""
    cur.execute("INSERT INTO cluster_settings (name, value) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING", (name, default))
    cur.execute("SELECT value FROM cluster_settings WHERE name = %s", (name,))
    return cur.fetchone()[0]


def live_nodes(cur: Any, within: float) -> list[str]:
    cur.execute(f"SELECT node_id FROM cluster_nodes WHERE heartbeat_at > {NOW} - %s "
                "ORDER BY node_id", (within,))
    return [n for (n,) in cur.fetchall()]


def same_auth(cur: Any, fingerprint: str, within: float) -> bool:
    """Whether ``fingerprint`` is the one the live nodes check tokens with. With no live node
    and none set in the last ``within`` seconds it becomes the one (the cluster restarted with
    a new secret); set more recently, another node is starting with it, not yet live."""
    cur.execute(f"SELECT {NOW}")
    now = cur.fetchone()[0]
    stored, _, since = setting(cur, "auth_fingerprint", f"{fingerprint}@{now}").partition("@")
    if stored == fingerprint:
        return True
    if live_nodes(cur, within) or now - float(since or 0) < within:
        return False
    cur.execute("UPDATE cluster_settings SET value = %s WHERE name = 'auth_fingerprint'",
                (f"{fingerprint}@{now}",))
    return True


def in_use(cur: Any, node_id: str, ttl: float) -> float | None:
    """Seconds since the last heartbeat of a live node named ``node_id``, or None: two live
    nodes must not share a name (they would share a row, and leases)."""
    cur.execute(f"SELECT {NOW} - heartbeat_at FROM cluster_nodes WHERE node_id = %s AND "
                f"heartbeat_at > {NOW} - %s", (node_id, ttl))
    row = cur.fetchone()
    return None if row is None else max(0.0, row[0])


def leave(cur: Any, node_id: str, started_at: float) -> None:
    """The node stops: its row goes (its leases were released before); not the row of
    another start of the same name."""
    cur.execute("DELETE FROM cluster_nodes WHERE node_id = %s AND started_at = %s",
                (node_id, started_at))
    cur.execute("SELECT pg_notify(%s, %s)", (SHARDS_CHANNEL, f"leave {node_id}"))


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LeaseTimeout(psycopg.OperationalError):
    """A lease call got no answer within its bound: the connection is dropped."""


class LeaseConnection:
    """The node's own connection for lease rounds: one transaction per call, in a thread,
    one call at a time, each bounded by ``stuck_after`` seconds (a connection that stops
    answering is left to its thread and dropped: the next call opens a fresh one)."""

    def __init__(self, dsn: str, stuck_after: float, name: str) -> None:
        self.dsn = dsn
        self.name = name  # application_name
        self.stuck_after = stuck_after  # see ``PostgresBackend.writer_stuck_after``
        self._conn: psycopg.Connection | None = None
        self._lock = trio.Lock()  # a round and a handover may both ask: one at a time

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._lock:
            with trio.move_on_after(self.stuck_after):
                return await trio.to_thread.run_sync(self._run_sync, fn, args,
                                                     abandon_on_cancel=True)
            self._conn = None  # its thread closes it when (if ever) the call returns
            raise LeaseTimeout(f"no answer within {self.stuck_after:g} s")

    def _run_sync(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, connect_timeout=5, application_name=self.name,
                                         options=stuck_options(self.stuck_after))
        conn = self._conn
        try:
            with conn.cursor() as cur:
                result = fn(cur, *args)
            conn.commit()
            if self._conn is not conn:  # abandoned meanwhile: dropped
                conn.close()
            return result
        except BaseException:
            try:
                conn.rollback()
            except psycopg.Error:
                pass
            if conn.broken or conn.closed or self._conn is not conn:
                if self._conn is conn:
                    self._conn = None
                conn.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
