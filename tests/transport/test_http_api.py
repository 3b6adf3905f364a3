"""The HTTP API (transport/HTTP.md), every route and every error status, over real loopback
sockets with an h11 client (tests/servers.http)."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.servers import SECRET, http, serving, token
from tests.transport.wire import raw_http, status_of
from threadline.transport.auth import mint
from threadline.transport.limits import Limits

ADA, BOB = token("ada"), token("bob")


async def until_terminal(server, tok, thread_id, run_id):
    """The thread's events once ``run_id`` has its terminal event (polled, bounded)."""
    for _ in range(200):
        status, _, page = await http(server, "GET", f"/v1/threads/{thread_id}/events?limit=1000",
                                     tok=tok)
        assert status == 200
        names = [(e["event"], e["run_id"]) for e in page["events"]]
        if any(n in ("agent_completed", "agent_failed", "agent_cancelled") and r == run_id
               for n, r in names):
            return page["events"]
        await trio.sleep(0.02)
    raise AssertionError("the run did not end")


async def test_a_message_history_info_and_list(server):
    status, _, acc = await http(server, "POST", "/v1/threads/main/messages", tok=ADA,
                                body={"text": "hello"})
    assert status == 200 and acc["type"] == "accepted" and acc["thread_id"] == "main"
    assert acc["seq"] == 1 and acc["run_id"].startswith("run")
    events = await until_terminal(server, ADA, "main", acc["run_id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0] == {**events[0], "type": "event", "thread_id": "main",
                         "event": "user_message", "run_id": acc["run_id"]}
    assert events[-1]["event"] == "agent_completed" and events[-1]["data"] == {"text": "hello"}
    status, _, info = await http(server, "GET", "/v1/threads/main", tok=ADA)
    assert status == 200 and info["type"] == "thread" and info["last_seq"] == len(events)
    assert info["thread_id"] == "main" and info["created_at"] <= info["updated_at"]
    status, _, listed = await http(server, "GET", "/v1/threads", tok=ADA)
    assert status == 200 and listed["next_cursor"] is None
    assert [t["thread_id"] for t in listed["threads"]] == ["main"]


async def test_events_are_paged_by_seq(server):
    _, _, acc = await http(server, "POST", "/v1/threads/t/messages", tok=ADA, body={"text": "x"})
    events = await until_terminal(server, ADA, "t", acc["run_id"])
    seqs, after = [], 0
    for _ in range(20):
        status, _, page = await http(server, "GET", f"/v1/threads/t/events?after={after}&limit=2",
                                     tok=ADA)
        assert status == 200 and len(page["events"]) <= 2
        seqs += [e["seq"] for e in page["events"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seqs == [e["seq"] for e in events]


async def test_thread_lists_are_paged_newest_first(server):
    for name in ("a", "b", "c"):
        assert (await http(server, "POST", f"/v1/threads/{name}/messages", tok=ADA,
                           body={"text": name}))[0] == 200
        await trio.sleep(0.01)
    _, _, first = await http(server, "GET", "/v1/threads?limit=2", tok=ADA)
    assert len(first["threads"]) == 2 and first["next_cursor"]
    _, _, second = await http(server, "GET", f"/v1/threads?limit=2&before={first['next_cursor']}",
                              tok=ADA)
    assert second["next_cursor"] is None
    names = [t["thread_id"] for t in first["threads"] + second["threads"]]
    assert sorted(names) == ["a", "b", "c"] and len(set(names)) == 3
    status, _, error = await http(server, "GET", "/v1/threads?before=nonsense", tok=ADA)
    assert status == 400 and error["code"] == "bad_frame"


async def test_a_post_is_idempotent_by_client_msg_id(server):
    body = {"text": "once", "client_msg_id": "c-1"}
    _, _, first = await http(server, "POST", "/v1/threads/main/messages", tok=ADA, body=body)
    _, _, again = await http(server, "POST", "/v1/threads/main/messages", tok=ADA, body=body)
    assert first == again
    events = await until_terminal(server, ADA, "main", first["run_id"])
    assert [e["event"] for e in events].count("user_message") == 1


async def test_busy_cancel_and_unknown_run(scripted_server):
    server = scripted_server
    _, _, acc = await http(server, "POST", "/v1/threads/main/messages", tok=ADA,
                           body={"text": "sleep:30"})
    status, _, busy = await http(server, "POST", "/v1/threads/main/messages", tok=ADA,
                                 body={"text": "no", "strategy": "reject"})
    assert (status, busy["code"]) == (409, "busy") and busy["type"] == "error"
    status, _, ok = await http(server, "POST", "/v1/threads/main/cancel", tok=ADA)
    assert status == 200 and ok == {"type": "ok", "thread_id": "main", "run_id": acc["run_id"]}
    events = await until_terminal(server, ADA, "main", acc["run_id"])
    assert events[-1]["event"] == "agent_cancelled"
    status, _, error = await http(server, "POST", "/v1/threads/main/cancel", tok=ADA,
                                  body={"run_id": acc["run_id"]})
    assert (status, error["code"]) == (404, "unknown_run")


async def test_user_a_never_reaches_user_bs_thread_of_the_same_name(scripted_server):
    server = scripted_server
    _, _, acc = await http(server, "POST", "/v1/threads/main/messages", tok=BOB,
                           body={"text": "sleep:30"})
    for method, path in [("GET", "/v1/threads/main"), ("GET", "/v1/threads/main/events"),
                         ("POST", "/v1/threads/main/cancel"), ("DELETE", "/v1/threads/main")]:
        status, _, error = await http(server, method, path, tok=ADA)
        assert (status, error["code"]) == (404, "not_found"), (method, path)
    assert (await http(server, "GET", "/v1/threads", tok=ADA))[2]["threads"] == []
    _, _, mine = await http(server, "POST", "/v1/threads/main/messages", tok=ADA,
                            body={"text": "mine"})
    assert mine["seq"] == 1  # ada's own thread, unrelated to bob's
    _, _, bobs = await http(server, "GET", "/v1/threads/main/events", tok=BOB)
    assert [e["data"].get("text") for e in bobs["events"][:1]] == ["sleep:30"]
    assert all(e["run_id"] == acc["run_id"] for e in bobs["events"])


async def test_delete_then_the_id_starts_again_from_seq_1(server):
    _, _, acc = await http(server, "POST", "/v1/threads/main/messages", tok=ADA,
                           body={"text": "old", "client_msg_id": "c"})
    await until_terminal(server, ADA, "main", acc["run_id"])
    await http(server, "POST", "/v1/threads/main/messages", tok=BOB, body={"text": "bob's"})
    status, _, ok = await http(server, "DELETE", "/v1/threads/main", tok=ADA)
    assert status == 200 and ok == {"type": "ok", "thread_id": "main"}
    assert (await http(server, "GET", "/v1/threads/main", tok=ADA))[0] == 404
    assert (await http(server, "DELETE", "/v1/threads/main", tok=ADA))[0] == 404
    assert (await http(server, "GET", "/v1/threads", tok=ADA))[2]["threads"] == []
    _, _, again = await http(server, "POST", "/v1/threads/main/messages", tok=ADA,
                             body={"text": "new", "client_msg_id": "c"})
    assert again["seq"] == 1 and again["run_id"] != acc["run_id"]  # client ids erased too
    events = await until_terminal(server, ADA, "main", again["run_id"])
    assert events[0]["data"]["text"] == "new"
    status, _, bobs = await http(server, "GET", "/v1/threads/main", tok=BOB)
    assert status == 200 and bobs["last_seq"] >= 1  # bob's same-named thread is untouched


async def test_delete_while_joined_and_running_sends_left(scripted_server):
    server = scripted_server
    async with open_websocket_url(f"{server.url}?token={ADA}") as ws:
        await ws.send_message(json.dumps({"type": "join", "thread_id": "main", "ref": 1}))
        assert json.loads(await ws.get_message())["type"] == "joined"
        await ws.send_message(json.dumps({"type": "send", "thread_id": "main",
                                          "text": "sleep:30", "ref": 2}))
        frames = []
        with trio.fail_after(10):
            while not any(f.get("event") == "agent_started" for f in frames):
                frames.append(json.loads(await ws.get_message()))
            status, _, _ = await http(server, "DELETE", "/v1/threads/main", tok=ADA)
            assert status == 200
            while frames[-1]["type"] != "left":
                frames.append(json.loads(await ws.get_message()))
        assert frames[-1] == {"type": "left", "thread_id": "main", "reason": "deleted"}
        cancelled = [f for f in frames if f.get("event") == "agent_cancelled"]
        assert [f["data"] for f in cancelled] in ([], [{"reason": "deleted"}])
        # the connection stays, and the thread is no longer joined on it
        await ws.send_message(json.dumps({"type": "send", "thread_id": "main", "text": "x",
                                          "ref": 3}))
        assert json.loads(await ws.get_message())["code"] == "not_joined"
    assert (await http(server, "GET", "/v1/threads/main", tok=ADA))[0] == 404


async def test_auth_check(server):
    status, _, ok = await http(server, "GET", "/v1/auth/check", tok=ADA)
    assert (status, ok) == (200, {"type": "ok", "user_id": "ada"})
    status, _, ok = await http(server, "GET", f"/v1/auth/check?token={BOB}")
    assert (status, ok) == (200, {"type": "ok", "user_id": "bob"})
    cases = [(None, "missing token"), ("garbage", "malformed token"),
             (mint("ada", "another-secret-0123456789abcdef0123456789"), "invalid token signature"),
             (mint("ada", SECRET, ttl=-3600), "token expired")]
    for tok, reason in cases:
        path = "/v1/auth/check" + (f"?token={tok}" if tok else "")
        status, headers, error = await http(server, "GET", path)
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert error == {"type": "error", "code": "unauthorized", "message": reason}
        assert tok is None or tok not in json.dumps(error)


async def test_the_api_needs_the_header_token(server):
    status, _, error = await http(server, "GET", f"/v1/threads?token={ADA}")
    assert (status, error["code"], error["message"]) == (401, "unauthorized", "missing token")
    status, _, error = await http(server, "GET", "/v1/threads", tok="x.y.z")
    assert (status, error["code"]) == (401, "unauthorized")


@pytest.mark.parametrize("method, path, body, status, code", [
    ("POST", "/v1/threads/main/messages", b"not json", 400, "bad_frame"),
    ("POST", "/v1/threads/main/messages", [1], 400, "bad_frame"),
    ("POST", "/v1/threads/main/messages", {"text": 5}, 400, "bad_frame"),
    ("POST", "/v1/threads/main/messages", {"text": "x", "strategy": "no"}, 400, "bad_frame"),
    ("POST", "/v1/threads/main/messages", b'{"text": "\\ud800"}', 400, "bad_frame"),
    ("GET", "/v1/threads/bad%20id", None, 400, "bad_frame"),
    ("GET", "/v1/threads/main/events?after=-1", None, 400, "bad_frame"),
    ("GET", "/v1/threads/main/events?limit=1001", None, 400, "bad_frame"),
    ("GET", "/v1/threads?limit=0", None, 400, "bad_frame"),
    ("GET", "/v1/threads?limit=1&limit=2", None, 400, "bad_frame"),
    ("GET", "/v1/threads/nothing", None, 404, "not_found"),
    ("GET", "/v1/threads/nothing/events", None, 404, "not_found"),
    ("GET", "/v1/nowhere", None, 404, "not_found"),
    ("PUT", "/v1/threads/main", None, 405, "method_not_allowed"),
    ("GET", "/v1/threads/main/messages", None, 405, "method_not_allowed"),
    ("POST", "/v1/auth/check", None, 405, "method_not_allowed"),
])
async def test_error_statuses(server, method, path, body, status, code):
    got, headers, error = await http(server, method, path, tok=ADA, body=body)
    assert (got, error["type"], error["code"]) == (status, "error", code), error
    if status == 405:
        assert headers["allow"]


async def test_a_body_over_the_frame_limit_is_413():
    async with serving(limits=Limits(ping_interval=None, max_frame_bytes=1000)) as server:
        status, _, error = await http(server, "POST", "/v1/threads/main/messages", tok=ADA,
                                      body={"text": "x" * 2000})
        assert (status, error["code"]) == (413, "too_large")
        status, _, _ = await http(server, "POST", "/v1/threads/main/messages", tok=ADA,
                                  body={"text": "x" * 500})
        assert status == 200


async def test_the_send_rate_of_a_user_applies_to_posts():
    async with serving(limits=Limits(ping_interval=None, user_send_rate=0.001,
                                     user_send_burst=2)) as server:
        statuses = []
        for i in range(3):
            status, _, answer = await http(server, "POST", "/v1/threads/main/messages",
                                           tok=ADA, body={"text": str(i)})
            statuses.append((status, answer.get("code")))
        assert statuses == [(200, None), (200, None), (429, "rate_limited")]


async def test_the_thread_quota_applies_to_posts_and_a_delete_frees_it():
    async with serving(limits=Limits(ping_interval=None, user_threads=1)) as server:
        assert (await http(server, "POST", "/v1/threads/a/messages", tok=ADA,
                           body={"text": "1"}))[0] == 200
        status, _, error = await http(server, "POST", "/v1/threads/b/messages", tok=ADA,
                                      body={"text": "2"})
        assert (status, error["code"]) == (429, "limit_reached")
        assert (await http(server, "DELETE", "/v1/threads/a", tok=ADA))[0] == 200
        assert (await http(server, "POST", "/v1/threads/b/messages", tok=ADA,
                           body={"text": "3"}))[0] == 200


async def test_a_slow_request_is_cut_off():
    async with serving(limits=Limits(ping_interval=None, handshake_timeout=0.5)) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"GET /v1/threads HTTP/1.1\r\nHost: x\r\n")  # never ends
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""  # dropped, unanswered
        await stream.aclose()
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(f"POST /v1/threads/main/messages HTTP/1.1\r\nHost: x\r\n"
                              f"Authorization: Bearer {ADA}\r\nContent-Length: 100\r\n\r\n"
                              "{".encode())  # the body never comes
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
        await stream.aclose()
        assert status_of(data) == 408 and b'"code":"timeout"' in data


async def test_a_malformed_request_is_400_and_an_oversized_head_431(server):
    answer = await raw_http(server.port, b"GET /v1/threads HTTP/1.1\r\nno colon here\r\n\r\n")
    assert status_of(answer) == 400
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert status_of(await raw_http(server.port, huge)) == 431
    assert (await http(server, "GET", "/healthz"))[0] == 200


async def test_static_files_and_the_demo_page(server):
    status, headers, body = await http(server, "GET", "/v1/client.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and body
    assert (await http(server, "GET", "/v1/client.d.ts"))[0] == 200
    assert (await http(server, "GET", "/"))[0] == 404
    assert (await http(server, "POST", "/v1/client.js"))[0] == 405
    async with serving(demo=True) as demo:
        status, headers, body = await http(demo, "GET", "/")
        assert status == 200 and headers["content-type"].startswith("text/html") and body


async def test_subprotocols_offered_and_the_websocket_path_only_takes_get(server):
    from tests.servers import http_get
    from tests.transport.test_http import UPGRADE

    path = f"/v1/ws?token={ADA}"
    status, headers, _ = await http_get(server, path, {**UPGRADE,
                                                       "Sec-WebSocket-Protocol": "foo"})
    assert status == 101 and "sec-websocket-protocol" not in headers  # JSON, no header
    status, headers, _ = await http_get(server, path, {
        **UPGRADE, "Sec-WebSocket-Protocol": "foo, threadline.v1.msgpack"})
    assert status == 101 and headers["sec-websocket-protocol"] == "threadline.v1.msgpack"
    assert (await http(server, "POST", "/v1/ws", tok=ADA))[0] == 405
