"""``GET /metrics``: Prometheus text format 0.0.4, or OpenMetrics 1.0 when the scraper asks.

Invariant: a scrape is O(1) in actors and connections. It only reads figures that their owners
keep as things happen: ``ServerStats`` (the server and its sessions), ``ThreadStats`` (the
thread actors), the directory's counters and ``len``, and the store's, in one ``RuntimeStatistics``
snapshot (``Gateway.statistics()``, also ``Runtime.statistics()``). It never walks
actors, mailboxes or sessions: a scrape that walked every mailbox once let anonymous scrapes at
16/s raise other users' ping p99 from 4 ms to 440 ms. Labelled families have small, bounded
label sets (close codes, HTTP statuses, the server's fixed auth reasons, three terminal events).
The one walk left is prometheus_client's process collector listing ``/proc/self/fd`` (in C,
O(open files), one name per connection): the standard ``process_open_fds`` operators expect.

Names follow Prometheus conventions: base units in the name (``_seconds``, ``_bytes``),
counters get their ``_total`` from prometheus_client, one family per name, no gauge with a
reserved suffix, labels for dimensions. Every HELP ends with the unit in brackets.
"""

from __future__ import annotations

from typing import Any, Final, Iterator, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics

from threadline.actors.gateway import Gateway
from threadline.actors.stats import (ClusterStatistics, Histogram, RuntimeStatistics,
                                    StoreStatistics)

from .stats import ServerStats

__all__ = ["OPENMETRICS", "PROMETHEUS_TEXT", "Metrics", "wants_openmetrics"]

# Spelled out: prometheus_client's own CONTENT_TYPE_LATEST became text format 1.0.0 in 0.21.
PROMETHEUS_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# OpenMetrics 0.0.1 is the pre-standard name of 1.0.0; a scraper asking only for a later one
# (2.0 is a draft) gets the Prometheus text format, which every scraper reads.
_OPENMETRICS_VERSIONS: Final = (None, "0.0.1", "1.0.0")


class Metrics:
    """The ``/metrics`` page of one server. ``render`` never blocks and never awaits."""

    def __init__(self, gateway: Gateway, stats: ServerStats) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(gateway, stats))
        ProcessCollector(registry=self.registry)  # CPU, memory, open fds, start time

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition and its content type, as the scraper's ``Accept`` header asks.
        Any header, however malformed, gets one of the two formats."""
        if wants_openmetrics(accept):
            return openmetrics.generate_latest(self.registry), OPENMETRICS
        return generate_latest(self.registry), PROMETHEUS_TEXT


def wants_openmetrics(accept: str | None) -> bool:
    """Whether an ``Accept`` header lists ``application/openmetrics-text`` in a version we
    write (none given, 0.0.1 or 1.0.0) and not with ``q=0``. Total: never raises.

    Not prometheus_client's ``choose_encoder``: it raises TypeError on ``version=garbage``
    (an anonymous scraper could send that), and it answers any text/plain version >= 1.0.0
    with a format that this page does not promise."""
    for media_range in (accept or "").split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        if kind.lower() != "application/openmetrics-text":
            continue
        values = dict(_param(p) for p in params)
        if values.get("version") in _OPENMETRICS_VERSIONS and not _refused(values.get("q")):
            return True
    return False


def _param(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name.strip().lower(), value.strip().strip('"')


def _refused(q: str | None) -> bool:
    try:
        return q is not None and float(q) <= 0.0
    except ValueError:
        return False


class _Collector:
    """Builds every threadline family afresh per scrape from the owners' counters."""

    def __init__(self, gateway: Gateway, stats: ServerStats) -> None:
        # Only the owners of the counters: no reference to any per-actor or per-connection
        # collection, so a scrape cannot grow with them.
        self._gateway = gateway
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from _edge(self._stats)
        snapshot = self._gateway.statistics()
        yield from _actors(snapshot)
        yield from _store(snapshot.store)
        yield from _cluster(snapshot.cluster)


def _edge(s: ServerStats) -> Iterator[Metric]:
    yield GaugeMetricFamily("threadline_connections_open", "WebSocket connections open now "
                            "[connections].", value=s.connections_open)
    yield _counter("threadline_connections_accepted", "WebSocket connections accepted "
                   "[connections].", s.connections_total)
    yield _by("threadline_connections_closed", "WebSocket connections closed, by close code "
              "[connections].", "code", s.closes)
    yield _by("threadline_handshakes_refused", "Opening handshakes answered with an HTTP "
              "error, by status [handshakes].", "status", s.handshake_failures)
    yield _by("threadline_auth_failures", "Handshakes refused for their token (HTTP 401), by "
              "reason [handshakes].", "reason", s.auth_failures)
    yield _counter("threadline_frames_received", "Frames received from clients [frames].",
                   s.frames_received)
    yield _counter("threadline_received_bytes", "Payload bytes of the frames received from "
                   "clients [bytes].", s.bytes_received, unit="bytes")
    yield _counter("threadline_frames_sent", "Frames sent to clients [frames].", s.frames_sent)
    yield _counter("threadline_bad_frames", "Client frames answered bad_frame [frames].",
                   s.bad_frames)
    yield _counter("threadline_rate_limited_frames", "Client frames dropped and answered "
                   "rate_limited [frames].", s.rate_limited)
    yield _counter("threadline_limits_reached", "Requests refused with limit_reached "
                   "[requests].", s.limits_reached)
    yield _histogram("threadline_send_accepted_seconds", "From a send frame received to its "
                     "accepted reply queued [seconds].", s.send_seconds, unit="seconds")


def _actors(r: RuntimeStatistics) -> Iterator[Metric]:
    yield GaugeMetricFamily("threadline_actors_live", "Thread actors in memory now [actors].",
                            value=r.actors_live)
    yield GaugeMetricFamily("threadline_mailbox_messages", "Messages waiting in the thread "
                            "actors' mailboxes, all together [messages].",
                            value=r.mailbox_messages)
    yield _counter("threadline_actor_activations", "Thread actors activated [activations].",
                   r.activations)
    yield _counter("threadline_actor_passivations", "Idle thread actors passivated "
                   "[passivations].", r.passivations)
    yield _counter("threadline_actor_failures", "Thread actors stopped after exceeding their "
                   "restart intensity [actors].", r.failures)
    yield GaugeMetricFamily("threadline_runs_active", "Agent runs in progress [runs].",
                            value=r.runs_active)
    yield _counter("threadline_runs_started", "Agent runs started [runs].", r.runs_started)
    yield _by("threadline_runs_ended", "Agent runs ended, by terminal event [runs].", "event",
              r.runs_ended)
    yield _counter("threadline_events_stored", "Thread events stored [events].", r.events_stored)
    yield _histogram("threadline_run_duration_seconds", "Agent runs from agent_started to "
                     "their terminal event [seconds].", r.run_seconds, unit="seconds")


def _store(s: StoreStatistics | None) -> Iterator[Metric]:
    if s is None:
        return  # a store that keeps no figures (memory) shows none
    yield _counter("threadline_store_transactions", "Group-commit transactions committed "
                   "[transactions].", s.transactions)
    yield _counter("threadline_store_operations", "Writes committed in those transactions "
                   "[operations].", s.operations)
    yield _counter("threadline_store_outages", "Times the store became unavailable "
                   "[outages].", s.outages)
    yield _counter("threadline_store_rejected", "Writes the store refused for good, e.g. "
                   "unstorable data [operations].", s.rejected)
    yield _histogram("threadline_store_commit_seconds", "Time of one group-commit "
                     "transaction in the store's worker thread [seconds].", s.commit_seconds,
                     unit="seconds")
    yield _histogram("threadline_store_batch_operations", "Writes per group-commit "
                     "transaction [operations].", s.batch_operations)


def _cluster(c: ClusterStatistics | None) -> Iterator[Metric]:
    if c is None:
        return  # not a cluster node
    yield GaugeMetricFamily("threadline_cluster_shards_owned", "Shards this node owns now "
                            "[shards].", value=c.shards_owned)
    yield GaugeMetricFamily("threadline_cluster_nodes_live", "Nodes alive in the cluster, "
                            "this one included [nodes].", value=c.nodes_live)
    yield _counter("threadline_cluster_lease_rounds", "Lease rounds run [rounds].",
                   c.lease_rounds)
    yield _counter("threadline_cluster_lease_failures", "Lease rounds the store did not "
                   "answer [rounds].", c.lease_failures)
    yield _counter("threadline_cluster_shards_taken", "Shard leases taken [shards].",
                   c.shards_taken)
    yield _counter("threadline_cluster_shards_released", "Shard leases handed over [shards].",
                   c.shards_released)
    yield _counter("threadline_cluster_shards_lost", "Shard leases lost to expiry or a "
                   "takeover [shards].", c.shards_lost)
    yield _counter("threadline_cluster_forwarded_requests", "Requests forwarded to the "
                   "owner on another node and answered [requests].", c.forwarded)
    yield _histogram("threadline_cluster_forward_seconds", "Round trip of a forwarded "
                     "request [seconds].", c.forward_seconds, unit="seconds")
    yield _counter("threadline_cluster_request_retries", "Requests asked again after an "
                   "owner change [requests].", c.retries)
    yield _counter("threadline_cluster_fenced_writes", "Writes the lease fence refused "
                   "[operations].", c.fenced_writes)
    yield _counter("threadline_cluster_notifications_sent", "Transactions that sent NOTIFYs "
                   "to nodes following a shard they wrote [notifications].", c.notifications_sent)
    yield _counter("threadline_cluster_notifications_received", "threadline_events "
                   "notifications received [notifications].", c.notifications_received)
    yield GaugeMetricFamily("threadline_cluster_feeds", "Subscribers here of threads read "
                            "from the journal [subscribers].", value=c.feeds)
    yield _counter("threadline_cluster_feed_reads", "Journal reads for those subscribers "
                   "[reads].", c.feed_reads)
    yield _counter("threadline_cluster_feed_events", "Events delivered to them [events].",
                   c.feed_events)


def _counter(name: str, doc: str, value: float, unit: str = "") -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value, unit=unit)


def _by(name: str, doc: str, label: str, counts: Mapping[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([str(key)], n)
    return family


def _histogram(name: str, doc: str, h: Histogram, unit: str = "") -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum, unit=unit)
