"""Plain counters' one structured kind: a histogram with fixed buckets, kept as things happen.

No I/O and no locks (one trio thread observes; a scrape only reads). ``/metrics`` renders each
as a Prometheus histogram (cumulative buckets, ``_sum``, ``_count``); the owner of the figure
(the thread actors, the store, the sessions) observes it where the thing happens, so a scrape
costs the same with ten actors or a million.
"""

from __future__ import annotations

import bisect
from typing import Any, Final, Mapping

import attrs

#: Seconds, from 0.5 ms to 10 s: request latencies, commits, runs' first answers.
SECONDS_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0)
#: Run durations: agent runs last seconds to minutes.
RUN_SECONDS_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Counts of things per batch (operations per group-commit transaction).
SIZE_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


TOKEN_KINDS = ("input", "output", "cached_input")  # ``threadline_tokens_total{kind}``

class Histogram:
    """``observe(value)`` in O(log buckets); ``cumulative()`` for the exposition."""

    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(upper bound as Prometheus writes it, observations <= it), ..., ("+Inf", n)]``."""
        out, total = [], 0
        for bound, n in zip((*map(_le, self.buckets), "+Inf"), self.counts):
            total += n
            out.append((bound, total))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


@attrs.frozen
class StoreStatistics:
    """A durable store's figures (the in-memory journal keeps none)."""

    transactions: int        # group-commit transactions committed
    operations: int          # writes committed in them
    outages: int             # times the store became unavailable
    rejected: int            # writes refused for good (unstorable data)
    commit_seconds: Histogram
    batch_operations: Histogram


@attrs.frozen
class RuntimeStatistics:
    """One snapshot of a runtime's figures, for ``Runtime.statistics()`` and ``/metrics``.

    Taking it is O(1) in actors: every figure is a counter its owner keeps as things happen.
    The histograms are the live objects (read them, do not change them).
    """

    actors_live: int
    mailbox_messages: int    # waiting in the thread actors' mailboxes, all together
    activations: int
    passivations: int
    failures: int            # actors stopped after exceeding their restart intensity
    runs_active: int
    runs_started: int
    runs_ended: Mapping[str, int]  # by terminal event
    runs_waiting: int        # accepted, waiting for one of their user's slots (user_runs.py)
    approvals_requested: int
    approvals_decided: Mapping[str, int]  # by outcome: approved, denied, expired
    approvals_waiting: int   # tool calls waiting for a person's decision now
    events_stored: int
    attachment_bytes: int | None  # the store's attachments, as of the last sweep (None: not yet)
    run_seconds: Histogram
    tokens: dict[str, int]  # reported, by kind (``TOKEN_KINDS``)
    budget_refusals: int    # sends, regenerates and model calls refused by a budget
    store: StoreStatistics | None


@attrs.define
class ThreadStats:
    """Counters over all thread actors of a runtime (for /metrics). Plain ints: one task."""

    events: int = 0
    runs_started: int = 0
    runs_active: int = 0
    runs_waiting: int = 0    # next on their thread, waiting for one of their user's slots
    approvals_requested: int = 0
    approvals_decided: dict[str, int] = attrs.Factory(dict)  # approved, denied, expired
    approvals_waiting: int = 0  # tool calls waiting for a person in their run's task now
    # The threads with a parked run (``parking.py``): one waiting call each, in memory or not.
    parked: set[Any] = attrs.Factory(set)
    runs_ended: dict[str, int] = attrs.Factory(dict)  # by terminal event
    attachment_bytes: int | None = None  # read by the attachment sweeper (``runtime/api.py``)
    # Tokens reported (``Run.report_usage``), by kind: input, output, cached_input.
    tokens: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(TOKEN_KINDS, 0))
    run_seconds: Histogram = attrs.Factory(lambda: Histogram(RUN_SECONDS_BUCKETS))
