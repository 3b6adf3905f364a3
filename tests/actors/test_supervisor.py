import pytest
import trio
import trio.testing

from threadline.actors.errors import RestartIntensityExceeded
from threadline.actors.supervisor import RestartPolicy, open_supervisor, supervise


class Flaky:
    """Crashes its first ``crashes`` runs, then returns."""

    def __init__(self, crashes: int, every: float = 0.0) -> None:
        self.crashes = crashes
        self.every = every
        self.runs = 0

    async def __call__(self) -> None:
        self.runs += 1
        await trio.sleep(self.every)
        if self.runs <= self.crashes:
            raise RuntimeError(f"crash {self.runs}")


async def test_restarts_within_intensity(autojump_clock):
    body = Flaky(crashes=3)
    await supervise(body, policy=RestartPolicy(intensity=3, period=5))
    assert body.runs == 4


async def test_escalates_past_intensity(autojump_clock):
    body = Flaky(crashes=10)
    with pytest.raises(RestartIntensityExceeded) as info:
        await supervise(body, policy=RestartPolicy(intensity=3, period=5))
    assert body.runs == 4
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "crash 4"


async def test_crashes_spread_over_time_never_escalate(autojump_clock):
    body = Flaky(crashes=10, every=2.0)  # a crash every 2 s: at most 2 in any 5 s window
    await supervise(body, policy=RestartPolicy(intensity=3, period=5))
    assert body.runs == 11


async def test_cancellation_is_not_a_crash(autojump_clock):
    runs = 0

    async def body():
        nonlocal runs
        runs += 1
        await trio.sleep_forever()

    with trio.move_on_after(1):
        await supervise(body)
    assert runs == 1


async def test_a_crashing_child_leaves_its_sibling_untouched(autojump_clock):
    steady_ticks = []
    steady_starts = 0

    async def steady():
        nonlocal steady_starts
        steady_starts += 1
        for i in range(20):
            steady_ticks.append(i)
            await trio.sleep(0.5)

    flaky = Flaky(crashes=3, every=1.0)
    async with open_supervisor(RestartPolicy(intensity=3, period=5)) as sup:
        sup.start_child(steady, name="steady")
        sup.start_child(flaky, name="flaky")
    assert flaky.runs == 4
    assert steady_starts == 1 and steady_ticks == list(range(20))


async def test_escalation_terminates_the_supervisor_and_its_children(autojump_clock):
    cancelled = []

    async def steady():
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    with pytest.RaisesGroup(RestartIntensityExceeded):
        async with open_supervisor(RestartPolicy(intensity=2, period=5)) as sup:
            sup.start_child(steady, name="steady")
            sup.start_child(Flaky(crashes=100, every=0.1), name="doomed")
    assert cancelled == [True]
