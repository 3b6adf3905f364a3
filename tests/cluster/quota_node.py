"""A cluster node embedded as the README shows, its per-user quotas given to its server, run as
a process of its own so that a test can kill it: ``python -m tests.cluster.quota_node DSN
NODE_ID LEASE_TTL user_connections=3 ...`` (``Limits`` fields; ``ping_interval`` off); prints
``ready: URL``, then serves until killed."""

from __future__ import annotations

import sys

import trio

from tests.helpers import scripted_agent
from tests.servers import SECRET
from threadline.cluster import ClusterConfig, open_cluster_runtime
from threadline.server import open_server
from threadline.transport.limits import Limits


async def main(dsn: str, node_id: str, ttl: float, limits: Limits) -> None:
    config = ClusterConfig(dsn, node_id=node_id, lease_ttl=ttl)
    async with open_cluster_runtime(config, agent=scripted_agent, limits=limits) as cluster:
        async with open_server(cluster.runtime, port=0, secret=SECRET, limits=limits,
                               quotas=cluster.quotas, extra_metrics=cluster.extra_metrics,
                               extra_health=cluster.extra_health) as server:
            print(f"ready: {server.url}", flush=True)
            await trio.sleep_forever()


if __name__ == "__main__":
    dsn, node_id, ttl, *settings = sys.argv[1:]
    fields = {k: int(v) for k, v in (s.split("=", 1) for s in settings)}
    trio.run(main, dsn, node_id, float(ttl), Limits(ping_interval=None, **fields))
