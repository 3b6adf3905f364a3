"""Before a process serves a store that a cluster uses: what must hold, each said in one line.

- Two live nodes never share an id (they would share a row, and leases).
- Every node checks tokens the same way: a fingerprint of its secret (or key file) is kept in
  ``cluster_settings``; a node whose fingerprint differs from the one the live nodes use is
  refused (with no live node, it replaces it: the whole cluster restarted with a new secret).
  The fingerprint is a SHA-256 under a fixed label: it does not give the secret away.
- A server started without ``--cluster`` on a store that live nodes use is refused: its
  start-up recovery would close their runs, and its writes would race theirs.
- Without a secret, the nodes share one made up by the first and kept in the store.

Every function blocks (call it before ``trio.run``, or in a thread) and raises
``StoreError`` (``ClusterRefusal``) with the line to show.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path
from typing import Any, Callable

import psycopg

from threadline.stores.errors import StoreError, first_line

from . import leases

#: How recent a heartbeat must be for a server without ``--cluster`` to see a live cluster (it
#: does not know the nodes' TTL; a node renews every third of its own).
LIVE_WITHIN = 60.0


class ClusterRefusal(StoreError):
    """A start that would break a cluster, said in one line."""


def node_in_use(node_id: str, since: float) -> str:
    return (f"node id {node_id} is in use by a live node (its last heartbeat {since:.1f} s "
            "ago): give each node its own --node-id")


def auth_fingerprint(secret: str | None, public_key_file: str | None,
                     jwks_file: str | None) -> str:
    """What identifies how a node checks tokens, without giving the secret away."""
    parts = [b"threadline auth\0"]
    if secret:
        parts.append(b"hs256\0" + secret.encode())
    for kind, path in (("pem", public_key_file), ("jwks", jwks_file)):
        if path:
            parts.append(kind.encode() + b"\0" + Path(path).read_bytes())
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def _with_store(dsn: str, fn: Callable[[Any], Any]) -> Any:
    from threadline.stores.postgres import PostgresBackend
    from threadline.stores.sql import prepare

    backend = PostgresBackend(dsn)
    prepare(backend)  # the tables exist (a StoreError in one line if the store is unusable)
    try:
        with backend.connect(writer=True) as conn, conn.cursor() as cur:
            return fn(cur)
    except ClusterRefusal:
        raise
    except Exception as exc:
        raise StoreError(first_line(f"{backend.name}: {backend.explain(exc)}")) from exc


def shared_token_secret(dsn: str) -> str:
    """The HS256 secret every node checks tokens with when none is given (see the header)."""
    return _with_store(dsn, lambda cur: leases.setting(cur, "token_secret",
                                                       secrets.token_urlsafe(32)))


def check_node(dsn: str, node_id: str, ttl: float, fingerprint: str) -> None:
    """Refuse a node whose id a live node has, or that checks tokens otherwise than the live
    nodes do; else record its fingerprint. A row of that id with a recent heartbeat may be
    this node's own last run, killed: that one is waited out (up to the TTL), and only a
    heartbeat that moves meanwhile is a live node's."""
    def check(cur: Any) -> None:
        since = leases.in_use(cur, node_id, ttl)
        deadline = time.monotonic() + ttl
        while since is not None and time.monotonic() < deadline:
            cur.connection.commit()  # a new snapshot each look
            time.sleep(0.25)
            later = leases.in_use(cur, node_id, ttl)
            if later is not None and later < since - 0.1:  # it beat meanwhile: alive
                raise ClusterRefusal(node_in_use(node_id, later))
            since = later
        if since is not None:
            raise ClusterRefusal(node_in_use(node_id, since))
        if not leases.same_auth(cur, fingerprint, ttl):
            raise ClusterRefusal(
                "this node checks tokens with another secret (or key) than the cluster's live "
                "nodes: give every node the same --secret, --jwt-public-key or --jwks")
    _with_store(dsn, check)


def check_standalone(dsn: str) -> None:
    """Refuse a server without ``--cluster`` on a store live cluster nodes use. A store it
    cannot read is left to the journal's own opening to report."""
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            live = leases.live_nodes(cur, LIVE_WITHIN)
    except psycopg.Error:
        return  # no such table yet (an older or new store), or unreachable: said elsewhere
    if live:
        raise ClusterRefusal(
            f"cluster nodes use this store ({', '.join(live[:3])}): start this server with "
            "--cluster too, or give it another store")
