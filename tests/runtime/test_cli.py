"""The ``threadline`` command, run for real as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from trio_websocket import open_websocket_url

from tests.servers import ROOT, SECRET, ServeProcess
from threadline.transport.auth import Authenticator, mint
from threadline.transport.client import open_client


def user_of(token: str) -> str:
    return Authenticator(secret=SECRET).verify(token).user_id


def test_token_prints_a_token_for_the_user():
    out = subprocess.run([sys.executable, "-m", "threadline", "token", "ada", "--secret", SECRET,
                          "--ttl", "60"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and user_of(out.stdout.strip()) == "ada"
    env = {**os.environ, "THREADLINE_SECRET": SECRET}
    out = subprocess.run([sys.executable, "-m", "threadline", "token", "bob"], cwd=ROOT,
                         capture_output=True, text=True, env=env)
    assert user_of(out.stdout.strip()) == "bob"
    env.pop("THREADLINE_SECRET")
    out = subprocess.run([sys.executable, "-m", "threadline", "token", "ada"], cwd=ROOT,
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "secret" in out.stderr
    out = subprocess.run([sys.executable, "-m", "threadline", "token", "not ok!",
                          "--secret", SECRET], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "invalid user id" in out.stderr


async def test_sigterm_during_a_run_cancels_it_and_exits_0(tmp_path):
    server = ServeProcess("--agent", "tests.helpers:scripted_agent", "--grace", "0.5",
                          "--store", f"sqlite:///{tmp_path}/t.db")
    try:
        url = await server.ready()
        async with open_client(url, mint("ada", SECRET)) as client:
            await client.join("main")
            acc = await client.send("main", "think:working;sleep:60")
            while (await client.next_event())["event"] != "agent_thinking":
                pass
            server.signal(signal.SIGTERM)
            events = [e async for e in client.events()]
            assert events[-1]["event"] == "agent_cancelled"
            assert events[-1]["data"] == {"reason": "shutdown"}
            assert events[-1]["run_id"] == acc["run_id"]
            assert client.close_code == 1001
        assert await server.wait() == 0
        log = server.proc.stderr.read()
        assert "SIGTERM: shutting down" in log and "stopped" in log
    finally:
        server.kill()


async def test_serve_without_a_secret_prints_a_demo_token_that_works(tmp_path):
    # As the README's first command runs it: no secret, no store (./threadline.db).
    server = ServeProcess(secret=None, cwd=tmp_path)
    try:
        ready, demo, connect = await server.lines(3)
        assert ready.startswith("ready: ws://127.0.0.1:") and "demo token" in demo
        url = connect.removeprefix("connect:").strip()
        async with open_websocket_url(url) as ws:
            await ws.send_message(json.dumps({"type": "join", "thread_id": "main"}))
            assert json.loads(await ws.get_message())["type"] == "joined"
            await ws.send_message(json.dumps({"type": "send", "thread_id": "main", "text": "hi"}))
            frames = [json.loads(await ws.get_message()) for _ in range(5)]
            assert frames[-1]["data"] == {"text": "hi"}
        server.signal(signal.SIGINT)
        assert await server.wait() == 0
        assert (tmp_path / "threadline.db").exists()
    finally:
        server.kill()


def test_a_bad_store_is_a_clear_error():
    out = subprocess.run([sys.executable, "-m", "threadline", "serve", "--store", "mongo://x",
                          "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "unknown store 'mongo://x'" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_agent_spec_is_a_clear_error():
    out = subprocess.run([sys.executable, "-m", "threadline", "serve", "--agent", "nope:thing",
                          "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "cannot load agent 'nope:thing'" in out.stderr
