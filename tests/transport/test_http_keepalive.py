"""HTTP/1.1 keep-alive (transport/http_front.py, ``RequestReader.answer``; transport/server.py):
several requests on one connection, pipelined ones, who closes it and when, and that every
bound stays per request. Real loopback sockets; answers are parsed by hand, as bytes, so that
a second answer, or its absence, is seen exactly as a client would see it."""

from __future__ import annotations

import base64
import json
import os

import attrs
import pytest
import trio
import trio.testing

from tests.servers import serving, token
from threadline.transport import server as server_module
from threadline.transport.limits import Limits

ADA = token("ada")


@attrs.frozen
class Answer:
    status: int
    headers: list[tuple[str, str]]  # lower-case names, in order, repeats kept
    body: bytes

    def header(self, name: str) -> str:
        (value,) = [v for n, v in self.headers if n == name]  # exactly once
        return value

    def json(self) -> object:
        return json.loads(self.body)


class Wire:
    """One loopback connection: requests written as bytes, answers read as a client reads
    them (the status line, the headers, a ``Content-Length`` body; none after ``HEAD``)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int) -> Wire:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, *requests: bytes) -> None:
        await self.stream.send_all(b"".join(requests))  # one write: pipelined

    async def _more(self) -> None:
        chunk = await self.stream.receive_some(65536)
        assert chunk, f"closed by the server after {bytes(self.buffer)!r}"
        self.buffer += chunk

    async def answer(self, head_only: bool = False, timeout: float = 10) -> Answer:
        with trio.fail_after(timeout):
            while b"\r\n\r\n" not in self.buffer:
                await self._more()
            end = self.buffer.index(b"\r\n\r\n")
            status_line, *lines = self.buffer[:end].decode("latin-1").split("\r\n")
            del self.buffer[:end + 4]
            headers = [(name.strip().lower(), value.strip())
                       for name, _, value in (line.partition(":") for line in lines)]
            length = 0 if head_only else int(dict(headers).get("content-length", "0"))
            while len(self.buffer) < length:
                await self._more()
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
        return Answer(int(status_line.split()[1]), headers, body)

    async def closed(self, timeout: float = 5) -> None:
        """The server closes the connection within ``timeout``, sending nothing more."""
        with trio.fail_after(timeout):
            try:
                while chunk := await self.stream.receive_some(65536):
                    self.buffer += chunk
            except trio.BrokenResourceError:
                pass  # reset: closed too
        assert not self.buffer, f"more came: {bytes(self.buffer)!r}"

    async def aclose(self) -> None:
        await self.stream.aclose()


def request(method: str, path: str, *, tok: str | None = None, body: bytes | None = None,
            headers: tuple[str, ...] = (), version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", *headers]
    if tok is not None:
        lines.append(f"Authorization: Bearer {tok}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def message(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


async def test_requests_on_one_connection_are_answered_in_order(server):
    wire = await Wire.open(server.port)
    await wire.send(request("GET", "/healthz"))
    health = await wire.answer()
    assert (health.status, health.json()) == (200, {"status": "ok"})
    assert health.header("connection") == "keep-alive"
    await wire.send(request("GET", "/v1/threads", tok=ADA))
    threads = await wire.answer()
    assert threads.status == 200 and threads.json()["threads"] == []
    await wire.send(request("POST", "/v1/threads/main/messages", tok=ADA,
                            body=message("on one connection")))
    accepted = await wire.answer()
    assert accepted.status == 200 and accepted.json()["type"] == "accepted"
    await wire.send(request("GET", "/v1/threads/main/events?after=0", tok=ADA))
    events = await wire.answer()
    first = events.json()["events"][0]  # type: ignore[index]
    assert (first["event"], first["data"]["text"]) == ("user_message", "on one connection")
    await wire.send(request("GET", "/v1/nothing-here"), request("PUT", "/healthz"))
    assert [(await wire.answer()).status for _ in range(2)] == [404, 405]
    for answer in (threads, accepted, events):
        assert answer.header("connection") == "keep-alive"
    await wire.aclose()


async def test_pipelined_requests_sent_in_one_write_are_answered_in_order(server):
    wire = await Wire.open(server.port)
    await wire.send(request("HEAD", "/healthz"),
                    request("POST", "/v1/threads/piped/messages", tok=ADA,
                            body=message("piped")),
                    request("GET", "/v1/threads/piped/events?after=0", tok=ADA),
                    request("GET", "/v1/client.js"),
                    request("GET", "/healthz", headers=("Connection: close",)))
    head = await wire.answer(head_only=True)  # the GET's Content-Length, and no body
    assert head.status == 200 and int(head.header("content-length")) > 0
    accepted = await wire.answer()
    assert accepted.json()["seq"] == 1  # type: ignore[index]
    events = await wire.answer()
    assert events.json()["events"][0]["data"]["text"] == "piped"  # type: ignore[index]
    script = await wire.answer()
    assert script.status == 200 and script.header("content-type").startswith("text/javascript")
    last = await wire.answer()
    assert (last.status, last.header("connection")) == (200, "close")
    await wire.closed()


@pytest.mark.parametrize("version, headers", [("1.1", ("Connection: close",)),
                                              ("1.0", ()),
                                              ("1.0", ("Connection: keep-alive",))])
async def test_a_client_that_does_not_keep_the_connection_gets_close(server, version, headers):
    """``Connection: close``; and HTTP/1.0, with which h11 keeps no connection alive."""
    wire = await Wire.open(server.port)
    await wire.send(request("GET", "/v1/threads", tok=ADA, headers=headers, version=version),
                    request("GET", "/healthz"))  # never read as a request
    answer = await wire.answer()
    assert (answer.status, answer.header("connection")) == (200, "close")
    await wire.closed()


async def test_the_last_request_a_connection_may_carry_is_answered_with_close(
        server, monkeypatch):
    monkeypatch.setattr(server_module, "KEEPALIVE_REQUESTS", 3)
    wire = await Wire.open(server.port)
    await wire.send(*[request("GET", "/healthz")] * 4)
    said = [(await wire.answer()).header("connection") for _ in range(3)]
    assert said == ["keep-alive", "keep-alive", "close"]
    await wire.closed()  # the fourth is not answered
    wire = await Wire.open(server.port)  # a new connection starts counting again
    await wire.send(request("GET", "/healthz"))
    assert (await wire.answer()).header("connection") == "keep-alive"
    await wire.aclose()


async def test_an_idle_connection_is_closed_after_the_handshake_timeout():
    async with serving(limits=Limits(ping_interval=None, handshake_timeout=0.5)) as server:
        wire = await Wire.open(server.port)
        await wire.send(request("GET", "/healthz"))
        assert (await wire.answer()).header("connection") == "keep-alive"
        answered = trio.current_time()
        await wire.closed(timeout=5)
        assert trio.current_time() - answered >= 0.4  # not before the timeout


async def test_a_slow_second_request_is_cut_off_as_a_first_one_is():
    async with serving(limits=Limits(ping_interval=None, handshake_timeout=0.5)) as server:
        wire = await Wire.open(server.port)
        for _ in range(3):  # busy for longer than the timeout: each request has its own
            await wire.send(request("GET", "/healthz"))
            assert (await wire.answer()).status == 200
            await trio.sleep(0.25)
        await wire.send(b"GET /v1/threads HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        await wire.closed(timeout=5)  # dropped, unanswered
        wire = await Wire.open(server.port)
        await wire.send(request("GET", "/healthz"))
        assert (await wire.answer()).status == 200
        await wire.send(b"POST /v1/threads/main/messages HTTP/1.1\r\nHost: x\r\n"
                        b"Authorization: Bearer " + ADA.encode() +
                        b"\r\nContent-Length: 100\r\n\r\n{")  # the body never comes
        late = await wire.answer()
        assert late.status == 408 and late.json()["code"] == "timeout"  # type: ignore[index]
        assert late.header("connection") == "close"
        await wire.closed()


SMUGGLED = request("GET", "/healthz")  # what an unread body holds, looking like a request


@pytest.mark.parametrize("why, status", [("no token", 401), ("too large", 413)])
async def test_a_request_refused_before_its_body_closes_and_its_body_is_no_request(why, status):
    async with serving(limits=Limits(ping_interval=None, max_frame_bytes=1000)) as server:
        wire = await Wire.open(server.port)
        await wire.send(request("GET", "/healthz"))  # kept alive so far
        assert (await wire.answer()).header("connection") == "keep-alive"
        body = SMUGGLED + (b" " * 2000 if why == "too large" else b"")
        await wire.send(request("POST", "/v1/threads/main/messages",
                                tok=None if why == "no token" else ADA, body=body))
        refused = await wire.answer()
        assert (refused.status, refused.header("connection")) == (status, "close")
        await wire.closed()  # nothing answers the bytes of the body


async def test_a_refusal_without_a_body_keeps_the_connection(server):
    """What closes is a body left unread, not a refusal: a GET refused 401 was read whole."""
    wire = await Wire.open(server.port)
    await wire.send(request("GET", "/v1/threads"), request("GET", "/v1/threads", tok=ADA))
    refused, listed = await wire.answer(), await wire.answer()
    assert (refused.status, refused.header("connection")) == (401, "keep-alive")
    assert (listed.status, listed.header("connection")) == (200, "keep-alive")
    await wire.aclose()


async def test_drain_closes_idle_connections_at_once_and_answers_the_others_with_close(server):
    idle = []
    for _ in range(3):
        wire = await Wire.open(server.port)
        await wire.send(request("GET", "/healthz"))
        assert (await wire.answer()).header("connection") == "keep-alive"
        idle.append(wire)
    begun = await Wire.open(server.port)
    await begun.send(request("GET", "/healthz"))
    await begun.answer()
    await begun.send(b"GET /v1/threads HTTP/1.1\r\n")  # a request begun, not whole
    await trio.testing.wait_all_tasks_blocked()
    server.server.drain()
    with trio.fail_after(1):  # not after the 10 s an idle connection may wait
        for wire in idle:
            await wire.closed()
    await begun.send(b"Host: x\r\nAuthorization: Bearer " + ADA.encode() + b"\r\n\r\n")
    finished = await begun.answer()
    assert (finished.status, finished.header("connection")) == (200, "close")
    await begun.closed()
    fresh = await Wire.open(server.port)
    await fresh.send(request("GET", "/healthz"))
    health = await fresh.answer()
    assert (health.status, health.header("connection")) == (503, "close")
    await fresh.closed()


def handshake() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {ADA}\r\n\r\n").encode()


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_websocket_upgrade_after_requests_on_the_same_connection(server):
    wire = await Wire.open(server.port)
    await wire.send(request("GET", "/healthz"))
    assert (await wire.answer()).status == 200
    await wire.send(request("GET", "/healthz"),  # pipelined before the upgrade, and a frame
                    handshake(), masked_text_frame(b'{"type":"ping","ref":1}'))
    assert (await wire.answer()).header("connection") == "keep-alive"
    upgraded = await wire.answer(head_only=True)
    assert upgraded.status == 101
    with trio.fail_after(10):
        while b'"ref":1' not in wire.buffer:
            await wire._more()
    assert b'"pong"' in wire.buffer
    await wire.aclose()


async def test_a_request_that_asks_for_an_upgrade_elsewhere_is_answered_with_close(server):
    wire = await Wire.open(server.port)
    await wire.send(request("GET", "/healthz", headers=("Upgrade: websocket",
                                                        "Connection: Upgrade")))
    answer = await wire.answer()
    assert (answer.status, answer.header("connection")) == (200, "close")
    await wire.closed()


async def test_an_upload_and_its_download_on_one_connection(server):
    wire = await Wire.open(server.port)
    data = b"kept alive\n" * 1000
    await wire.send(b"POST /v1/attachments?name=a.txt HTTP/1.1\r\nHost: x\r\n"
                    b"Authorization: Bearer " + ADA.encode() + b"\r\n"
                    b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
    stored = await wire.answer()
    assert stored.status == 201 and stored.header("connection") == "keep-alive"
    path = f"/v1/attachments/{stored.json()['attachment_id']}"  # type: ignore[index]
    await wire.send(request("GET", path, tok=ADA), request("HEAD", path, tok=ADA),
                    request("GET", "/healthz"))
    got = await wire.answer()
    assert (got.status, got.body, got.header("connection")) == (200, data, "keep-alive")
    head = await wire.answer(head_only=True)
    assert head.header("content-length") == str(len(data))
    assert (await wire.answer()).json() == {"status": "ok"}
    await wire.aclose()


async def test_the_metrics_address_keeps_connections_too():
    async with serving(metrics_address=("127.0.0.1", 0)) as server:
        wire = await Wire.open(server.metrics_port)
        await wire.send(request("GET", "/metrics"), request("GET", "/healthz"),
                        request("GET", "/v1/threads"))
        metrics, health, missing = [await wire.answer() for _ in range(3)]
        assert metrics.status == 200 and b"threadline_" in metrics.body
        assert (health.status, missing.status) == (200, 404)
        assert {a.header("connection") for a in (metrics, health, missing)} == {"keep-alive"}
        await wire.aclose()
