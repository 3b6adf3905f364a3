"""Tokens: what a run used (``Usage``), what a user used per period (``Periods``), and the
budgets that cap it (``Budgets``), PROTOCOL.md 1.1 "Usage and budgets".

An agent reports what each model call used (``Run.report_usage``): the run sums it for its
terminal event, and the store adds it, at once, to the run's node and to the user's totals for
the current UTC day and month (``Journal.record_usage``). Those totals are rows keyed by user
and period (``d2026-12-07``, ``m2026-12``), so reading a user's day and month is two key
look-ups, whatever the user did before: never a scan of events.

Budgets (tokens per user per day and per month, input plus output; from the operator's
limits, or per user from the embedding program's hook) are checked against the store's totals:

- before a ``send`` or ``regenerate`` stores anything (``Budgets.check``: ``BudgetExceeded``,
  answered ``budget_exceeded`` with the time the budget refills, and nothing is stored);
- before each model call of a run (``Run.model_call``): a run that crossed the budget during
  the call it was in finishes that call, and ends ``agent_failed`` ``budget_exceeded`` instead
  of calling the model again.

The store is the truth; a process keeps a view of it. Each check of a user with a budget takes
the user's totals from the process's view when that view is fresh (read from the store less
than ``REFRESH``, a second, ago) and below ``NEAR`` (80 %) of the budget; otherwise it reads
the store (two key look-ups) and keeps what it read. Every report this process stores is added
to its view at once (``counted``), so a process never misses its own spending; another node's
(or another process's) reaches its checks within a second, and at once from 80 % of the budget
on. Reading the store at every check cost half the throughput of a SQLite server
(``bench/budgets.py``); the view costs a read a second per active user.

What no check can see is a model call still under way: a report is stored when the call ends.
So a user overshoots the budget by at most the model calls in flight when it was crossed, one
per run of the user active at that moment (``user_runs`` per node bounds those), and, across
nodes, by the calls another node admitted in the second its view was below 80 % while the
store had crossed the budget: a budget spent from 80 % to 100 % within a second. Without
budgets nothing is read at all.
"""

from __future__ import annotations

import collections
import datetime
import inspect
import logging
import time
from typing import Any, Awaitable, Callable, Union

import attrs
import trio

from .errors import ActorError

log = logging.getLogger("threadline.usage")

DAY, MONTH = "day", "month"
BUDGET_EXCEEDED = "budget_exceeded"  # the error code, and a stopped run's ``agent_failed``


@attrs.frozen(slots=True)
class Usage:
    """Tokens used, as the model counts them. ``cached_input_tokens`` are part of
    ``input_tokens`` (OpenAI's ``prompt_tokens_details.cached_tokens``), not beside them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    model: str | None = None  # the last model reported

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens,
                     self.output_tokens + other.output_tokens,
                     self.cached_input_tokens + other.cached_input_tokens,
                     other.model if other.model is not None else self.model)

    @property
    def tokens(self) -> int:
        """What a budget counts: input and output tokens."""
        return self.input_tokens + self.output_tokens

    def wire(self) -> dict[str, Any]:
        """The ``usage`` of a terminal event (PROTOCOL.md 1.1)."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cached_input_tokens": self.cached_input_tokens, "model": self.model}


def reported(input_tokens: Any, output_tokens: Any, cached_input_tokens: Any,
             model: Any) -> Usage:
    """A report checked: counts are integers from 0 (``ValueError`` otherwise)."""
    counts = (input_tokens, output_tokens, cached_input_tokens)
    if any(type(n) is not int or n < 0 for n in counts):
        raise ValueError(f"token counts are integers from 0, not {counts!r}")
    if model is not None and not isinstance(model, str):
        raise ValueError("model is a string")
    return Usage(*counts, model=model)  # type: ignore[misc]


@attrs.frozen(slots=True)
class Periods:
    """The UTC day and month that hold the instant ``now`` (seconds since the epoch): their
    store keys and when each ends."""

    day: str
    month: str
    day_ends: float
    month_ends: float
    day_starts: float = attrs.field(default=0.0, eq=False)

    @classmethod
    def at(cls, now: float) -> Periods:
        last = _LAST[0]
        if last.day_starts <= now < last.day_ends:  # the day of the last call: most calls
            return last
        t = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        day = datetime.datetime(t.year, t.month, t.day, tzinfo=datetime.timezone.utc)
        month = day.replace(day=1)
        next_month = (month + datetime.timedelta(days=32)).replace(day=1)
        periods = _LAST[0] = cls(f"d{day:%Y-%m-%d}", f"m{month:%Y-%m}",
                                 (day + datetime.timedelta(days=1)).timestamp(),
                                 next_month.timestamp(), day.timestamp())
        return periods


_LAST = [Periods("", "", 0.0, 0.0)]  # ``Periods.at``'s last answer (one list: a slot to set)


@attrs.frozen(slots=True)
class Budget:
    """A user's budget: tokens (input plus output) per UTC day and per month; None: none."""

    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.tokens_per_day is None and self.tokens_per_month is None


#: The embedding program's per-user budget (plans differ per customer): called at every check
#: with the user id; may be async. None: the operator's default budget.
BudgetHook = Callable[[str], Union[Budget, None, Awaitable[Union[Budget, None]]]]


class BudgetExceeded(ActorError):
    """PROTOCOL.md 1.1 ``budget_exceeded``: the user's budget for the current period is spent;
    nothing was stored. ``refills_at``: when it refills (seconds since the epoch)."""

    def __init__(self, message: str, refills_at: float | None = None) -> None:
        super().__init__(message)
        self.refills_at = refills_at  # None: known only from the message (a cluster peer's)

    @classmethod
    def spent(cls, period: str, budget: int, refills_at: float) -> BudgetExceeded:
        when = datetime.datetime.fromtimestamp(refills_at, datetime.timezone.utc)
        return cls(f"the token budget for this {period} ({budget} tokens) is spent; it "
                   f"refills at {when:%Y-%m-%dT%H:%M:%SZ}", refills_at)


@attrs.frozen(slots=True)
class Spent:
    """A user's totals for the current day and month, and the budget they are held to."""

    periods: Periods
    day: Usage
    month: Usage
    budget: Budget

    def exceeded(self) -> BudgetExceeded | None:
        """The period whose budget is spent (the month first: it refills last), if any."""
        budget, periods = self.budget, self.periods
        if budget.tokens_per_month is not None and self.month.tokens >= budget.tokens_per_month:
            return BudgetExceeded.spent(MONTH, budget.tokens_per_month, periods.month_ends)
        if budget.tokens_per_day is not None and self.day.tokens >= budget.tokens_per_day:
            return BudgetExceeded.spent(DAY, budget.tokens_per_day, periods.day_ends)
        return None


class Budgets:
    """The runtime's budgets: the operator's ``default`` and the embedding program's ``hook``
    (see the module header). ``clock``: wall-clock seconds (a test's own, to cross a period)."""

    def __init__(self, default: Budget = Budget(), hook: BudgetHook | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.default = default
        self.hook = hook
        self.refused = 0  # sends and regenerates refused, model calls stopped (``/metrics``)
        self.clock = clock if clock is not None else time.time
        # Users' totals as last read from the store, and this process's reports since, most
        # recently used last (see the header: what a check may take from here).
        self._seen: collections.OrderedDict[str, _Seen] = collections.OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether any user may have a budget (else nothing is ever read for one)."""
        return self.hook is not None or not self.default.unlimited

    async def budget(self, user_id: str) -> Budget:
        """The user's budget: the hook's, else the default. A hook that fails (a bug, its
        database down) gives the default, with its traceback in the log: it never takes a
        thread down, and never spares a user the operator's budget."""
        if self.hook is None:
            return self.default
        try:
            found = self.hook(user_id)
            if inspect.isawaitable(found):
                found = await found
        except Exception:
            log.exception("the budget hook failed for user %s; the default budget holds",
                          user_id)
            return self.default
        if found is not None and not isinstance(found, Budget):
            log.error("the budget hook gave %r for user %s, not a Budget; the default "
                      "budget holds", found, user_id)
            return self.default
        return self.default if found is None else found

    async def spent(self, journal: Any, user_id: str) -> Spent:
        """The user's totals (two key look-ups in the store) and budget, now."""
        budget = await self.budget(user_id)
        return await self._read(journal, user_id, Periods.at(self.clock()), budget)

    async def check(self, journal: Any, user_id: str) -> None:
        """Raise ``BudgetExceeded`` when the user's budget is spent; nothing is read when no
        budget is set, and the store only when this process's view of the user is older
        than ``REFRESH`` or near the budget (see the header). Reads the journal
        (``JournalUnavailable``)."""
        if not self.enabled:
            return
        budget = await self.budget(user_id)
        if budget.unlimited:
            return
        periods = Periods.at(self.clock())
        seen = self._seen.get(user_id)
        if seen is None or seen.stale(periods, budget, trio.current_time()):
            spent = await self._read(journal, user_id, periods, budget)
        else:
            self._seen.move_to_end(user_id)
            spent = Spent(periods, seen.day, seen.month, budget)
        exceeded = spent.exceeded()
        if exceeded is not None:
            self.refused += 1
            raise exceeded

    def counted(self, user_id: str, periods: Periods, usage: Usage) -> None:
        """A report of this process's, stored: added to its view of the user at once, so
        that its own spending is never stale here."""
        seen = self._seen.get(user_id)
        if seen is not None and seen.periods == periods:
            seen.day, seen.month = seen.day + usage, seen.month + usage

    async def _read(self, journal: Any, user_id: str, periods: Periods,
                    budget: Budget) -> Spent:
        read_at = trio.current_time()
        day, month = await journal.usage_totals(user_id, periods.day, periods.month)
        self._seen[user_id] = _Seen(periods, day, month, read_at)
        self._seen.move_to_end(user_id)
        while len(self._seen) > SEEN_USERS:
            self._seen.popitem(last=False)
        return Spent(periods, day, month, budget)


#: Seconds a user's totals read from the store stand for the store's (see the header).
REFRESH = 1.0
#: From this share of a budget on, every check reads the store.
NEAR = 0.8
#: Users whose totals a process keeps (the most recently checked).
SEEN_USERS = 10_000


class _Seen:
    """A user's totals as read at ``read_at`` (trio's clock), with this process's reports
    since."""

    __slots__ = ("periods", "day", "month", "read_at")

    def __init__(self, periods: Periods, day: Usage, month: Usage, read_at: float) -> None:
        self.periods, self.day, self.month, self.read_at = periods, day, month, read_at

    def stale(self, periods: Periods, budget: Budget, now: float) -> bool:
        return (periods != self.periods or now - self.read_at > REFRESH
                or _near(self.day.tokens, budget.tokens_per_day)
                or _near(self.month.tokens, budget.tokens_per_month))


def _near(tokens: int, budget: int | None) -> bool:
    return budget is not None and tokens >= NEAR * budget


NO_BUDGETS = Budgets()
