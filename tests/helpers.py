"""Test helpers: a scripted agent, event collection, and the run well-formedness check."""

from __future__ import annotations

import json
import struct
import zlib
from collections import defaultdict
from typing import Callable, Iterable, Sequence

import trio

from threadline.actors.engine import Run
from threadline.actors.tools import ToolRegistry
from threadline.actors.messages import (
    AGENT_STARTED,
    TERMINAL_EVENTS,
    USER_MESSAGE,
    Event,
)
from threadline.actors.errors import JournalUnavailable
from threadline.actors.memory_journal import MemoryJournal
from threadline.actors.reply import Reply
from threadline.actors.subscription import Subscription
from threadline.stores import StoreError, open_journal


async def scripted_agent(run: Run) -> str:
    """Follows the message text: ``;``-separated steps ``think:T``, ``sleep:S``,
    ``tool:NAME:JSON-ARGS``, ``raise:MSG``, ``flood:N:SIZE:PAUSE`` (N thinks of SIZE characters,
    PAUSE seconds apart);
    answers the last step's text. Plain text echoes."""
    answer = run.text
    for step in run.text.split(";"):
        op, _, arg = step.partition(":")
        if op == "think":
            await run.think(arg)
        elif op == "sleep":
            await trio.sleep(float(arg))
        elif op == "tool":
            name, _, args = arg.partition(":")
            answer = str(await run.call_tool(name, **json.loads(args or "{}")))
        elif op == "raise":
            raise ValueError(arg)
        elif op == "flood":
            n, size, pause = arg.split(":")
            for i in range(int(n)):
                await run.think(f"{i}:" + "x" * int(size))
                await trio.sleep(float(pause))
    return answer


def test_tools() -> ToolRegistry:
    tools = ToolRegistry(default_timeout=2.0)

    async def add(ctx, a, b):
        return a + b

    async def boom(ctx):
        raise RuntimeError("tool broke")

    async def slow(ctx, seconds):
        await trio.sleep(seconds)
        return "done"

    async def whoami(ctx):
        return f"{ctx.user_id}/{ctx.thread_id}/{ctx.run_id}"

    tools.register("add", add)
    tools.register("boom", boom)
    tools.register("slow", slow, timeout=1.0)
    tools.register("whoami", whoami)
    return tools


test_tools.__test__ = False  # a factory, not a test


async def until_terminal(sub: Subscription, run_id: str | None = None,
                         timeout: float = 30.0) -> list[Event]:
    """Events from ``sub`` up to and including the terminal event of ``run_id`` (or any run)."""
    out: list[Event] = []
    with trio.fail_after(timeout):
        async for event in sub:
            out.append(event)
            if event.event in TERMINAL_EVENTS and run_id in (None, event.run_id):
                return out
    raise AssertionError("subscription ended")


def names(events: Iterable[Event]) -> list[str]:
    return [e.event for e in events]


def assert_gapless(events: list[Event], first: int = 1) -> None:
    assert [e.seq for e in events] == list(range(first, first + len(events))), \
        [e.seq for e in events]


def assert_runs_well_formed(events: list[Event], *, finished: bool = True) -> None:
    """Every run: its user_message first, then agent_started, then exactly one terminal event,
    last. With ``finished``, every run that started has ended."""
    by_run: dict[str, list[str]] = defaultdict(list)
    for e in events:
        assert e.run_id is not None, e
        by_run[e.run_id].append(e.event)
    for run_id, evs in by_run.items():
        assert evs[0] == USER_MESSAGE, (run_id, evs)
        assert evs.count(USER_MESSAGE) == 1, (run_id, evs)
        rest = evs[1:]
        if not rest and not finished:
            continue
        assert rest and rest[0] == AGENT_STARTED, (run_id, evs)
        assert rest.count(AGENT_STARTED) == 1, (run_id, evs)
        terminals = [x for x in rest if x in TERMINAL_EVENTS]
        if finished or terminals:
            assert len(terminals) == 1 and rest[-1] in TERMINAL_EVENTS, (run_id, evs)


TOOLS = test_tools()  # for `threadline serve --agent tests.helpers:scripted_agent`


class FailingJournal(MemoryJournal):
    """A real memory journal with a switch that makes the store fail (fault injection)."""

    failing = False

    def append_nowait(self, events, done):
        if self.failing:
            done.fail(JournalUnavailable("store unreachable"))
        else:
            super().append_nowait(events, done)

    async def append(self, events):
        if self.failing:
            raise JournalUnavailable("store unreachable")
        await super().append(events)


class HoldingJournal(MemoryJournal):
    """A real memory journal that holds back the writes ``holds(events)`` picks, and every
    later write of the same thread, until ``release()`` (a store that is slow for them): a
    thread's outcomes stay in the order its writes were queued, as every journal's do."""

    def __init__(self, holds: Callable[[Sequence[Event]], bool] = lambda events: False) -> None:
        super().__init__()
        self.holds = holds
        self._held: list = []

    def append_nowait(self, events, done):
        key = events[0].key if events else None
        if any(k == key for k, _, _ in self._held) or self.holds(events):
            self._held.append((key, events, done))
        else:
            super().append_nowait(events, done)

    async def append(self, events):
        reply: Reply = Reply()
        self.append_nowait(events, reply)
        await reply.wait()

    def release(self) -> None:
        """Store what was held, in order, and hold nothing more."""
        self.holds = lambda events: False
        held, self._held = self._held, []
        for _, events, done in held:
            super().append_nowait(events, done)

    def fail_held(self, error: BaseException) -> None:
        """The store failed under the first write held: it gets ``error``; the writes held
        after it are then tried in order, as a store would (those of its thread no longer
        follow, and fail). Holds nothing more."""
        self.holds = lambda events: False
        held, self._held = self._held, []
        if held:
            held[0][2].fail(error)
        for _, events, done in held[1:]:
            super().append_nowait(events, done)


async def store_refusal(url: str) -> StoreError:
    """The ``StoreError`` that opening ``url`` raises (however deep in exception groups),
    checked to be one line."""
    try:
        async with open_journal(url):
            pass
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        assert isinstance(exc, StoreError), repr(exc)
        message = str(exc)
        assert "\n" not in message and message.strip() == message, message
        return exc
    raise AssertionError(f"{url} opened")


def answer_of(events: Iterable[Event]) -> str:
    """A streamed answer as a client lays its pieces: each ``agent_delta`` at its offset,
    skipping the ones it already has."""
    text = ""
    for e in events:
        if e.event == "agent_delta" and e.data["offset"] == len(text):
            text += e.data["text"]
    return text


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG of ``width`` x ``height`` red pixels (attachment tests)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
