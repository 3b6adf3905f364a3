"""The HTTP front against what a hostile or careless client sends (found by a red-team pass):
frames sent in the same packet as the WebSocket handshake, input nested or sized to break a
parser, a client that never reads its answer, a token percent-encoded past the log redaction;
one user holding many requests, each with a large body, in flight."""

from __future__ import annotations

import base64
import json
import os
import socket
import tracemalloc

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.servers import http, serving, token
from tests.transport.wire import status_of
from threadline import open_runtime
from threadline.actors.errors import RateLimited
from threadline.logs import Redactor
from threadline.transport import http_front, paging
from threadline.transport.limits import Limits
from threadline.transport.quotas import UserQuotas


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


# -- a user's requests are admitted at the head, bounded in number, and hold a body once -------

ADA, BOB = token("ada"), token("bob")


def post_head(tok: str, length: int, thread: str = "main") -> bytes:
    """A POST's head announcing ``length`` bytes of body, which the caller sends (or not)."""
    return (f"POST /v1/threads/{thread}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {tok}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


async def answer_of(stream: trio.SocketStream) -> bytes:
    """Everything the server writes until it closes (bounded in time, not in speed); the
    client sends nothing more (half-closed: a kept-alive connection ends after its answer)."""
    data = b""
    await stream.send_eof()
    with trio.fail_after(20):
        while chunk := await stream.receive_some(65536):
            data += chunk
    await stream.aclose()
    return data


async def until(predicate) -> None:
    for _ in range(1000):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError("never came true")


async def test_a_user_over_the_connection_quota_is_refused_at_the_head_unread():
    limits = Limits(ping_interval=None, user_connections=1, handshake_timeout=60)
    async with serving(limits=limits) as server:
        async with open_websocket_url(f"{server.url}?token={ADA}") as ws:
            await ws.send_message(json.dumps({"type": "ping", "ref": 1}))
            assert json.loads(await ws.get_message())["type"] == "pong"
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(post_head(ADA, 1_000_000))  # the body never comes
            answer = await answer_of(stream)  # at once: not after the 60 s the body may take
            assert status_of(answer) == 429 and b'"code":"limit_reached"' in answer


async def test_a_users_requests_in_flight_are_bounded_and_one_more_is_refused_unread():
    limits = Limits(ping_interval=None, user_http_requests=2, handshake_timeout=60)
    async with serving(limits=limits) as server:
        quotas = server.server.quotas
        body = json.dumps({"text": "hi"}).encode()
        held = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(2)]
        for i, stream in enumerate(held):
            await stream.send_all(post_head(ADA, len(body), f"t{i}"))  # bodies held back
        await until(lambda: quotas.requests_in_flight("ada") == 2)
        extra = await trio.open_tcp_stream("127.0.0.1", server.port)
        await extra.send_all(post_head(ADA, 1_000_000))
        answer = await answer_of(extra)
        assert status_of(answer) == 429 and b'"code":"limit_reached"' in answer
        assert b"at most 2 HTTP requests at once" in answer
        assert (await http(server, "GET", "/v1/threads", tok=BOB))[0] == 200  # others go on
        for stream in held:
            await stream.send_all(body)
            assert status_of(await answer_of(stream)) == 200
        assert quotas.requests_in_flight("ada") == 0
        status, _, _ = await http(server, "POST", "/v1/threads/t9/messages", tok=ADA,
                                  body={"text": "x"})
        assert status == 200


async def test_http_use_holds_a_connection_slot_only_while_a_request_is_in_flight():
    limits = Limits(ping_interval=None, user_connections=1, handshake_timeout=60)
    async with serving(limits=limits) as server:
        body = json.dumps({"text": "hi"}).encode()
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(post_head(ADA, len(body)))
        await until(lambda: server.server.quotas.requests_in_flight("ada") == 1)
        async with open_websocket_url(f"{server.url}?token={ADA}") as ws:
            assert json.loads(await ws.get_message())["code"] == "limit_reached"
        await stream.send_all(body)
        assert status_of(await answer_of(stream)) == 200
        assert (await http(server, "GET", "/v1/threads", tok=ADA))[0] == 200
        async with open_websocket_url(f"{server.url}?token={ADA}") as ws:  # no HTTP in flight
            await ws.send_message(json.dumps({"type": "ping", "ref": 1}))
            assert json.loads(await ws.get_message())["type"] == "pong"


async def test_an_idle_users_quota_is_kept_while_its_bucket_refills_then_forgotten(
        autojump_clock):
    limits = Limits(user_send_rate=10.0, user_send_burst=20)  # an emptied bucket: 2 s
    async with open_runtime() as rt:
        quotas = UserQuotas(limits)
        with quotas.request_slot(rt.gateway.user("ada")) as quota:
            for _ in range(20):
                quota.admit_send()
        await trio.sleep(1.0)
        with quotas.request_slot(rt.gateway.user("ada")) as again:
            assert again is quota  # the bucket carried over: no fresh burst by reconnecting
            for _ in range(10):
                again.admit_send()
            with pytest.raises(RateLimited):
                again.admit_send()
        await trio.sleep(2.5)
        with quotas.request_slot(rt.gateway.user("bob")):
            assert len(quotas) == 1  # ada's record is gone: her bucket is full again


async def test_a_body_is_held_once_while_it_is_read():
    size = 1_000_000
    payload = b'{"text": "x"' + b" " * (size - 13) + b"}"
    head = b"POST /v1/threads/t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    reader = http_front.RequestReader(await listeners[0].accept())

    async def send() -> None:
        await client.send_all(head)
        view = memoryview(payload)
        for start in range(0, size, 65536):
            await client.send_all(view[start:start + 65536])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        assert (await reader.read_head()) is not None
        tracemalloc.start()
        try:
            body = await reader.read_body(2 * size)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert body == payload
    assert peak < 1.6 * size, peak  # one copy (grown as it came, plus a read), not 2 or 3
    assert len(reader.raw) < 64 * 1024  # the head, for a WebSocket handshake; not the body
    await client.aclose()
    await reader.stream.aclose()
    await listeners[0].aclose()
