"""A real model client: how many answers from an OpenAI-compatible model one ``threadline serve
--agent openai`` process streams at once (the official ``openai`` SDK inside threadline parses
the model's stream), beside the same number of streams consumed by a plain trio program through
the same SDK, with no threadline, measured in the same run.

The model is ``bench/llm_peer.py``, a lean scripted chat-completions server in a process of its
own on loopback: every answer streams ``--tokens`` tokens (150 by default: 3 s) at 50 tokens a
second on a schedule anchored at the request's start, as server-sent events, with the usage
chunk at the end when asked (threadline's agent asks). Each token is `` i@S``: its number in the
answer and the time the server wrote it (``S``, in 0.1 ms since this run's epoch, the machine's
wall clock, which every process here shares).

- **threadline**: ``threadline serve --agent openai --model bench`` (``OPENAI_BASE_URL`` the
  peer; rate limits lifted as in every scenario), on the memory store (the model-client path
  with nothing stored) and on SQLite (the default). Every answer is its own WebSocket
  connection, user and thread, and sends the message ``N`` (the peer answers ``N`` tokens). A
  piece's delay: the moment its ``agent_delta`` reaches the client minus the stamp of its first
  token (the text in it that waited longest; threadline coalesces the writes into at most one
  ``agent_delta`` per run every 50 ms, so 2-3 tokens a piece at this rate). Whole: the
  deltas and ``agent_completed.text`` hold tokens 1..N in order.
- **bare SDK** (the baseline): the same number of streams opened by this process under trio
  with ``openai.AsyncOpenAI`` (on httpx and anyio, which run under trio), its pool opened wide
  enough for every stream (``max_connections``), each chunk's delay from its stamp to the
  moment the ``async for`` over the stream has it. Whole: tokens 1..N in order and the usage
  chunk says N.

The questions of a level are asked spread over one second, as users' are. A level is sustained
when every answer arrives whole and the p99 delay is under 150 ms; the levels go 10, 20, 30,
40, 50, 60, 75, 100, 125, 150, 200, 300, 500, 1,000 answers, the bare SDK then threadline on each store at
each level (one after the other, so that all see the machine as it is then: it is shared), and
each side stops at its first level not sustained. Reported for every level: p50/p99/max delay;
the CPU (in cores, over the streaming window: from the first question to the last answer) of
the threadline process, of the model server, of this process (the WebSocket load generator, or
the bare SDK program itself) and of the rest of the machine (other processes, from /proc/stat),
so the bottleneck is visible; the CPU per streamed token of the process that consumes the
model's stream; and, from the model server, the most answers it streamed at once and how late
its writes were against its own schedule (it keeping up or not). This process runs with the
garbage collector tuned as ``threadline serve`` tunes it (``tune_gc``), so the two consumers
differ only by threadline.

Usage: ``python -m bench.model_client [--quick] [--answers 10,20,...] [--tokens 150]
[--stores memory,sqlite]`` (``--stores`` may also name postgresql).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import trio

from threadline.transport.auth import mint
from threadline.tuning import raise_fd_limit, tune_gc

from .common import Row, met, progress, table, write_results
from .loadgen import ask_and_follow, cpu_seconds, open_ws, process_cpu_seconds
from .servers import ROOT, SECRET, Databases, server_process, stop

RATE = 50.0  # the model's tokens a second, per answer
TOKENS = 150  # tokens per answer: 3 s at RATE
P99_TARGET_MS = 150.0
STAGGER = 1.0  # seconds over which the questions of one level are asked
# Each side stops at the first level not sustained. The low ones are there because the SDK
# costs about 250 us of CPU a chunk under trio (half of it ``openai._models.construct_type``
# building the chunk's model, the rest httpx/httpcore/anyio): one process consuming 50 tokens a
# second per stream is near a core from about 100 streams, before threadline does anything.
LEVELS = [10, 20, 30, 40, 50, 60, 75, 100, 125, 150, 200, 300, 500, 1000]
QUICK_LEVELS = [10, 30]
QUICK_TOKENS = 100
MODEL = "bench"
STORES = ("memory", "sqlite")


# --- the scripted model server ---------------------------------------------------------------

@contextmanager
def model_server(epoch: float) -> Iterator[tuple[int, subprocess.Popen]]:
    """``bench/llm_peer.py`` in a process of its own; yields its port and process."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.llm_peer", "--port", "0", "--rate",
                             str(RATE), "--epoch", repr(epoch), "--seconds", "1800"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        if not line.startswith("ready: "):
            raise RuntimeError(f"the model server did not start: {line!r}")
        yield int(line.removeprefix("ready: ")), proc
    finally:
        stop(proc)


def model_stats(port: int) -> dict[str, Any]:
    """The model server's counters since the last call (then reset)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


@contextmanager
def environ(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` for the servers started inside (``server_process`` hands
    this process's environment down), restored after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- one answer, each side -------------------------------------------------------------------

class Tokens:
    """Reads the tokens ``i@S`` of an answer as they come: checks they are 1, 2, ... in order,
    and gives each piece's delay (now minus the stamp of its first token)."""

    __slots__ = ("epoch", "count", "ok")

    def __init__(self, epoch: float) -> None:
        self.epoch, self.count, self.ok = epoch, 0, True

    def piece(self, text: str, now: float) -> float | None:
        first = None
        for token in text.split():
            number, _, stamp = token.partition("@")
            self.count += 1
            if not number.isdigit() or int(number) != self.count or not stamp.isdigit():
                self.ok = False
                return None
            if first is None:
                first = self.epoch + int(stamp) / 10_000
        return None if first is None else now - first


async def threadline_answer(url: str, user: str, tokens: int, epoch: float,
                            delays: list[float], go: trio.Event, after: float) -> dict[str, Any]:
    """One answer on a fresh WebSocket connection (its own user and thread), asked ``after``
    seconds after ``go``."""
    conn = await open_ws(url, mint(user, SECRET))
    text, seen = "", Tokens(epoch)

    def on_event(now: float, event: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal text
        name, data = event["event"], event["data"]
        if name == "agent_delta" and data["offset"] == len(text):
            delay = seen.piece(data["text"], now)
            if delay is not None:
                delays.append(delay)
            text += data["text"]
        elif name == "agent_completed":
            return {"whole": seen.ok and seen.count == tokens and data["text"] == text,
                    "error": None}
        elif name in ("agent_failed", "agent_cancelled"):
            return {"whole": False, "error": f"{name}: {data.get('error')}"}
        return None

    try:
        return await ask_and_follow(conn, str(tokens), go, after, tokens / RATE + 60,
                                    on_event) or {"whole": False,
                                                  "error": "no end within the time"}
    finally:
        await conn.aclose()


async def bare_answer(client: Any, tokens: int, epoch: float, delays: list[float],
                      after: float) -> dict[str, Any]:
    """One answer through the SDK, no threadline, asked ``after`` seconds after the start."""
    import openai

    await trio.sleep(after)
    seen, usage = Tokens(epoch), None
    try:
        with trio.move_on_after(tokens / RATE + 60):
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": str(tokens)}], stream=True,
                stream_options={"include_usage": True})
            async with stream:
                async for chunk in stream:
                    now = time.time()
                    if chunk.usage is not None:
                        usage = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        if choice.delta.content:
                            delay = seen.piece(choice.delta.content, now)
                            if delay is not None:
                                delays.append(delay)
            return {"whole": seen.ok and seen.count == tokens == usage, "error": None}
        return {"whole": False, "error": "no end within the time"}
    except openai.APIError as exc:
        return {"whole": False, "error": f"{type(exc).__name__}: {exc}"}


# --- a level ---------------------------------------------------------------------------------

def summary(answers: int, results: list[dict[str, Any]], delays: list[float], window: float,
            cpu: dict[str, float]) -> dict[str, Any]:
    delays.sort()
    pct = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))] * 1000 if delays else None  # noqa: E731
    whole = sum(r["whole"] for r in results)
    errors = sorted({r["error"] for r in results if r["error"]})
    p99 = pct(0.99)
    # What the rest of the machine did meanwhile (other processes: it is shared).
    cpu["others"] = max(0.0, cpu.pop("machine") - sum(cpu.values()))
    return {"answers": answers, "whole": whole, "p50_ms": pct(0.5), "p99_ms": p99,
            "max_ms": delays[-1] * 1000 if delays else None, "pieces": len(delays),
            "window_s": window, **{f"{k}_cpu": v / window for k, v in cpu.items()},
            "errors": errors[:3],
            "sustained": whole == answers and p99 is not None and p99 < P99_TARGET_MS}


async def threadline_level(url: str, answers: int, tokens: int, epoch: float, tag: str,
                           pids: dict[str, int]) -> dict[str, Any]:
    delays: list[float] = []
    results: list[dict[str, Any]] = []
    go = trio.Event()

    async def answer(i: int) -> None:
        results.append(await threadline_answer(url, f"{tag}{answers}u{i}", tokens, epoch,
                                               delays, go, STAGGER * i / answers))

    async with trio.open_nursery() as nursery:
        for i in range(answers):
            nursery.start_soon(answer, i)
        await trio.sleep(min(10.0, 0.5 + answers / 200))  # let every connection open and join
        cpu0 = cpus(pids)
        wall0 = time.perf_counter()
        go.set()
    cpu = {k: v - cpu0[k] for k, v in cpus(pids).items()}
    return summary(answers, results, delays, time.perf_counter() - wall0, cpu)


async def bare_level(base_url: str, answers: int, tokens: int, epoch: float,
                     pids: dict[str, int]) -> dict[str, Any]:
    import httpx2
    import openai

    delays: list[float] = []
    results: list[dict[str, Any]] = []
    # The SDK's default pool (openai._constants: 1,000 connections, 100 kept alive) would
    # queue the streams past 1,000: opened to every stream of the level.
    http = httpx2.AsyncClient(limits=httpx2.Limits(max_connections=answers + 10,
                                                   max_keepalive_connections=answers + 10),
                              timeout=httpx2.Timeout(60.0), trust_env=False)
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0,
                                http_client=http)

    async def answer(i: int) -> None:
        results.append(await bare_answer(client, tokens, epoch, delays, STAGGER * i / answers))

    try:
        cpu0 = cpus(pids)
        wall0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(answers):
                nursery.start_soon(answer, i)
        cpu = {k: v - cpu0[k] for k, v in cpus(pids).items()}
        wall = time.perf_counter() - wall0
    finally:
        await client.close()
    return summary(answers, results, delays, wall, cpu)


def cpus(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process, of this one (``loadgen``) and of the whole
    machine (``machine``: every core's busy time, from /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait (guest is in user)
    return {**{k: process_cpu_seconds(pid) for k, pid in pids.items()}, "loadgen": cpu_seconds(),
            "machine": busy / os.sysconf("SC_CLK_TCK")}


def report(side: str, r: dict[str, Any], model: dict[str, Any], tokens: int) -> None:
    """Completes a level's figures with the model server's and prints them."""
    r["model_server"] = model
    # CPU per token streamed: the process that consumes the model's stream (threadline's, or
    # the bare SDK program), over the tokens of the answers that arrived whole.
    consumer = r.get("threadline_cpu", r["loadgen_cpu"]) * r["window_s"]
    r["consumer_us_per_token"] = consumer / (r["whole"] * tokens) * 1e6 if r["whole"] else None
    late = model.get("late_p99_ms")
    threadline = "threadline_cpu" in r
    server = f"threadline CPU {r['threadline_cpu']:.0%}, " if threadline else ""
    client = "load generator" if threadline else "SDK program"
    progress(f"  {side}: whole {r['whole']}/{r['answers']}, p50 {fmt(r['p50_ms'])}, p99 "
             f"{fmt(r['p99_ms'])}; {server}{client} CPU {r['loadgen_cpu']:.0%}, model server "
             f"CPU {r['model_cpu']:.0%} ({model.get('open_max')} at once, writes late p99 "
             f"{fmt(late)}), other processes {r['others_cpu']:.0%}"
             + (f"; errors: {r['errors']}" if r["errors"] else ""))


def fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f} ms"


# --- the run ---------------------------------------------------------------------------------

def measure(answers: list[int], tokens: int, stores: list[str]) -> dict[str, Any]:
    """Level by level, the bare SDK then threadline on each store, one after the other at each
    level (so that both see the machine as it is then: it is shared), each side stopping at
    its first level not sustained. One model server for all; a threadline server per store,
    started once."""
    epoch = time.time()
    out: dict[str, Any] = {"tokens": tokens, "rate": RATE, "levels": answers,
                           "p99_target_ms": P99_TARGET_MS, "stagger_s": STAGGER, "bare": {},
                           "threadline": {store: {} for store in stores}}
    with ExitStack() as stack:
        port, peer = stack.enter_context(model_server(epoch))
        base_url = f"http://127.0.0.1:{port}/v1"
        stack.enter_context(environ(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="bench"))
        databases = Databases(stack)
        servers: dict[str, tuple[str, int]] = {}
        for store in stores:
            url = databases.fresh(store)
            if url is None:
                out["threadline"].pop(store)
                continue
            ws_url, proc = stack.enter_context(server_process("threadline", store=url, extra=(
                "--agent", "openai", "--model", MODEL)))
            servers[store] = ws_url, proc.pid
        going = {"bare", *servers}
        for n in answers:
            if not going:
                break
            if "bare" in going:
                progress(f"model client: {n} answers of {tokens} tokens, bare SDK under trio")
                model_stats(port)
                r = trio.run(bare_level, base_url, n, tokens, epoch, {"model": peer.pid})
                report("bare SDK", r, model_stats(port), tokens)
                out["bare"][str(n)] = r
                if not r["sustained"]:
                    going.discard("bare")
            for store, (ws_url, pid) in servers.items():
                if store not in going:
                    continue
                progress(f"model client: {n} answers of {tokens} tokens, threadline --agent "
                         f"openai on {store}")
                model_stats(port)
                r = trio.run(threadline_level, ws_url, n, tokens, epoch, store,
                             {"threadline": pid, "model": peer.pid})
                report(f"threadline ({store})", r, model_stats(port), tokens)
                out["threadline"][store][str(n)] = r
                if not r["sustained"]:
                    going.discard(store)
    return out


def run(quick: bool) -> dict[str, Any]:
    """For the suite: the levels of ``LEVELS`` (``--quick``: ``QUICK_LEVELS``, shorter answers),
    on the memory store and SQLite."""
    raise_fd_limit()
    t0 = time.perf_counter()
    results = measure(QUICK_LEVELS if quick else LEVELS, QUICK_TOKENS if quick else TOKENS,
                      list(STORES))
    return {**results, "quick": quick, "seconds": time.perf_counter() - t0}


def sustained(levels: dict[str, Any]) -> int:
    return max((int(n) for n, r in levels.items() if r["sustained"]), default=0)


def rows(results: dict[str, Any]) -> list[Row]:
    """Per store: the answers threadline sustains against the bare SDK's in the same run; the
    delays at threadline's highest sustained level beside the bare SDK's at that level; and
    the CPU per streamed token of the process that consumes the model's stream (threadline's,
    or the bare program) at the highest level both sustained."""
    out: list[Row] = []
    bare = results["bare"]
    base = sustained(bare)
    capped = "+" if base and base == max(int(n) for n in bare) else ""  # never failed
    for store, levels in results["threadline"].items():
        if not levels:
            continue
        best = sustained(levels)
        out.append((f"concurrent model answers streamed ({results['rate']:.0f} tokens/s), p99 "
                    f"piece delay < {P99_TARGET_MS:.0f} ms, openai agent ({store})",
                    f"{best:,}", f"{base:,}{capped} bare SDK under trio",
                    f"{best / base:.2f}" if base else "-", "-", "-"))
        at = str(best) if best else next(iter(levels))
        t, b = levels[at], bare.get(at)
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            ok = t[key] is not None and (b or {}).get(key)
            out.append((f"{label} piece delay at {int(at):,} model answers ({store})",
                        fmt(t[key]), f"{fmt(b[key])} bare SDK" if b else "-",
                        f"{t[key] / b[key]:.1f}" if ok else "-",
                        f"< {P99_TARGET_MS:.0f} ms" if label == "p99" else "-",
                        met(t[key] is not None and t[key] < P99_TARGET_MS)
                        if label == "p99" else "-"))
        both = [n for n in levels if levels[n]["sustained"] and bare.get(n, {}).get("sustained")]
        if both:
            n = max(both, key=int)
            t_us, b_us = levels[n]["consumer_us_per_token"], bare[n]["consumer_us_per_token"]
            out.append((f"CPU per streamed token at {int(n):,} answers, threadline process "
                        f"({store})", f"{t_us:.0f} us", f"{b_us:.0f} us bare SDK process",
                        f"{t_us / b_us:.2f}", "-", "-"))
    return out


def levels_table(results: dict[str, Any]) -> str:
    """Every level of every side: the figures behind ``rows``. CPU in cores over the
    streaming window; "client" is this process (the WebSocket load generator, or the bare
    SDK program itself)."""
    head = ("side", "answers", "whole", "p50", "p99", "max", "threadline CPU", "model CPU",
            "model at once", "model late p99", "client CPU", "others CPU", "us/token", "sustained")
    lines = [head]
    sides = [("bare SDK", results["bare"])] + [
        (f"threadline {store}", levels) for store, levels in results["threadline"].items()]
    for side, levels in sides:
        for n, r in levels.items():
            tl, us = r.get("threadline_cpu"), r.get("consumer_us_per_token")
            lines.append((side, n, str(r["whole"]), fmt(r["p50_ms"]), fmt(r["p99_ms"]),
                          fmt(r["max_ms"]), "-" if tl is None else f"{tl:.2f}",
                          f"{r['model_cpu']:.2f}", str(r["model_server"].get("open_max", "-")),
                          fmt(r["model_server"].get("late_p99_ms")),
                          f"{r['loadgen_cpu']:.2f}", f"{r['others_cpu']:.2f}",
                          "-" if us is None else f"{us:.0f}", met(r["sustained"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.model_client",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"levels {QUICK_LEVELS}, {QUICK_TOKENS} tokens an answer")
    p.add_argument("--answers", help="levels of concurrent answers, comma-separated "
                   f"(default {','.join(map(str, LEVELS))})")
    p.add_argument("--tokens", type=int, help=f"tokens per answer (default {TOKENS})")
    p.add_argument("--stores", default=",".join(STORES), help="threadline's stores")
    args = p.parse_args(argv)
    raise_fd_limit()
    tune_gc()
    t0 = time.perf_counter()
    levels = ([int(n) for n in args.answers.split(",")] if args.answers else
              QUICK_LEVELS if args.quick else LEVELS)
    tokens = args.tokens or (QUICK_TOKENS if args.quick else TOKENS)
    results = {**measure(levels, tokens, args.stores.split(",")), "quick": args.quick,
               "seconds": time.perf_counter() - t0}
    print(levels_table(results))
    print()
    print(table(rows(results)))
    print(f"results: {write_results('model_client', results)} ({results['seconds']:.0f} s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
