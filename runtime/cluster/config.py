"""A cluster node's settings: ``ClusterConfig``, and the timings derived from its lease TTL.

Its own module, imported by every module that needs the settings (``node``, ``start``), so
that none of them imports another for a type.
"""

from __future__ import annotations

import os
import secrets
import socket

import attrs

from .tls import PeerTLS


def made_up_node_id() -> str:
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(2)}"


@attrs.frozen
class ClusterConfig:
    dsn: str
    node_id: str = attrs.Factory(made_up_node_id)
    peer_listen: tuple[str, int] = ("127.0.0.1", 0)
    peer_advertise: tuple[str, int] | None = None  # default: the address listened on
    lease_ttl: float = 10.0
    handover_grace: float = 5.0  # runs of a shard handed over get this long to finish
    peer_tls: PeerTLS | None = None  # None: a plaintext peer link (``tls.load_peer_tls``)

    @property
    def interval(self) -> float:
        return self.lease_ttl / 3

    @property
    def margin(self) -> float:
        """Seconds of each lease the node does not count on (a renewal's own time, clocks)."""
        return min(1.0, self.lease_ttl / 4)

    @property
    def stuck_after(self) -> float:
        """Seconds after which the server ends a node's transaction that is stuck (a paused
        node): its locks on lease rows must not outlive its lease by much."""
        return max(1.0, self.lease_ttl / 2)
