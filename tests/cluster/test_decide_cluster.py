"""A decision (PROTOCOL.md 1.1, ``decide``) reaches the thread's owner from any node.

Without sockets: the peer protocol's ``Decide`` request and the ``unknown_call`` failure cross
the wire exactly, and a decision is never asked twice after a lost link. Then two embedded
nodes on the real PostgreSQL, each with its server: a run waits on its owner (the echo agent's
``/confirm 6*7``), is decided through the other node (WebSocket, bundled client) and completes
with 42; a second decision through either node is ``unknown_call``; a second run is denied over
the other node's HTTP API."""

from __future__ import annotations

from contextlib import AsyncExitStack

import msgpack
import pytest
import trio

from tests.servers import until_event
from tests.cluster.test_embedded_node import balanced, config
from tests.servers import SECRET, http, token
from threadline.actors.errors import UnknownCall
from threadline.actors.messages import Decide as DecideRequest
from threadline.actors.messages import ThreadKey
from threadline.actors.reply import Reply
from threadline.cluster import open_cluster_runtime
from threadline.cluster.router import _repeatable
from threadline.cluster.wire import (Call, Decide, FrameDecoder, WireError, call_of, encode,
                                     error_of, failure_of, make_of)
from threadline.server import open_server
from threadline.transport.client import ServerError, open_client

KEY = ThreadKey("ada", "t-1")
TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


# -- the wire, without sockets -------------------------------------------------------------------

@pytest.mark.parametrize("msg, wanted", [
    (DecideRequest("run_1", "call_1", True, None, Reply()), Decide("run_1", "call_1", True, None)),
    (DecideRequest("run_1", "call_2", False, "not now ✓", Reply()),
     Decide("run_1", "call_2", False, "not now ✓")),
    (DecideRequest("r", "c", False, "", Reply()), Decide("r", "c", False, "")),
])
def test_a_decision_crosses_and_is_rebuilt_with_the_far_sides_reply(msg, wanted):
    call = call_of(3, KEY, msg)
    assert call == Call(3, KEY.user_id, KEY.thread_id, wanted)
    [received] = FrameDecoder().feed(encode(call))
    assert received == call and type(received.request.approved) is bool
    key, make = make_of(received)
    reply = Reply()
    rebuilt = make(reply)
    assert key == KEY and type(rebuilt) is DecideRequest and rebuilt.reply is reply
    assert (rebuilt.run_id, rebuilt.call_id, rebuilt.approved, rebuilt.reason) == \
        (msg.run_id, msg.call_id, msg.approved, msg.reason)


@pytest.mark.parametrize("fields", [
    ["r", "c", 1, None],          # an int is not a bool
    ["r", "c", "true", None],
    ["r", "c", True, 5],
    ["r", None, True, None],
    ["r", "c", True],             # a field missing
    ["r", "c", True, None, "x"],  # one too many
])
def test_a_decision_of_the_wrong_shape_is_a_wire_error(fields):
    body = msgpack.packb(["call", 1, "ada", "t-1", ["decide", *fields]])
    with pytest.raises(WireError):
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)


def test_a_reason_over_1_kib_is_bad_input_for_that_call_only():
    [call] = FrameDecoder().feed(encode(Call(1, "ada", "t-1", Decide("r", "c", False,
                                                                      "é" * 513))))
    with pytest.raises(ValueError, match="1024"):
        make_of(call)


def test_unknown_call_comes_back_as_itself():
    [failure] = FrameDecoder().feed(encode(failure_of(8, UnknownCall("no call c waits"))))
    assert failure.code == "unknown_call"
    error = error_of(failure)
    assert type(error) is UnknownCall and str(error) == "no call c waits"


def test_a_decision_is_never_asked_twice_after_a_lost_link():
    assert not _repeatable(lambda r: DecideRequest("r", "c", True, None, r))


# -- two nodes -----------------------------------------------------------------------------------

def owned_by(node, user: str) -> str:
    for i in range(10_000):
        if node.node.table.is_local(ThreadKey(user, f"t{i}")):
            return f"t{i}"
    raise AssertionError("the node owns no shard")




async def test_a_run_waiting_on_its_owner_is_decided_through_the_other_node(pg_dsn):
    ada = token("ada")
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            nodes, servers = [], []
            for name in ("a", "b"):  # the echo agent, which has /confirm
                node = await stack.enter_async_context(open_cluster_runtime(config(pg_dsn, name)))
                nodes.append(node)
                servers.append(await stack.enter_async_context(open_server(
                    node.runtime, port=0, secret=SECRET)))
            a, b = nodes
            server_a, server_b = servers
            await balanced([a, b])
            thread_id = owned_by(b, "ada")
            owner = await stack.enter_async_context(open_client(server_b.url, ada))
            other = await stack.enter_async_context(open_client(server_a.url, ada))
            await owner.join(thread_id)
            await other.join(thread_id)
            accepted = await owner.send(thread_id, "/confirm 6*7")
            asked = (await until_event(owner, "approval_requested"))[-1]
            assert asked == (await until_event(other, "approval_requested"))[-1]
            run_id, call_id = accepted["run_id"], asked["data"]["call_id"]
            forwarded = a.node.statistics().forwarded

            ok = await other.decide(thread_id, run_id, call_id, True)  # through A, owned by B
            assert {k: ok[k] for k in ("type", "thread_id", "run_id", "call_id")} == {
                "type": "ok", "thread_id": thread_id, "run_id": run_id, "call_id": call_id}
            assert a.node.statistics().forwarded > forwarded
            end = await until_event(owner, *TERMINAL)
            assert end == await until_event(other, *TERMINAL)  # A's feed: the same events
            assert [(f["event"], f["data"]) for f in end] == [
                ("approval_decided", {"call_id": call_id, "approved": True}),
                ("tool_executing", {"call_id": call_id, "tool": "calculator",
                                    "args": {"expression": "6*7"}}),
                ("tool_completed", {"call_id": call_id, "tool": "calculator", "result": 42}),
                ("agent_completed", {"text": "42"})]

            # A second decision, through either node and either door: unknown_call.
            for client in (other, owner):
                with pytest.raises(ServerError) as late:
                    await client.decide(thread_id, run_id, call_id, False)
                assert late.value.code == "unknown_call"
            path = f"/v1/threads/{thread_id}/runs/{run_id}/approvals/{call_id}"
            for server in (server_a, server_b):
                status, _, error = await http(server, "POST", path, tok=ada,
                                              body={"approved": True})
                assert (status, error["code"]) == (404, "unknown_call")
            with pytest.raises(UnknownCall):  # in process, through A's router
                await a.runtime.thread("ada", thread_id).decide(run_id, call_id, True)

            # A second run, denied over A's HTTP API.
            again = await owner.send(thread_id, "/confirm 2+2")
            call_id = (await until_event(owner, "approval_requested"))[-1]["data"]["call_id"]
            path = f"/v1/threads/{thread_id}/runs/{again['run_id']}/approvals/{call_id}"
            status, _, ok = await http(server_a, "POST", path, tok=ada,
                                       body={"approved": False, "reason": "no"})
            assert status == 200 and ok["call_id"] == call_id
            end = await until_event(owner, *TERMINAL)
            assert [(f["event"], f["data"]) for f in end] == [
                ("approval_decided", {"call_id": call_id, "approved": False, "reason": "no"}),
                ("tool_completed", {"call_id": call_id, "tool": "calculator",
                                    "error": "denied: no"}),
                ("agent_completed", {"text": "denied: no"})]
            assert a.runtime.statistics().activations == 0  # A never held the thread
