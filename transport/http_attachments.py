"""The attachment routes of the HTTP API (PROTOCOL.md 1.1, "Attachments"; ``HTTP.md``): an
upload streamed into the store, a download streamed out of it. Routed by ``http_api.ROUTES``;
a ``send`` names what was uploaded (``codec.py``, ``ThreadHandle.send``).

- ``POST /v1/attachments?name=NAME``: the body is the file, ``Content-Type`` its type. 201
  ``{"type": "attachment", "attachment_id", "name", "content_type", "size", "sha256"}`` once
  ``Journal.finish_upload`` returned: durable.
- ``GET /v1/attachments/{attachment_id}``: the bytes, with headers under which nothing
  uploaded can run in the page's origin (``download_headers``).

Invariants:

- One user's: the user is the token's (``Call.user``), and every store call is addressed by
  (that user, the attachment id). Another user's id reads as nothing: 404 ``not_found``,
  exactly as an id never made.
- An upload is judged at its head, before a byte of its body is read or anything stored:
  its name (400 ``bad_frame``), its declared type against ``Limits.attachment_types`` (415
  ``unsupported_type``), a ``Content-Length`` over ``attachment_bytes`` (413 ``too_large``)
  or over what the user has left of ``user_attachment_bytes`` (429 ``limit_reached``).
- Never held whole: the body is read a piece at a time (``RequestReader.body``) into one
  buffer of at most ``CHUNK_BYTES``; each full buffer is a chunk, written durably and counted
  against the user's quota by the store in the same write (``Journal.write_chunk``: the quota
  holds across the user's connections and a cluster's nodes), then hashed. A server holds at
  most a chunk and a read per upload, whatever the file's size.
- Checked before stored: the first chunk (the whole file, when shorter) of a declared image
  type with known magic bytes (``MAGIC``: png, jpeg, gif, webp) must begin with them, else
  415 and nothing stored: ``begin_upload`` comes after the check.
- All or nothing: any failure once ``begin_upload`` was called (the body over the limit, the
  quota, the client gone, too slow, the store, a cancellation) erases the upload
  (``abort_upload``, shielded and bounded by ``ABORT_TIMEOUT``) before it is answered (if the
  socket still stands). What an abort could not erase (the store down, ``kill -9``) stays an
  unfinished upload, invisible to every read, which the sweeper erases
  (``Journal.sweep_attachments``). A 201 is never sent for an upload that is not durable.
- Bounded in time: the body must arrive within ``upload_timeout`` of its head, and no read
  may wait more than ``upload_idle_timeout``; past either, 408 ``timeout`` and the upload is
  erased. Only the reads are bounded so, never a store write: a write is never cut halfway.
- A download holds a few chunks (``READ_CHUNKS``) at a time, read from the store as the
  client reads (``Streamed``: each write within ``WRITE_TIMEOUT``). Its first chunks are read
  before its head is written, so that an unavailable store is still a 503; a failure after
  the head cuts the body short (the client sees fewer bytes than ``Content-Length``).

Decisions where PROTOCOL.md is silent (HTTP.md says them to clients): the stored type is the
declared media type alone, lower-case, without parameters (``; charset=...`` is not kept:
every consumer compares one plain type); a name is 1-255 characters without ``/``, ``\\``,
control characters, invisible format characters (bidirectional overrides among them) or line
separators, not blank, not ending with a space or a dot, and not ``.`` or ``..``; an empty file is
stored (but an empty image is no image: 415); only the four types of ``MAGIC`` are served
``inline``, every other type (an operator's ``image/svg+xml`` included) as ``attachment``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import unicodedata
from typing import TYPE_CHECKING, Any, AsyncIterator
from urllib.parse import quote

import trio
from websockets.http11 import Request

from threadline.actors.attachments import CHUNK_BYTES, MAX_NAME, Attachment
from threadline.actors.engine import new_id
from threadline.actors.errors import ActorStopped, AskTimeout, JournalUnavailable, LimitReached

from .codec import is_attachment_id, storable
from .http import Streamed
from .http_call import Call, Refused
from .http_front import ClientGone, Malformed, RequestReader
from .limits import Limits
from .messages import (BAD_FRAME, LIMIT_REACHED, NOT_FOUND, TIMEOUT, TOO_LARGE,
                       UNSUPPORTED_TYPE)

if TYPE_CHECKING:
    from threadline.actors.journal import Journal

    from .http_api import HttpApi

log = logging.getLogger("threadline.http")

#: The first bytes of each image type checked: a file declared so must begin with one of them.
MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),  # and b"WEBP" at offset 8: ``_is_image``
}
READ_CHUNKS = 4         # chunks a download reads from the store at a time (1 MiB)
ABORT_TIMEOUT = 10.0    # seconds an abort may take before it is left to the sweeper
#: Characters a name may not hold beside the control characters: the bidirectional overrides
#: and isolates, with which "photo\u202egnp.exe" shows as "photoexe.png".
BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
#: Format characters a name may hold: the zero width joiner (emoji sequences: 👩‍💻) and
#: non-joiner (Persian, Indic scripts).
JOINERS = frozenset("\u200d\u200c")
CSP = "default-src 'none'; sandbox"
MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,63}/[a-z0-9!#$&^_.+-]{1,63}")  # RFC 6838


# -- the upload ----------------------------------------------------------------------------------

async def upload(api: HttpApi, call: Call, request: Request,
                 reader: RequestReader) -> tuple[int, dict[str, Any]]:
    """``POST /v1/attachments?name=NAME``: the body, stored as it arrives (see the header).
    Counts its outcome (``ServerStats.attachment_uploads``)."""
    outcome = "failed"
    try:
        stored = await _upload(api, call, request, reader)
        outcome = "stored"
        api.stats.attachment_bytes_uploaded += stored.size
        return 201, {"type": "attachment", "attachment_id": stored.attachment_id,
                     "name": stored.name, "content_type": stored.content_type,
                     "size": stored.size, "sha256": stored.sha256}
    except BaseException as exc:
        outcome = outcome_of(exc)
        raise
    finally:
        api.stats.attachment_uploads[outcome] = api.stats.attachment_uploads.get(outcome, 0) + 1


def outcome_of(exc: BaseException) -> str:
    """How an upload that raised ``exc`` ended, as ``threadline_attachment_uploads_total``
    counts it."""
    if isinstance(exc, Refused):
        return {TOO_LARGE: "too_large", UNSUPPORTED_TYPE: "unsupported_type",
                LIMIT_REACHED: "limit_reached", BAD_FRAME: "bad_request",
                TIMEOUT: "aborted"}.get(exc.code, "failed")
    if isinstance(exc, ClientGone):
        return "aborted"
    if isinstance(exc, Malformed):
        return "too_large" if exc.status == 413 else "bad_request"
    if isinstance(exc, LimitReached):
        return "limit_reached"
    if isinstance(exc, (trio.Cancelled, trio.BrokenResourceError, trio.ClosedResourceError,
                        OSError)):
        return "aborted"
    return "failed"


async def _upload(api: HttpApi, call: Call, request: Request,
                  reader: RequestReader) -> Attachment:
    limits: Limits = api.limits
    name = file_name(call.query.get("name"))
    content_type = declared_type(request.headers.get_all("Content-Type"),
                                 limits.attachment_types)
    journal: Journal = api.gateway.journal
    user_id = call.user.user_id
    pieces = reader.body(limits.attachment_bytes)  # Content-Length over it: 413, unread
    if reader.length is not None and (
            await journal.attachment_bytes(user_id) + reader.length
            > limits.user_attachment_bytes):
        raise LimitReached(f"at most {limits.user_attachment_bytes} bytes of attachments a "
                           "user")
    writer = ChunkWriter(journal, user_id, new_id("att"), name, content_type,
                         limits.user_attachment_bytes)
    whole = trio.current_time() + limits.upload_timeout
    try:
        while True:
            with trio.CancelScope(deadline=min(trio.current_time() + limits.upload_idle_timeout,
                                               whole)) as reading:
                try:
                    piece = await pieces.__anext__()
                except StopAsyncIteration:
                    break
            if reading.cancelled_caught:
                raise Refused(TIMEOUT, (f"the upload took longer than {limits.upload_timeout:g} s"
                                        if trio.current_time() >= whole else
                                        f"no byte of the upload came for "
                                        f"{limits.upload_idle_timeout:g} s"))
            await writer.feed(piece)
        return await writer.finish()
    except BaseException:
        await writer.abort()
        raise


class ChunkWriter:
    """One upload into the store: ``feed`` the body's pieces, then ``finish`` (or ``abort``).
    Holds at most one chunk; checks the magic bytes before its first write."""

    def __init__(self, journal: Journal, user_id: str, attachment_id: str, name: str,
                 content_type: str, quota: int) -> None:
        self.journal, self.user_id, self.attachment_id = journal, user_id, attachment_id
        self.name, self.content_type, self.quota = name, content_type, quota
        self.buffer = bytearray()
        self.chunks = 0
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.begun = False

    async def feed(self, piece: bytes | bytearray) -> None:
        view = memoryview(piece)
        while view:
            room = CHUNK_BYTES - len(self.buffer)
            self.buffer += view[:room]
            view = view[room:]
            if len(self.buffer) == CHUNK_BYTES:
                await self._write()

    async def finish(self) -> Attachment:
        if self.buffer or not self.begun:
            await self._write()
        return await self.journal.finish_upload(self.user_id, self.attachment_id, self.size,
                                                self.sha256.hexdigest())

    async def _write(self) -> None:
        if not self.begun:
            check_magic(self.content_type, self.buffer)
            self.begun = True  # from here on, a failure aborts (even a begin that failed)
            await self.journal.begin_upload(self.user_id, self.attachment_id, self.name,
                                            self.content_type, time.time())
        if not self.buffer:
            return  # an empty file: no chunk
        chunk = bytes(self.buffer)
        self.buffer.clear()
        await self.journal.write_chunk(self.user_id, self.attachment_id, self.chunks, chunk,
                                       self.quota)
        self.chunks += 1
        self.size += len(chunk)
        self.sha256.update(chunk)

    async def abort(self) -> None:
        """Erase what was stored of the upload, whatever cancels the caller; an abort that
        fails or hangs is logged and left to the sweeper."""
        if not self.begun:
            return
        with trio.CancelScope(shield=True):
            with trio.move_on_after(ABORT_TIMEOUT) as aborting:
                try:
                    await self.journal.abort_upload(self.user_id, self.attachment_id)
                    return
                except Exception as exc:
                    log.warning("an upload of %s could not be erased (the sweeper will): %r",
                                self.user_id, exc)
                    return
            if aborting.cancelled_caught:
                log.warning("erasing an upload of %s took longer than %g s (the sweeper will)",
                            self.user_id, ABORT_TIMEOUT)


def file_name(name: str | None) -> str:
    """The ``name`` query parameter, checked (``Refused`` 400 ``bad_frame``)."""
    if not name:
        raise Refused(BAD_FRAME, "missing name: POST /v1/attachments?name=NAME")
    if len(name) > MAX_NAME:
        raise Refused(BAD_FRAME, f"name longer than {MAX_NAME} characters")
    if name in (".", "..") or "/" in name or "\\" in name:
        raise Refused(BAD_FRAME, "name must be a file name, without / or \\")
    # Cc: control characters; Cf: invisible format characters (bidi marks and overrides, zero
    # widths, the BOM), but the joiners that emoji and some scripts need; Zl, Zp: line and
    # paragraph separators.
    if not storable(name) or any(
            c in BIDI or (unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c not in JOINERS)
            for c in name):
        raise Refused(BAD_FRAME, "name must be valid Unicode without control or invisible "
                      "characters")
    if not name.strip() or name != name.rstrip(" ."):
        raise Refused(BAD_FRAME, "name must not be blank, nor end with a space or a dot")
    return name


def declared_type(values: list[str], allowed: tuple[str, ...]) -> str:
    """The media type of the request's ``Content-Type`` (lower-case, without parameters), if
    ``allowed`` names it (``type/*``: any of that type); else ``Refused`` 415."""
    if len(values) != 1:
        raise Refused(UNSUPPORTED_TYPE, "an upload needs one Content-Type header: the file's "
                      "type" if not values else "more than one Content-Type header")
    kind = values[0].split(";", 1)[0].strip().lower()
    major = kind.partition("/")[0]
    if not MEDIA_TYPE.fullmatch(kind) or not any(
            kind == t or (t.endswith("/*") and t[:-2] == major) for t in allowed):
        shown = kind[:100] if kind.isprintable() else "this type"
        raise Refused(UNSUPPORTED_TYPE, f"{shown} is not allowed: one of "
                      f"{', '.join(allowed) or 'none'}")
    return kind


def check_magic(content_type: str, head: bytes | bytearray) -> None:
    """``Refused`` 415 if ``content_type`` is an image type of ``MAGIC`` and ``head`` (the
    file's first bytes) is not such an image."""
    if content_type in MAGIC and not _is_image(content_type, head):
        raise Refused(UNSUPPORTED_TYPE, f"the file's bytes are not of its type, {content_type}")


def _is_image(content_type: str, head: bytes | bytearray) -> bool:
    if not any(head.startswith(magic) for magic in MAGIC[content_type]):
        return False
    return content_type != "image/webp" or head[8:12] == b"WEBP"


# -- the download --------------------------------------------------------------------------------

async def download(api: HttpApi, call: Call) -> Streamed:
    """``GET /v1/attachments/{attachment_id}``: the user's attachment, streamed."""
    attachment_id = call.params.get("attachment_id")
    if not is_attachment_id(attachment_id):
        raise Refused(BAD_FRAME, "an attachment id is 1-128 characters (valid Unicode, no NUL)")
    assert attachment_id is not None
    journal: Journal = api.gateway.journal
    user_id = call.user.user_id
    found = await journal.attachment(user_id, attachment_id)
    if found is None:
        raise Refused(NOT_FOUND, f"no attachment {attachment_id}")
    first = await journal.attachment_chunks(user_id, attachment_id, 0, READ_CHUNKS)

    async def pieces() -> AsyncIterator[bytes]:
        batch, at = first, 0
        while True:
            for chunk in batch:
                yield chunk
            if len(batch) < READ_CHUNKS:
                return
            at += len(batch)
            try:
                batch = await journal.attachment_chunks(user_id, attachment_id, at,
                                                        READ_CHUNKS)
            except (JournalUnavailable, ActorStopped, AskTimeout) as exc:
                log.warning("a download of %s was cut short: %r", user_id, exc)
                return

    def done() -> None:
        api.stats.attachment_downloads += 1

    return Streamed(200, download_headers(found), found.size, pieces, done)


def download_headers(a: Attachment) -> tuple[tuple[str, str], ...]:
    """What a download is served with: its stored type, never sniffed
    (``X-Content-Type-Options``), saved rather than shown unless it is an image checked at
    upload (``Content-Disposition``), and sandboxed when shown (``Content-Security-Policy``:
    no script, no subresource, a unique origin), so that an uploaded file never runs in the
    page's origin. Never cached: a deleted attachment leaves no copy behind."""
    disposition = "inline" if a.content_type in MAGIC else "attachment"
    return (("Content-Type", a.content_type), ("X-Content-Type-Options", "nosniff"),
            ("Content-Disposition", f"{disposition}; filename*=UTF-8''{quote(a.name, safe='')}"),
            ("Content-Security-Policy", CSP), ("Cache-Control", "no-store"))
