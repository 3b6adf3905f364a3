"""Attachments without sockets (PROTOCOL.md 1.1, "Attachments"): a ``send``'s ``attachments``
in both encodings, the upload's checks (name, declared type, magic bytes), the download's
headers, the ``attachment_types`` limit as ``--limit`` reads it, a body read piece by piece
over an in-memory stream (bounded, refused as soon as it passes its limit, ``100 Continue``
only when asked), and the chunk writer that never holds more than a chunk."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import unquote

import attrs
import msgpack
import pytest
import trio
import trio.testing

from threadline.actors.attachments import CHUNK_BYTES, MAX_NAME, Attachment
from threadline.actors.errors import LimitReached
from threadline.options import limit
from threadline.transport.codec import Codec
from threadline.transport.http_attachments import (ChunkWriter, check_magic, declared_type,
                                                   download_headers, file_name, outcome_of)
from threadline.transport.http_call import Refused
from threadline.transport.http_front import (CONTINUE, ClientGone, Malformed, RequestReader)
from threadline.transport.limits import ATTACHMENT_TYPES, Limits, media_types
from threadline.transport.messages import (BAD_FRAME, JSON, MSGPACK, TIMEOUT, UNSUPPORTED_TYPE,
                                           BadFrame, Send)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
GIF = b"GIF89a\x01\x00\x01\x00"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "
HTML = b"<!doctype html><script>alert(document.cookie)</script>"


def decode(frame: dict, subprotocol: str = JSON):
    codec = Codec(subprotocol)
    if subprotocol == JSON:
        return codec.decode(json.dumps(frame), binary=False)
    return codec.decode(msgpack.packb(frame), binary=True)


# -- send.attachments --------------------------------------------------------------------------

SEND = {"type": "send", "thread_id": "t", "text": "look", "ref": 7}


@pytest.mark.parametrize("subprotocol", [JSON, MSGPACK])
@pytest.mark.parametrize("given, kept", [
    (None, ()),                                             # absent
    ([], ()),
    (["att_1"], ("att_1",)),
    (["att_1", "att_2", "att_1"], ("att_1", "att_2", "att_1")),  # the gateway counts it once
    ([f"att_{i}" for i in range(10)], tuple(f"att_{i}" for i in range(10))),
    (["a" * 128, "é✓"], ("a" * 128, "é✓")),
])
def test_a_sends_attachments_are_decoded(subprotocol, given, kept):
    frame = dict(SEND) if given is None else {**SEND, "attachments": given}
    request = decode(frame, subprotocol)
    assert request == Send(7, "t", "look", None, "enqueue", attachments=kept)


@pytest.mark.parametrize("subprotocol", [JSON, MSGPACK])
@pytest.mark.parametrize("given", [
    None, "att_1", {"id": "att_1"}, 5, True,
    [f"att_{i}" for i in range(11)],                        # over 10
    [""], [None], [5], [["att_1"]], ["a" * 129], ["att\x00"],
])
def test_bad_attachments_are_bad_frames_with_their_ref(subprotocol, given):
    with pytest.raises(BadFrame) as caught:
        decode({**SEND, "attachments": given}, subprotocol)
    assert caught.value.ref == 7 and "attachment" in caught.value.message


def test_a_lone_surrogate_in_an_attachment_id_is_a_bad_frame():
    payload = '{"type": "send", "thread_id": "t", "text": "x", "attachments": ["\\ud800"]}'
    with pytest.raises(BadFrame):
        Codec(JSON).decode(payload, binary=False)


# -- the upload's checks -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["photo.png", "résumé 1.pdf", "a" * MAX_NAME, ".hidden",
                                  "notes (final).txt", "数据.csv", "👩‍💻.txt"])
def test_good_names(name):
    assert file_name(name) == name


@pytest.mark.parametrize("name", [None, "", "a" * (MAX_NAME + 1), "a/b", "..\\x", "/etc",
                                  ".", "..", "tab\there", "new\nline", "nul\x00", "\x7f",
                                  "bell\x07", "photo\u202egnp.exe", "x\u2066y", "\ud800"])
def test_bad_names_are_bad_frames(name):
    with pytest.raises(Refused) as caught:
        file_name(name)
    assert caught.value.code == BAD_FRAME


@pytest.mark.parametrize("header, stored", [
    ("image/png", "image/png"),
    ("IMAGE/PNG", "image/png"),
    ("text/plain; charset=utf-8", "text/plain"),   # the charset is not kept
    ("text/csv", "text/csv"),
    ("text/markdown;charset=UTF-8", "text/markdown"),
    ("  application/json ", "application/json"),
    ("application/pdf", "application/pdf"),
])
def test_allowed_types_are_stored_without_parameters(header, stored):
    assert declared_type([header], ATTACHMENT_TYPES) == stored


@pytest.mark.parametrize("headers", [
    [], ["image/png", "image/png"], ["application/zip"], ["image/svg+xml"], ["text"],
    ["text/"], ["/plain"], ["image/*"], ["application/x-www-form-urlencoded"],
    ["text/pl ain"], ["text/<script>"], ["texts/plain"], [""],
])
def test_other_types_are_unsupported(headers):
    with pytest.raises(Refused) as caught:
        declared_type(headers, ATTACHMENT_TYPES)
    assert caught.value.code == UNSUPPORTED_TYPE


def test_the_operators_list_is_the_list():
    assert declared_type(["application/zip"], ("application/zip",)) == "application/zip"
    with pytest.raises(Refused):
        declared_type(["image/png"], ("application/zip",))
    with pytest.raises(Refused):
        declared_type(["text/plain"], ())  # none: no uploads at all


@pytest.mark.parametrize("content_type, head", [
    ("image/png", PNG), ("image/jpeg", JPEG), ("image/gif", GIF), ("image/gif", b"GIF87a.."),
    ("image/webp", WEBP), ("text/plain", HTML), ("text/html", HTML),
    ("application/pdf", b"%PDF-1.7"), ("text/plain", b""), ("image/bmp", b"BM"),
])
def test_magic_bytes_that_match(content_type, head):
    check_magic(content_type, head)


@pytest.mark.parametrize("content_type, head", [
    ("image/png", HTML), ("image/png", JPEG), ("image/jpeg", PNG), ("image/gif", PNG),
    ("image/webp", b"RIFF\x24\x00\x00\x00AVI LIST"), ("image/webp", b"RIFF"),
    ("image/png", b""), ("image/png", PNG[:7]), ("image/gif", b"GIF90a"),
])
def test_magic_bytes_that_do_not(content_type, head):
    with pytest.raises(Refused) as caught:
        check_magic(content_type, head)
    assert caught.value.code == UNSUPPORTED_TYPE


# -- the download's headers ----------------------------------------------------------------------

def attachment(name: str, content_type: str) -> Attachment:
    return Attachment("ada", "att_1", name, content_type, 3, "ab" * 32, 1.0)


@pytest.mark.parametrize("content_type, disposition", [
    ("image/png", "inline"), ("image/jpeg", "inline"), ("image/gif", "inline"),
    ("image/webp", "inline"), ("image/svg+xml", "attachment"), ("text/html", "attachment"),
    ("text/plain", "attachment"), ("application/pdf", "attachment"),
    ("application/json", "attachment"),
])
def test_only_checked_images_are_inline_and_nothing_runs(content_type, disposition):
    headers = dict(download_headers(attachment("x.bin", content_type)))
    assert headers["Content-Type"] == content_type
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert headers["Content-Disposition"] == f"{disposition}; filename*=UTF-8''x.bin"
    assert headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("name", ["résumé 1.pdf", 'a"b;c.txt', "数据.csv", "100%.txt",
                                  "x'y.txt", "a\\b"[:1] + ",b.txt"])
def test_a_name_is_percent_encoded_in_utf8(name):
    value = dict(download_headers(attachment(name, "text/plain")))["Content-Disposition"]
    encoded = value.removeprefix("attachment; filename*=UTF-8''")
    assert encoded.isascii() and not set(encoded) & set(" \"';,\\")
    assert unquote(encoded, errors="strict") == name


# -- attachment_types as a limit -----------------------------------------------------------------

def test_attachment_limits_by_default():
    limits = Limits()
    assert limits.attachment_bytes == 20 * 1024 * 1024
    assert limits.user_attachment_bytes == 1024 ** 3
    assert limits.attachment_types == ("image/png", "image/jpeg", "image/gif", "image/webp",
                                       "text/*", "application/pdf", "application/json")
    assert (limits.upload_timeout, limits.upload_idle_timeout) == (120.0, 10.0)


@pytest.mark.parametrize("text, types", [
    ("attachment_types=image/png,text/*", ("image/png", "text/*")),
    ("attachment_types=Image/PNG; text/plain  application/pdf",
     ("image/png", "text/plain", "application/pdf")),
    ("attachment_types=image/png,image/png", ("image/png",)),
    ("attachment_types=none", ()),
])
def test_attachment_types_as_a_limit(text, types):
    assert limit(text) == ("attachment_types", types)
    assert Limits(**dict([limit(text)])).attachment_types == types


@pytest.mark.parametrize("text", ["attachment_types=png", "attachment_types=*/*",
                                  "attachment_types=image/png,<script>",
                                  "attachment_types=image/png/x"])
def test_bad_attachment_types(text):
    with pytest.raises(ValueError):
        limit(text)


def test_the_other_attachment_limits_are_numbers():
    assert limit("attachment_bytes=1000") == ("attachment_bytes", 1000)
    assert limit("user_attachment_bytes=5000000") == ("user_attachment_bytes", 5000000)
    assert limit("upload_timeout=30") == ("upload_timeout", 30.0)
    assert limit("upload_idle_timeout=0.5") == ("upload_idle_timeout", 0.5)
    with pytest.raises(ValueError):
        limit("attachment_bytes=1.5")
    with pytest.raises(ValueError):
        limit("upload_timeout=0")
    assert media_types(["text/*"]) == ("text/*",)


# -- a body piece by piece -----------------------------------------------------------------------

async def reader_of(head: bytes) -> tuple[RequestReader, trio.abc.Stream]:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(head)
    reader = RequestReader(server)
    assert await reader.read_head() is not None
    return reader, client


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)


async def test_a_content_length_over_the_limit_is_refused_before_a_byte_is_read():
    reader, client = await reader_of(b"POST /v1/attachments HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 1001\r\nExpect: 100-continue\r\n\r\n")
    with pytest.raises(Malformed) as caught:
        reader.body(1000)
    assert caught.value.status == 413
    with trio.move_on_after(0.2) as waiting:  # no 100 Continue was sent: nothing at all
        await client.receive_some()
    assert waiting.cancelled_caught


async def test_pieces_come_as_they_arrive_and_100_continue_only_when_asked():
    reader, client = await reader_of(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                                     b"Expect: 100-continue\r\n\r\n")
    pieces = reader.body(10)
    async with trio.open_nursery() as nursery:
        got = []

        async def read() -> None:
            async for piece in pieces:
                got.append(bytes(piece))
        nursery.start_soon(read)
        with trio.fail_after(5):
            assert await client.receive_some() == CONTINUE
        await client.send_all(b"hello")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [b"hello"]  # handed over before the rest came
        await client.send_all(b"world")
    assert got == [b"hello", b"world"] and pieces.received == 10


async def test_a_chunked_body_is_refused_by_the_piece_that_passes_the_limit():
    reader, client = await reader_of(b"POST / HTTP/1.1\r\nHost: x\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n")
    pieces = reader.body(25)
    await client.send_all(chunked(b"a" * 10, b"b" * 10))
    assert bytes(await pieces.__anext__()) == b"a" * 10
    assert bytes(await pieces.__anext__()) == b"b" * 10
    await client.send_all(chunked(b"c" * 6))  # 26: one byte over
    with pytest.raises(Malformed) as caught:
        await pieces.__anext__()
    assert caught.value.status == 413 and pieces.received == 20
    with pytest.raises(StopAsyncIteration):  # and nothing more is read
        await pieces.__anext__()


async def test_a_body_of_exactly_the_limit_passes():
    reader, client = await reader_of(b"POST / HTTP/1.1\r\nHost: x\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n")
    await client.send_all(chunked(b"x" * 25) + b"0\r\n\r\n")
    assert [bytes(p) async for p in reader.body(25)] == [b"x" * 25]


async def test_a_client_gone_mid_body_is_told_apart():
    reader, client = await reader_of(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    pieces = reader.body(1000)
    await client.send_all(b"x" * 10)
    assert bytes(await pieces.__anext__()) == b"x" * 10
    await client.aclose()
    with pytest.raises(ClientGone):
        await pieces.__anext__()


async def test_read_body_still_reads_a_whole_body_into_one_buffer():
    reader, client = await reader_of(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n"
                                     b"{}  ")
    body = await reader.read_body(4)
    assert body == bytearray(b"{}  ") and type(body) is bytearray


# -- the chunk writer --------------------------------------------------------------------------

@attrs.define
class Recorder:
    """A journal that records what an upload writes, and the most the writer held meanwhile."""

    writer: ChunkWriter | None = None
    calls: list[tuple] = attrs.Factory(list)
    held: int = 0
    quota_left: int | None = None

    async def begin_upload(self, *args):
        self.calls.append(("begin", *args[:4]))

    async def write_chunk(self, user_id, attachment_id, n, data, quota):
        assert self.writer is not None
        self.held = max(self.held, len(self.writer.buffer) + len(data))
        if self.quota_left is not None:
            if len(data) > self.quota_left:
                raise LimitReached("quota")
            self.quota_left -= len(data)
        self.calls.append(("chunk", n, len(data), quota))

    async def finish_upload(self, user_id, attachment_id, size, sha256):
        self.calls.append(("finish", size, sha256))
        return Attachment(user_id, attachment_id, "f", "image/png", size, sha256, 0.0)

    async def abort_upload(self, user_id, attachment_id):
        self.calls.append(("abort",))


def writer(journal: Recorder, content_type: str = "image/png", quota: int = 10**9):
    w = ChunkWriter(journal, "ada", "att_1", "f", content_type, quota)  # type: ignore[arg-type]
    journal.writer = w
    return w


async def test_chunks_are_whole_but_the_last_and_never_more_than_one_is_held():
    journal = Recorder()
    w = writer(journal)
    data = PNG + bytes(range(256)) * (4 * CHUNK_BYTES // 256)  # four chunks and a bit
    pieces = [data[i:i + 65_537] for i in range(0, len(data), 65_537)]  # odd-sized pieces
    for piece in pieces:
        await w.feed(piece)
        assert len(w.buffer) < CHUNK_BYTES
    stored = await w.finish()
    assert journal.calls[0] == ("begin", "ada", "att_1", "f", "image/png")
    sizes = [c[2] for c in journal.calls if c[0] == "chunk"]
    assert sizes == [CHUNK_BYTES] * 4 + [len(data) - 4 * CHUNK_BYTES]
    assert [c[1] for c in journal.calls if c[0] == "chunk"] == [0, 1, 2, 3, 4]
    assert journal.held <= CHUNK_BYTES  # the chunk handed over, nothing beside it
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()


async def test_magic_bytes_are_checked_before_anything_is_stored():
    journal = Recorder()
    w = writer(journal)
    with pytest.raises(Refused):
        await w.feed(HTML * (CHUNK_BYTES // len(HTML) + 1))
    await w.abort()
    assert journal.calls == []  # not even begun, so nothing to abort
    short = Recorder()
    with pytest.raises(Refused):
        await writer(short).finish()  # an empty "image"
    assert short.calls == []


async def test_an_empty_text_file_is_stored_without_a_chunk():
    journal = Recorder()
    stored = await writer(journal, "text/plain").finish()
    assert [c[0] for c in journal.calls] == ["begin", "finish"]
    assert stored.size == 0 and stored.sha256 == hashlib.sha256(b"").hexdigest()


async def test_an_abort_after_the_quota_is_shielded_from_cancellation():
    journal = Recorder(quota_left=CHUNK_BYTES)
    w = writer(journal, "text/plain")
    with pytest.raises(LimitReached):
        await w.feed(b"x" * (2 * CHUNK_BYTES))
    with trio.CancelScope() as scope:
        scope.cancel()
        await w.abort()  # runs although its caller is cancelled
    assert journal.calls[-1] == ("abort",)


@pytest.mark.parametrize("exc, outcome", [
    (Refused(TIMEOUT, "slow"), "aborted"), (ClientGone(), "aborted"),
    (Malformed(413, "big"), "too_large"), (Malformed(400, "bad"), "bad_request"),
    (Refused(UNSUPPORTED_TYPE, "x"), "unsupported_type"), (LimitReached("q"), "limit_reached"),
    (Refused(BAD_FRAME, "name"), "bad_request"), (RuntimeError("bug"), "failed"),
    (trio.BrokenResourceError(), "aborted"),
])
def test_outcomes(exc, outcome):
    assert outcome_of(exc) == outcome
