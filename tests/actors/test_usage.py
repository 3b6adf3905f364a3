"""``actors/usage.py`` without sockets: the periods of an instant (UTC days and months, their
ends), what a budget refuses and names, and when a process's view of a user's totals is taken
and when the store is read (a memory journal that counts its reads, trio's mock clock)."""

from __future__ import annotations

import datetime

import pytest

from threadline.actors.memory_journal import MemoryJournal
from threadline.actors.messages import ThreadKey
from threadline.actors.usage import (NEAR, REFRESH, Budget, BudgetExceeded, Budgets, Periods,
                                     Usage, reported)

KEY = ThreadKey("ada", "main")


def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).replace(
        tzinfo=datetime.timezone.utc).timestamp()


@pytest.mark.parametrize("now, day, month, day_ends, month_ends", [
    ("2026-12-07T10:00:00", "d2026-12-07", "m2026-12", "2026-12-08T00:00:00",
     "2027-01-01T00:00:00"),
    ("2026-12-31T23:59:59.999", "d2026-12-31", "m2026-12", "2027-01-01T00:00:00",
     "2027-01-01T00:00:00"),
    ("2027-01-01T00:00:00", "d2027-01-01", "m2027-01", "2027-01-02T00:00:00",
     "2027-02-01T00:00:00"),
    ("2024-02-29T12:00:00", "d2024-02-29", "m2024-02", "2024-03-01T00:00:00",
     "2024-03-01T00:00:00"),
    ("2026-01-31T23:00:00", "d2026-01-31", "m2026-01", "2026-02-01T00:00:00",
     "2026-02-01T00:00:00"),
])
def test_the_periods_of_an_instant_are_its_utc_day_and_month(now, day, month, day_ends,
                                                             month_ends):
    Periods.at(at("2000-01-01T00:00:00"))  # another day first: this one is computed
    computed, kept = Periods.at(at(now)), Periods.at(at(now))  # then kept for the day
    for periods in (computed, kept):
        assert (periods.day, periods.month, periods.day_ends, periods.month_ends) == (
            day, month, at(day_ends), at(month_ends))
    assert Periods.at(at(day_ends)).day != day  # the next day starts at its end, exactly


def test_a_report_is_integers_from_zero():
    assert reported(3, 4, 1, "m") == Usage(3, 4, 1, "m")
    for bad in ((-1, 0, 0), (1.5, 0, 0), (True, 0, 0), ("3", 0, 0)):
        with pytest.raises(ValueError):
            reported(*bad, None)
    with pytest.raises(ValueError):
        reported(1, 1, 0, 5)


class CountingJournal(MemoryJournal):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def usage_totals(self, user_id, day, month):
        self.reads += 1
        return await super().usage_totals(user_id, day, month)


async def spend(journal, budgets: Budgets, tokens: int, now: float) -> None:
    periods = Periods.at(now)
    await journal.record_usage(KEY, "run_1", periods.day, periods.month, Usage(tokens, 0))


async def test_without_a_budget_nothing_is_read():
    journal = CountingJournal()
    await Budgets().check(journal, "ada")
    await Budgets(hook=lambda user: None).check(journal, "ada")  # the default: none
    assert journal.reads == 0


async def test_the_view_stands_for_a_second_below_80_percent_then_the_store_is_read(mock_clock):
    journal, now = CountingJournal(), at("2026-12-07T10:00:00")
    budgets = Budgets(Budget(tokens_per_day=100), clock=lambda: now)
    await budgets.check(journal, "ada")
    await spend(journal, budgets, 79, now)  # another node's spending: not in the view
    await budgets.check(journal, "ada")
    assert journal.reads == 1  # the view, fresh and at 0 %
    mock_clock.jump(REFRESH + 0.01)
    await budgets.check(journal, "ada")  # stale: read, 79 %
    await budgets.check(journal, "ada")
    assert journal.reads == 2
    await spend(journal, budgets, 21, now)  # 100 %: the view (79 %) does not know it yet
    await budgets.check(journal, "ada")  # admitted: the bounded staleness
    mock_clock.jump(REFRESH + 0.01)
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.check(journal, "ada")
    assert refused.value.refills_at == at("2026-12-08T00:00:00")
    assert budgets.refused == 1


async def test_from_80_percent_on_every_check_reads_the_store(mock_clock):
    journal, now = CountingJournal(), at("2026-12-07T10:00:00")
    budgets = Budgets(Budget(tokens_per_day=100), clock=lambda: now)
    await spend(journal, budgets, int(NEAR * 100), now)
    await budgets.check(journal, "ada")
    await budgets.check(journal, "ada")
    assert journal.reads == 2  # near: no view taken
    await spend(journal, budgets, 20, now)
    with pytest.raises(BudgetExceeded):
        await budgets.check(journal, "ada")  # at once, no second to wait


async def test_the_processs_own_reports_count_in_its_view_at_once(mock_clock):
    journal, now = CountingJournal(), at("2026-12-07T10:00:00")
    budgets = Budgets(Budget(tokens_per_day=100), clock=lambda: now)
    await budgets.check(journal, "ada")
    await spend(journal, budgets, 50, now)
    budgets.counted("ada", Periods.at(now), Usage(50, 0))  # the fresh view says 50 %
    await spend(journal, budgets, 50, now)
    budgets.counted("ada", Periods.at(now), Usage(50, 0))  # 100 %: near, so read
    with pytest.raises(BudgetExceeded):
        await budgets.check(journal, "ada")
    assert journal.reads == 2


async def test_a_new_day_reads_again_and_the_month_is_named_when_both_are_spent(mock_clock):
    journal, clock = CountingJournal(), [at("2026-12-07T23:59:59")]
    budgets = Budgets(Budget(tokens_per_day=10, tokens_per_month=10), clock=lambda: clock[0])
    await spend(journal, budgets, 10, clock[0])
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.check(journal, "ada")
    assert "month (10 tokens)" in str(refused.value)
    assert str(refused.value).endswith("refills at 2027-01-01T00:00:00Z")
    clock[0] = at("2026-12-08T00:00:01")
    with pytest.raises(BudgetExceeded):  # a new day, the same month
        await budgets.check(journal, "ada")
    assert journal.reads == 2


async def test_a_failing_or_wrong_hook_gives_the_default_budget_and_takes_nothing_down(caplog):
    journal, now = CountingJournal(), at("2026-12-07T10:00:00")

    async def broken(user_id: str) -> Budget:
        raise RuntimeError("the plans database is down")

    for hook in (broken, lambda user_id: 5):
        budgets = Budgets(Budget(tokens_per_day=10), hook=hook, clock=lambda: now)
        assert await budgets.budget("ada") == Budget(tokens_per_day=10)
    await spend(journal, budgets, 10, now)
    with pytest.raises(BudgetExceeded):  # the operator's budget holds for the user
        await budgets.check(journal, "ada")
    assert "the budget hook failed for user ada" in caplog.text
    assert "the budget hook gave 5 for user ada" in caplog.text
