"""Real servers on loopback (port 0), for the transport and end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from threadline import RuntimeConfig, open_runtime
from threadline.actors.messages import TERMINAL_EVENTS
from threadline.server import RunningServer, open_server
from tests.helpers import scripted_agent, test_tools
from threadline.transport.auth import mint
from threadline.transport.limits import Limits

SECRET = "tests-only-secret-0123456789abcdef0123456789"


def token(user: str, **kw: Any) -> str:
    return mint(user, SECRET, **kw)


@asynccontextmanager
async def serving(*, scripted: bool = False, limits: Limits | None = None, journal: Any = None,
                  config: RuntimeConfig | None = None, runtime: dict[str, Any] | None = None,
                  **server_kw: Any) -> AsyncIterator[RunningServer]:
    """A runtime (``runtime``: more of ``open_runtime``'s arguments) and its server on
    loopback."""
    kw: dict[str, Any] = {"agent": scripted_agent, "tools": test_tools()} if scripted else {}
    async with open_runtime(journal=journal, config=config, **kw, **(runtime or {})) as rt:
        async with open_server(rt, port=0, secret=SECRET,
                               limits=limits or Limits(ping_interval=None),
                               **server_kw) as server:
            yield server


async def http_get(server: RunningServer, path: str, headers: dict[str, str] | None = None,
                   port: int | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET over a raw socket: status, headers, body."""
    port = port or server.port
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in header_lines)}
        while len(body) < int(fields.get("content-length", 0)):
            body += await stream.receive_some(65536)
    await stream.aclose()
    return int(status_line.split()[1]), fields, body


# -- `threadline serve` as a subprocess ---------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


class ServeProcess:
    """``python -m threadline serve`` on a free port, with the test secret (``secret=None``:
    none at all, as the README's first command runs it), in ``cwd``."""

    def __init__(self, *args: str, secret: str | None = SECRET, cwd: Path = ROOT,
                 env: dict[str, str] | None = None) -> None:
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")} | extra
        if secret is not None:
            env["THREADLINE_SECRET"] = secret
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "threadline", "serve", "--port", "0", *args], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        self.url = ""

    async def lines(self, count: int) -> list[str]:
        """The next ``count`` lines the server prints on stdout."""
        out = []
        with trio.fail_after(30):
            while len(out) < count:
                line = await trio.to_thread.run_sync(self.proc.stdout.readline)
                assert line, "serve exited early: " + (self.proc.stderr.read()
                                                       if self.proc.poll() is not None else "")
                out.append(line.strip())
        return out

    async def ready(self) -> str:
        (line,) = await self.lines(1)
        assert line.startswith("ready: "), line
        self.url = line.removeprefix("ready: ")
        return self.url

    async def wait(self, timeout: float = 30) -> int:
        with trio.fail_after(timeout):
            return await trio.to_thread.run_sync(self.proc.wait)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def http(server: RunningServer, method: str, path: str, *, tok: str | None = None,
               body: Any = None, headers: dict[str, str] | None = None,
               ) -> tuple[int, dict[str, str], Any]:
    """One HTTP/1.1 request with h11 over a loopback socket: status, headers (lower-case
    names) and the body (parsed when JSON). ``body``: bytes as they are, else JSON (its
    ``Content-Type`` is ``application/json`` unless ``headers`` gives one)."""
    import json

    import h11

    fields = [("Host", f"127.0.0.1:{server.port}")] + list((headers or {}).items())
    if tok is not None:
        fields.append(("Authorization", f"Bearer {tok}"))
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    if body is not None:
        if not any(name.lower() == "content-type" for name, _ in fields):
            fields.append(("Content-Type", "application/json"))
        fields.append(("Content-Length", str(len(data))))
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    out: list[bytes] = []
    with trio.fail_after(30):
        await stream.send_all(conn.send(h11.Request(method=method, target=path, headers=fields)))
        await stream.send_all(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
        response = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                out.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
    await stream.aclose()
    assert response is not None
    answer = {k.decode().lower(): v.decode() for k, v in response.headers}
    raw = b"".join(out)
    parsed = json.loads(raw) if answer.get("content-type") == "application/json" else raw
    return response.status_code, answer, parsed


def port_of(url: str) -> Any:
    """What ``http`` needs of a server (its ``port``), from its ``ws://`` or ``http://`` URL."""
    from types import SimpleNamespace

    return SimpleNamespace(port=int(url.rsplit(":", 1)[1].split("/")[0]))


async def until_run_ends(client: Any, run_id: str, timeout: float = 20) -> list[dict]:
    """The next event frames a bundled client gets, up to and including the terminal event of
    run ``run_id``; at most 100 of them."""
    seen: list[dict] = []
    for _ in range(100):
        seen.append(await client.next_event(timeout=timeout))
        if seen[-1]["event"] in TERMINAL_EVENTS and seen[-1]["run_id"] == run_id:
            return seen
    raise AssertionError(f"{run_id} did not end: {seen}")


async def until_event(client: Any, *names: str, thread: str | None = None,
                      timeout: float = 20) -> list[dict]:
    """The next event frames a bundled client gets (of ``thread`` only, if given), up to and
    including the first whose name is in ``names``; at most 100 of them."""
    seen: list[dict] = []
    for _ in range(100):
        frame = await client.next_event(timeout=timeout)
        if thread is not None and frame["thread_id"] != thread:
            continue
        seen.append(frame)
        if frame["event"] in names:
            return seen
    raise AssertionError(f"no {names} in {seen}")
