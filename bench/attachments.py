"""Attachments: uploads beside live conversations (issue 23).

One ``threadline serve`` process (its own process; the default store, SQLite in a temporary
file, and with ``--stores sqlite,postgresql`` also PostgreSQL, the tests' throwaway cluster with
fsync on) takes, at once:

- ``--uploads`` concurrent uploads (20) of ``--mib`` MiB each (20: the largest allowed),
  ``POST /v1/attachments?name=NAME`` with ``Content-Type: application/pdf``, each from its own
  user (the per-user quota is 1 GiB and a user has at most 16 HTTP requests in flight), sent
  from a process of their own (so that the timing of the others below is not the uploader's
  work). Each user sends ``--rounds`` files (3) one after the other, so that 20 uploads are in
  flight throughout and the phase lasts long enough for a p99 of the others (one round is 2-5
  s here; ``--rounds 1`` is exactly 20 x 20 MiB). Each body is random bytes (``os.urandom``,
  with a ``%PDF-`` head), generated and hashed 64 KiB at a time as it is sent (one HTTP/1.1
  request per connection, ``Content-Length``): no file is ever held whole on the client. Each
  answer must be 201 with the body's size and sha256. Reported: MiB/s in aggregate (all the
  bytes over the time from the first byte sent to the last answer) and per upload (its size
  over its own time), and a sample of them (``--verify``, spread over the rounds) downloaded
  back (``GET /v1/attachments/{id}``, streamed, sha256 compared byte for byte);
- meanwhile, ``--users`` other users (50), one WebSocket and one thread each, each sending a
  short message every ``--interval`` seconds (0.5; if a turn takes longer, the next is sent when
  it ends), answered by the echo agent. For each message: send -> ``accepted`` (stored) and
  send -> the run's terminal event (``agent_completed``). Their p50/p99 are taken in the same
  run over ``--baseline`` seconds with no upload (after a warm-up), then while the uploads run,
  then ``--baseline`` seconds more with no upload (each message counted in the phase it was
  sent in); the baseline is both windows with no upload together (each is also reported: on a
  shared machine one of them may catch a stall of the machine's), and the figure is the ratio;
- the server's resident memory: ``VmRSS``/``VmHWM`` (``/proc/PID/status``) just before the
  uploads, and its peak while they run (``VmHWM`` after them, and the largest ``VmRSS``
  sampled every 10 ms). The route holds about one 256 KiB chunk per upload, so the peak must
  not grow with uploads x size (the target: under 2 MiB an upload).

Then, with the others stopped: the sample downloads, and one upload of the same size alone
(the single-upload rate with nothing else running, for reference). Also reported, to say where
the time goes: the store's group commits in each phase (count, mean time, how many over 100 ms,
from ``/metrics``), the slowest message sent in each second of each phase, and the server's
CPU, the uploader's and this process's (which side is the bottleneck).

Loopback only; bounded in count (``--uploads`` <= 50, ``--rounds`` <= 10, ``--users`` <= 500,
``--mib`` <= 20) and in time (twice ``--baseline`` seconds; the uploads, and each message,
under ``--timeout``). The default run takes about 35 s on SQLite, and about 45 s more with
PostgreSQL.

Usage: ``python -m bench.attachments [--uploads 20] [--rounds 3] [--mib 20] [--users 50]
[--interval 0.5] [--baseline 10] [--verify 3] [--stores sqlite,postgresql]``. Progress goes to
stderr, the table to stdout, the figures to ``bench/results/attachments.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
from contextlib import ExitStack
from typing import Any, AsyncIterator, Callable
from urllib.parse import quote, urlsplit

import h11
import trio

from threadline.transport.auth import mint
from threadline.transport.client import ServerError, open_client
from threadline.tuning import raise_fd_limit

from .common import Row, met, progress, table, write_results
from .loadgen import cpu_seconds, process_cpu_seconds
from .replay import Sampler, memory_of
from .servers import SECRET, Databases, server_process

MiB = 1024 * 1024
PIECE = 64 * 1024       # bytes the client generates, hashes and sends at a time
RECEIVE = 256 * 1024    # bytes the client reads at a time
CONTENT_TYPE = "application/pdf"
PDF_HEAD = b"%PDF-1.7\n"  # random bytes, but headed as the type they are declared
TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")
WARMUP = 2.0            # seconds the others run before the baseline is counted
GROWTH_PER_UPLOAD = 2 * MiB  # the target: the server grows by less than this per upload


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def http_address(ws_url: str) -> tuple[str, int]:
    parts = urlsplit(ws_url)
    assert parts.hostname in ("127.0.0.1", "localhost"), "loopback only"
    return parts.hostname, parts.port or 80


# -- HTTP, streamed both ways -------------------------------------------------------------------

async def http(address: tuple[str, int], method: str, target: str, headers: list[tuple[str, str]],
               *, body: AsyncIterator[bytes] | None = None, length: int = 0,
               sink: Callable[[bytes], None] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own (h11): the body sent from ``body`` as it is
    generated, the answer's body handed to ``sink`` as it comes (or returned if no sink).
    A server that answers before the whole body is sent (413, 429...) is heard."""
    host, port = address
    stream = await trio.open_tcp_stream(host, port)
    conn = h11.Connection(h11.CLIENT)
    try:
        head = [("Host", f"{host}:{port}"), *headers]
        if body is not None:
            head.append(("Content-Length", str(length)))
        await stream.send_all(conn.send(h11.Request(method=method, target=target, headers=head)))
        if body is not None:
            try:
                async for piece in body:
                    await stream.send_all(conn.send(h11.Data(data=piece)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # answered early and closed: read the answer
        status, answer_headers, out = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(RECEIVE)
                except trio.BrokenResourceError:
                    data = b""
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = {k.decode().lower(): v.decode("latin-1")
                                  for k, v in event.headers}
            elif isinstance(event, h11.Data):
                if sink is not None:
                    sink(event.data)
                else:
                    out += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return status, answer_headers, bytes(out)
    finally:
        await stream.aclose()


async def random_body(size: int, sha: Any) -> AsyncIterator[bytes]:
    """``size`` random bytes, ``PIECE`` at a time, each hashed into ``sha`` as it goes."""
    left = size
    while left:
        piece = os.urandom(min(PIECE, left))
        if left == size:
            piece = PDF_HEAD + piece[len(PDF_HEAD):]
        sha.update(piece)
        left -= len(piece)
        yield piece
        await trio.sleep(0)


async def upload(address: tuple[str, int], user: str, name: str, size: int) -> dict[str, Any]:
    """Upload ``size`` random bytes as ``user``: its answer, time and the client's sha256."""
    sha = hashlib.sha256()
    started = time.perf_counter()
    status, _, answer = await http(
        address, "POST", f"/v1/attachments?name={quote(name)}",
        [("Authorization", f"Bearer {mint(user, SECRET)}"), ("Content-Type", CONTENT_TYPE)],
        body=random_body(size, sha), length=size)
    ended = time.perf_counter()
    try:
        reply = json.loads(answer)
    except ValueError:
        reply = {"raw": answer[:200].decode("latin-1")}
    ok = (status == 201 and reply.get("size") == size
          and reply.get("sha256") == sha.hexdigest()
          and reply.get("content_type") == CONTENT_TYPE)
    return {"user": user, "status": status, "ok": ok, "started": started, "ended": ended,
            "seconds": ended - started, "mib_s": size / MiB / (ended - started),
            "sha256": sha.hexdigest(), "attachment_id": reply.get("attachment_id"),
            "answer": reply if not ok else None}


async def download(address: tuple[str, int], user: str, attachment_id: str) -> dict[str, Any]:
    """Read an attachment back, hashing it as it comes: its status, size, sha256 and time."""
    sha = hashlib.sha256()
    size = 0

    def sink(data: bytes) -> None:
        nonlocal size
        sha.update(data)
        size += len(data)

    started = time.perf_counter()
    status, headers, _ = await http(address, "GET", f"/v1/attachments/{attachment_id}",
                                    [("Authorization", f"Bearer {mint(user, SECRET)}")],
                                    sink=sink)
    seconds = time.perf_counter() - started
    return {"status": status, "size": size, "sha256": sha.hexdigest(), "seconds": seconds,
            "content_type": headers.get("content-type")}


async def concurrent_uploads(address: tuple[str, int], users: list[str], size: int,
                             rounds: int, timeout: float) -> dict[str, Any]:
    """Every user uploads ``rounds`` files one after the other, all users at once: as many
    uploads in flight as users, throughout."""
    results: list[dict[str, Any]] = []

    async def one(user: str) -> None:
        for i in range(rounds):
            results.append({**await upload(address, user, f"{user}-{i}.pdf", size),
                            "round": i})

    cpu0 = cpu_seconds()
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(one, user)
    first, last = min(r["started"] for r in results), max(r["ended"] for r in results)
    return {"uploads": results, "seconds": last - first, "cpu_seconds": cpu_seconds() - cpu0}


def uploader(pipe: Any, address: tuple[str, int], users: list[str], size: int, rounds: int,
             timeout: float) -> None:
    """The uploading process: ready, then on ``go`` the concurrent uploads; their results."""
    pipe.send("ready")
    if pipe.recv() != "go":
        return
    try:
        pipe.send(trio.run(concurrent_uploads, address, users, size, rounds, timeout))
    except BaseException as exc:  # said to the parent, which reports it
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})


async def commit_figures(address: tuple[str, int]) -> dict[str, float]:
    """The store's group-commit histogram from ``/metrics``: count, sum and buckets."""
    status, _, body = await http(address, "GET", "/metrics", [])
    out: dict[str, float] = {}
    for line in body.decode().splitlines() if status == 200 else ():
        if line.startswith("threadline_store_commit_seconds"):
            name, _, value = line.rpartition(" ")
            out[name.removeprefix("threadline_store_commit_seconds")] = float(value)
    return out


def commit_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """The transactions committed between two ``commit_figures``: how many, their mean time,
    and how many took longer than 100 ms and 250 ms."""
    d = {k: b.get(k, 0.0) - a.get(k, 0.0) for k in b}
    count = d.get("_count", 0.0)
    return {"transactions": int(count),
            "mean_ms": d.get("_sum", 0.0) / count * 1000 if count else None,
            "over_100ms": int(count - d.get('_bucket{le="0.1"}', count)),
            "over_250ms": int(count - d.get('_bucket{le="0.25"}', count))}


# -- the others: conversations beside the uploads ------------------------------------------------

class Phases:
    """Which phase a message sent now counts in, and the samples of each: (the time it was
    sent, milliseconds)."""

    def __init__(self) -> None:
        self.now = "warmup"
        self.began: dict[str, float] = {}
        self.samples: dict[str, dict[str, list[tuple[float, float]]]] = {}
        self.errors: dict[str, int] = {}
        self.stop = trio.Event()

    def enter(self, phase: str) -> None:
        self.now, self.began[phase] = phase, time.perf_counter()

    def add(self, phase: str, what: str, sent: float, ms: float) -> None:
        self.samples.setdefault(phase, {"accepted": [], "terminal": []})[what].append((sent, ms))

    def summary(self, names: tuple[str, ...], seconds: float) -> dict[str, Any]:
        """The figures of the messages sent in the phases ``names``, over ``seconds``."""
        s: dict[str, list[tuple[float, float]]] = {"accepted": [], "terminal": []}
        for name in names:
            for what, xs in self.samples.get(name, {}).items():
                s[what] += xs
        acc, term = [ms for _, ms in s["accepted"]], [ms for _, ms in s["terminal"]]
        began = self.began.get(names[0], 0.0)

        def worst(what: str) -> list[float]:
            """The slowest message sent in each second of the (first) phase (ms)."""
            out: dict[int, float] = {}
            for sent, ms in s[what]:
                second = int(sent - began)
                out[second] = max(out.get(second, 0.0), ms)
            return [round(out.get(i, 0.0), 1) for i in range(max(out, default=-1) + 1)]

        return {"seconds": round(seconds, 2), "messages": len(acc), "completed": len(term),
                "errors": sum(self.errors.get(name, 0) for name in names),
                "accepted_p50_ms": pct(acc, 0.5), "accepted_p99_ms": pct(acc, 0.99),
                "accepted_max_ms": max(acc, default=None),
                "terminal_p50_ms": pct(term, 0.5), "terminal_p99_ms": pct(term, 0.99),
                "terminal_max_ms": max(term, default=None),
                "worst_accepted_ms_by_second": worst("accepted"),
                "worst_terminal_ms_by_second": worst("terminal")}


async def other(url: str, user: str, interval: float, phase: float, timeout: float,
                phases: Phases, go: trio.Event,
                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """One user's conversation: a message every ``interval`` s until stopped, the first
    ``phase`` s after ``go`` (the users' phases are spread over the interval, so that the load
    is steady rather than a burst every interval)."""
    async with open_client(url, mint(user, SECRET)) as client:
        await client.join("main")
        task_status.started()
        await go.wait()
        await trio.sleep(phase)
        while not phases.stop.is_set():
            phase, sent = phases.now, time.perf_counter()
            try:
                accepted = await client.request(
                    {"type": "send", "thread_id": "main", "text": "hello"}, timeout)
            except ServerError as exc:
                phases.errors[phase] = phases.errors.get(phase, 0) + 1
                progress(f"{user}: {exc.code}")
                await trio.sleep(interval)
                continue
            phases.add(phase, "accepted", sent, (time.perf_counter() - sent) * 1000)
            with trio.fail_after(timeout):
                while True:
                    event = await client.next_event(timeout)
                    if event["run_id"] == accepted["run_id"] and event["event"] in TERMINAL:
                        phases.add(phase, "terminal", sent,
                                   (time.perf_counter() - sent) * 1000)
                        break
            with trio.move_on_after(max(0.0, interval - (time.perf_counter() - sent))):
                await phases.stop.wait()


# -- one store ----------------------------------------------------------------------------------

async def scenario(url: str, pid: int, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    address = http_address(url)
    size = args.mib * MiB
    phases = Phases()
    start_all = trio.Event()

    # The uploader's process, ready before anything is timed (its start is not measured).
    users = [f"{tag}up{i}" for i in range(args.uploads)]
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=uploader, daemon=True,
                       args=(child, address, users, size, args.rounds, args.timeout))
    proc.start()
    try:
        with trio.fail_after(60):
            assert await trio.to_thread.run_sync(parent.recv, abandon_on_cancel=True) == "ready"

        # The route warmed up: one small upload and its download (nothing timed).
        warm = await upload(address, f"{tag}warm", "warm.pdf", MiB)
        if not warm["ok"]:
            raise RuntimeError(f"the warm-up upload failed: {warm['status']} {warm['answer']}")
        back = await download(address, f"{tag}warm", warm["attachment_id"])
        if back["sha256"] != warm["sha256"]:
            raise RuntimeError(f"the warm-up download differs: {back}")

        async with trio.open_nursery() as nursery:
            progress(f"{args.users} other users connect, each one message every "
                     f"{args.interval:g} s")
            limiter = trio.CapacityLimiter(50)

            async def start_other(i: int) -> None:
                async with limiter:
                    await nursery.start(other, url, f"{tag}chat{i}", args.interval,
                                        args.interval * i / args.users, args.timeout, phases,
                                        start_all)

            async with trio.open_nursery() as connecting:
                for i in range(args.users):
                    connecting.start_soon(start_other, i)
            start_all.set()
            def cpu() -> tuple[float, float, float]:
                return process_cpu_seconds(pid), cpu_seconds(), time.perf_counter()

            await trio.sleep(WARMUP)
            phases.enter("baseline")
            server0, here0, wall0 = cpu()
            progress(f"baseline: {args.baseline:g} s with no upload")
            commits_warm = await commit_figures(address)
            await trio.sleep(args.baseline)
            server1, here1, wall1 = cpu()
            before = memory_of(pid)
            commits_base = await commit_figures(address)

            progress(f"{args.uploads} uploads of {args.mib} MiB at once, {args.rounds} "
                     f"after another from each user")
            phases.enter("uploads")
            with Sampler(pid) as sampler:
                parent.send("go")
                with trio.fail_after(args.timeout + 30):
                    uploaded = await trio.to_thread.run_sync(parent.recv,
                                                             abandon_on_cancel=True)
                server2, here2, wall2 = cpu()
                after = memory_of(pid)
            commits1 = await commit_figures(address)
            phases.enter("after")
            progress(f"after: {args.baseline:g} s with no upload")
            await trio.sleep(args.baseline)
            server3, here3, wall3 = cpu()
            phases.enter("stopped")
            phases.stop.set()
        if "error" in uploaded:
            raise RuntimeError(f"the uploader failed: {uploaded['error']}")
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()

    # The others are stopped: check a sample byte for byte, then one upload alone.
    ups = uploaded["uploads"]
    verified = []
    good = [u for u in ups if u["ok"]]
    for r in good[::max(1, len(good) // max(1, args.verify))][:args.verify]:  # spread out
        got = await download(address, r["user"], r["attachment_id"])
        got["same"] = got["status"] == 200 and got["size"] == size \
            and got["sha256"] == r["sha256"]
        verified.append(got)
    progress(f"downloaded {len(verified)}: "
             f"{sum(v['same'] for v in verified)} identical byte for byte")
    solo = await upload(address, f"{tag}solo", "solo.pdf", size)
    hwm_end = memory_of(pid)["VmHWM"]

    ok = [u for u in ups if u["ok"]]
    rates = sorted(u["mib_s"] for u in ok)
    base_s, up_s, after_s = wall1 - wall0, wall2 - wall1, wall3 - wall2
    out = {
        "uploads": args.uploads, "rounds": args.rounds, "mib_each": args.mib, "ok": len(ok),
        "failed": [{"status": u["status"], "answer": u["answer"]} for u in ups if not u["ok"]],
        "seconds": round(uploaded["seconds"], 2),
        "aggregate_mib_s": len(ok) * args.mib / uploaded["seconds"],
        "first_round_mib_s": sum(u["round"] == 0 for u in ok) * args.mib / (
            max(u["ended"] for u in ups if u["round"] == 0)
            - min(u["started"] for u in ups)),
        "per_upload_mib_s": {"median": pct(rates, 0.5), "min": rates[0] if rates else None,
                             "max": rates[-1] if rates else None},
        "per_upload_seconds": {"median": pct([u["seconds"] for u in ok], 0.5),
                               "max": max((u["seconds"] for u in ok), default=None)},
        "solo_mib_s": solo["mib_s"] if solo["ok"] else None,
        "verified": verified,
        "each": [{"round": u["round"], "status": u["status"], "seconds": round(u["seconds"], 2)}
                 for u in ups],
        "download_mib_s": (sum(v["size"] for v in verified) / MiB
                           / sum(v["seconds"] for v in verified)) if verified else None,
        "others": {"users": args.users, "interval_s": args.interval,
                   "before": phases.summary(("baseline",), base_s),
                   "after": phases.summary(("after",), after_s),
                   "baseline": phases.summary(("baseline", "after"), base_s + after_s),
                   "uploads": phases.summary(("uploads",), up_s)},
        "cpu": {"before": {"server": (server1 - server0) / base_s,
                           "others_client": (here1 - here0) / base_s},
                "after": {"server": (server3 - server2) / after_s,
                          "others_client": (here3 - here2) / after_s},
                "uploads": {"server": (server2 - server1) / up_s,
                            "others_client": (here2 - here1) / up_s,
                            "uploader": uploaded["cpu_seconds"] / up_s}},
        "store_commits": {"baseline": commit_delta(commits_warm, commits_base),
                          "uploads": commit_delta(commits_base, commits1)},
        "memory_mib": {"rss_before": before["VmRSS"] / MiB, "hwm_before": before["VmHWM"] / MiB,
                       "hwm_after": after["VmHWM"] / MiB, "sampled_peak": sampler.peak / MiB,
                       "peak": max(after["VmHWM"], sampler.peak) / MiB,
                       "hwm_after_downloads": hwm_end / MiB},
    }
    m = out["memory_mib"]
    m["growth"] = m["peak"] - m["rss_before"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"args": vars(args), "stores": {}}
    with ExitStack() as stack:
        databases = Databases(stack)
        for store in args.stores.split(","):
            url = databases.fresh(store)
            if url is None:
                continue  # no PostgreSQL here: said by ``Databases``
            progress(f"threadline serve on {store}")
            with server_process("threadline", store=url) as (ws_url, proc):
                r = trio.run(scenario, ws_url, proc.pid, args, store[:2])
            results["stores"][store] = r
            o = r["others"]
            progress(f"{store}: {r['ok']}/{r['uploads'] * r['rounds']} uploads, "
                     f"{r['aggregate_mib_s']:.1f} MiB/s in {r['seconds']:.1f} s; others' p99 "
                     f"accepted "
                     f"{o['baseline']['accepted_p99_ms']:.1f} -> "
                     f"{o['uploads']['accepted_p99_ms']:.1f} ms, terminal "
                     f"{o['baseline']['terminal_p99_ms']:.1f} -> "
                     f"{o['uploads']['terminal_p99_ms']:.1f} ms; server peak "
                     f"{r['memory_mib']['peak']:.1f} MiB (before "
                     f"{r['memory_mib']['rss_before']:.1f})")
    return results


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for store, r in results["stores"].items():
        n, mib = r["uploads"], r["mib_each"]
        per = r["per_upload_mib_s"]
        solo = r["solo_mib_s"]
        total = n * r["rounds"]
        out.append((f"upload MiB/s, {n} at once, {total} x {mib} MiB, aggregate ({store})",
                    f"{r['aggregate_mib_s']:.1f}", f"{solo:.1f} one upload alone" if solo else "-",
                    ratio(r["aggregate_mib_s"], solo), f"{r['ok']}/{total} stored",
                    met(r["ok"] == total)))
        out.append((f"upload MiB/s per upload, median (min-max) ({store})",
                    f"{per['median']:.2f} ({per['min']:.2f}-{per['max']:.2f})",
                    "-", "-", "-", "-"))
        same = sum(v["same"] for v in r["verified"])
        out.append((f"downloaded back, identical by sha256 ({store})",
                    f"{same}/{len(r['verified'])}", "-", "-", "all",
                    met(same == len(r["verified"]) > 0)))
        o = r["others"]
        base, up = o["baseline"], o["uploads"]
        for what, label in (("accepted", "send -> accepted"), ("terminal", "send -> completed")):
            for q in ("p50", "p99"):
                a, b = up[f"{what}_{q}_ms"], base[f"{what}_{q}_ms"]
                each = "/".join(f"{o[w][f'{what}_{q}_ms']:.1f}" for w in ("before", "after"))
                out.append((f"others' {q} {label}, during uploads ({store})",
                            f"{a:.1f} ms" if a is not None else "-",
                            f"{b:.1f} ms no uploads ({each})" if b is not None else "-",
                            ratio(a, b), "-", "-"))
        out.append((f"others' messages (errors), during uploads ({store})",
                    f"{up['messages']} ({up['errors']})",
                    f"{base['messages']} ({base['errors']}) no uploads", "-", "no errors",
                    met(up["errors"] == base["errors"] == 0)))
        cb, cu = r["store_commits"]["baseline"], r["store_commits"]["uploads"]
        if cu["mean_ms"] is not None and cb["mean_ms"] is not None:
            rate = lambda c, p: c["transactions"] / p["seconds"]  # noqa: E731
            out.append((f"store commit mean ms (transactions/s, > 100 ms), during uploads "
                        f"({store})",
                        f"{cu['mean_ms']:.1f} ({rate(cu, up):.0f}/s, {cu['over_100ms']})",
                        f"{cb['mean_ms']:.1f} ({rate(cb, o['before']):.0f}/s, "
                        f"{cb['over_100ms']}) no uploads, before",
                        ratio(cu["mean_ms"], cb["mean_ms"]), "-", "-"))
        m = r["memory_mib"]
        bound = n * GROWTH_PER_UPLOAD / MiB
        out.append((f"server peak memory MiB during uploads ({store})", f"{m['peak']:.1f}",
                    f"{m['rss_before']:.1f} before", ratio(m["peak"], m["rss_before"]),
                    f"growth {m['growth']:.1f} < {bound:.0f}", met(m["growth"] < bound)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.attachments",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--uploads", type=int, default=20, help="concurrent uploads, a user each")
    p.add_argument("--rounds", type=int, default=3,
                   help="files each uploading user sends one after the other (so --uploads "
                   "are in flight throughout)")
    p.add_argument("--mib", type=int, default=20, help="MiB per upload (at most 20)")
    p.add_argument("--users", type=int, default=50, help="other users conversing meanwhile")
    p.add_argument("--interval", type=float, default=0.5,
                   help="seconds between two messages of one other user")
    p.add_argument("--baseline", type=float, default=10.0,
                   help="seconds the others are timed with no upload")
    p.add_argument("--verify", type=int, default=3, help="uploads downloaded back and compared")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds for the uploads, and for any one message")
    p.add_argument("--stores", default="sqlite", help="sqlite, postgresql, comma-separated")
    args = p.parse_args(argv)
    if not (1 <= args.uploads <= 50 and 1 <= args.rounds <= 10 and 1 <= args.mib <= 20
            and 1 <= args.users <= 500 and args.interval > 0 and 0 < args.baseline <= 300
            and 0 < args.timeout <= 600):
        p.error("at most 50 uploads of 20 MiB, 10 rounds, 500 users, 300 s of baseline, "
                "600 s of timeout")
    raise_fd_limit()
    results = run(args)
    print(table(rows(results)))
    progress(f"results in {write_results('attachments', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
