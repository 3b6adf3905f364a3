"""The embedding API: ``open_runtime()``; the handles on users and threads live in
``threadline.actors.gateway``.

::

    async with open_runtime() as rt:
        thread = rt.user("ada").thread("main")
        async with thread.open_subscription() as events:
            await thread.send("hello")
            async for event in events: ...

"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import attrs
import trio

from threadline.actors.agents import echo_agent, echo_tools
from threadline.actors.approval import is_resumable
from threadline.actors.directory import Directory
from threadline.actors.engine import Agent
from threadline.actors.tools import ToolRegistry
from threadline.actors.attachments import UNSENT_TTL, UPLOAD_TTL
from threadline.actors.errors import ActorStopped, JournalUnavailable, MailboxFull
from threadline.actors.gateway import Gateway, ThreadHandle, UserHandle
from threadline.actors.local import LocalThreads, Router
from threadline.actors.journal import Journal
from threadline.actors.memory_journal import MemoryJournal
from threadline.actors.mailbox import DEFAULT_ASK_TIMEOUT, ActorRef
from threadline.actors.messages import Shutdown, ThreadKey
from threadline.actors.stats import RuntimeStatistics, ThreadStats
from threadline.actors.stream import DEFAULT_INTERVAL
from threadline.actors.supervisor import RestartPolicy
from threadline.actors.thread import ThreadActor, ThreadEnv
from threadline.actors.tracing import NO_TRACING, Tracing
from threadline.actors.usage import Budget, BudgetHook, Budgets, Spent
from threadline.actors.user_runs import USER_RUNS, UserRuns

from .recovery import close_open_runs

log = logging.getLogger("threadline.runtime")

__all__ = ["Admit", "Route", "Runtime", "RuntimeConfig", "ThreadHandle", "UserHandle",
           "open_runtime"]

#: Which threads may have an actor in this process (``Directory``'s ``admit``).
Admit = Callable[[ThreadKey], bool]
#: Builds the gateway's router over this process's thread actors.
Route = Callable[[LocalThreads], Router]


@attrs.frozen
class RuntimeConfig:
    """Tunables of a runtime. The capacities are PROTOCOL.md's, the restart policy docs/architecture.md's;
    the TTL and the timeouts are ours (a user away for five minutes costs one reactivation)."""

    mailbox_capacity: int = 1000         # per thread actor
    subscriber_capacity: int = 1000      # per subscription (PROTOCOL.md: outgoing queue 1,000)
    passivate_after: float | None = 300.0
    restart: RestartPolicy = RestartPolicy()
    ask_timeout: float = DEFAULT_ASK_TIMEOUT
    shutdown_grace: float = 5.0          # active runs get this long before agent_cancelled
    delta_interval: float = DEFAULT_INTERVAL  # PROTOCOL.md: at most one agent_delta a run per
    user_runs: int | None = USER_RUNS    # runs of one user active at once; None: no bound
    # Tokens (input plus output) a user may use per UTC day and per month (``usage.py``);
    # None: no budget. ``open_runtime``'s ``budget`` hook may give a user another.
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None


class Runtime:
    """A running threadline: the directory of thread actors, the journal, the agent."""

    def __init__(self, nursery: trio.Nursery, journal: Journal, agent: Agent,
                 tools: ToolRegistry, config: RuntimeConfig, *, admit: Admit | None = None,
                 route: Route | None = None, parked: set[ThreadKey] | None = None,
                 budget: BudgetHook | None = None, tracing: Tracing = NO_TRACING,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.journal = journal
        self.budgets = Budgets(Budget(config.tokens_per_day, config.tokens_per_month), budget,
                               clock)
        self.tracing = tracing
        self._env = ThreadEnv(journal, agent, tools, clock=clock,
                              delta_interval=config.delta_interval,
                              user_runs=UserRuns(config.user_runs),
                              stats=ThreadStats(parked=parked if parked is not None else set()),
                              budgets=self.budgets, tracing=tracing)
        self._nursery = nursery
        self.directory: Directory[ThreadKey] = Directory(
            nursery,
            lambda key: ThreadActor(key, self._env),
            mailbox_capacity=config.mailbox_capacity,
            policy=config.restart,
            passivate_after=config.passivate_after,
            admit=admit,
        )
        self.local = LocalThreads(self.directory, ask_timeout=config.ask_timeout)
        self.gateway = Gateway(self.local, journal,
                               router=route(self.local) if route is not None else None,
                               subscriber_capacity=config.subscriber_capacity,
                               stats=self._env.stats, budgets=self.budgets, tracing=tracing)

    def user(self, user_id: str) -> UserHandle:
        """The handle on one user's threads. Raises ``ValueError`` for an invalid user id."""
        return self.gateway.user(user_id)

    def thread(self, user_id: str, thread_id: str) -> ThreadHandle:
        return self.user(user_id).thread(thread_id)

    async def delete_user(self, user_id: str) -> int:
        """Delete every thread of ``user_id`` (see ``ThreadHandle.delete``), then every one of
        the user's attachments (those never sent too); how many threads. Raises
        ``ValueError`` for an invalid user id."""
        deleted = await self.user(user_id).delete_all()
        await self._env.journal.delete_user_attachments(user_id)
        await self._env.journal.delete_user_usage(user_id)
        return deleted

    async def usage(self, user_id: str) -> Spent:
        """The user's tokens this UTC day and month, from the store (two key look-ups), and
        the budget the user is held to (PROTOCOL.md 1.1 ``GET /v1/usage``). Raises
        ``ValueError`` for an invalid user id, ``JournalUnavailable``."""
        return await self.user(user_id).usage()

    def statistics(self) -> RuntimeStatistics:
        """One snapshot of the runtime's figures (what ``/metrics`` shows). Never blocks."""
        return self.gateway.statistics()

    @property
    def parked(self) -> set[ThreadKey] | None:
        """The threads with a run parked waiting for a decision (``parking.py``), for a
        recovery to add to (a cluster node's, of the shards it takes); None when the agent
        is not resumable (its waits hold a task, and a restart ends them)."""
        return self._env.parked if is_resumable(self._env.agent) else None

    def load_parked(self) -> int:
        """Load the threads whose runs wait for a decision (found by the start's recovery), so
        that a wait whose expiry passed is decided now and the others in time; how many. A
        thread with no expiry is unloaded again when idle, as any thread."""
        keys = list(self._env.parked)
        for key in keys:
            try:
                self.directory.get_or_spawn(key)
            except ActorStopped:
                pass  # not ours (a cluster node before its shards), or closing
        return len(keys)

    def stop_actor(self, ref: ActorRef, grace: float) -> None:
        """Tell one thread actor to stop (its runs get ``grace`` seconds); never blocks: a
        full mailbox gets the ``Shutdown`` from a background task once there is room."""
        try:
            ref.tell(Shutdown(grace))
        except ActorStopped:
            pass  # it stopped by itself meanwhile
        except MailboxFull:
            self._nursery.start_soon(self._stop_when_room, ref, grace)

    async def _stop_when_room(self, ref: ActorRef, grace: float) -> None:
        try:
            await ref.send(Shutdown(grace))
        except ActorStopped:
            pass

    async def aclose(self, grace: float | None = None) -> None:
        """Stop: refuse new work, give active runs ``grace`` seconds (default from the config),
        cancel them with ``agent_cancelled`` (reason ``shutdown``), stop every actor."""
        if self.local.closing:
            return
        self.local.closing = True
        grace = self.config.shutdown_grace if grace is None else grace
        log.info("shutting down %d live thread actors (grace %ss)", len(self.directory), grace)

        left = await self.directory.aclose(lambda ref: self.stop_actor(ref, grace),
                                           timeout=grace + 10.0)
        if left:
            log.warning("%d thread actors did not stop in time; cancelling them", left)
        self._nursery.cancel_scope.cancel()



@asynccontextmanager
async def open_runtime(
    *,
    journal: Journal | None = None,
    agent: Agent | None = None,
    tools: ToolRegistry | None = None,
    config: RuntimeConfig | None = None,
    recover: bool = True,
    admit: Admit | None = None,
    route: Route | None = None,
    budget: BudgetHook | None = None,
    tracing: Tracing | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Runtime]:
    """Open a runtime that owns its root nursery, its directory and its journal.

    Defaults: an in-memory journal, the built-in ``echo`` agent with its ``calculator`` tool.
    Before it returns, runs that a crash left open in the journal are closed (see
    ``threadline.recovery``; ``recover=False`` skips it: a cluster node recovers each shard as
    it takes it). ``admit``: which threads may have an actor here (default: all); ``route``:
    builds the router every request goes through, from this process's ``LocalThreads``
    (default: they are the router); a cluster node gives both (``threadline.cluster``).
    ``budget``: a user's token budget (``usage.Budget``; None: the config's), called at each
    check, possibly async; ``tracing``: where spans go (``threadline.otel.open_tracing``;
    default none, at no cost); ``clock``: wall-clock seconds, for event times and the budgets'
    periods (a test's own, to cross midnight).
    On exit the runtime shuts down gracefully (see ``Runtime.aclose``),
    also when the body raised or was cancelled.
    """
    if agent is None:
        agent = echo_agent
        tools = tools if tools is not None else echo_tools()
    journal = journal if journal is not None else MemoryJournal()
    parked: set[ThreadKey] = set()  # threads with a run waiting for a decision (parking.py)
    if recover:
        await close_open_runs(journal, parked=parked if is_resumable(agent) else None)
        # A standalone runtime (it recovers the store) owns it: no upload can be under way
        # before it serves, so this sweep erases every unfinished one (a stop's, a kill -9's).
        await _sweep(journal, time.time(), upload_ttl=0.0)
    async with trio.open_nursery() as outer:
        # The actors live in a nursery of their own, hosted by a task: closing the runtime
        # cancels them, never the body of this context (the caller's code, e.g. a server
        # that is still writing the last events of the runs being cancelled).
        nursery = await outer.start(_host_nursery)
        runtime = Runtime(nursery, journal, agent,
                          tools if tools is not None else ToolRegistry(),
                          config or RuntimeConfig(), admit=admit, route=route, parked=parked,
                          budget=budget, tracing=tracing or NO_TRACING,
                          clock=clock or time.time)
        runtime.load_parked()
        nursery.start_soon(sweep_attachments, journal, time.time, runtime._env.stats,
                           not recover)
        try:
            yield runtime
        finally:
            with trio.CancelScope(shield=True):
                await runtime.aclose()


SWEEP_INTERVAL = 600.0  # seconds between two sweeps of the attachments (the first at start)


async def sweep_attachments(journal: Journal, clock: Callable[[], float], stats: ThreadStats,
                            now: bool = False) -> None:
    """Erase the attachments never sent ``UNSENT_TTL`` after their upload and the uploads cut
    off ``UPLOAD_TTL`` after they began (``attachments.py``): every ``SWEEP_INTERVAL`` (and
    ``now`` first: a cluster node, whose start does not sweep). What it finds is in the store,
    so a restart loses nothing of it; a store outage is retried at the next sweep. After each
    (and at start), the bytes the store's attachments hold go to ``stats`` (``/metrics``)."""
    first = True
    while True:
        if now or not first:
            await _sweep(journal, clock(), upload_ttl=UPLOAD_TTL)
        first = False
        try:
            stats.attachment_bytes = await journal.stored_attachment_bytes()
        except JournalUnavailable:
            pass  # the sweep said so; the figure stays as it was
        await trio.sleep(SWEEP_INTERVAL)


async def _sweep(journal: Journal, now: float, *, upload_ttl: float) -> None:
    try:
        swept = await journal.sweep_attachments(now, UNSENT_TTL, upload_ttl)
    except JournalUnavailable as exc:
        log.warning("the attachment sweep failed: %s; again in %ds", exc, int(SWEEP_INTERVAL))
    else:
        if swept:
            log.info("swept %d attachments never sent or never finished", swept)


async def _host_nursery(task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()
