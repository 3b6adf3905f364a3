"""The conversation tree over the HTTP API (HTTP.md; PROTOCOL.md 1.1), real loopback sockets
with an h11 client, on the memory store and on SQLite: ``parent`` on ``POST .../messages``, the
regenerate route, the turns route (its pages and every tree field), their 404s and 400s, and
``title`` in ``GET /v1/threads``."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.servers import http, serving, token
from tests.transport.test_http_api import until_terminal
from tests.transport.test_http_head import ask
from threadline.stores import open_journal

ADA, BOB = token("ada"), token("bob")
TURN_FIELDS = {"run_id", "message_id", "parent", "seq", "message_seq", "text", "answer",
               "outcome", "sibling_index", "sibling_count", "answer_index", "answer_count"}


@pytest.fixture(params=["memory", "sqlite"])
async def tree_server(request, tmp_path):
    url = "memory" if request.param == "memory" else f"sqlite:///{tmp_path}/tree.db"
    async with open_journal(url) as journal, serving(journal=journal) as server:
        yield server


async def post(server, text: str, tok: str = ADA, thread_id: str = "main",
               **fields: Any) -> dict[str, Any]:
    """A message, answered 200; its ``accepted`` once its run has ended."""
    status, _, acc = await http(server, "POST", f"/v1/threads/{thread_id}/messages", tok=tok,
                                body={"text": text, **fields})
    assert status == 200, acc
    await until_terminal(server, tok, thread_id, acc["run_id"])
    return acc


def regenerate_path(message_id: str, thread_id: str = "main") -> str:
    return f"/v1/threads/{thread_id}/messages/{message_id}/regenerate"


async def regenerate(server, message_id: str, body: Any = None, tok: str = ADA,
                     thread_id: str = "main") -> tuple[int, dict[str, Any]]:
    status, _, answer = await http(server, "POST", regenerate_path(message_id, thread_id),
                                   tok=tok, body=body)
    return status, answer


async def events(server, tok: str = ADA, thread_id: str = "main") -> list[dict[str, Any]]:
    status, _, page = await http(server, "GET", f"/v1/threads/{thread_id}/events?limit=1000",
                                 tok=tok)
    assert status == 200
    return page["events"]


async def asking(server, run_id: str) -> None:
    """Once ``run_id`` waits for an approval (polled, bounded)."""
    for _ in range(500):
        if any(e["event"] == "approval_requested" and e["run_id"] == run_id
               for e in await events(server)):
            return
        await trio.sleep(0.02)
    raise AssertionError(f"{run_id} never asked")


async def turns(server, query: str = "", tok: str = ADA,
                thread_id: str = "main") -> tuple[int, dict[str, Any]]:
    status, _, page = await http(server, "GET", f"/v1/threads/{thread_id}/turns{query}", tok=tok)
    return status, page


async def test_a_messages_parent_over_http(tree_server):
    with trio.fail_after(60):
        hello = await post(tree_server, "hello")
        world = await post(tree_server, "world")
        edit = await post(tree_server, "earth", parent=hello["run_id"])
        root = await post(tree_server, "again", parent=None)
        after = await post(tree_server, "after")
        parents = {e["run_id"]: e["data"]["parent"] for e in await events(tree_server)
                   if e["event"] == "user_message"}
        assert parents == {hello["run_id"]: None, world["run_id"]: hello["run_id"],
                           edit["run_id"]: hello["run_id"], root["run_id"]: None,
                           after["run_id"]: root["run_id"]}
        bobs = await post(tree_server, "bob's", tok=BOB)
        last_seq = (await events(tree_server))[-1]["seq"]
        for parent, status, code in [
                (5, 400, "bad_frame"), ("", 400, "bad_frame"), ("r" * 129, 400, "bad_frame"),
                ([hello["run_id"]], 400, "bad_frame"), ("run_nope", 404, "not_found"),
                (hello["message_id"], 404, "not_found"), (bobs["run_id"], 404, "not_found")]:
            got, _, error = await http(tree_server, "POST", "/v1/threads/main/messages",
                                       tok=ADA, body={"text": "x", "parent": parent})
            assert (got, error["type"], error["code"]) == (status, "error", code), parent
        assert (await events(tree_server))[-1]["seq"] == last_seq  # nothing was stored


async def test_the_regenerate_route(tree_server):
    with trio.fail_after(60):
        hello = await post(tree_server, "hello ✓")
        status, acc = await regenerate(tree_server, hello["message_id"])  # no body at all
        assert status == 200
        assert acc == {"type": "accepted", "thread_id": "main", "message_id": hello["message_id"],
                       "run_id": acc["run_id"], "seq": hello["seq"] + 4}
        assert acc["run_id"] != hello["run_id"]
        seen = await until_terminal(tree_server, ADA, "main", acc["run_id"])
        mine = [(e["seq"], e["event"], e["data"]) for e in seen if e["run_id"] == acc["run_id"]]
        assert mine[0] == (acc["seq"], "answer_requested", {"message_id": hello["message_id"]})
        assert mine[1][1:] == ("agent_started", {"message_id": hello["message_id"]})
        assert mine[-1][1:] == ("agent_completed", {"text": "hello ✓"})

        status, once = await regenerate(tree_server, hello["message_id"],
                                        {"client_msg_id": "r-1", "strategy": "enqueue"})
        assert status == 200
        status, twice = await regenerate(tree_server, hello["message_id"], {"client_msg_id": "r-1"})
        assert (status, twice) == (200, once)
        seen = await until_terminal(tree_server, ADA, "main", once["run_id"])
        assert [e["event"] for e in seen].count("answer_requested") == 2  # acc's and once's

        # reject while a run waits: busy, and nothing stored
        waiting = (await http(tree_server, "POST", "/v1/threads/main/messages", tok=ADA,
                              body={"text": "/confirm 1+1"}))[2]
        await asking(tree_server, waiting["run_id"])
        last_seq = (await events(tree_server))[-1]["seq"]
        status, error = await regenerate(tree_server, waiting["message_id"],
                                         {"strategy": "reject"})
        assert (status, error["code"]) == (409, "busy")
        status, ok = await regenerate(tree_server, waiting["message_id"],
                                      {"strategy": "interrupt"})
        assert status == 200
        assert ok["seq"] == last_seq + 1
        seen = await until_terminal(tree_server, ADA, "main", waiting["run_id"])
        assert [e["data"] for e in seen if e["run_id"] == waiting["run_id"]][-1] == {
            "reason": "interrupt"}
        await asking(tree_server, ok["run_id"])  # the same /confirm, answered again
        cancel = await http(tree_server, "POST", "/v1/threads/main/cancel", tok=ADA,
                            body={"run_id": ok["run_id"]})
        assert cancel[0] == 200


async def test_the_regenerate_routes_refusals(tree_server):
    with trio.fail_after(60):
        hello = await post(tree_server, "hello")
        bobs = await post(tree_server, "bob's", tok=BOB)
        last_seq = (await events(tree_server))[-1]["seq"]
        for path, body, status, code in [
                (regenerate_path("msg_nope"), None, 404, "not_found"),
                (regenerate_path(hello["run_id"]), None, 404, "not_found"),
                (regenerate_path(bobs["message_id"]), None, 404, "not_found"),
                (regenerate_path(hello["message_id"], "nothing-here"), None, 404, "not_found"),
                (regenerate_path("m" * 129), None, 400, "bad_frame"),
                (regenerate_path(hello["message_id"]), {"strategy": "shove"}, 400, "bad_frame"),
                (regenerate_path(hello["message_id"]), {"client_msg_id": 5}, 400, "bad_frame"),
                (regenerate_path(hello["message_id"]), [1], 400, "bad_frame"),
                (regenerate_path(hello["message_id"]), b"{not json", 400, "bad_frame"),
                ("/v1/threads/main/messages//regenerate", None, 400, "bad_frame"),
                ("/v1/threads/main/messages/x/regenerated", None, 404, "not_found")]:
            got, _, error = await http(tree_server, "POST", path, tok=ADA, body=body)
            assert (got, error["code"]) == (status, code), (path, body, error)
        # the message id of the body never overrides the path's
        got, _, error = await http(tree_server, "POST", regenerate_path("msg_nope"), tok=ADA,
                                   body={"message_id": hello["message_id"]})
        assert (got, error["code"]) == (404, "not_found")
        assert (await events(tree_server))[-1]["seq"] == last_seq  # nothing was stored
        got, _, _ = await http(tree_server, "GET", "/v1/threads/nothing-here", tok=ADA)
        assert got == 404  # and no thread was created
        got, fields, _ = await http(tree_server, "GET", regenerate_path(hello["message_id"]),
                                    tok=ADA)
        assert (got, fields["allow"]) == (405, "POST, OPTIONS")
        got, _, _ = await http(tree_server, "POST", regenerate_path(hello["message_id"]))
        assert got == 401


async def test_the_turns_route_gives_the_tree_in_pages(tree_server):
    with trio.fail_after(60):
        hello = await post(tree_server, "hello")
        world = await post(tree_server, "world")
        earth = await post(tree_server, "earth", parent=hello["run_id"])
        status, again = await regenerate(tree_server, hello["message_id"])
        assert status == 200
        await until_terminal(tree_server, ADA, "main", again["run_id"])

        status, page = await turns(tree_server)
        assert status == 200 and page["type"] == "turns" and page["thread_id"] == "main"
        assert page["next_after"] is None
        assert all(set(t) == TURN_FIELDS for t in page["turns"])
        assert page["turns"] == [
            {"run_id": hello["run_id"], "message_id": hello["message_id"], "parent": None,
             "seq": hello["seq"], "message_seq": hello["seq"], "text": "hello",
             "answer": "hello", "outcome": "completed", "sibling_index": 0,
             "sibling_count": 1, "answer_index": 0, "answer_count": 2},
            {"run_id": world["run_id"], "message_id": world["message_id"],
             "parent": hello["run_id"], "seq": world["seq"], "message_seq": world["seq"],
             "text": "world", "answer": "world", "outcome": "completed", "sibling_index": 0,
             "sibling_count": 2, "answer_index": 0, "answer_count": 1},
            {"run_id": earth["run_id"], "message_id": earth["message_id"],
             "parent": hello["run_id"], "seq": earth["seq"], "message_seq": earth["seq"],
             "text": "earth", "answer": "earth", "outcome": "completed", "sibling_index": 1,
             "sibling_count": 2, "answer_index": 0, "answer_count": 1},
            {"run_id": again["run_id"], "message_id": hello["message_id"], "parent": None,
             "seq": again["seq"], "message_seq": hello["seq"], "text": "hello",
             "answer": "hello", "outcome": "completed", "sibling_index": 0,
             "sibling_count": 1, "answer_index": 1, "answer_count": 2}]
        whole = page["turns"]

        walked, after = [], 0
        for expected_next in (world["seq"], again["seq"], None):
            status, page = await turns(tree_server, f"?after={after}&limit=2")
            assert status == 200 and page["next_after"] == expected_next
            walked += page["turns"]
            after = page["next_after"]
            if after is None:
                break
        assert walked == whole
        status, page = await turns(tree_server, f"?after={hello['seq']}&limit=3")
        assert page == {"type": "turns", "thread_id": "main", "turns": whole[1:],
                        "next_after": again["seq"]}
        status, page = await turns(tree_server, f"?after={again['seq']}")
        assert (status, page["turns"], page["next_after"]) == (200, [], None)


async def test_a_turn_that_waits_or_was_cancelled(tree_server):
    with trio.fail_after(60):
        status, _, waiting = await http(tree_server, "POST", "/v1/threads/main/messages",
                                        tok=ADA, body={"text": "/confirm 2*3"})
        assert status == 200
        await asking(tree_server, waiting["run_id"])
        _, page = await turns(tree_server)
        [turn] = page["turns"]
        assert (turn["run_id"], turn["answer"], turn["outcome"]) == (
            waiting["run_id"], None, None)
        assert (await http(tree_server, "POST", "/v1/threads/main/cancel", tok=ADA))[0] == 200
        await until_terminal(tree_server, ADA, "main", waiting["run_id"])
        _, page = await turns(tree_server)
        assert page["turns"][0]["outcome"] == "cancelled"


async def test_the_turns_routes_refusals(tree_server):
    with trio.fail_after(60):
        await post(tree_server, "hello")
        for path, tok, status, code in [
                ("/v1/threads/nothing-here/turns", ADA, 404, "not_found"),
                ("/v1/threads/main/turns", BOB, 404, "not_found"),  # bob has no "main"
                ("/v1/threads/main/turns?limit=0", ADA, 400, "bad_frame"),
                ("/v1/threads/main/turns?limit=1001", ADA, 400, "bad_frame"),
                ("/v1/threads/main/turns?limit=x", ADA, 400, "bad_frame"),
                ("/v1/threads/main/turns?after=-1", ADA, 400, "bad_frame"),
                ("/v1/threads/main/turns?after=1&after=2", ADA, 400, "bad_frame"),
                ("/v1/threads/a%20b/turns", ADA, 400, "bad_frame")]:
            got, _, error = await http(tree_server, "GET", path, tok=tok)
            assert (got, error["code"]) == (status, code), path
        got, _, _ = await http(tree_server, "GET", "/v1/threads/nothing-here", tok=ADA)
        assert got == 404  # a read never creates a thread
        got, fields, _ = await http(tree_server, "POST", "/v1/threads/main/turns", tok=ADA)
        assert (got, fields["allow"]) == (405, "GET, HEAD, OPTIONS")
        full = await ask(tree_server.port, "GET", "/v1/threads/main/turns", ADA)
        got, fields, body = await ask(tree_server.port, "HEAD", "/v1/threads/main/turns", ADA)
        assert (got, fields) == full[:2] and got == 200
        assert body == b"" and int(fields["content-length"]) == len(full[2]) > 0


async def test_threads_carry_a_title(tree_server):
    with trio.fail_after(60):
        await post(tree_server, "x" * 100, thread_id="long")
        await post(tree_server, "short one", thread_id="short")
        await post(tree_server, "an edit", thread_id="short", parent=None)
        status, _, listed = await http(tree_server, "GET", "/v1/threads", tok=ADA)
        assert status == 200
        assert {t["thread_id"]: t["title"] for t in listed["threads"]} == {
            "long": "x" * 80, "short": "short one"}
