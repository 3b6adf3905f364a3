"""No log line carries a token or a password, at any level, in either format: ``threadline serve
--log debug`` as a subprocess, spoken to over loopback; and ``threadline.logs`` in-process."""

from __future__ import annotations

import io
import json
import logging
import signal
from types import SimpleNamespace

import jwt
import pytest
from trio_websocket import open_websocket_url

from threadline.logs import setup_logging
from tests.servers import SECRET, ServeProcess, http_get
from threadline.transport.auth import mint
from threadline.transport.client import HandshakeRejected, connect, open_client

METRICS_TOKEN = "metrics-token-0123456789abcdef"


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_no_token_or_secret_in_debug_logs(fmt):
    server = ServeProcess("--store", "memory", "--log", "debug", "--log-format", fmt,
                          "--metrics-token", METRICS_TOKEN)
    query, bearer = mint("ada", SECRET, ttl=600), mint("bob", SECRET, ttl=600)
    stranger = jwt.encode({"sub": "eve"}, "another-issuers-secret-0123456789abcdef",
                          algorithm="HS256")
    try:
        url = await server.ready()
        async with open_websocket_url(f"{url}?token={query}") as ws:  # the browser form
            await ws.send_message(json.dumps({"type": "ping"}))
            await ws.get_message()
        async with open_client(url, bearer) as client:  # Authorization: Bearer
            await client.ping()
        with pytest.raises(HandshakeRejected):
            await connect(url, stranger)
        main = SimpleNamespace(port=int(url.rsplit(":", 1)[1].split("/")[0]))
        scrape = await http_get(main, "/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scrape[0] == 200
        server.signal(signal.SIGINT)
        assert await server.wait() == 0
        out, err = server.proc.stdout.read(), server.proc.stderr.read()
    finally:
        server.kill()
    # The request line and the headers were logged (so the test saw them), masked.
    assert "?token=*** HTTP/1.1" in err and "Authorization: Bearer ***" in err
    for secret in (query, bearer, stranger, SECRET, METRICS_TOKEN):
        for part in (secret, *secret.split(".")[1:]):  # a JWT's claims or signature alone too
            assert part not in err and part not in out, part
    if fmt == "json":
        for line in err.splitlines():
            record = json.loads(line)
            assert {"ts", "level", "logger", "message"} <= record.keys(), line
        assert any(json.loads(line)["logger"] == "threadline.wire" for line in err.splitlines())


def logged(level: int, message: str, *args: object, fmt: str = "text",
           secrets: tuple[str, ...] = (), **kw: object) -> str:
    stream = io.StringIO()
    setup_logging("debug", fmt, secrets=secrets, stream=stream)
    try:
        logging.getLogger("threadline.test").log(level, message, *args, **kw)
    finally:
        setup_logging("warning", stream=io.StringIO())
    return stream.getvalue()


JWT = mint("ada", SECRET)


@pytest.mark.parametrize("message, args, kept, gone", [
    ("< GET %s HTTP/1.1", (f"/v1/ws?x=1&token={JWT}",), "/v1/ws?x=1&token=***", JWT),
    ("< %s: %s", ("Authorization", f"Bearer {JWT}"), "Authorization: Bearer ***", JWT),
    ("< %s: %s", ("authorization", "Bearer opaque-value-1"), "Bearer ***", "opaque-value-1"),
    ("< %s: %s", ("Cookie", "session=abc123def456"), "Cookie: ***", "abc123def456"),
    ("store %s", ("postgresql://ada:hunter2pw@db:5432/t",), "ada:***@db", "hunter2pw"),
    ("dsn %s", ("host=db password=hunter2pw dbname=t",), "password=***", "hunter2pw"),
    ("token in a sentence: %s", (JWT,), "token in a sentence: ***", JWT.split(".")[1]),
    ("listening on %s", ("ws://127.0.0.1:8765/v1/ws",), "ws://127.0.0.1:8765/v1/ws", "***"),
])
def test_redaction_patterns(message, args, kept, gone):
    line = logged(logging.INFO, message, *args)
    assert kept in line and gone not in line, line


def test_known_secrets_tracebacks_and_extras_are_masked():
    secret = "a-secret-that-looks-like-nothing-special"
    try:
        raise ValueError(f"bad {secret}")
    except ValueError as exc:
        line = logged(logging.ERROR, "failed", exc_info=exc, secrets=(secret,),
                      extra={"peer": f"token={secret}", "detail": {"key": secret}}, fmt="json")
    record = json.loads(line)
    assert secret not in line and "ValueError: bad ***" in record["exc"]
    assert record["peer"] == "token=***" and record["logger"] == "threadline.test"


@pytest.mark.parametrize("level", ["info", "debug"])
def test_the_model_sdks_routine_lines_are_shown_from_debug_only(level):
    stream = io.StringIO()
    setup_logging(level, stream=stream)
    try:
        for name in ("openai._base_client", "httpx", "httpx2", "threadline.wire"):
            logging.getLogger(name).info("routine line of %s", name)
            logging.getLogger(name).warning("warning of %s", name)
        logging.getLogger("threadline.agent").info("our own line")
    finally:
        setup_logging("warning", stream=io.StringIO())
    text = stream.getvalue()
    for name in ("openai._base_client", "httpx", "httpx2", "threadline.wire"):
        assert f"warning of {name}" in text
        assert (f"routine line of {name}" in text) == (level == "debug"), text
    assert "our own line" in text
