import pytest
import trio
import trio.testing

from threadline.actors.directory import Directory
from threadline.actors.errors import ActorStopped
from threadline.actors.memory_journal import MemoryJournal
from threadline.actors.mailbox import Mailbox
from threadline.actors.messages import GetInfo, ThreadKey
from threadline.actors.supervisor import RestartPolicy
from threadline import RuntimeConfig, open_runtime


class EchoActor:
    """A minimal actor: answers every request with its key."""

    def __init__(self, key, crash_every_run: bool = False) -> None:
        self.key = key
        self.crash = crash_every_run
        self.runs = 0
        self.stop_reason: str | None = None

    async def run(self, mailbox: Mailbox) -> None:
        self.runs += 1
        if self.crash:
            raise RuntimeError("broken actor")
        while True:
            msg = await mailbox.receive()
            msg.reply.set(self.key)

    def idle_since(self):
        return None

    def stopped(self, reason: str, unread) -> None:
        self.stop_reason = reason
        for msg in unread:
            msg.reply.fail(ActorStopped(reason))


async def test_one_activation_when_a_thousand_callers_race(nursery):
    spawned = []

    def spawn(key):
        spawned.append(key)
        return EchoActor(key)

    directory = Directory(nursery, spawn)
    go = trio.Event()
    refs = []

    async def caller(i):
        await go.wait()
        for _ in range(i % 3):
            await trio.sleep(0)  # spread the callers over several scheduling rounds
        ref = directory.get_or_spawn("hot")
        refs.append(ref)
        assert await ref.ask(GetInfo) == "hot"

    async with trio.open_nursery() as callers:
        for i in range(1000):
            callers.start_soon(caller, i)
        await trio.testing.wait_all_tasks_blocked()
        go.set()
    assert spawned == ["hot"]
    assert len(refs) == 1000 and all(r is refs[0] for r in refs)
    assert directory.activations == 1


class CountingJournal(MemoryJournal):
    """A real memory journal that counts thread loads (instrumentation, not a mock)."""

    def __init__(self):
        super().__init__()
        self.loads = 0

    async def ensure_thread(self, key, now):
        self.loads += 1
        await trio.sleep(0.01)  # a slow store widens the race window
        return await super().ensure_thread(key, now)


async def test_one_thread_actor_when_a_thousand_requests_race():
    journal = CountingJournal()
    async with open_runtime(journal=journal) as rt:
        thread = rt.thread("ada", "hot")
        infos = []

        async def ask():
            infos.append(await thread.info())

        async with trio.open_nursery() as n:
            for _ in range(1000):
                n.start_soon(ask)
        assert journal.loads == 1
        assert rt.directory.activations == 1
        assert len(infos) == 1000


async def test_admit_given_at_construction_refuses_other_keys(nursery):
    # What a cluster node gives its directory: only the keys it owns get an actor here.
    directory = Directory(nursery, EchoActor, admit=lambda key: key != "elsewhere")
    assert await directory.get_or_spawn("here").ask(GetInfo) == "here"
    with pytest.raises(ActorStopped):
        directory.get_or_spawn("elsewhere")
    assert "elsewhere" not in directory and directory.activations == 1


async def test_escalation_stops_only_that_actor(nursery, autojump_clock):
    actors = {}

    def spawn(key):
        actors[key] = EchoActor(key, crash_every_run=(key == "bad"))
        return actors[key]

    directory = Directory(nursery, spawn, policy=RestartPolicy(intensity=3, period=5))
    good = directory.get_or_spawn("good")
    bad = directory.get_or_spawn("bad")
    await trio.testing.wait_all_tasks_blocked()
    assert actors["bad"].runs == 4  # the first run and 3 restarts
    assert "bad" not in directory and directory.failures == 1
    assert "broken actor" in actors["bad"].stop_reason
    with pytest.raises(ActorStopped):
        bad.tell("anything")
    assert await good.ask(GetInfo) == "good"
    assert actors["good"].runs == 1
    # The next look-up starts the key afresh.
    directory.get_or_spawn("bad")
    await trio.testing.wait_all_tasks_blocked()
    assert actors["bad"].runs == 4 and directory.failures == 2


async def test_idle_thread_passivates_and_comes_back_from_the_journal(autojump_clock):
    journal = MemoryJournal()
    config = RuntimeConfig(passivate_after=60.0)
    async with open_runtime(journal=journal, config=config) as rt:
        thread = rt.thread("ada", "main")
        async with thread.open_subscription() as events:
            await thread.send("hello")
            async for e in events:
                if e.event == "agent_completed":
                    break
            await trio.sleep(600)  # a subscriber keeps the actor live, however long
            assert ThreadKey("ada", "main") in rt.directory
        before = await thread.info()
        assert before.last_seq == 4
        await trio.sleep(59)
        assert ThreadKey("ada", "main") in rt.directory
        await trio.sleep(60 * 1.25)
        assert ThreadKey("ada", "main") not in rt.directory
        assert rt.directory.passivations == 1
        after = await thread.info()  # reactivates from the journal
        assert rt.directory.activations == 2
        assert after == before
        accepted = await thread.send("again")
        assert accepted.seq == 5


async def test_active_run_keeps_the_actor_live(autojump_clock):
    from tests.helpers import scripted_agent, test_tools

    config = RuntimeConfig(passivate_after=10.0)
    async with open_runtime(agent=scripted_agent, tools=test_tools(), config=config) as rt:
        thread = rt.thread("ada", "main")
        await thread.send("sleep:100;think:late")
        await trio.sleep(50)
        assert rt.directory.passivations == 0
        await trio.sleep(100)  # the run ended at t=100; idle since then, past 10 s TTL
        assert rt.directory.passivations == 1
        events = await thread.history()
        assert [e.event for e in events][-2:] == ["agent_thinking", "agent_completed"]
