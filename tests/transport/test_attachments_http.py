"""Attachments over real loopback sockets (PROTOCOL.md 1.1, "Attachments"; HTTP.md): uploads
streamed into the store and downloads out of it, byte for byte, on the memory store, SQLite and
PostgreSQL; another user's id and a guessed one refused everywhere (download, WebSocket
``send``, HTTP message); a body over the limit refused early (before the body by its
``Content-Length``, as soon as a chunked body passes it); a slow upload cut off; the declared
type and the magic bytes; the per-user quota across two connections; a ``send`` with
attachments and the echo agent's answer; the metrics."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from typing import Any

import pytest
import trio

from tests.servers import http, serving, token
from tests.transport.test_http_api import until_terminal
from tests.transport.test_http_head import ask, parsed
from tests.transport.test_metrics import scrape, value
from tests.transport.wire import raw_http
from threadline.actors.attachments import CHUNK_BYTES
from threadline.actors.engine import new_id
from threadline.actors.memory_journal import MemoryJournal
from threadline.stores import open_journal
from threadline.transport.client import BadFrame, NotFound, open_client
from threadline.transport.limits import Limits

ADA, BOB = token("ada"), token("bob")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"
CSP = "default-src 'none'; sandbox"


def png(size: int) -> bytes:
    """A file of ``size`` bytes that begins as a PNG does (random after the signature)."""
    return (PNG + os.urandom(size))[:size]


@pytest.fixture
async def att():
    async with open_journal("memory") as journal, serving(journal=journal) as server:
        yield server, journal


def head(name: str | None, content_type: str | None, tok: str | None, *,
         length: int | None = None, extra: str = "") -> bytes:
    target = "/v1/attachments" if name is None else f"/v1/attachments?name={name}"
    lines = [f"POST {target} HTTP/1.1", "Host: 127.0.0.1"]
    if tok:
        lines.append(f"Authorization: Bearer {tok}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {length}" if length is not None
                 else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def chunked(data: bytes, size: int = 65536) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
                    for i in range(0, len(data), size)) + b"0\r\n\r\n"


async def upload(port: int, data: bytes, name: str | None = "photo.png",
                 content_type: str | None = "image/png", tok: str | None = ADA, *,
                 chunk: bool = False) -> tuple[int, dict[str, str], Any]:
    """One upload, the whole body sent at once: status, headers, the JSON answer."""
    request = head(name, content_type, tok, length=None if chunk else len(data))
    status, fields, body = parsed(await raw_http(port, request + (chunked(data) if chunk
                                                                  else data), timeout=30))
    return status, fields, json.loads(body)


async def stored(port: int, data: bytes, name: str = "photo.png",
                 content_type: str = "image/png", tok: str = ADA) -> dict[str, Any]:
    status, _, answer = await upload(port, data, name, content_type, tok)
    assert status == 201, answer
    return answer


async def download(server, attachment_id: str, tok: str | None = ADA,
                   method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Status, headers and every byte after the head, as they came (read until the server
    closes: a body longer than its ``Content-Length`` would show)."""
    return await ask(server.port, method, f"/v1/attachments/{attachment_id}", tok)


class Answered:
    """Reads a socket in the background: everything the server sends, until it closes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.data, self.closed = stream, b"", trio.Event()

    async def run(self) -> None:
        try:
            while chunk := await self.stream.receive_some(65536):
                self.data += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        self.closed.set()

    def answered(self) -> bool:
        return b"\r\n\r\n" in self.data and not self.data.startswith(b"HTTP/1.1 100 ")


async def timed_out(reading, stream, journal, says: str) -> None:
    """The upload was answered 408 ``timeout`` saying ``says``, and left nothing stored."""
    status, _, body = parsed(reading.data)
    assert (status, json.loads(body)["code"]) == (408, "timeout")
    assert says in json.loads(body)["message"]
    await stream.aclose()
    await nothing_stored(journal)


async def nothing_stored(journal, user: str = "ada") -> None:
    """The user's bytes in the store come back to 0 (an abort is shielded, and quick)."""
    for _ in range(200):
        if await journal.attachment_bytes(user) == 0:
            return
        await trio.sleep(0.02)
    raise AssertionError(f"{await journal.attachment_bytes(user)} bytes left")


# -- upload, download ----------------------------------------------------------------------------

async def round_trip(server) -> None:
    """A file of several chunks and one byte up, then down byte for byte, with its headers; a
    text file with a name to encode; HEAD."""
    data = png(4 * CHUNK_BYTES + 1)  # 1 MiB and a byte: five chunks
    answer = await stored(server.port, data)
    assert answer == {"type": "attachment", "attachment_id": answer["attachment_id"],
                      "name": "photo.png", "content_type": "image/png", "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()}
    assert answer["attachment_id"].startswith("att_")
    status, fields, body = await download(server, answer["attachment_id"])
    assert status == 200 and body == data
    assert fields["content-type"] == "image/png"
    assert fields["content-length"] == str(len(data))
    assert fields["x-content-type-options"] == "nosniff"
    assert fields["content-disposition"] == "inline; filename*=UTF-8''photo.png"
    assert fields["content-security-policy"] == CSP
    status, head_fields, body = await download(server, answer["attachment_id"], method="HEAD")
    assert (status, body) == (200, b"") and head_fields == fields

    text = "ünïcode, text\n".encode() * 1000
    status, _, answer = await upload(server.port, text, "r%C3%A9sum%C3%A9%20notes.txt",
                                     "text/plain; charset=utf-8", chunk=True)
    assert status == 201 and answer["name"] == "résumé notes.txt"
    assert answer["content_type"] == "text/plain" and answer["size"] == len(text)
    status, fields, body = await download(server, answer["attachment_id"])
    assert status == 200 and body == text and fields["content-type"] == "text/plain"
    assert fields["content-disposition"] == \
        "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%20notes.txt"
    assert fields["content-security-policy"] == CSP

    status, _, answer = await upload(server.port, b"", "empty.txt", "text/plain")
    assert status == 201 and answer["size"] == 0
    status, fields, body = await download(server, answer["attachment_id"])
    assert (status, body, fields["content-length"]) == (200, b"", "0")


async def test_upload_then_download_byte_for_byte(att):
    server, journal = att
    with trio.fail_after(60):
        await round_trip(server)
    assert await journal.attachment_bytes("ada") == 4 * CHUNK_BYTES + 1 + 16 * 1000 + 0


async def test_another_users_or_an_unknown_id_is_not_found_everywhere(att):
    server, _ = att
    with trio.fail_after(60):
        mine = (await stored(server.port, png(1000)))["attachment_id"]
        guessed = new_id("att")
        for tok, attachment_id in [(BOB, mine), (ADA, guessed), (BOB, guessed)]:
            for method in ("GET", "HEAD"):
                status, _, body = await download(server, attachment_id, tok, method)
                assert status == 404, (tok, attachment_id)
                if method == "GET":
                    error = json.loads(body)
                    assert error["code"] == "not_found" and "attachment" in error["message"]
        status, _, body = await download(server, "a" * 129)
        assert (status, json.loads(body)["code"]) == (400, "bad_frame")
        status, _, body = await download(server, mine, tok=None)
        assert status == 401

        # a send naming them, over the WebSocket: not_found, nothing stored, connection open
        async with open_client(server.url, BOB) as bob:
            await bob.join("main")
            for ids in ([mine], [guessed], [guessed, mine]):
                with pytest.raises(NotFound):
                    await bob.request({"type": "send", "thread_id": "main", "text": "x",
                                       "attachments": ids})
            with pytest.raises(BadFrame):
                await bob.request({"type": "send", "thread_id": "main", "text": "x",
                                   "attachments": [mine] * 11})
            acc = await bob.send("main", "still here")
            assert acc["seq"] == 1  # nothing of the refused sends was stored
        # ... and over HTTP: 404
        for ids in ([mine], [guessed]):
            status, _, body = await http(server, "POST", "/v1/threads/other/messages", tok=BOB,
                                         body={"text": "x", "attachments": ids})
            assert (status, body["code"]) == (404, "not_found")
        status, _, body = await http(server, "POST", "/v1/threads/other/messages", tok=BOB,
                                     body={"text": "x", "attachments": "att_1"})
        assert (status, body["code"]) == (400, "bad_frame")
        # ada's own still works, and is then this thread's: another thread cannot have it
        status, _, acc = await http(server, "POST", "/v1/threads/one/messages", tok=ADA,
                                    body={"text": "x", "attachments": [mine]})
        assert status == 200
        status, _, body = await http(server, "POST", "/v1/threads/two/messages", tok=ADA,
                                     body={"text": "x", "attachments": [mine]})
        assert (status, body["code"]) == (404, "not_found")
        status, _, acc2 = await http(server, "POST", "/v1/threads/one/messages", tok=ADA,
                                     body={"text": "again", "attachments": [mine]})
        assert status == 200


# -- early refusals -------------------------------------------------------------------------------

async def test_a_content_length_over_the_limit_is_answered_before_the_body_is_sent():
    async with open_journal("memory") as journal, serving(
            journal=journal, limits=Limits(ping_interval=None, attachment_bytes=100_000)) as s:
        for extra in ("", "Expect: 100-continue\r\n"):
            stream = await trio.open_tcp_stream("127.0.0.1", s.port)
            await stream.send_all(head("big.png", "image/png", ADA, length=100_001,
                                       extra=extra))
            reading = Answered(stream)
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reading.run)
                    await reading.closed.wait()  # not a byte of the body was sent
            await stream.aclose()
            status, _, body = parsed(reading.data)  # no 100 Continue before it
            assert status == 413 and json.loads(body)["code"] == "too_large"
        # at the limit it passes; with Expect, after a 100 Continue
        stream = await trio.open_tcp_stream("127.0.0.1", s.port)
        await stream.send_all(head("ok.png", "image/png", ADA, length=100_000,
                                   extra="Expect: 100-continue\r\n"))
        with trio.fail_after(10):
            assert await stream.receive_some(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send_all(png(100_000))
            await stream.send_eof()  # no second request: the connection ends after the answer
            reading = Answered(stream)
            await reading.run()
        assert parsed(reading.data)[0] == 201
        assert await journal.attachment_bytes("ada") == 100_000


async def test_a_chunked_body_is_cut_as_soon_as_it_passes_the_limit():
    limit = CHUNK_BYTES + 50_000  # one chunk is stored before the body is over
    async with open_journal("memory") as journal, serving(
            journal=journal, limits=Limits(ping_interval=None, attachment_bytes=limit)) as s:
        stream = await trio.open_tcp_stream("127.0.0.1", s.port)
        reading = Answered(stream)
        sent = 0
        data = png(10 * 1024 * 1024)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reading.run)
                await stream.send_all(head("big.png", "image/png", ADA))
                for i in range(0, len(data), 16_384):
                    if reading.answered():
                        break
                    try:
                        await stream.send_all(chunked(data[i:i + 16_384])[:-5])  # no end
                    except (trio.BrokenResourceError, OSError):
                        break
                    sent += 16_384
                    await trio.sleep(0.002)
                await reading.closed.wait()
        await stream.aclose()
        status, _, body = parsed(reading.data)
        assert status == 413 and json.loads(body)["code"] == "too_large"
        # answered once the body was over, long before the 10 MiB were sent
        assert limit < sent < limit + 1024 * 1024, sent
        await nothing_stored(journal)  # the chunk stored before is erased


async def test_a_slow_upload_is_cut_off():
    limits = Limits(ping_interval=None, upload_idle_timeout=0.5, upload_timeout=2.0)
    async with open_journal("memory") as journal, serving(journal=journal, limits=limits) as s:
        # a body that stops after a chunk and a bit: cut after 0.5 s of silence
        stream = await trio.open_tcp_stream("127.0.0.1", s.port)
        await stream.send_all(head("slow.png", "image/png", ADA, length=10 * CHUNK_BYTES)
                              + png(CHUNK_BYTES + 1000))
        reading = Answered(stream)
        started = trio.current_time()
        with trio.fail_after(10):
            await reading.run()
        assert trio.current_time() - started < 5
        await timed_out(reading, stream, journal, "no byte")

        # a body that trickles in, never idle for long: cut after 2 s in all
        stream = await trio.open_tcp_stream("127.0.0.1", s.port)
        reading = Answered(stream)
        data = png(CHUNK_BYTES + 100_000)
        await stream.send_all(head("trickle.png", "image/png", ADA))
        started = trio.current_time()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reading.run)
                await stream.send_all(chunked(data[:CHUNK_BYTES])[:-5])
                for i in range(CHUNK_BYTES, len(data), 1000):
                    if reading.answered():
                        break
                    try:
                        await stream.send_all(chunked(data[i:i + 1000])[:-5])
                    except (trio.BrokenResourceError, OSError):
                        break
                    await trio.sleep(0.1)
                await reading.closed.wait()
        assert 1.5 < trio.current_time() - started < 6
        await timed_out(reading, stream, journal, "longer than 2 s")

        # a client gone in the middle: erased too
        stream = await trio.open_tcp_stream("127.0.0.1", s.port)
        await stream.send_all(head("gone.png", "image/png", ADA, length=10 * CHUNK_BYTES)
                              + png(2 * CHUNK_BYTES + 10))
        await trio.sleep(0.3)
        await stream.aclose()
        await nothing_stored(journal)
        samples, _ = await scrape(s, None)
        assert value(samples, "threadline_attachment_uploads_total", outcome="aborted") == 3


async def test_types_names_and_magic_bytes(att):
    server, journal = att
    with trio.fail_after(60):
        refused = [
            (HTML, "page.png", "image/png"),                  # HTML disguised as a PNG
            (HTML * 10_000, "page.png", "image/png"),         # ... over several chunks
            (b"GIF89a" + b"\x00" * 100, "x.png", "image/png"),  # another image type
            (b"RIFF\x00\x00\x00\x00AVI LIST", "x.webp", "image/webp"),
            (b"", "empty.png", "image/png"),
            (b"PK\x03\x04", "a.zip", "application/zip"),      # a type not allowed
            (b"<svg/>", "a.svg", "image/svg+xml"),
            (b"x", "a.bin", None),                           # no type at all
            (b"a=b", "form", "application/x-www-form-urlencoded"),  # curl's default
        ]
        for data, name, content_type in refused:
            status, _, answer = await upload(server.port, data, name, content_type)
            assert (status, answer["code"]) == (415, "unsupported_type"), (name, answer)
        assert await journal.attachment_bytes("ada") == 0  # nothing of them was stored

        for name in ("", "a%2Fb", "a%5Cb", "bell%07", "..", "x" * 256, "photo%E2%80%AEgnp.exe",
                     "%FF", "a%D8%9Cb", "zero%E2%80%8Bwidth", "%EF%BB%BFbom", "line%E2%80%A8sep",
                     "%20", "%E3%80%80", "evil.exe%20", "a.txt."):  # (the red-team's: U+061C,
            # U+200B, U+FEFF, U+2028, blank names, a trailing space or dot)
            status, _, answer = await upload(server.port, png(100), name)
            assert (status, answer["code"]) == (400, "bad_frame"), name
        status, _, answer = await upload(server.port, png(100), None)
        assert (status, answer["code"]) == (400, "bad_frame")

        accepted = [
            (png(3000), "a.png", "image/png", "image/png"),
            (b"\xff\xd8\xff\xe0" + os.urandom(100), "a.jpg", "IMAGE/JPEG", "image/jpeg"),
            (b"GIF87a" + os.urandom(100), "a.gif", "image/gif", "image/gif"),
            (b"RIFF\x00\x00\x00\x00WEBPVP8 " + os.urandom(50), "a.webp", "image/webp",
             "image/webp"),
            (b"%PDF-1.7\n", "a.pdf", "application/pdf", "application/pdf"),
            (b'{"a": 1}', "a.json", "application/json", "application/json"),
            (b"a,b\n1,2\n", "a.csv", "text/csv; charset=utf-8", "text/csv"),
            (HTML, "page.html", "text/html", "text/html"),
            (b"x" * 255, "x" * 255, "text/plain", "text/plain"),
        ]
        for data, name, content_type, kept in accepted:
            answer = await stored(server.port, data, name, content_type)
            assert answer["content_type"] == kept and answer["name"] == name
            status, fields, body = await download(server, answer["attachment_id"])
            assert status == 200 and body == data and fields["content-type"] == kept
            # nothing uploaded runs in the page: never sniffed, sandboxed, HTML saved
            assert fields["x-content-type-options"] == "nosniff"
            assert fields["content-security-policy"] == CSP
            assert fields["content-disposition"].startswith(
                "inline;" if kept.startswith("image/") else "attachment;")


async def test_the_operators_types():
    limits = Limits(ping_interval=None, attachment_types=("application/zip", "text/plain"))
    async with serving(limits=limits) as server:
        assert (await upload(server.port, b"PK\x03\x04", "a.zip", "application/zip"))[0] == 201
        assert (await upload(server.port, b"x", "a.txt", "text/plain"))[0] == 201
        status, _, answer = await upload(server.port, png(100), "a.png", "image/png")
        assert (status, answer["code"]) == (415, "unsupported_type")
        assert "application/zip, text/plain" in answer["message"]


async def test_the_quota_holds_across_two_connections():
    quota = 3 * CHUNK_BYTES
    limits = Limits(ping_interval=None, user_attachment_bytes=quota)
    async with open_journal("memory") as journal, serving(journal=journal, limits=limits) as s:
        with trio.fail_after(60):
            await stored(s.port, png(2 * CHUNK_BYTES))  # one connection...
            # ... another: refused at its head by its Content-Length, mid-body when chunked
            status, _, answer = await upload(s.port, png(CHUNK_BYTES + 1))
            assert (status, answer["code"]) == (429, "limit_reached")
            status, _, answer = await upload(s.port, png(2 * CHUNK_BYTES), chunk=True)
            assert (status, answer["code"]) == (429, "limit_reached")
            assert await journal.attachment_bytes("ada") == 2 * CHUNK_BYTES  # none of it kept
            await stored(s.port, png(CHUNK_BYTES))  # exactly up to the quota
            await stored(s.port, png(2 * CHUNK_BYTES), tok=BOB)  # another user's own quota
            status, _, answer = await upload(s.port, b"x", "a.txt", "text/plain")
            assert status == 429

    # two uploads at once on two connections: exactly one fits
    async with open_journal("memory") as journal, serving(journal=journal, limits=limits) as s:
        results = []

        async def one() -> None:
            results.append(await upload(s.port, png(2 * CHUNK_BYTES), chunk=True))
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one)
                nursery.start_soon(one)
        assert sorted(status for status, _, _ in results) == [201, 429]
        assert await journal.attachment_bytes("ada") == 2 * CHUNK_BYTES
        samples, _ = await scrape(s, None)
        assert value(samples, "threadline_attachment_uploads_total",
                     outcome="limit_reached") == 1


# -- into a conversation -------------------------------------------------------------------------

async def converse_with_attachments(server) -> None:
    """Two uploads named in a WebSocket ``send``: ``user_message.attachments`` and the echo
    agent's answer; the same over HTTP; then each downloads byte for byte."""
    photo, notes = png(CHUNK_BYTES + 7), b"milk\neggs\n"
    a = await stored(server.port, photo, "photo.png", "image/png")
    b = await stored(server.port, notes, "notes.txt", "text/plain")
    listed = [{"attachment_id": x["attachment_id"], "name": x["name"],
               "content_type": x["content_type"], "size": x["size"]} for x in (a, b)]
    async with open_client(server.url, ADA) as client:
        await client.join("main")
        acc = await client.request({"type": "send", "thread_id": "main", "text": "look",
                                    "attachments": [a["attachment_id"], b["attachment_id"]]})
        seen = []
        while not seen or seen[-1]["event"] != "agent_completed":
            seen.append(await client.next_event(timeout=20))
        message = seen[0]
        assert message["event"] == "user_message" and message["seq"] == acc["seq"]
        assert message["data"]["attachments"] == listed
        assert seen[-1]["run_id"] == acc["run_id"]
        assert seen[-1]["data"]["text"] == (f"look\n[photo.png, {len(photo)} bytes, image/png]"
                                            "\n[notes.txt, 10 bytes, text/plain]")
    # over HTTP, in another thread: with one of its own (those are main's now)
    c = await stored(server.port, notes, "notes.txt", "text/plain")
    status, _, error = await http(server, "POST", "/v1/threads/http/messages", tok=ADA,
                                  body={"text": "see", "attachments": [b["attachment_id"]]})
    assert (status, error["code"]) == (404, "not_found")
    status, _, acc = await http(server, "POST", "/v1/threads/http/messages", tok=ADA,
                                body={"text": "see", "attachments": [c["attachment_id"]]})
    assert status == 200
    frames = await until_terminal(server, ADA, "http", acc["run_id"])
    assert frames[0]["data"]["attachments"] == [{**listed[1],
                                                 "attachment_id": c["attachment_id"]}]
    assert frames[-1]["data"]["text"] == "see\n[notes.txt, 10 bytes, text/plain]"
    for x, data in ((a, photo), (b, notes)):
        status, _, body = await download(server, x["attachment_id"])
        assert status == 200 and body == data


async def test_a_send_with_attachments(att):
    server, _ = att
    with trio.fail_after(60):
        await converse_with_attachments(server)


# -- on every store ------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
async def durable(request, tmp_path):
    url = (f"sqlite:///{tmp_path}/att.db" if request.param == "sqlite"
           else request.getfixturevalue("pg_dsn"))
    async with open_journal(url) as journal, serving(journal=journal) as server:
        yield server, journal


async def test_upload_send_and_download_on_a_durable_store(durable):
    server, journal = durable
    with trio.fail_after(120):
        await round_trip(server)
        await converse_with_attachments(server)
        mine = (await stored(server.port, png(100)))["attachment_id"]
        assert (await download(server, mine, BOB))[0] == 404
        status, _, answer = await upload(server.port, HTML * 10_000, "x.png", "image/png")
        assert status == 415
        before = await journal.attachment_bytes("ada")
        status, _, answer = await upload(server.port, png(3 * CHUNK_BYTES), chunk=True,
                                         content_type="image/png; q=1")
        assert status == 201
        assert await journal.attachment_bytes("ada") == before + 3 * CHUNK_BYTES


# -- metrics -------------------------------------------------------------------------------------

async def test_uploads_and_downloads_are_counted(att):
    server, _ = att
    with trio.fail_after(60):
        samples, _ = await scrape(server, None)
        for outcome in ("stored", "too_large", "unsupported_type", "limit_reached", "aborted",
                        "failed"):
            assert value(samples, "threadline_attachment_uploads_total", outcome=outcome) == 0
        a = await stored(server.port, png(1000))
        await stored(server.port, png(2000))
        await upload(server.port, HTML, "x.png", "image/png")
        await upload(server.port, png(10), "a/b")
        await download(server, a["attachment_id"])
        await download(server, a["attachment_id"], method="HEAD")  # not a download
        await download(server, a["attachment_id"], BOB)  # nor is a 404
        for accept in (None, "application/openmetrics-text; version=1.0.0"):
            samples, _ = await scrape(server, accept)
            assert value(samples, "threadline_attachment_uploads_total", outcome="stored") == 2
            assert value(samples, "threadline_attachment_uploads_total",
                         outcome="unsupported_type") == 1
            assert value(samples, "threadline_attachment_uploads_total",
                         outcome="bad_request") == 1
            assert value(samples, "threadline_attachment_uploaded_bytes_total") == 3000
            assert value(samples, "threadline_attachment_downloads_total") == 1


# -- memory ----------------------------------------------------------------------------------------

class Discarding(MemoryJournal):
    """The memory store, but chunks are counted and not kept: what the server holds of an
    upload is then all that tracemalloc sees of it."""

    async def write_chunk(self, user_id, attachment_id, n, data, quota):
        assert len(data) <= CHUNK_BYTES
        await super().write_chunk(user_id, attachment_id, n, b"", quota)


async def send_generated(port: int, size: int, tok: str = ADA) -> bytes:
    """A chunked upload of ``size`` bytes made as they are sent (the client holds 64 KiB at a
    time); the server's answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reading = Answered(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reading.run)
        await stream.send_all(head("big.png", "image/png", tok))
        sent = 0
        try:
            while sent < size and not reading.answered():
                piece = (PNG + b"\x00" * (65536 - len(PNG)) if sent == 0 else b"\x00" * 65536)
                await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            if not reading.answered():
                await stream.send_all(b"0\r\n\r\n")
                await stream.send_eof()  # no second request: closed after the answer
        except (trio.BrokenResourceError, OSError):
            pass
        await reading.closed.wait()
    await stream.aclose()
    return reading.data


@pytest.mark.parametrize("size, status", [(20 * 1024 * 1024, 201), (40 * 1024 * 1024, 413)])
async def test_the_server_holds_a_chunk_of_an_upload_not_the_file(size, status):
    """A 20 MiB upload, and one of 40 MiB refused once past the limit: the server's memory
    (traced, client included) grows by about a chunk and a read, never by the file."""
    async with serving(journal=Discarding()) as server:
        await stored(server.port, png(1000))  # warm every path up
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            with trio.fail_after(120):
                answer = await send_generated(server.port, size)
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        assert parsed(answer)[0] == status, answer[-300:]
        assert peak < 4 * 1024 * 1024, peak  # the file is 20 MiB or more
