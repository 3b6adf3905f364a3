"""The JavaScript client (``transport/static/client.js``) under Node against a real server on
loopback: answers laid from ``agent_delta`` by offset in code points, a connection cut in the
middle of an answer (a relay's sockets reset) resumed with ``since`` with no gap and no
duplicate, ``joined`` and the events after it read in one go (the seq counted from never goes
down), a send made while the connection is down, a thread deleted while joined, a thread
deleted and created again while the client was away (reset, joined again from 0), a bad token
reported with the server's reason, the conversation tree (edit, regenerate, branches, paths,
its growth across a reconnect with ``since``, and the server's own ``turns`` of it), tool
approval (``decide`` from one of two clients, the Run's approvals in both, ``unknown_call``
for the second decision, a denial's reason, a waiting run cancelled; a pending
approval rebuilt by the replay after a reconnect, and a ``decide`` lost with its connection not
written again), and ``client.d.ts`` declaring exactly what ``client.js`` exports.

Node is Debian's (``tests/run.sh`` installs it when missing); these tests skip without it
only outside CI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from tests.servers import SECRET, serving, token
from threadline import open_runtime
from threadline.server import open_server

HERE = Path(__file__).resolve().parent
STATIC = HERE.parents[1] / "transport" / "static"
NODE = shutil.which("node")


def websocket_flags() -> list[str] | None:
    """What Node needs for a global WebSocket: nothing (Node 22), --experimental-websocket
    (Node 20.10 and later 20s), or None: it has none (older)."""
    for flags in ([], ["--experimental-websocket"]):
        probe = subprocess.run([NODE, *flags, "-p", "typeof WebSocket"], capture_output=True,
                               text=True, timeout=30)
        if probe.stdout.strip() == "function":
            return flags
    return None


FLAGS = websocket_flags() if NODE else None
if FLAGS is None:
    why = "node is not installed" if NODE is None else "this node has no WebSocket (< 20.10)"
    if os.environ.get("CI"):
        raise RuntimeError(f"{why}, in CI: tests/run.sh installs Node.js")
    pytest.skip(why, allow_module_level=True)


async def scenario(name: str, url: str, user_token: str, *args: str) -> dict:
    result = await trio.run_process(
        [NODE, *FLAGS, str(HERE / "scenarios.mjs"), name, url, user_token, *args],
        capture_stdout=True, capture_stderr=True, check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 0, f"{name} failed:\n{stderr}"
    return json.loads(result.stdout.decode().splitlines()[-1])


def assert_resumed_without_gap(seen: dict, whole: str) -> None:
    assert seen["cuts"] >= 1, "nothing was cut"
    assert "reconnecting" in seen["states"] and seen["states"][-1] == "open"
    # the first connection joined from 0; the next one from the last seq it had seen
    assert seen["joins"][0] == [0] and len(seen["joins"]) >= 2
    assert seen["joins"][1][0] > 0
    assert seen["seqs"] == list(range(1, len(seen["seqs"]) + 1)), "a gap or a duplicate"
    offset = 0
    for piece_offset, length in seen["pieces"]:  # each piece once, laid end to end
        assert piece_offset == offset
        offset += length
    assert seen["assembled"] == whole == seen["completed_text"] == seen["text"]
    assert seen["status"] == "completed" and seen["run"] == seen["accepted_run"]


async def test_an_answer_cut_in_the_middle_resumes_with_since_and_is_whole():
    whole = " ".join(map(str, range(1, 301)))
    async with serving() as server:
        seen = await scenario("stream", server.url, token("ada"), "300")
    assert_resumed_without_gap(seen, whole)
    assert len(seen["pieces"]) > 3  # it was cut in the middle


PIECES = [f"{i}: h\u00e9 \u4e2d\U0001f600\U0001f469\u200d\U0001f4bb " for i in range(30)]


async def writes_astral_pieces(run) -> None:
    """Answers with pieces of 1-, 2-, 3- and 4-byte characters (UTF-16 surrogate pairs in JS)."""
    for piece in PIECES:
        await run.write(piece)
        await trio.sleep(0.02)


async def test_offsets_count_code_points_not_utf16_units():
    async with open_runtime(agent=writes_astral_pieces) as rt:
        async with open_server(rt, port=0, secret=SECRET) as server:
            seen = await scenario("unicode", server.url, token("ada"))
    assert_resumed_without_gap(seen, "".join(PIECES))


async def test_a_send_while_the_connection_is_down_is_written_once_it_is_back():
    async with serving() as server:
        seen = await scenario("sendWhileDown", server.url, token("ada"))
    assert seen["states"].count("open") >= 2
    assert seen["again"]["message_id"] == seen["accepted"]["message_id"]  # client_msg_id
    assert seen["messages"] == ["hello"]


async def test_a_thread_deleted_while_joined_is_dropped_and_not_joined_again():
    async with serving() as server:
        seen = await scenario("deleted", server.url, token("ada"))
    assert seen["status"] in (200, 204)
    assert seen["leftWith"]["reason"] == "deleted" and seen["afterLeft"]
    assert seen["joins"][0] == [0]
    assert seen["joins"][1] == [0]  # after the reconnect: only the new join, from 0
    assert seen["again"]["last_seq"] == 0  # the id is free again, from seq 1


async def test_joined_and_events_in_one_read_never_lower_the_seq_counted_from():
    """The relay hands ``joined``, the replay (seq 1-4) and live events (5-8) over in one write:
    the client counts from 8, so after a cut it joins with since 8 and repeats nothing."""
    async with serving() as server:
        seen = await scenario("batched", server.url, token("ada"))
    assert seen["joinedLastSeq"] == 4
    assert seen["lastSeqAfterJoin"] == 8
    assert seen["seqs"] == list(range(1, 13)), "an event repeated or missed"
    assert seen["joins"][0] == [0] and seen["joins"][1] == [8]
    assert seen["lastSeq"] == 12


async def test_a_thread_replaced_while_away_is_reset_and_joined_again_from_0():
    """Deleted and created again while the client was away (PROTOCOL.md, "join with since"):
    the join with since 8 answers last_seq 4; the client drops its copy, tells the app with
    onreset, joins from 0 and shows only the new thread, from seq 1."""
    async with serving() as server:
        seen = await scenario("replaced", server.url, token("ada"))
    assert seen["status"] in (200, 204)
    assert seen["resets"] == [{"reason": "replaced", "lastSeq": 0, "runs": 0, "messages": 0,
                               "roots": 0, "same": True}]
    reset_at = seen["seen"].index("reset")
    assert reset_at == 8 and [e[0] for e in seen["seen"][:8]] == list(range(1, 9))
    after = seen["seen"][reset_at + 1:]
    assert [e[0] for e in after] == list(range(1, 9)), "the new thread's events, once each"
    assert [e[2] for e in after if e[1] == "user_message"] == ["new one", "new two"]
    assert seen["joins"][0] == [0] and seen["joins"][-1] == [8, 0]
    assert seen["lastSeq"] == 8
    assert seen["runs"] == [["new one", "completed", "new one"], ["new two", "completed", "new two"]]
    assert seen["tree"] == ["new one", "new two"] and seen["roots"] == ["new one"]  # the old gone


async def test_a_thread_replaced_by_a_longer_one_while_away_is_reset_too():
    """The new thread has more events (12) than the client had seen (8) when it comes back:
    only ``joined.created_at`` tells it apart; the old client code went on from seq 9."""
    async with serving() as server:
        seen = await scenario("replacedLonger", server.url, token("ada"))
    assert seen["resets"] == [{"reason": "replaced", "lastSeq": 0, "runs": 0, "messages": 0,
                               "roots": 0, "same": True}]
    reset_at = seen["seen"].index("reset")
    assert reset_at == 8
    assert seen["tree"] == ["new one", "new two", "new three", "new four"]
    after = seen["seen"][reset_at + 1:]
    assert [e[0] for e in after] == list(range(1, 17)), "the new thread's events, once each"
    assert [e[2] for e in after if e[1] == "user_message"] == [
        "new one", "new two", "new three", "new four"]
    assert seen["joins"][-1] == [8, 0]


async def test_an_apps_kept_copy_of_a_thread_made_again_is_reset_at_the_first_join():
    """From a red-team read: a page that restores ``since`` from storage could not tell a
    thread made again, longer, from its own; with the ``createdAt`` it kept it can."""
    async with serving() as server:
        seen = await scenario("restoredCopy", server.url, token("ada"))
    assert isinstance(seen["createdAt"], float)
    assert seen["resets"] == ["replaced"] and seen["joins"] == [[8, 0]]
    assert seen["seen"] == list(range(1, 13))


async def test_an_apps_since_beyond_the_servers_thread_is_reset_too():
    async with serving() as server:
        seen = await scenario("sinceAhead", server.url, token("ada"))
    assert seen["resets"] == [{"reason": "replaced", "lastSeq": 0}]
    assert seen["joins"] == [[5, 0]]
    assert seen["joined"]["last_seq"] == 0 and seen["lastSeq"] == 0


async def test_a_bad_token_is_reported_with_the_servers_reason():
    async with serving() as server:
        seen = await scenario("unauthorized", server.url, token("ada", ttl=-60))
    assert seen["state"] == "closed" and seen["states"][-1] == "closed"
    (error,) = seen["errors"]
    assert error["code"] == "unauthorized" and "expired" in error["message"]
    assert seen["joinError"] == error


async def test_a_tool_call_approved_in_one_client_is_decided_in_both_and_answers_42():
    """Two clients on one thread (PROTOCOL.md 1.1): both hold the echo agent's ``/confirm 6*7``
    approval pending; ``decide`` from one answers ``ok`` {thread_id, run_id, call_id}; both see
    it approved and the answer 42; the other's ``decide`` is then ``unknown_call``. A denial's
    reason is the answer, and the denied call's tool entry has the approval's args. A waiting
    run cancelled leaves its approval "ended" (no decision needed; a decide is unknown_call)."""
    async with serving() as server:
        seen = await scenario("approval", server.url, token("ada"))
    run_id = seen["accepted"]["run_id"]
    asked = seen["asked"]["a"]
    call_id = asked["callId"]
    assert asked == {"runId": run_id, "callId": call_id, "tool": "calculator",
                     "args": {"expression": "6*7"}, "expiresAt": None, "status": "pending",
                     "pending": True, "approved": None, "reason": None}
    assert seen["asked"]["b"] == asked
    assert seen["runWhileWaiting"] == "running"
    assert seen["notBoolean"]["name"] == "TypeError"
    assert seen["approved"] == {"type": "ok", "thread_id": "main", "run_id": run_id,
                                "call_id": call_id, "ref": seen["approved"]["ref"]}
    assert seen["tooLate"]["code"] == "unknown_call" and seen["tooLate"]["name"] == "ThreadlineError"
    for tab in ("a", "b"):
        assert seen["decided"][tab] == {**asked, "status": "approved", "pending": False,
                                        "approved": True}
        assert seen["answers"][tab] == ["completed", "42"]
    assert seen["eventsA"] == seen["eventsB"] == [
        "user_message", "agent_started", "agent_thinking", "approval_requested",
        "approval_decided", "tool_executing", "tool_completed", "agent_completed"]
    assert seen["tools"] == [{"callId": call_id, "tool": "calculator",
                              "args": {"expression": "6*7"}, "result": 42, "done": True}]
    assert seen["pendingAfter"] == [0, 0]
    # the approval, the denial, the decide after the cancel: the TypeError wrote nothing
    frame, deny, _ = seen["decideFrames"]
    assert frame == {"type": "decide", "thread_id": "main", "run_id": run_id,
                     "call_id": call_id, "approved": True, "ref": frame["ref"]}
    assert deny["thread_id"] == "deny" and deny["approved"] is False
    assert deny["reason"] == "not today"

    assert seen["denied"]["type"] == "ok"
    assert seen["deniedApproval"]["status"] == "denied"
    assert seen["deniedApproval"]["approved"] is False
    assert seen["deniedApproval"]["reason"] == "not today"
    assert seen["deniedAnswer"] == ["completed", "denied: not today"]
    (tool,) = seen["deniedTools"]
    assert tool["error"] == "denied: not today" and tool["args"] == {"expression": "6*7"}
    assert "result" not in tool and tool["done"] is True

    cancelled = seen["cancelled"]  # a waiting run cancelled: its approval waits no more
    assert cancelled["status"] == "cancelled" and cancelled["pending"] == 0
    assert cancelled["approval"]["status"] == "ended" and cancelled["approval"]["approved"] is None
    assert cancelled["decide"]["code"] == "unknown_call"


async def test_a_pending_approval_is_rebuilt_after_a_reconnect_and_a_lost_decide_is_not_repeated():
    """Asked while the client was away: its join with since replays ``approval_requested`` and
    the approval is pending again. Its ``decide`` is stored but the answer is lost with the
    connection: it rejects "disconnected", is written once in all, and the replay after the
    reconnect shows it approved and the answer 42."""
    async with serving() as server:
        seen = await scenario("approvalReconnect", server.url, token("ada"))
    assert seen["pendingWhileAway"] == 0
    rebuilt = seen["rebuilt"]
    assert rebuilt["runId"] == seen["runId"] and rebuilt["status"] == "pending"
    assert rebuilt["tool"] == "calculator" and rebuilt["args"] == {"expression": "6*7"}
    joins = [j for j in seen["joins"] if j]  # attempts the relay refused wrote nothing
    assert joins[0] == [0] and joins[1] == [4]  # the rebuild came from the replay after seq 4
    assert seen["lost"]["code"] == "disconnected"
    assert seen["decideFrames"] == 1, "a decide that may have been stored was written again"
    assert len(joins) == 3 and joins[2][0] > 4  # joined again after the cut, from what it had
    assert seen["approval"]["status"] == "approved" and seen["approval"]["approved"] is True
    assert seen["answer"] == ["completed", "42"] and seen["writerAnswer"] == "42"
    assert seen["pendingAfter"] == 0


def frame_keys(frames: list[dict]) -> list[tuple[str, ...]]:
    return [tuple(sorted(f)) for f in frames]


async def test_the_tree_is_built_from_the_events_with_edits_regenerates_and_roots():
    """PROTOCOL.md 1.1, "The conversation tree": one (root "one") -> two, and its edit "two b"
    (a sibling: same parent); "two b" answered twice (a regenerate); "three" under the first
    answer of "two b"; a second root. The client's tree, its default branch (to the newest
    run), branches chosen at forks, a path to a leaf, sibling lists; the frames it wrote."""
    async with serving() as server:
        seen = await scenario("tree", server.url, token("ada"))
    acc = seen["accepted"]
    one, two, two_b, again, three, root = (acc[k] for k in ("one", "two", "twoB", "again",
                                                              "three", "root"))
    assert acc["againRetry"] == {**again, "ref": acc["againRetry"]["ref"]}  # client_msg_id
    assert again["message_id"] == two_b["message_id"] and again["run_id"] != two_b["run_id"]
    tree = seen["tree"]
    assert seen["same"] is True
    messages = {m["id"]: m for m in tree["messages"]}
    runs = {r["id"]: r for r in tree["runs"]}
    assert [m["text"] for m in tree["messages"]] == ["one", "two", "two b", "three", "root two"]
    assert tree["roots"] == [one["message_id"], root["message_id"]]
    assert messages[one["message_id"]]["parent"] is None
    assert messages[two["message_id"]]["parent"] == one["run_id"]  # the server's default parent
    assert messages[two_b["message_id"]]["parent"] == one["run_id"]
    assert messages[three["message_id"]]["parent"] == two_b["run_id"]
    assert messages[root["message_id"]]["parent"] is None
    for a in (one, two, two_b, three, root):  # each message's seq is its accepted's
        assert messages[a["message_id"]]["seq"] == a["seq"]
        assert messages[a["message_id"]]["runId"] == a["run_id"] == runs[a["run_id"]]["id"]
    assert messages[two_b["message_id"]]["answers"] == [two_b["run_id"], again["run_id"]]
    assert seen["answers"] == seen["answerSiblings"] == [two_b["run_id"], again["run_id"]]
    assert seen["children"] == seen["siblings"] == [two["message_id"], two_b["message_id"]]
    assert runs[one["run_id"]]["children"] == [two["message_id"], two_b["message_id"]]
    assert runs[two_b["run_id"]]["children"] == [three["message_id"]]
    assert runs[again["run_id"]]["children"] == []
    # the regenerated run: asked by answer_requested (its seq is the accepted's), answers "two b"
    assert runs[again["run_id"]] == {
        "id": again["run_id"], "messageId": two_b["message_id"], "seq": again["seq"],
        "status": "completed", "text": "two b", "message": "two b", "children": [],
        "newest": again["run_id"]}
    (asked,) = seen["eventsAsked"]  # the retry stored nothing more
    assert asked["seq"] == again["seq"] and asked["run_id"] == again["run_id"]
    assert asked["data"]["message_id"] == two_b["message_id"]
    assert asked["data"].get("client_msg_id") == "again-1"
    assert seen["startedOfAgain"] == {"message_id": two_b["message_id"]}
    assert [m.get("parent", "absent") for m in seen["userMessages"]] == [
        None, one["run_id"], one["run_id"], two_b["run_id"], None]
    assert seen["seqs"] == list(range(1, len(seen["seqs"]) + 1))
    # newest: the run of the latest accepted; each node's newest is the newest run below it
    assert tree["newest"] == root["run_id"]
    assert messages[one["message_id"]]["newest"] == three["run_id"]
    assert messages[two_b["message_id"]]["newest"] == three["run_id"]
    assert messages[two["message_id"]]["newest"] == two["run_id"]
    assert runs[one["run_id"]]["newest"] == three["run_id"]

    assert seen["branchDefault"] == [["root two", root["run_id"], "2/2", "1/1"]]
    assert seen["branchUnknownChoice"] == seen["branchDefault"]
    path_three = [["one", one["run_id"], "1/2", "1/1"], ["two b", two_b["run_id"], "2/2", "1/2"],
                  ["three", three["run_id"], "1/1", "1/1"]]
    assert seen["branchOne"] == path_three  # below the fork chosen: toward the newest run
    assert seen["pathThree"] == path_three
    assert seen["branchOneAgain"] == [["one", one["run_id"], "1/2", "1/1"],
                                      ["two b", again["run_id"], "2/2", "2/2"]]
    assert seen["branchTwo"] == [["one", one["run_id"], "1/2", "1/1"],
                                 ["two", two["run_id"], "1/2", "1/1"]]
    assert seen["pathUnknown"] == []

    assert seen["notFound"]["code"] == "not_found" and seen["notFound"]["name"] == "ThreadlineError"
    assert seen["badParent"]["code"] == "not_found"
    frames = seen["frames"]
    # a send without parent writes no parent (a 1.0 frame); parent null is written as null
    assert frame_keys(frames[:2]) == [("client_msg_id", "ref", "text", "thread_id", "type")] * 2
    assert frames[2]["parent"] == one["run_id"]
    regenerates = [f for f in frames if f["type"] == "regenerate"]
    assert regenerates[0] == {"type": "regenerate", "thread_id": "t",
                              "message_id": two_b["message_id"], "client_msg_id": "again-1",
                              "ref": regenerates[0]["ref"]}
    assert any(f["type"] == "send" and f["text"] == "root two" and f["parent"] is None
               for f in frames)


async def test_the_tree_goes_on_growing_across_a_reconnect_with_since():
    """Away (the relay refuses) while another client edits, regenerates and follows up, and
    with a regenerate of its own waiting for the connection: joined again with since 8, the
    client's tree ends equal to the writer's and to one built from 0, each event once."""
    async with serving() as server:
        seen = await scenario("treeResume", server.url, token("ada"))
    ids = seen["ids"]
    assert [m["text"] for m in seen["before"]["messages"]] == ["first", "second"]
    assert seen["resets"] == []
    joins = [j for j in seen["joins"] if j]
    assert joins[0] == [0] and joins[1] == [8], "joined again from what it had"
    assert seen["seqs"] == list(range(1, seen["lastSeq"] + 1)), "a gap or a duplicate"
    assert seen["regenerateFrames"] == 1
    assert seen["resumed"] == seen["writer"] == seen["fresh"]
    tree = seen["resumed"]
    messages = {m["id"]: m for m in tree["messages"]}
    assert [m["text"] for m in tree["messages"]] == [
        "first", "second", "second, edited", "after the edit"]
    assert messages[ids["edit"]["message_id"]]["parent"] == ids["first"]["run_id"]
    assert messages[ids["first"]["message_id"]]["answers"] == [ids["first"]["run_id"],
                                                              ids["regen"]["run_id"]]
    assert messages[ids["second"]["message_id"]]["answers"] == [ids["second"]["run_id"],
                                                               ids["mine"]["run_id"]]
    assert tree["newest"] == ids["mine"]["run_id"]
    assert seen["branch"] == [["first", ids["first"]["run_id"], "1/1", "1/2"],
                              ["second", ids["mine"]["run_id"], "1/2", "2/2"]]
    assert all(run["status"] == "completed" for run in tree["runs"])


async def test_the_clients_tree_is_the_servers_turns():
    """The same tree read two ways: the client's, from the events, and the server's
    ``GET /v1/threads/{id}/turns`` (HTTP.md): every run's message, parent and positions."""
    async with serving() as server:
        seen = await scenario("treeVersusTurns", server.url, token("ada"))
    served = seen["served"]
    assert served["type"] == "turns" and served["next_after"] is None
    assert len(seen["mine"]) == 7
    assert served["turns"] == seen["mine"]


def exported(source: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, source, re.MULTILINE))


def test_the_type_declarations_name_exactly_what_the_module_exports():
    js = (STATIC / "client.js").read_text()
    dts = (STATIC / "client.d.ts").read_text()
    in_js = exported(js, r"^export (?:async )?(?:function|class|const) (\w+)")
    in_dts = exported(dts, r"^export declare (?:function|class|const) (\w+)")
    assert in_js == in_dts
    result = subprocess.run(
        [NODE, "--input-type=module", "-e",
         f"const m = await import({json.dumps((STATIC / 'client.js').as_uri())});"
         "console.log(JSON.stringify(Object.keys(m)))"],
        capture_output=True, text=True, timeout=30, check=True)
    assert set(json.loads(result.stdout)) == in_js


def test_a_copy_joined_with_since_places_runs_it_saw_only_start_before_those_it_saw_asked():
    """A client that joined with ``since`` sees some runs only by their ``agent_started`` (they
    were asked before ``since``): those were asked before every run it saw asked, so they come
    first among a message's answers and are never its newest run (the red-team's case: R1 was
    asked at seq 5, R2 at 6, and a copy from ``since: 5`` saw R2 asked and R1 only start)."""
    script = """
const { Thread } = await import(%s);
const ev = (seq, event, run_id, data) => ({type: "event", thread_id: "t", seq, event, run_id,
                                           ts: 0, data});
const all = [
  ev(1, "user_message", "A", {message_id: "M", text: "q", parent: null}),
  ev(2, "agent_started", "A", {message_id: "M"}), ev(3, "agent_completed", "A", {text: "a"}),
  ev(4, "user_message", "B", {message_id: "N", text: "n", parent: "A"}),
  ev(5, "answer_requested", "R1", {message_id: "M"}),
  ev(6, "answer_requested", "R2", {message_id: "M"}),
  ev(7, "agent_started", "B", {message_id: "N"}), ev(8, "agent_completed", "B", {text: "x"}),
  ev(9, "agent_started", "R1", {message_id: "M"}),
];
const out = {};
for (const since of [0, 5]) {
  const t = new Thread("t", since, () => {}, () => {}, () => {});
  t.lastSeq = since;
  for (const f of all) if (f.seq > since) t.take(f);
  out[since] = {newest: t.tree.newest.id, answers: t.tree.answers("M").map((r) => r.id)};
}
console.log(JSON.stringify(out));
""" % json.dumps((STATIC / "client.js").as_uri())
    result = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True,
                            text=True, timeout=30, check=True)
    assert json.loads(result.stdout) == {
        "0": {"newest": "R2", "answers": ["A", "R1", "R2"]},
        "5": {"newest": "R2", "answers": ["R1", "R2"]}}
