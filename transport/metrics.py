"""``GET /metrics``: Prometheus text format 0.0.4, or OpenMetrics 1.0 when the scraper asks.

Invariant: a scrape is O(1) in actors and connections. It only reads figures that their owners
keep as things happen: ``ServerStats`` (the server and its sessions), ``ThreadStats`` (the
thread actors), the directory's counters and ``len``, and the store's, in one ``RuntimeStatistics``
snapshot (``Gateway.statistics()``, also ``Runtime.statistics()``). It never walks
actors, mailboxes or sessions: a scrape that walked every mailbox once let anonymous scrapes at
16/s raise other users' ping p99 from 4 ms to 440 ms. Labelled families have small, bounded
label sets (close codes, HTTP statuses, the server's fixed auth reasons, three terminal events,
the upload outcomes).
The one walk left is prometheus_client's process collector listing ``/proc/self/fd`` (in C,
O(open files), one name per connection): the standard ``process_open_fds`` operators expect.
What embeds the server may add families of its own (``extra``: a cluster node's), under the
same rules, built with this module's ``counter``, ``by`` and ``histogram``.

Names follow Prometheus conventions: base units in the name (``_seconds``, ``_bytes``),
counters get their ``_total`` from prometheus_client, one family per name, no gauge with a
reserved suffix, labels for dimensions. Every HELP ends with the unit in brackets.
"""

from __future__ import annotations

from typing import Any, Callable, Final, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics

from threadline.actors.gateway import Gateway
from threadline.actors.stats import Histogram, RuntimeStatistics, StoreStatistics

from .stats import ServerStats

__all__ = ["OPENMETRICS", "PROMETHEUS_TEXT", "ExtraMetrics", "Metrics", "by", "counter",
           "histogram", "wants_openmetrics"]

#: More families for the page, from what embeds the server (a cluster node's figures): called
#: once per scrape, never blocking, with the same O(1) rule and naming as this module's own.
ExtraMetrics = Callable[[], Iterable[Metric]]

# Spelled out: prometheus_client's own CONTENT_TYPE_LATEST became text format 1.0.0 in 0.21.
PROMETHEUS_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# OpenMetrics 0.0.1 is the pre-standard name of 1.0.0; a scraper asking only for a later one
# (2.0 is a draft) gets the Prometheus text format, which every scraper reads.
_OPENMETRICS_VERSIONS: Final = (None, "0.0.1", "1.0.0")


class Metrics:
    """The ``/metrics`` page of one server. ``render`` never blocks and never awaits."""

    def __init__(self, gateway: Gateway, stats: ServerStats,
                 extra: ExtraMetrics | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(gateway, stats, extra))
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

    def __init__(self, gateway: Gateway, stats: ServerStats,
                 extra: ExtraMetrics | None) -> None:
        # Only the owners of the counters: no reference to any per-actor or per-connection
        # collection, so a scrape cannot grow with them.
        self._gateway = gateway
        self._stats = stats
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from _edge(self._stats)
        snapshot = self._gateway.statistics()
        yield from _actors(snapshot)
        yield from _store(snapshot.store)
        if self._extra is not None:
            yield from self._extra()


def _edge(s: ServerStats) -> Iterator[Metric]:
    yield GaugeMetricFamily("threadline_connections_open", "WebSocket connections open now "
                            "[connections].", value=s.connections_open)
    yield counter("threadline_connections_accepted", "WebSocket connections accepted "
                   "[connections].", s.connections_total)
    yield by("threadline_connections_closed", "WebSocket connections closed, by close code "
              "[connections].", "code", s.closes)
    yield by("threadline_handshakes_refused", "Opening handshakes answered with an HTTP "
              "error, by status [handshakes].", "status", s.handshake_failures)
    yield by("threadline_auth_failures", "Handshakes refused for their token (HTTP 401), by "
              "reason [handshakes].", "reason", s.auth_failures)
    yield counter("threadline_frames_received", "Frames received from clients [frames].",
                   s.frames_received)
    yield counter("threadline_received_bytes", "Payload bytes of the frames received from "
                   "clients [bytes].", s.bytes_received, unit="bytes")
    yield counter("threadline_frames_sent", "Frames sent to clients [frames].", s.frames_sent)
    yield counter("threadline_bad_frames", "Client frames answered bad_frame [frames].",
                   s.bad_frames)
    yield counter("threadline_rate_limited_frames", "Client frames dropped and answered "
                   "rate_limited [frames].", s.rate_limited)
    yield counter("threadline_limits_reached", "Requests refused with limit_reached "
                   "[requests].", s.limits_reached)
    yield histogram("threadline_send_accepted_seconds", "From a send frame received to its "
                     "accepted reply queued [seconds].", s.send_seconds, unit="seconds")
    yield by("threadline_attachment_uploads", "Attachment uploads, by outcome (stored, "
             "too_large, unsupported_type, limit_reached, bad_request, aborted: the client "
             "went or was too slow, failed: the store or the server) [uploads].", "outcome",
             s.attachment_uploads)
    yield counter("threadline_attachment_uploaded_bytes", "Bytes of the attachment uploads "
                  "stored [bytes].", s.attachment_bytes_uploaded, unit="bytes")
    yield counter("threadline_attachment_downloads", "Attachment downloads written whole "
                  "[downloads].", s.attachment_downloads)


def _actors(r: RuntimeStatistics) -> Iterator[Metric]:
    yield GaugeMetricFamily("threadline_actors_live", "Thread actors in memory now [actors].",
                            value=r.actors_live)
    yield GaugeMetricFamily("threadline_mailbox_messages", "Messages waiting in the thread "
                            "actors' mailboxes, all together [messages].",
                            value=r.mailbox_messages)
    yield counter("threadline_actor_activations", "Thread actors activated [activations].",
                   r.activations)
    yield counter("threadline_actor_passivations", "Idle thread actors passivated "
                   "[passivations].", r.passivations)
    yield counter("threadline_actor_failures", "Thread actors stopped after exceeding their "
                   "restart intensity [actors].", r.failures)
    yield GaugeMetricFamily("threadline_runs_active", "Agent runs in progress [runs].",
                            value=r.runs_active)
    yield GaugeMetricFamily("threadline_runs_waiting", "Agent runs accepted and waiting for "
                            "one of their user's run slots (user_runs) [runs].",
                            value=r.runs_waiting)
    if r.attachment_bytes is not None:
        yield GaugeMetricFamily("threadline_attachment_stored_bytes", "Bytes the store's "
                                "attachments hold, as of the last sweep (every 10 minutes) "
                                "[bytes].", value=r.attachment_bytes, unit="bytes")
    yield counter("threadline_approvals_requested", "Tool calls that asked a person's "
                  "approval [calls].", r.approvals_requested)
    yield by("threadline_approvals_decided", "Tool calls decided, by outcome (approved, "
             "denied, expired) [calls].", "outcome", r.approvals_decided)
    yield GaugeMetricFamily("threadline_approvals_waiting", "Tool calls waiting for a "
                            "person's decision now [calls].", value=r.approvals_waiting)
    yield counter("threadline_runs_started", "Agent runs started [runs].", r.runs_started)
    yield by("threadline_runs_ended", "Agent runs ended, by terminal event [runs].", "event",
              r.runs_ended)
    yield counter("threadline_events_stored", "Thread events stored [events].", r.events_stored)
    yield by("threadline_tokens", "Tokens the agents reported, by kind (input, output, and "
             "cached_input, which input includes) [tokens].", "kind", r.tokens)
    yield counter("threadline_budget_refusals", "Sends and regenerates refused, and runs "
                  "stopped before a model call, because the user's token budget was spent "
                  "[refusals].", r.budget_refusals)
    yield histogram("threadline_run_duration_seconds", "Agent runs from agent_started to "
                     "their terminal event [seconds].", r.run_seconds, unit="seconds")


def _store(s: StoreStatistics | None) -> Iterator[Metric]:
    if s is None:
        return  # a store that keeps no figures (memory) shows none
    yield counter("threadline_store_transactions", "Group-commit transactions committed "
                   "[transactions].", s.transactions)
    yield counter("threadline_store_operations", "Writes committed in those transactions "
                   "[operations].", s.operations)
    yield counter("threadline_store_outages", "Times the store became unavailable "
                   "[outages].", s.outages)
    yield counter("threadline_store_rejected", "Writes the store refused for good, e.g. "
                   "unstorable data [operations].", s.rejected)
    yield histogram("threadline_store_commit_seconds", "Time of one group-commit "
                     "transaction in the store's worker thread [seconds].", s.commit_seconds,
                     unit="seconds")
    yield histogram("threadline_store_batch_operations", "Writes per group-commit "
                     "transaction [operations].", s.batch_operations)


def counter(name: str, doc: str, value: float, unit: str = "") -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value, unit=unit)


def by(name: str, doc: str, label: str, counts: Mapping[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([str(key)], n)
    return family


def histogram(name: str, doc: str, h: Histogram, unit: str = "") -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum, unit=unit)
