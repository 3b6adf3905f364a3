"""The load generator: many WebSocket connections from one process, over loopback only, each
bounded in count and time. It counts frames without decoding them where it can (a substring
test tells an ``agent_completed`` event), so that it costs as little as possible per frame; its
own CPU time is reported beside the server's, to show which side is the bottleneck."""

from __future__ import annotations

import collections
import json
import os
import resource
import time
from typing import Any, Callable

import attrs
import trio
from websockets.frames import Frame

from threadline.transport.client import connect
from threadline.transport.connection import WebSocketConnection

COMPLETED = b'"event":"agent_completed"'


@attrs.define
class Tally:
    frames: int = 0      # every frame received during the window
    events: int = 0      # event frames among them
    turns: int = 0       # completed round trips: a run finished, or an echo came back
    errors: int = 0      # turns answered with an error frame (e.g. rate_limited)
    latencies: list[float] = attrs.Factory(list)  # seconds, send -> completion


async def open_ws(url: str, token: str | None) -> WebSocketConnection:
    """A raw connection (JSON subprotocol) to a server on loopback; this module talks to no
    other address."""
    assert url.startswith(("ws://127.", "ws://localhost")), "loopback only"
    return await connect(url, token)


async def drive(conn: WebSocketConnection, *, threadline: bool, thread_id: str, window: int,
                deadline: float, stop_at: float, tally: Tally, max_turns: int,
                interval: float | None = None, phase: float = 0.0,
                text: str = "hello") -> None:
    """Keep ``window`` turns in flight (or send one every ``interval`` s, starting ``phase`` s
    late: open loop) until ``stop_at``; count what arrives after ``deadline`` - the warm-up
    end - into ``tally``. Connections of one open-loop run get phases spread over the interval,
    so that the offered load is steady rather than a burst per interval."""
    if threadline:
        conn.write(json.dumps({"type": "join", "thread_id": thread_id}).encode(), binary=False)
        message = json.dumps({"type": "send", "thread_id": thread_id, "text": text}).encode()
    else:
        message = json.dumps({"type": "event", "event": "agent_completed", "data": {}},
                             separators=(",", ":")).encode()
    sent: collections.deque[float] = collections.deque()
    in_flight = 0
    turns = 0

    async def sender() -> None:
        nonlocal in_flight
        next_at = trio.current_time() + phase
        while trio.current_time() < stop_at and turns + in_flight < max_turns:
            if interval is not None:
                next_at += interval
                await trio.sleep_until(next_at)
            elif in_flight >= window:
                await wake.wait()
                continue
            conn.write(message, binary=False)
            sent.append(time.perf_counter())
            in_flight += 1
            await conn.flush()

    wake = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        with trio.move_on_at(stop_at + 5):
            while turns < max_turns and (in_flight or trio.current_time() < stop_at):
                events = await conn.receive()
                counting = trio.current_time() >= deadline
                for event in events:
                    if not isinstance(event, Frame):
                        continue
                    data = event.data
                    if counting:
                        tally.frames += 1
                        if data.startswith(b'{"type":"event"'):
                            tally.events += 1
                    if data.startswith(b'{"type":"error"'):
                        # Refused at once (e.g. rate_limited), so it is the newest in flight.
                        sent.pop()
                        in_flight -= 1
                        tally.errors += 1
                        wake.set()
                        wake = trio.Event()
                    elif COMPLETED in data:
                        # A thread runs its turns in order, as an echo server answers them.
                        started = sent.popleft()
                        in_flight -= 1
                        turns += 1
                        if counting:
                            tally.turns += 1
                            tally.latencies.append(time.perf_counter() - started)
                        wake.set()
                        wake = trio.Event()
                if conn.eof:
                    break
        nursery.cancel_scope.cancel()


#: What ``ask_and_follow`` calls with each event frame: its arrival (wall clock) and the frame;
#: a result ends the answer.
OnEvent = Callable[[float, dict[str, Any]], "dict[str, Any] | None"]


async def ask_and_follow(conn: WebSocketConnection, text: str, go: trio.Event, after: float,
                         within: float, on_event: OnEvent) -> dict[str, Any] | None:
    """Join thread ``t`` on ``conn``, wait for ``go``, then ``after`` seconds, send ``text``,
    and hand every event frame to ``on_event`` until it returns a result (returned here), the
    connection ends, or ``within`` seconds pass (None)."""
    conn.write(json.dumps({"type": "join", "thread_id": "t"}).encode(), binary=False)
    await go.wait()
    await trio.sleep(after)
    conn.write(json.dumps({"type": "send", "thread_id": "t", "text": text}).encode(),
               binary=False)
    await conn.flush()
    with trio.move_on_after(within):
        while not conn.eof:
            for frame in await conn.receive():
                if not isinstance(frame, Frame) or not frame.data.startswith(b'{"type":"ev'):
                    continue
                result = on_event(time.time(), json.loads(frame.data))
                if result is not None:
                    return result
    return None


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(tally: Tally, seconds: float) -> dict[str, Any]:
    lat = sorted(tally.latencies)

    def pct(p: float) -> float | None:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None

    return {"frames_per_s": tally.frames / seconds, "events_per_s": tally.events / seconds,
            "turns_per_s": tally.turns / seconds, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "p999_ms": pct(0.999), "samples": len(lat)}
