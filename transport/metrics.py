"""``GET /metrics``: Prometheus text exposition through prometheus_client.

The figures are read when scraped, from counters the actors and sessions keep anyway (plain
ints), so serving traffic costs no metric bookkeeping beyond an increment.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from actors.gateway import Gateway

from .stats import ServerStats

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class _Collector:
    def __init__(self, gateway: Gateway, stats: ServerStats) -> None:
        self.gateway = gateway
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        d, t, s = self.gateway.directory, self.gateway.stats, self.stats
        yield GaugeMetricFamily("threadline_connections", "Open WebSocket connections.",
                                value=s.connections_open)
        yield CounterMetricFamily("threadline_connections", "WebSocket connections accepted.",
                                  value=s.connections_total)
        closes = CounterMetricFamily("threadline_closes", "Connections closed by the server, "
                                     "by close code.", labels=["code"])
        for code, n in sorted(s.closes.items()):
            closes.add_metric([str(code)], n)
        yield closes
        yield CounterMetricFamily("threadline_frames_received", "Client messages received.",
                                  value=s.frames_received)
        yield CounterMetricFamily("threadline_frames_sent", "Frames sent to clients.",
                                  value=s.frames_sent)
        yield GaugeMetricFamily("threadline_live_actors", "Live thread actors.", value=len(d))
        yield CounterMetricFamily("threadline_activations", "Thread actor activations.",
                                  value=d.activations)
        yield CounterMetricFamily("threadline_passivations", "Thread actors passivated.",
                                  value=d.passivations)
        yield CounterMetricFamily("threadline_actor_failures", "Thread actors stopped after "
                                  "exceeding their restart intensity.", value=d.failures)
        yield GaugeMetricFamily("threadline_runs_active", "Agent runs in progress.",
                                value=t.runs_active)
        yield CounterMetricFamily("threadline_runs_started", "Agent runs started.",
                                  value=t.runs_started)
        ended = CounterMetricFamily("threadline_runs_ended", "Agent runs ended, by terminal "
                                    "event.", labels=["event"])
        for event, n in sorted(t.runs_ended.items()):
            ended.add_metric([event], n)
        yield ended
        yield CounterMetricFamily("threadline_events", "Events stored.", value=t.events)
        depths = [ref.mailbox.statistics().depth for ref in d.refs()]
        yield GaugeMetricFamily("threadline_thread_mailbox_depth_max", "Deepest thread actor "
                                "mailbox.", value=max(depths, default=0))
        yield GaugeMetricFamily("threadline_thread_mailbox_depth_sum", "Messages queued in "
                                "all thread actor mailboxes.", value=sum(depths))


class Metrics:
    def __init__(self, gateway: Gateway, stats: ServerStats) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(gateway, stats))  # type: ignore[arg-type]

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition and its content type, as the scraper's ``Accept`` header asks."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
