"""``threadline`` options that work: --version, --help, --agent from the current directory,
``token``'s lifetime, and the auth flags reaching the server. Real subprocesses, loopback."""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from threadline.cli import SERVE_OPTIONS
from tests.servers import ROOT, SECRET, ServeProcess, http_get
from threadline.transport.auth import mint
from threadline.transport.client import HandshakeRejected, connect, open_client

THREADLINE = Path(sys.executable).parent / "threadline"  # the installed script


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    return subprocess.run([sys.executable, "-m", "threadline", *args], cwd=ROOT,
                          env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=60)


def test_version_is_the_installed_distributions():
    out = cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"threadline {importlib.metadata.version('threadline')}"


def test_serve_help_shows_every_flags_default_and_variable():
    out = cli("serve", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines anywhere
    starts = [text.index(f" {o.flag} ", text.index("options:")) for o in SERVE_OPTIONS]
    assert starts == sorted(starts)
    for option, start, end in zip(SERVE_OPTIONS, starts, starts[1:] + [len(text)]):
        entry = text[start:end]
        assert "(default: " in entry and f"env THREADLINE_{option.env}" in entry, entry
    assert "(default: 8765; env THREADLINE_PORT)" in text
    assert "(default: info; env THREADLINE_LOG)" in text


def test_help_never_shows_a_secret_from_the_environment():
    out = cli("serve", "--help", env={"THREADLINE_SECRET": SECRET,
                                      "THREADLINE_METRICS_TOKEN": "metrics-token-value"})
    assert SECRET not in out.stdout and "metrics-token-value" not in out.stdout


def claims_of(token: str) -> dict:
    return jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})


def test_a_token_lasts_a_day_unless_told():
    before = time.time()
    out = cli("token", "ada", "--secret", SECRET)
    after = time.time()
    claims = claims_of(out.stdout.strip())
    assert claims["sub"] == "ada" and claims["exp"] - claims["iat"] == 86400
    assert int(before) + 86400 <= claims["exp"] <= after + 86400
    claims = claims_of(cli("token", "ada", "--secret", SECRET, "--ttl", "60").stdout.strip())
    assert claims["exp"] - claims["iat"] == 60
    claims = claims_of(cli("token", "ada", "--secret", SECRET, "--no-expiry").stdout.strip())
    assert "exp" not in claims


async def test_an_agent_module_in_the_current_directory(tmp_path):
    """The installed script does not put the current directory on sys.path (``python -m``
    does): a user's ``mymod.py`` next to them must load all the same."""
    (tmp_path / "mymod.py").write_text(
        "async def agent(run):\n    return 'mymod says ' + run.text\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("THREADLINE_") and k != "PYTHONPATH"}
    proc = subprocess.Popen([str(THREADLINE), "serve", "--port", "0", "--store", "memory",
                             "--agent", "mymod:agent"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env, "THREADLINE_SECRET": SECRET})
    try:
        with trio.fail_after(30):
            line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.startswith("ready: "), proc.stderr.read() if proc.poll() is not None else line
        async with open_client(line.removeprefix("ready: ").strip(), mint("ada", SECRET)) as c:
            await c.join("main")
            await c.send("main", "hi")
            async for event in c.events():
                if event["event"] == "agent_completed":
                    assert event["data"] == {"text": "mymod says hi"}
                    break
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await trio.to_thread.run_sync(proc.wait) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_the_auth_flags_reach_the_server(tmp_path):
    """--jwt-public-key alone: ES256 tokens, no HS256 and no demo token; --allow-origin;
    --metrics-token and --metrics-address."""
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    server = ServeProcess("--store", "memory", "--jwt-public-key", str(tmp_path / "key.pem"),
                          "--allow-origin", "https://app.example.com",
                          "--metrics-token", "metrics-token-0123456789",
                          "--metrics-address", "127.0.0.1:0", secret=None)
    try:
        url = await server.ready()
        main = SimpleNamespace(port=int(re.search(r":(\d+)/", url)[1]))
        with trio.fail_after(30):  # the metrics listener's port, from its log line
            for _ in range(100):
                line = await trio.to_thread.run_sync(server.proc.stderr.readline)
                if found := re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", line):
                    break
        metrics = SimpleNamespace(port=int(found[1]))
        es256 = jwt.encode({"sub": "ada", "exp": time.time() + 60}, key, algorithm="ES256")
        async with open_client(url, es256) as client:
            await client.ping()
        with pytest.raises(HandshakeRejected) as info:
            await connect(url, mint("ada", SECRET))
        assert (info.value.status, info.value.body) == (401, "algorithm HS256 not accepted")
        ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": f"Bearer {es256}"}
        status, _, _ = await http_get(main, "/v1/ws", {**ws, "Origin": "http://localhost"})
        assert status == 403
        status, _, _ = await http_get(main, "/v1/ws", {**ws, "Origin": "https://app.example.com"})
        assert status == 101
        assert (await http_get(main, "/metrics"))[0] == 404  # not on the main port
        assert (await http_get(metrics, "/metrics"))[0] == 401
        bearer = {"Authorization": "Bearer metrics-token-0123456789"}
        assert (await http_get(metrics, "/metrics", bearer))[0] == 200
        server.signal(signal.SIGINT)
        assert await server.wait() == 0
        assert "demo token" not in server.proc.stdout.read()  # no secret made: public keys
        assert "metrics-token-0123456789" not in server.proc.stderr.read()
    finally:
        server.kill()
