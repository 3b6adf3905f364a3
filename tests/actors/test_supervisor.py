"""Supervision: the restart intensity rule (``RestartBudget``) and the one loop that applies
it, the directory's, each in virtual time."""

import pytest
import trio
import trio.testing

from threadline.actors.directory import Directory
from threadline.actors.errors import ActorStopped, RestartIntensityExceeded
from threadline.actors.mailbox import Mailbox
from threadline.actors.messages import GetInfo
from threadline.actors.supervisor import RestartBudget, RestartPolicy

POLICY = RestartPolicy(intensity=3, period=5)


class Flaky:
    """An actor whose first ``crashes`` runs raise after ``every`` seconds; then it answers
    every request with its key, as long as it is asked."""

    def __init__(self, key, crashes: int, every: float = 0.0) -> None:
        self.key, self.crashes, self.every = key, crashes, every
        self.runs = 0
        self.stop_reason: str | None = None

    async def run(self, mailbox: Mailbox) -> None:
        self.runs += 1
        await trio.sleep(self.every)
        if self.runs <= self.crashes:
            raise RuntimeError(f"crash {self.runs}")
        while True:
            msg = await mailbox.receive()
            msg.reply.set(self.key)

    def idle_since(self):
        return None

    def stopped(self, reason, unread) -> None:
        self.stop_reason = reason
        for msg in unread:
            msg.reply.fail(ActorStopped(reason))


def directory_of(nursery, **crashes_every):  # key=(crashes, every)
    actors = {}

    def spawn(key):
        actors[key] = Flaky(key, *crashes_every.get(key, (0, 0.0)))
        return actors[key]

    return Directory(nursery, spawn, policy=POLICY), actors


async def test_the_budget_allows_intensity_crashes_per_period_then_escalates(autojump_clock):
    budget = RestartBudget(POLICY, "t")
    for _ in range(3):
        budget.crashed(RuntimeError("x"))
    with pytest.raises(RestartIntensityExceeded) as info:
        budget.crashed(RuntimeError("the last"))
    assert str(info.value.__cause__) == "the last"


async def test_the_budget_forgets_crashes_older_than_the_period(autojump_clock):
    budget = RestartBudget(POLICY, "t")
    for _ in range(10):  # one crash every 2 s: never more than 3 in a 5 s window
        budget.crashed(RuntimeError("x"))
        await trio.sleep(2)


async def test_an_actor_is_restarted_in_place_within_its_intensity(nursery, autojump_clock):
    directory, actors = directory_of(nursery, flaky=(3, 0.0))
    assert await directory.get_or_spawn("flaky").ask(GetInfo) == "flaky"
    assert actors["flaky"].runs == 4 and directory.failures == 0 and directory.activations == 1


async def test_crashes_spread_over_time_never_escalate(nursery, autojump_clock):
    directory, actors = directory_of(nursery, flaky=(10, 2.0))
    assert await directory.get_or_spawn("flaky").ask(GetInfo, timeout=None) == "flaky"
    assert actors["flaky"].runs == 11 and directory.failures == 0


async def test_a_crashing_actor_leaves_its_sibling_untouched(nursery, autojump_clock):
    directory, actors = directory_of(nursery, flaky=(3, 1.0))
    steady = directory.get_or_spawn("steady")
    directory.get_or_spawn("flaky")
    for _ in range(10):
        assert await steady.ask(GetInfo) == "steady"
        await trio.sleep(0.5)
    assert actors["flaky"].runs == 4 and actors["steady"].runs == 1


async def test_past_its_intensity_an_actor_is_stopped_and_its_waiting_askers_answered(
        nursery, autojump_clock):
    directory, actors = directory_of(nursery, doomed=(99, 1.0))
    ref = directory.get_or_spawn("doomed")
    with pytest.raises(ActorStopped, match="crash 4"):
        await ref.ask(GetInfo)  # queued while it crashes: answered when it is stopped
    assert actors["doomed"].runs == 4 and directory.failures == 1
    assert "doomed" not in directory


async def test_cancellation_is_not_a_crash(autojump_clock):
    async with trio.open_nursery() as nursery:
        directory, actors = directory_of(nursery, slow=(1, 60.0))
        directory.get_or_spawn("slow")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert actors["slow"].runs == 1 and directory.failures == 0
