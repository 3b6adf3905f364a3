"""Logs an operator can read when the model fails: each expected failure (unreachable, 401, 429,
5xx, a stream cut in the middle) is one warning line naming the run, the user and the thread,
saying what ``agent_failed`` tells the client; a bug in an agent keeps its traceback; the
start-up log names the agent, the model and the endpoint, never the key.

In-process against the real runtime and the scripted model server (``tests/llm_server.py``),
and as ``threadline serve`` subprocesses whose stderr is what is tested."""

from __future__ import annotations

import json
import logging
import re
import signal

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.llm_server import Answer, Ending, Failure, open_llm_server
from tests.runtime.test_openai_agent import agent_runtime, turn
from tests.servers import SECRET, ServeProcess
from threadline import open_runtime
from threadline.agents.openai import OpenAIAgent, OpenAIConfig
from threadline.transport.auth import mint

KEY = "sk-test-secret-of-the-operator-0123456789"
TRACEBACK = "Traceback (most recent call last)"
UNREACHABLE = "the model endpoint could not be reached"
FAILURES = [
    (Failure(401), "the model endpoint answered 401 Unauthorized (the API key was refused)"),
    (Failure(429, retry_after=0.01), "the model endpoint answered 429 Too Many Requests "
                                     "(rate limited)"),
    (Failure(500), "the model endpoint answered 500 Internal Server Error"),
    (Failure(502), "the model endpoint answered 502 Bad Gateway"),
    (Answer(pieces=("half",), ending=Ending.CUT),
     "the connection to the model was lost in the middle of the answer"),
    (Answer(pieces=("half",), ending=Ending.END), "the model's answer was cut off"),
    # Data that is not a chunk: not JSON, JSON but not an object, an object of other shapes.
    *[(Answer(pieces=("x",), raw=(data,)), "the model sent a malformed answer") for data in (
        "not json", "[1, 2]", '{"choices": 5}', '{"choices": [{"delta": "text"}]}',
        '{"choices": [{"delta": {"tool_calls": [{"function": {"name": "f"}}]}}]}')],
]


def about(caplog, run_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if run_id in r.getMessage()]


# -- in-process: the records themselves ---------------------------------------------------------

@pytest.mark.parametrize("failure, message", FAILURES)
async def test_an_expected_model_failure_is_one_warning_without_a_traceback(caplog, failure,
                                                                            message):
    caplog.set_level(logging.DEBUG, "threadline")
    async with open_llm_server() as llm, agent_runtime(llm) as rt:
        llm.script(failure)
        events = await turn(rt, "hi", user="ada", thread="main")
    run_id = events[-1].run_id
    assert events[-1].event == "agent_failed" and events[-1].data["error"] == message
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.name, r.levelname, r.getMessage()) for r in warnings] == [
        ("threadline.agent", "WARNING", f"run {run_id} of ada/main: {message}")]
    assert warnings[0].exc_info is None and warnings[0].exc_text is None
    assert [r for r in about(caplog, run_id) if r.levelno >= logging.INFO] == warnings
    assert "sk-test-secret" not in caplog.text


async def test_an_unreachable_endpoint_is_one_warning_too(caplog):
    caplog.set_level(logging.INFO, "threadline")
    async with open_llm_server() as llm:
        base_url = llm.base_url  # nothing listens there once the block is left
    agent = OpenAIAgent(OpenAIConfig("m", base_url=base_url, api_key=KEY, max_retries=0))
    try:
        async with open_runtime(agent=agent) as rt:
            events = await turn(rt, "hello?", user="bob", thread="t1")
    finally:
        await agent.aclose()
    run_id = events[-1].run_id
    assert events[-1].data["error"] == UNREACHABLE
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in about(caplog, run_id)] == [
        ("WARNING", f"run {run_id} of bob/t1: {UNREACHABLE}", None)]


async def buggy_agent(run) -> str:  # also loaded by `threadline serve --agent` below
    answers = {"hello": "hi"}
    return answers[run.text]  # a bug: any other message is a KeyError


async def test_a_bug_in_an_agent_keeps_its_traceback(caplog):
    caplog.set_level(logging.INFO, "threadline")
    async with open_runtime(agent=buggy_agent) as rt:
        events = await turn(rt, "no boom here")
    run_id = events[-1].run_id
    assert events[-1].data["error"] == "KeyError: 'no boom here'"
    [record] = about(caplog, run_id)
    assert (record.name, record.levelname) == ("threadline.agent", "ERROR")
    assert record.getMessage() == f"run {run_id} of ada/main failed: KeyError: 'no boom here'"
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_describe_names_the_model_and_the_endpoint_never_the_key(monkeypatch):
    agent = OpenAIAgent(OpenAIConfig("gpt-test", base_url="http://user:pw@127.0.0.1:9/v1?k=s",
                                     api_key=KEY))
    assert agent.describe() == "openai, model gpt-test at http://127.0.0.1:9/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://[::1]:8000/v1")
    assert OpenAIAgent(OpenAIConfig("m")).describe() == "openai, model m at http://[::1]:8000/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIAgent(OpenAIConfig("m")).describe() == \
        "openai, model m at https://api.openai.com/v1"


# -- `threadline serve`: what the operator reads ------------------------------------------------

def openai_server(base_url: str) -> ServeProcess:
    return ServeProcess("--store", "memory", "--agent", "openai", "--model", "test-model",
                        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": KEY})


async def failed_turns(url: str, count: int) -> list[dict]:
    """``count`` messages on ada/main, one at a time; the terminal event of each."""
    out = []
    token = mint("ada", SECRET, ttl=600)
    async with open_websocket_url(f"{url}?token={token}") as ws:
        await ws.send_message(json.dumps({"type": "join", "thread_id": "main", "ref": 0}))
        for n in range(count):
            await ws.send_message(json.dumps({"type": "send", "thread_id": "main",
                                              "text": f"message {n}", "ref": n + 1}))
            with trio.fail_after(30):
                while (frame := json.loads(await ws.get_message())).get("event") not in (
                        "agent_failed", "agent_completed"):
                    pass
            out.append(frame)
    return out


async def served(base_url: str, count: int) -> tuple[list[dict], str, str]:
    """``threadline serve --agent openai`` on ``base_url``: ``count`` turns, then SIGINT; the
    terminal events, stdout and stderr."""
    server = openai_server(base_url)
    try:
        frames = await failed_turns(await server.ready(), count)
        out, err = await stopped(server)
    finally:
        server.kill()
    return frames, out, err


async def stopped(server: ServeProcess) -> tuple[str, str]:
    server.signal(signal.SIGINT)
    assert await server.wait() == 0
    return server.proc.stdout.read(), server.proc.stderr.read()


def assert_one_line_each(frames: list[dict], out: str, err: str) -> None:
    for frame in frames:
        assert frame["event"] == "agent_failed"
        run_id, error = frame["run_id"], frame["data"]["error"]
        lines = [line for line in err.splitlines() if run_id in line]
        assert len(lines) == 1, lines
        assert lines[0].endswith(f" WARNING threadline.agent: run {run_id} of ada/main: {error}")
    assert TRACEBACK not in err
    # The SDK's lines (each request, each retry) are for --log debug.
    assert "HTTP Request:" not in err and "Retrying request" not in err, err
    assert KEY not in err and KEY not in out


async def test_serve_logs_each_model_failure_in_one_line():
    async with open_llm_server() as llm:
        # The SDK retries 429 and 5xx twice: three answers each (retry-after: 10 ms).
        llm.script(*[Failure(500, retry_after=0.01)] * 3, *[Failure(429, retry_after=0.01)] * 3,
                   Answer(pieces=("half",), ending=Ending.CUT))
        frames, out, err = await served(llm.base_url, 3)
    assert [frame["data"]["error"] for frame in frames] == [
        "the model endpoint answered 500 Internal Server Error",
        "the model endpoint answered 429 Too Many Requests (rate limited)",
        "the connection to the model was lost in the middle of the answer"]
    assert_one_line_each(frames, out, err)


async def test_serve_logs_an_unreachable_endpoint_in_one_line():
    async with open_llm_server() as llm:
        base_url = llm.base_url  # nothing listens there once the block is left
    frames, out, err = await served(base_url, 1)
    assert frames[0]["data"] == {"error": UNREACHABLE}
    assert_one_line_each(frames, out, err)


async def test_serve_logs_a_bug_in_an_agent_with_its_traceback():
    server = ServeProcess("--store", "memory", "--agent",
                          "tests.runtime.test_model_failures:buggy_agent")
    try:
        [frame] = await failed_turns(await server.ready(), 1)
        _, err = await stopped(server)
    finally:
        server.kill()
    run_id = frame["run_id"]
    assert frame["data"] == {"error": "KeyError: 'message 0'"}
    start = err.index(f" ERROR threadline.agent: run {run_id} of ada/main failed: KeyError")
    assert err.index(TRACEBACK) > start and "in buggy_agent" in err[start:]


async def test_the_start_up_log_names_the_agent_model_and_endpoint_not_the_key():
    # Needs runtime/serving.py to log ``agent.describe()`` (see the report to the lead).
    async with open_llm_server() as llm:
        server = openai_server(llm.base_url)
        try:
            await server.ready()
            out, err = await stopped(server)
        finally:
            server.kill()
    assert re.search(rf" INFO threadline: agent openai, model test-model at "
                     rf"{re.escape(llm.base_url)}$", err, re.MULTILINE), err
    assert KEY not in err and KEY not in out
