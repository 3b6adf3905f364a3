"""``POST /v1/threads/{thread_id}/runs/{run_id}/approvals/{call_id}`` (HTTP.md), over real
loopback sockets: approve and deny a run of the echo agent's ``/confirm``, the second decision
``unknown_call``, a thread that does not exist (or is another user's) ``not_found``, bad bodies
and paths, and the API's usual rules (401, 405 and HEAD, the CORS preflight)."""

from __future__ import annotations

import trio

from tests.servers import SECRET, http, serving, token
from tests.transport.test_http_api import until_terminal
from tests.transport.test_http_cors import APP, ask, cors_of
from threadline.transport.auth import Authenticator

ADA, BOB = token("ada"), token("bob")


async def waiting(server, text: str = "/confirm 6*7", thread_id: str = "main",
                  tok: str = ADA) -> tuple[str, str]:
    """Post ``text``; the run id and the call id once its approval is asked (polled, bounded)."""
    status, _, acc = await http(server, "POST", f"/v1/threads/{thread_id}/messages", tok=tok,
                                body={"text": text})
    assert status == 200
    for _ in range(200):
        _, _, page = await http(server, "GET", f"/v1/threads/{thread_id}/events", tok=tok)
        asked = [e for e in page["events"] if e["event"] == "approval_requested"]
        if asked:
            assert asked[0]["run_id"] == acc["run_id"]
            return acc["run_id"], asked[0]["data"]["call_id"]
        await trio.sleep(0.02)
    raise AssertionError("no approval_requested")


def approvals(run_id: str, call_id: str, thread_id: str = "main") -> str:
    return f"/v1/threads/{thread_id}/runs/{run_id}/approvals/{call_id}"


async def test_approved_over_http_the_run_completes_and_a_second_decision_is_unknown(server):
    run_id, call_id = await waiting(server)
    status, fields, ok = await http(server, "POST", approvals(run_id, call_id), tok=ADA,
                                    body={"approved": True})
    assert status == 200 and fields["content-type"] == "application/json"
    assert ok == {"type": "ok", "thread_id": "main", "run_id": run_id, "call_id": call_id}
    events = await until_terminal(server, ADA, "main", run_id)
    assert [(e["event"], e["data"]) for e in events[-4:]] == [
        ("approval_decided", {"call_id": call_id, "approved": True}),
        ("tool_executing", {"call_id": call_id, "tool": "calculator",
                            "args": {"expression": "6*7"}}),
        ("tool_completed", {"call_id": call_id, "tool": "calculator", "result": 42}),
        ("agent_completed", {"text": "42"})]
    status, _, error = await http(server, "POST", approvals(run_id, call_id), tok=ADA,
                                  body={"approved": False})
    assert (status, error["type"], error["code"]) == (404, "error", "unknown_call")
    _, _, after = await http(server, "GET", "/v1/threads/main", tok=ADA)
    assert after["last_seq"] == events[-1]["seq"]  # the refused decision stored nothing


async def test_denied_over_http_with_a_reason(server):
    run_id, call_id = await waiting(server)
    status, _, ok = await http(server, "POST", approvals(run_id, call_id), tok=ADA,
                               body={"approved": False, "reason": "ask me tomorrow"})
    assert status == 200 and ok["type"] == "ok"
    events = await until_terminal(server, ADA, "main", run_id)
    assert [(e["event"], e["data"]) for e in events[-3:]] == [
        ("approval_decided", {"call_id": call_id, "approved": False,
                              "reason": "ask me tomorrow"}),
        ("tool_completed", {"call_id": call_id, "tool": "calculator",
                            "error": "denied: ask me tomorrow"}),
        ("agent_completed", {"text": "denied: ask me tomorrow"})]
    assert "tool_executing" not in [e["event"] for e in events]


async def test_unknown_threads_calls_and_other_users(server):
    run_id, call_id = await waiting(server)
    for path, tok, code in [
            (approvals(run_id, call_id, "nothing-here"), ADA, "not_found"),
            (approvals(run_id, call_id), BOB, "not_found"),          # bob has no "main"
            (approvals(run_id, "call_nope"), ADA, "unknown_call"),
            (approvals("run_nope", call_id), ADA, "unknown_call")]:
        status, _, error = await http(server, "POST", path, tok=tok, body={"approved": True})
        assert (status, error["code"]) == (404, code), path
    assert (await http(server, "GET", "/v1/threads/nothing-here", tok=ADA))[0] == 404  # not made
    await waiting(server, "/confirm 1+1", tok=BOB)  # bob's own "main", waiting too
    status, _, error = await http(server, "POST", approvals(run_id, call_id), tok=BOB,
                                  body={"approved": True})
    assert (status, error["code"]) == (404, "unknown_call")  # ada's call is not in bob's thread
    status, _, ok = await http(server, "POST", approvals(run_id, call_id), tok=ADA,
                               body={"approved": True})  # still waiting, for ada
    assert status == 200
    assert (await until_terminal(server, ADA, "main", run_id))[-1]["data"] == {"text": "42"}


async def test_bad_bodies_and_paths_are_400_and_decide_nothing(server):
    run_id, call_id = await waiting(server)
    path = approvals(run_id, call_id)
    for body in [None, b"", b"not json", b"[true]", {"approved": "yes"}, {"approved": 1},
                 {"reason": "no"}, {"approved": False, "reason": "x" * 1025},
                 {"approved": False, "reason": 5}, b'{"approved": false, "reason": "\\u0000"}']:
        status, _, error = await http(server, "POST", path, tok=ADA, body=body)
        assert (status, error["code"]) == (400, "bad_frame"), body
    for bad in [approvals("r" * 257, call_id), approvals(run_id, "%ff"),
                approvals(run_id, "c%00"), approvals(run_id, call_id, "a%20b")]:
        status, _, error = await http(server, "POST", bad, tok=ADA, body={"approved": True})
        assert (status, error["code"]) == (400, "bad_frame"), bad
    for nowhere in [f"/v1/threads/main/runs/{run_id}/approvals",
                    f"/v1/threads/main/runs/{run_id}/approvals/{call_id}/more",
                    f"/v1/threads/main/runs/{run_id}/approve/{call_id}"]:
        status, _, error = await http(server, "POST", nowhere, tok=ADA, body={"approved": True})
        assert (status, error["code"]) == (404, "not_found"), nowhere
    # The body's own run_id or call_id never overrides the path's.
    status, _, ok = await http(server, "POST", path, tok=ADA,
                               body={"approved": True, "run_id": "x", "call_id": "y"})
    assert status == 200 and (ok["run_id"], ok["call_id"]) == (run_id, call_id)
    events = await until_terminal(server, ADA, "main", run_id)
    assert [e["data"] for e in events if e["event"] == "approval_decided"] == [
        {"call_id": call_id, "approved": True}]


async def test_the_apis_rules_token_methods_head_and_preflight():
    async with serving(auth=Authenticator(secret=SECRET, allowed_origins=[APP])) as server:
        run_id, call_id = await waiting(server)
        path = approvals(run_id, call_id)
        status, fields, error = await http(server, "POST", path, body={"approved": True})
        assert (status, error["code"]) == (401, "unauthorized")
        assert fields["www-authenticate"] == "Bearer"
        for method in ("GET", "HEAD", "PUT", "DELETE"):
            status, fields, body = await ask(server.port, method, path, APP, tok=ADA)
            assert (status, fields["allow"]) == (405, "POST, OPTIONS"), method
            assert fields["access-control-allow-origin"] == APP
            assert (body == b"") == (method == "HEAD")
        status, fields, body = await ask(
            server.port, "OPTIONS", path, APP,
            more="Access-Control-Request-Method: POST\r\n")  # no token needed
        assert (status, body, fields["allow"]) == (204, b"", "POST, OPTIONS")
        assert cors_of(fields)["access-control-allow-methods"] == "POST"
        status, fields, body = await ask(server.port, "POST", path, APP, tok=ADA,
                                         body=b'{"approved": true}')
        assert status == 200 and fields["access-control-allow-origin"] == APP
        assert (await until_terminal(server, ADA, "main", run_id))[-1]["data"] == {"text": "42"}
