"""Attachments across ``kill -9`` of a ``threadline serve``, on SQLite and PostgreSQL: an upload
cut by the kill was never answered, and the restart's first sweep erases what it left in the
store before anything is served; an acknowledged upload is there after the restart, byte for
byte, and can be sent."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3

import psycopg
import pytest
import trio

from tests.servers import ServeProcess, port_of, token
from tests.transport.test_http_head import ask, parsed
from tests.transport.wire import raw_http
from threadline.actors.attachments import CHUNK_BYTES
from threadline.stores import open_journal
from threadline.transport.client import NotFound, open_client

ADA = token("ada")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/att.db"
    return request.getfixturevalue("pg_dsn")


def query(url: str, sql: str) -> list[tuple]:
    """Rows of ``sql``, read beside the server (never through it)."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def chunk_head(size: int) -> bytes:
    return b"%x\r\n" % size


async def test_kill_9_during_an_upload_leaves_nothing_visible_and_the_sweeper_erases_it(store):
    server = ServeProcess("--store", store)
    data = (PNG + os.urandom(3 * CHUNK_BYTES + 100))
    try:
        port = port_of(await server.ready()).port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(f"POST /v1/attachments?name=cut.png HTTP/1.1\r\nHost: x\r\n"
                              f"Authorization: Bearer {ADA}\r\nContent-Type: image/png\r\n"
                              f"Transfer-Encoding: chunked\r\n\r\n".encode())
        await stream.send_all(chunk_head(len(data)) + data)  # and never the end
        with trio.fail_after(30):  # three chunks are durable in the store
            while query(store, "SELECT count(*) FROM attachment_chunks")[0][0] < 3:
                await trio.sleep(0.05)
        server.kill()  # SIGKILL, in the middle of the upload
        answer = b""
        with trio.move_on_after(5):
            try:
                while chunk := await stream.receive_some(65536):
                    answer += chunk
            except (trio.BrokenResourceError, OSError):
                pass
        await stream.aclose()
        assert b"HTTP/1.1 201" not in answer and b"att_" not in answer  # never answered
    finally:
        server.kill()
    [(attachment_id, finished)] = query(store, "SELECT attachment_id, finished FROM attachments")
    assert not finished

    server = ServeProcess("--store", store)
    try:
        url = await server.ready()
        port = port_of(url).port
        status, _, body = await ask(port, "GET", f"/v1/attachments/{attachment_id}", ADA)
        assert (status, json.loads(body)["code"]) == (404, "not_found")  # nothing visible
        async with open_client(url, ADA) as client:
            await client.join("main")
            with pytest.raises(NotFound):
                await client.request({"type": "send", "thread_id": "main", "text": "x",
                                      "attachments": [attachment_id]})
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    finally:
        server.kill()

    # What the kill left (an upload never finished) was erased by the restart's first sweep:
    # the server owns its store, so no upload could be under way before it served.
    async with open_journal(store) as journal:
        assert await journal.attachment_bytes("ada") == 0
    assert query(store, "SELECT count(*) FROM attachment_chunks") == [(0,)]
    assert query(store, "SELECT count(*) FROM attachments") == [(0,)]


async def test_kill_9_after_an_acknowledged_upload_keeps_it(store):
    server = ServeProcess("--store", store)
    data = (PNG + os.urandom(4 * CHUNK_BYTES + 1))[:4 * CHUNK_BYTES + 1]
    try:
        port = port_of(await server.ready()).port
        status, _, body = parsed(await raw_http(port, (
            f"POST /v1/attachments?name=kept.png HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {ADA}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data, timeout=30))
        assert status == 201
        answer = json.loads(body)
        server.kill()  # at once after the answer
    finally:
        server.kill()
    server = ServeProcess("--store", store)
    try:
        url = await server.ready()
        status, fields, body = await ask(port_of(url).port, "GET",
                                         f"/v1/attachments/{answer['attachment_id']}", ADA)
        assert status == 200 and body == data
        assert hashlib.sha256(body).hexdigest() == answer["sha256"]
        assert fields["content-type"] == "image/png"
        async with open_client(url, ADA) as client:
            await client.join("main")
            await client.request({"type": "send", "thread_id": "main", "text": "kept?",
                                  "attachments": [answer["attachment_id"]]})
            with trio.fail_after(20):
                while (event := await client.next_event())["event"] != "agent_completed":
                    pass
            assert event["data"]["text"] == f"kept?\n[kept.png, {len(data)} bytes, image/png]"
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    finally:
        server.kill()
