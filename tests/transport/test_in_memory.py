"""The whole WebSocket session without a socket: the server's per-connection handler and the
client's handshake over ``trio.testing.lockstep_stream_pair`` (no buffer: a
write waits for the peer to read, as on a socket whose buffers are full). The I/O is one adapter
(``WebSocketConnection``); everything else (handshake routing, the connection state, lanes,
outbox, replay) runs the same over an in-memory stream, in virtual time."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from tests.servers import SECRET
from tests.transport.wire import frames_until
from threadline import open_runtime
from threadline.transport.auth import Authenticator, mint
from threadline.transport.client_connect import handshake
from threadline.transport.client_errors import HandshakeRejected
from threadline.transport.connection import WebSocketConnection
from threadline.transport.limits import Limits
from threadline.transport.messages import CLOSE_NORMAL, CLOSE_TRY_AGAIN
from threadline.transport.server import Server

URL = "ws://in-memory/v1/ws"
# A short outgoing queue, so a stalled reader overflows it; no keepalive, whose pings to a
# client that is not reading would otherwise close it first (1011) in virtual time.
LIMITS = Limits(outgoing_queue=20, ping_interval=None)


async def send(conn: WebSocketConnection, frame: dict) -> None:
    conn.protocol.send_text(json.dumps(frame).encode())
    await conn.flush()


@pytest.fixture
async def connect(nursery):
    """``connect(user)``: a handshaken client connection to a server that has no listener."""
    async with open_runtime() as rt:
        server = Server(rt.gateway, auth=Authenticator(secret=SECRET), limits=LIMITS)

        async def connect(user: str | None) -> WebSocketConnection:
            client_end, server_end = trio.testing.lockstep_stream_pair()
            nursery.start_soon(server.handle, server_end)
            return await handshake(client_end, URL, mint(user, SECRET) if user else None)

        connect.server = server  # type: ignore[attr-defined]
        yield connect
        await server.close_sessions(1.0)


async def test_a_conversation_resume_and_a_normal_close(connect, autojump_clock):
    conn = await connect("ada")
    await send(conn, {"type": "join", "thread_id": "main", "ref": 1})
    await send(conn, {"type": "send", "thread_id": "main", "text": "/calc 6*7", "ref": 2})
    got = await frames_until(conn, lambda f: f.get("event") == "agent_completed")
    created_at = got[0].pop("created_at")  # this thread's (PROTOCOL.md's decisions)
    assert got[0] == {"type": "joined", "thread_id": "main", "ref": 1, "last_seq": 0}
    assert isinstance(created_at, float)
    assert got[-1]["data"] == {"text": "42"} and got[-1]["seq"] == 6
    await conn.close(CLOSE_NORMAL, "", 5.0)
    # A second connection resumes after seq 2 and gets exactly the rest, in order.
    again = await connect("ada")
    await send(again, {"type": "join", "thread_id": "main", "since": 2, "ref": 1})
    replayed = await frames_until(again, lambda f: f.get("seq") == 6)
    assert [f.get("seq") for f in replayed] == [None, 3, 4, 5, 6]


async def test_without_a_token_the_handshake_is_refused_with_401(connect, autojump_clock):
    with pytest.raises(HandshakeRejected) as info:
        await connect(None)
    assert info.value.status == 401


async def test_a_tab_that_never_reads_is_closed_with_1013_and_the_other_tab_goes_on(
        connect, autojump_clock):
    stalled = await connect("ada")
    await send(stalled, {"type": "join", "thread_id": "t", "ref": 1})  # then never reads
    tab = await connect("ada")
    await send(tab, {"type": "join", "thread_id": "t", "ref": 1})
    for i in range(30):  # 5 frames each to both tabs: the stalled tab's queue (20) overflows
        await send(tab, {"type": "send", "thread_id": "t", "text": f"m{i}", "ref": i + 2})
        await frames_until(tab, lambda f: f.get("event") == "agent_completed")
    assert connect.server.stats.closes == {CLOSE_TRY_AGAIN: 1}
    with trio.fail_after(LIMITS.close_timeout + 1):  # its stream is closed: reads end
        while stalled.open:
            await stalled.receive()
