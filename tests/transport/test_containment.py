"""Issue 8, items 1-5: single inputs that used to take the whole server down, each provoked for
real over loopback; after each, the server still serves everyone else."""

from __future__ import annotations

import json
import socket
import struct

import pytest
import trio
from hypothesis import given, strategies as st
from trio_websocket import open_websocket_url
from websockets.frames import Frame, Opcode

from threadline.actors.memory_journal import MemoryJournal
from tests.servers import serving, token
from tests.transport.wire import (
    close_code,
    frames_until_closed,
    raw_http,
    status_of,
    still_serves,
)
from threadline.transport.client import connect
from threadline.transport.limits import Limits
from threadline.transport.session import Session


def handshake(port: int, headers: list[tuple[str, str]], target: str = "/v1/ws") -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- item 1: the handshake -----------------------------------------------------------------------


async def test_two_authorization_headers_are_a_400_not_a_dead_server(server):
    good = f"Bearer {token('ada')}"
    answer = await raw_http(server.port, handshake(server.port, [("Authorization", good),
                                                                 ("Authorization", good)]))
    assert status_of(answer) == 400
    assert b"more than one Authorization header" in answer
    answer = await raw_http(server.port, handshake(server.port, [("Origin", "http://a"),
                                                                 ("Origin", "http://b")]))
    assert status_of(answer) == 400
    await still_serves(server)


header_name = st.sampled_from(["Authorization", "Origin", "Host", "Sec-WebSocket-Protocol",
                               "Accept", "Cookie", "X-Any"]) | st.from_regex(
    r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True)
header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                     blacklist_characters="\x7f"), max_size=300) | st.sampled_from(
    ["Bearer", "Bearer ", "bearer x.y.z", "Basic Zm9v", "http://evil.example", "*"])
target = st.sampled_from(["/v1/ws", "/metrics", "/healthz", "/", "/v1/ws?"]) .flatmap(
    lambda p: st.builds(lambda q: p + q, st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)))


@given(st.lists(st.tuples(header_name, header_value), max_size=8), target)
async def test_any_handshake_is_answered_and_the_server_lives(headers, path):
    async with serving() as server:
        answer = await raw_http(server.port, handshake(server.port, headers, path), timeout=5)
        assert status_of(answer) in (101, 200, 400, 401, 403, 404, 426, 500), answer[:200]
        await still_serves(server)


# -- item 2: lone surrogates and invalid UTF-8 ---------------------------------------------------


@pytest.mark.parametrize("field", ["text", "ref", "client_msg_id", "thread_id"])
@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_a_lone_surrogate_is_a_bad_frame_on_every_store(field, store, tmp_path):
    from threadline.stores import open_journal

    url = "memory" if store == "memory" else f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, serving(journal=journal) as server:
        async with open_websocket_url(f"{server.url}?token={token('ada')}") as ws:
            await ws.send_message(json.dumps({"type": "join", "thread_id": "main", "ref": 1}))
            assert json.loads(await ws.get_message())["type"] == "joined"
            frame = {"type": "send", "thread_id": "main", "text": "hi", "ref": 2}
            frame[field] = "\ud800"  # json.dumps writes the escape \\ud800
            await ws.send_message(json.dumps(frame))
            answer = json.loads(await ws.get_message())
            assert answer["type"] == "error" and answer["code"] == "bad_frame", answer
            await ws.send_message(json.dumps({"type": "ping", "ref": 9}))
            assert json.loads(await ws.get_message()) == {"type": "pong", "ref": 9}
        await still_serves(server)
        assert await journal.read(server.runtime.thread("ada", "main").key, 0) == []
    # leaving the contexts above is the shutdown that used to hang on SQLite


async def test_a_text_frame_that_is_not_utf8_closes_with_1007(server):
    conn = await connect(server.url, token("ada"))
    encoded_surrogate = b'{"type":"ping","ref":"\xed\xa0\x80"}'
    conn.protocol.send_frame(Frame(Opcode.TEXT, encoded_surrogate))
    await conn.flush()
    await frames_until_closed(conn)
    assert close_code(conn) == 1007
    await conn.aclose()
    await still_serves(server)


# -- item 3: a full outgoing queue when a join is answered ---------------------------------------


class GatedReads(MemoryJournal):
    """A memory journal whose reads wait while ``gated`` (a store that is slow to read)."""

    def __init__(self) -> None:
        super().__init__()
        self.gated = False
        self.gate = trio.Event()

    async def read(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.gated:
            await self.gate.wait()
        return await super().read(*args, **kwargs)


async def test_a_full_queue_at_join_closes_with_1013_only():
    journal = GatedReads()
    async with serving(journal=journal, limits=Limits(ping_interval=None,
                                                      outgoing_queue=4)) as server:
        await server.runtime.thread("ada", "a").send("hello")  # something to replay
        journal.gated = True
        conn = await connect(server.url, token("ada"))
        conn.write(json.dumps({"type": "join", "thread_id": "a", "since": 0}).encode(),
                   binary=False)
        await conn.flush()
        await trio.sleep(0.5)  # the writer now sits in the replay of "a", waiting for the store
        # Four pongs fill the queue; "b"'s Joined finds it full.
        out = [{"type": "ping", "ref": i} for i in range(4)]
        out += [{"type": "join", "thread_id": "b", "ref": "k"}]
        for frame in out:
            conn.write(json.dumps(frame).encode(), binary=False)
        await conn.flush()
        with trio.fail_after(10):
            while server.server.sessions and not any(
                    s.state.decision for s in server.server.sessions):
                await trio.sleep(0.01)
        journal.gate.set()
        await frames_until_closed(conn)
        assert close_code(conn) == 1013
        await conn.aclose()
        await still_serves(server)


# -- item 4: no failure of one connection's tasks reaches the server -----------------------------


async def test_a_connection_reset_while_stalled_during_keepalive_ends_that_connection_only():
    async with serving(limits=Limits(ping_interval=0.02, ping_timeout=30)) as server:
        for _ in range(3):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            await stream.socket.connect(("127.0.0.1", server.port))
            await stream.send_all(handshake(server.port, [("Authorization",
                                                          f"Bearer {token('ada')}")]))
            await stream.receive_some(4096)  # the 101
            text = "x" * 60_000
            join = json.dumps({"type": "join", "thread_id": "main"}).encode()
            send = json.dumps({"type": "send", "thread_id": "main", "text": text}).encode()
            for payload in (join, send, send, send, send):  # echoes fill the server's buffers
                await stream.send_all(masked_text(payload))
            await trio.sleep(0.3)  # stalled: pings queue up behind unread data
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()  # RST
        await trio.sleep(0.2)
        await still_serves(server)


def masked_text(payload: bytes) -> bytes:
    """One client text frame (clients must mask; a zero mask keeps the bytes as they are)."""
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) +
                            n.to_bytes(2, "big") if n < 65536 else bytes([0x80 | 127]) +
                            n.to_bytes(8, "big"))
    return head + b"\0\0\0\0" + payload


@pytest.mark.parametrize("task", ["_reader", "_writer", "_keepalive", "_handle", "_expire"])
async def test_a_failure_injected_into_any_session_task_ends_that_connection_only(task,
                                                                                 monkeypatch):
    async def broken(self, *args):  # type: ignore[no-untyped-def]
        await trio.sleep(0.01)
        raise RuntimeError(f"injected into {task}")

    monkeypatch.setattr(Session, task, broken)
    async with serving(limits=Limits(ping_interval=0.05)) as server:
        conn = await connect(server.url, token("ada", ttl=3600))
        conn.write(json.dumps({"type": "join", "thread_id": "main"}).encode(), binary=False)
        await conn.flush()
        await frames_until_closed(conn)
        assert close_code(conn) in (1011, None)
        await conn.aclose()
        monkeypatch.undo()
        await still_serves(server)


# -- item 5: the writer never drops a frame ------------------------------------------------------


async def test_pipelined_requests_are_all_answered_in_order():
    async with serving(limits=Limits(ping_interval=None, burst=2000)) as server:
        conn = await connect(server.url, token("ada"))
        for n in (65, 64 * 3 + 1, 300):
            for i in range(n):
                conn.write(json.dumps({"type": "ping", "ref": i}).encode(), binary=False)
            # One TCP write: the server reads them at once and queues every pong before its
            # writer runs.
            await conn.stream.send_all(b"".join(conn.protocol.data_to_send()))
            refs: list[int] = []
            with trio.fail_after(10):
                while len(refs) < n:
                    for event in await conn.receive():
                        if isinstance(event, Frame) and (m := conn.assemble(event)):
                            refs.append(json.loads(m[1])["ref"])
            assert refs == list(range(n))
        await conn.aclose()
