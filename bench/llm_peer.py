"""A lean scripted OpenAI-compatible chat-completions server for ``bench/model_client.py``:
streams every answer at a fixed rate of tokens per second, and stamps each token with the time
it was written, so that a client can tell how late each piece reached it.

``python -m bench.llm_peer --port 0 --epoch T [--rate 50] [--seconds 1800]`` prints ``ready:
PORT`` and serves on 127.0.0.1 until SIGTERM (or ``--seconds``).

- ``POST /v1/chat/completions``: the answer has ``N`` tokens, ``N`` the integer in the content of
  the request's last message (a number and nothing else; otherwise ``DEFAULT_TOKENS``; at most
  ``MAX_TOKENS``). Token ``i`` (from 1) is the text `` i@S``, where ``S`` is the time it was
  written in units of 0.1 ms since ``--epoch`` (seconds since the Unix epoch, the benchmark's
  wall clock). With ``"stream": true``: server-sent events in a chunked HTTP/1.1 body, as the
  API sends them: a first chunk with the role and the first token at once, then token ``i`` at
  ``t0 + (i - 1) / rate`` (``t0`` when the request was read: a schedule anchored at its start,
  so a late write does not shift the next ones), one ``chat.completion.chunk`` each; then a
  chunk with ``finish_reason: "stop"``, with ``stream_options.include_usage`` a chunk with no
  choices and the ``usage`` (and ``usage: null`` on every earlier chunk), and ``data: [DONE]``.
  Without ``stream``: the whole ``chat.completion`` at once. Keep-alive.
- ``GET /stats``: JSON counters since the last ``/stats`` (then reset): answers started and
  finished, clients that left early, tokens written, the most answers streaming at once
  (``open_max``), and how late the writes were against their schedule (p50, p99, max in ms):
  this process keeping up or not.
- Anything else: 404.

Lean on purpose (it must not be the bottleneck of the benchmark): asyncio (uvloop when
installed) with ``Protocol`` callbacks, a hand-written request parser, chunks built from
pre-encoded bytes, and one timer task for all the streams (a heap of due writes), not a task or
a timer per token. Bounded: request heads up to 64 KiB, bodies up to 1 MiB, ``MAX_TOKENS`` per
answer, ``MAX_REQUESTS`` per connection, ``MAX_SAMPLES`` lateness samples between two
``/stats``, the process's life ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import signal
import sys
import time
from typing import Any

DEFAULT_TOKENS = 150
MAX_TOKENS = 10_000
MAX_HEAD = 64 * 1024
MAX_BODY = 1 << 20
MAX_REQUESTS = 100_000
CREATED = 1_700_000_000
PATH = b"/v1/chat/completions"
MAX_SLEEP = 0.005  # s: the pacer looks at its heap at least this often
MAX_SAMPLES = 2_000_000  # lateness samples kept between two /stats


def chunked(payload: bytes) -> bytes:
    """One chunk of an HTTP/1.1 chunked body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Stats:
    def __init__(self) -> None:
        self.open = 0  # answers streaming now (not reset)
        self.reset()

    def reset(self) -> None:
        self.started = self.finished = self.left = self.tokens = self.requests = 0
        self.open_max = self.open  # the most answers streaming at once since the reset
        self.late: list[float] = []  # seconds each write came after its schedule

    def report(self) -> dict[str, Any]:
        late = sorted(self.late)
        pct = lambda p: late[min(len(late) - 1, int(p * len(late)))] * 1000 if late else None  # noqa: E731
        out = {"requests": self.requests, "started": self.started, "finished": self.finished,
               "left": self.left, "tokens": self.tokens, "open_max": self.open_max,
               "late_p50_ms": pct(0.5), "late_p99_ms": pct(0.99),
               "late_max_ms": late[-1] * 1000 if late else None}
        self.reset()
        return out


class Stream:
    """One streamed answer in progress."""

    __slots__ = ("conn", "t0", "total", "sent", "head", "tail", "end", "alive")

    def __init__(self, conn: "Connection", t0: float, total: int, head: bytes, tail: bytes,
                 end: bytes) -> None:
        self.conn, self.t0, self.total, self.sent = conn, t0, total, 0
        self.head, self.tail, self.end, self.alive = head, tail, end, True


class Peer:
    def __init__(self, rate: float, epoch: float) -> None:
        self.rate, self.epoch = rate, epoch
        self.stats = Stats()
        self.due: list[tuple[float, int, Stream]] = []  # (when, tie, stream): next token due
        self.ties = itertools.count()
        self.wake: asyncio.Event | None = None
        self.ids = itertools.count(1)

    def token(self, i: int) -> bytes:
        return b" %d@%d" % (i, round((time.time() - self.epoch) * 10_000))

    def write_token(self, s: Stream, late: float) -> None:
        s.sent += 1
        s.conn.transport.write(chunked(s.head + self.token(s.sent) + s.tail))
        self.stats.tokens += 1
        if len(self.stats.late) < MAX_SAMPLES:
            self.stats.late.append(late)
        if s.sent == s.total:
            s.conn.transport.write(s.end)
            s.alive = False
            s.conn.stream = None
            self.stats.finished += 1
            self.stats.open -= 1
            s.conn.next_request()

    def schedule(self, s: Stream) -> None:
        heapq.heappush(self.due, (s.t0 + s.sent / self.rate, next(self.ties), s))
        if self.wake is not None:
            self.wake.set()

    async def pacer(self) -> None:
        """The one timer of every stream: writes each token when it is due."""
        loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        due = self.due
        while True:
            if not due:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = loop.time()
            if due[0][0] > now:
                # Short sleeps: a stream begun meanwhile (its next token due 1/rate after
                # its first) is looked at in time, whatever the heap's top.
                await asyncio.sleep(min(due[0][0] - now, MAX_SLEEP))
                continue
            while due and due[0][0] <= now:
                when, _, s = heapq.heappop(due)
                if not s.alive:
                    continue
                self.write_token(s, now - when)
                if s.alive:
                    heapq.heappush(due, (s.t0 + s.sent / self.rate, next(self.ties), s))
                now = loop.time()


class Connection(asyncio.Protocol):
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.buffer = bytearray()
        self.transport: Any = None
        self.stream: Stream | None = None
        self.requests = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None and self.stream.alive:
            self.stream.alive = False
            self.peer.stats.left += 1
            self.peer.stats.open -= 1
        self.stream = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_HEAD + MAX_BODY:
            self.transport.close()
            return
        self.next_request()

    def next_request(self) -> None:
        """Answer the buffered request, if it is whole and no answer is streaming."""
        if self.stream is not None or self.transport.is_closing():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self.transport.close()
            return
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        try:
            method, target, _ = lines[0].split(b" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if not 0 <= length <= MAX_BODY:
                raise ValueError(length)
        except ValueError:
            self.transport.close()
            return
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        self.requests += 1
        self.peer.stats.requests += 1
        if method == b"GET" and target == b"/stats":
            self.send_json(200, self.peer.stats.report())
        elif method == b"POST" and target == PATH:
            self.chat(body)
        else:
            self.send_json(404, {"error": {"message": "not found", "type": "invalid_request_error",
                                           "param": None, "code": None}})
        if self.requests >= MAX_REQUESTS and self.stream is None:
            self.transport.close()
        elif self.stream is None and self.buffer:
            self.next_request()

    def send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        reason = b"OK" if status == 200 else b"Not Found" if status == 404 else b"Bad Request"
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (status, reason, len(data), data))

    def chat(self, body: bytes) -> None:
        peer = self.peer
        try:
            payload = json.loads(body)
            content = payload["messages"][-1]["content"]
            model = str(payload.get("model", "bench"))
        except (ValueError, KeyError, IndexError, TypeError):
            self.send_json(400, {"error": {"message": "not a chat request",
                                           "type": "invalid_request_error", "param": None,
                                           "code": None}})
            return
        total = DEFAULT_TOKENS
        if isinstance(content, str) and content.strip().isdigit():
            total = max(1, min(MAX_TOKENS, int(content.strip())))
        number = next(peer.ids)
        usage = {"prompt_tokens": 10, "completion_tokens": total, "total_tokens": 10 + total,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
        base = {"id": f"chatcmpl-{number}", "object": "chat.completion.chunk",
                "created": CREATED, "model": model}
        if payload.get("stream") is not True:
            text = "".join(peer.token(i).decode() for i in range(1, total + 1))
            self.send_json(200, base | {"object": "chat.completion", "usage": usage, "choices": [{
                "index": 0, "logprobs": None, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": text, "refusal": None}}]})
            return
        options = payload.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        if with_usage:
            base["usage"] = None

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return b"data: %s\n\n" % json.dumps(base | {"choices": [{
                "index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]},
                separators=(",", ":")).encode()

        # A token's chunk is head + token + tail: the JSON around a content of "\x00".
        head, tail = event({"content": "\x00"}).split(b"\\u0000")
        end = event({}, "stop")
        if with_usage:
            end += b"data: %s\n\n" % json.dumps(base | {"choices": [], "usage": usage},
                                                separators=(",", ":")).encode()
        end = chunked(end + b"data: [DONE]\n\n") + b"0\r\n\r\n"
        s = Stream(self, asyncio.get_running_loop().time(), total, head, tail, end)
        self.stream = s
        peer.stats.started += 1
        peer.stats.open += 1
        peer.stats.open_max = max(peer.stats.open_max, peer.stats.open)
        first = event({"role": "assistant", "content": ""})
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8"
                             b"\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
                             b"x-request-id: req_%d\r\n\r\n" % number + chunked(first))
        peer.write_token(s, 0.0)  # the first token at once, the rest on the schedule
        if s.alive:
            peer.schedule(s)


async def serve(port: int, rate: float, epoch: float, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    peer = Peer(rate, epoch)
    server = await loop.create_server(lambda: Connection(peer), "127.0.0.1", port,
                                      backlog=4096)
    print(f"ready: {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pacer = asyncio.create_task(peer.pacer())
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    pacer.cancel()
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.llm_peer",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rate", type=float, default=50.0, help="tokens a second per answer")
    p.add_argument("--epoch", type=float, default=0.0, help="stamps count from here (s)")
    p.add_argument("--seconds", type=float, default=1800.0, help="the longest this serves")
    args = p.parse_args(argv)
    from threadline.tuning import raise_fd_limit

    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    runner(serve(args.port, args.rate, args.epoch, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
