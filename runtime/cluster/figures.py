"""A cluster node's figures: ``ClusterStatistics``, its ``/metrics`` families and its
``/healthz`` fields.

The node gives them to the server at construction (``open_server(extra_metrics=...,
extra_health=...)``); the actor layer's ``RuntimeStatistics`` knows nothing of a cluster. The
same rules as ``transport/metrics.py``, whose helpers build the families: every figure is a
counter its owner keeps as things happen (O(1) per scrape), base units in the names, the unit
in brackets at the end of every HELP. The names are part of the operator's interface: keep
them.
"""

from __future__ import annotations

from typing import Iterator

import attrs
from prometheus_client.core import GaugeMetricFamily, Metric

from threadline.actors.stats import Histogram
from threadline.transport.metrics import counter, histogram


@attrs.frozen
class ClusterStatistics:
    """A cluster node's figures: its shards, its peers, what it forwarded and followed."""

    node_id: str
    shards_owned: int
    nodes_live: int               # this one included
    lease_rounds: int
    lease_failures: int           # rounds the store did not answer
    shards_taken: int
    shards_released: int          # handed over
    shards_lost: int              # taken away (expired, or the store said so)
    forwarded: int                # requests answered by their owner on another node
    forward_seconds: Histogram    # round trips of those
    retries: int                  # requests asked again after an owner change
    fenced_writes: int            # writes the fence refused
    notifications_sent: int
    notifications_received: int
    feeds: int                    # subscribers here of threads read from the journal
    feed_reads: int
    feed_events: int
    peers: tuple[str, ...] = ()   # the other live nodes' ids
    usage_reports_sent: int = 0       # Usage frames queued to peers (``usage.py``)
    usage_reports_received: int = 0   # Usage frames from proved peers, counted


def health(c: ClusterStatistics) -> dict[str, object]:
    """The fields a node adds to ``/healthz``."""
    return {"cluster": {"node": c.node_id, "shards_owned": c.shards_owned,
                        "peers": list(c.peers)}}


def families(c: ClusterStatistics) -> Iterator[Metric]:
    """The families a node adds to ``/metrics``."""
    yield GaugeMetricFamily("threadline_cluster_shards_owned", "Shards this node owns now "
                            "[shards].", value=c.shards_owned)
    yield GaugeMetricFamily("threadline_cluster_nodes_live", "Nodes alive in the cluster, "
                            "this one included [nodes].", value=c.nodes_live)
    yield counter("threadline_cluster_lease_rounds", "Lease rounds run [rounds].",
                  c.lease_rounds)
    yield counter("threadline_cluster_lease_failures", "Lease rounds the store did not "
                  "answer [rounds].", c.lease_failures)
    yield counter("threadline_cluster_shards_taken", "Shard leases taken [shards].",
                  c.shards_taken)
    yield counter("threadline_cluster_shards_released", "Shard leases handed over [shards].",
                  c.shards_released)
    yield counter("threadline_cluster_shards_lost", "Shard leases lost to expiry or a "
                  "takeover [shards].", c.shards_lost)
    yield counter("threadline_cluster_forwarded_requests", "Requests forwarded to the "
                  "owner on another node and answered [requests].", c.forwarded)
    yield histogram("threadline_cluster_forward_seconds", "Round trip of a forwarded "
                    "request [seconds].", c.forward_seconds, unit="seconds")
    yield counter("threadline_cluster_request_retries", "Requests asked again after an "
                  "owner change [requests].", c.retries)
    yield counter("threadline_cluster_fenced_writes", "Writes the lease fence refused "
                  "[operations].", c.fenced_writes)
    yield counter("threadline_cluster_notifications_sent", "Transactions that sent NOTIFYs "
                  "to nodes following a shard they wrote [notifications].", c.notifications_sent)
    yield counter("threadline_cluster_notifications_received", "threadline_events "
                  "notifications received [notifications].", c.notifications_received)
    yield GaugeMetricFamily("threadline_cluster_feeds", "Subscribers here of threads read "
                            "from the journal [subscribers].", value=c.feeds)
    yield counter("threadline_cluster_feed_reads", "Journal reads for those subscribers "
                  "[reads].", c.feed_reads)
    yield counter("threadline_cluster_feed_events", "Events delivered to them [events].",
                  c.feed_events)
    yield counter("threadline_cluster_usage_reports_sent", "Reports of this node's users' "
                  "use sent to peers, one per frame [reports].", c.usage_reports_sent)
    yield counter("threadline_cluster_usage_reports_received", "Reports of peers' users' use "
                  "received and counted, one per frame [reports].", c.usage_reports_received)
