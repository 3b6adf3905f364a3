"""Cluster mode: several threadline processes over one PostgreSQL, one live actor per thread.

``shards``: which shard a thread is in and the sans-IO table of this node's shards; ``leases``:
the SQL of shard leases and the ``nodes`` table; ``fence``: the checks and the one ``NOTIFY``
every group-commit transaction makes; ``feeds``: events of threads other nodes own, read from
the journal; ``wire``, ``peers`` and ``peer_server``: the link requests are forwarded on, and ``tls``: its
TLS contexts; ``interest``: which shards each node follows, told to the others, so that an
owner notifies only the nodes that follow what it wrote;
``router``: where each request goes; ``node``: the loop that takes and renews leases, and
``handover``: shards leaving the node; ``admission``: what must hold before a process serves a
cluster's store; ``start``: settings and joining.
``docs/architecture.md`` tells the whole story.
"""
