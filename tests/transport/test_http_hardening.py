"""The HTTP front against what a hostile or careless client sends (found by a red-team pass):
frames sent in the same packet as the WebSocket handshake, input nested or sized to break a
parser, a client that never reads its answer, a token percent-encoded past the log redaction."""

from __future__ import annotations

import base64
import json
import os
import socket

import pytest
import trio

from tests.servers import http, serving, token
from threadline.logs import Redactor
from threadline.transport import http_front, paging


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_frame_sent_with_the_handshake_is_answered():
    async with serving() as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        handshake = (f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token('ada')}\r\n\r\n")
        await stream.send_all(handshake.encode() + masked_text_frame(b'{"type":"ping","ref":1}'))
        got = b""
        with trio.fail_after(10):
            while b'"ref":1' not in got:
                chunk = await stream.receive_some(65536)
                assert chunk, got
                got += chunk
        assert b" 101 " in got.split(b"\r\n", 1)[0] and b'"pong"' in got
        await stream.aclose()


@pytest.mark.parametrize("body", [b"[" * 5000 + b"]" * 5000, b'{"text": ' + b"[" * 5000 + b"}"])
async def test_a_body_nested_too_deep_is_a_bad_frame(body):
    async with serving() as server:
        status, _, answer = await http(server, "POST", "/v1/threads/main/messages",
                                       tok=token("ada"), body=body)
        assert (status, answer["code"]) == (400, "bad_frame")


@pytest.mark.parametrize("query", ["after=" + "9" * 5000, "limit=" + "1" * 40,
                                   "before=" + "W" * 5000])
async def test_numbers_and_cursors_too_long_are_bad_frames(query):
    async with serving() as server:
        path = "/v1/threads" if query.startswith("before") else "/v1/threads/main/events"
        status, _, answer = await http(server, "GET", f"{path}?{query}", tok=token("ada"))
        assert (status, answer["code"]) == (400, "bad_frame")


async def test_a_client_that_never_reads_its_answer_does_not_hold_it(monkeypatch):
    monkeypatch.setattr(http_front, "WRITE_TIMEOUT", 1.0)
    async with serving() as server:
        tok = token("ada")
        text = "x" * 60_000
        for i in range(60):  # ~7 MB of events: more than the kernel buffers between us
            status, _, _ = await http(server, "POST", "/v1/threads/big/messages", tok=tok,
                                      body={"text": text, "client_msg_id": f"m{i}"})
            assert status == 200
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        await sock.connect(("127.0.0.1", server.port))
        stream = trio.SocketStream(sock)
        await stream.send_all(f"GET /v1/threads/big/events?limit=1000 HTTP/1.1\r\nHost: x\r\n"
                              f"Authorization: Bearer {tok}\r\n\r\n".encode())
        await trio.sleep(3)  # not reading: the server gives up after WRITE_TIMEOUT
        got = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(1 << 20):
                got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        assert len(body) < length  # cut off, not written in full once the client read


def test_a_percent_encoded_token_is_redacted_from_logs():
    line = "GET /v1/ws?%74oken=eyJhbGciOi%2EeyJzdWIiOiJhZGEifQ%2Esig HTTP/1.1"
    redacted = Redactor().redact(line)
    assert "eyJ" not in redacted and "sig" not in redacted
    assert Redactor().redact("GET /v1/ws?token=%65%79%4a%68 HTTP/1.1").count("%65") == 0


async def test_a_page_of_large_events_is_cut_short_and_the_walk_gets_every_event(monkeypatch):
    monkeypatch.setattr(paging, "PAGE_BYTES", 3000)
    async with serving() as server:
        tok = token("ada")
        for i in range(5):
            status, _, _ = await http(server, "POST", "/v1/threads/big/messages", tok=tok,
                                      body={"text": str(i) * 1000, "client_msg_id": f"m{i}"})
            assert status == 200
        with trio.fail_after(10):  # the echo runs end: 4 events a turn
            while True:
                _, _, info = await http(server, "GET", "/v1/threads/big", tok=tok)
                if info["last_seq"] == 20:
                    break
                await trio.sleep(0.02)
        seqs, after, pages = [], 0, 0
        while after is not None:
            status, _, page = await http(server, "GET",
                                         f"/v1/threads/big/events?after={after}&limit=1000",
                                         tok=tok)
            assert status == 200 and len(json.dumps(page["events"])) <= 3000 + 2200
            seqs += [e["seq"] for e in page["events"]]
            after, pages = page["next_after"], pages + 1
        assert seqs == list(range(1, 21)) and pages > 2
