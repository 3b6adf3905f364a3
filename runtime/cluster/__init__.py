"""Cluster mode: several threadline processes over one PostgreSQL, one live actor per thread.

``open_cluster_runtime(ClusterConfig(dsn, ...), agent=...)`` runs a runtime as one node of the
cluster (``start``); ``threadline serve --cluster`` is that and a server.

``config``: a node's settings; ``shards``: which shard a thread is in and the sans-IO table of
this node's shards; ``leases``: the SQL of shard leases and the ``nodes`` table; ``fence``: the
checks and the one ``NOTIFY`` every group-commit transaction makes; ``feeds``: events of
threads other nodes own, read from the journal; ``wire``, ``peers`` and ``peer_server``: the
link requests are forwarded on, and ``tls``: its TLS contexts; ``interest``: which shards each
node follows, told to the others, so that an owner notifies only the nodes that follow what it
wrote; ``usage``: what each node's users use, told to the others, so that per-user limits
hold across the cluster; ``router``: where each request goes; ``node``: the loop that takes
and renews leases, ``handover``: shards leaving the node, and ``wakeup``: how the others ask
it for a round;
``figures``: the node's ``/metrics`` and ``/healthz``; ``admission``: what must hold before a
process serves a cluster's store; ``start``: the composition. Imports go one way: ``start``
imports ``node``, ``node`` imports ``handover`` and ``config``, none imports back.
``docs/architecture.md`` tells the whole story.
"""

from .config import ClusterConfig, made_up_node_id
from .start import ClusterRuntime, open_cluster_runtime
from .tls import PeerTLS, load_peer_tls

__all__ = ["ClusterConfig", "ClusterRuntime", "PeerTLS", "load_peer_tls", "made_up_node_id",
           "open_cluster_runtime"]
