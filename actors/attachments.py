"""Attachments (PROTOCOL.md 1.1, "Attachments"): files a user uploads, then names in a ``send``;
stored with the conversation, seen by the agent.

An attachment's bytes live in the store beside the events, in chunks of ``CHUNK_BYTES``
(``Journal.write_chunk``), so that neither an upload nor a download ever holds a whole file,
and so that a thread's or a user's deletion erases its bytes in the same transactions as its
events. Invariants:

- Stored before acknowledged: an upload is answered only once its last chunk and its record
  are durable (``Journal.finish_upload``); until then it is invisible (``Journal.attachment``
  answers None), and one cut off (a client gone, ``kill -9``) is swept.
- One user's: every read and write is addressed by ``(user_id, attachment_id)``, the user from
  the verified token; another user's id reads as nothing, everywhere.
- Bounded: at most ``MAX_BYTES`` a file (configurable) and a quota of bytes per user, counted
  by the store in the transaction that writes each chunk, so it holds across the user's
  connections and a cluster's nodes; at most ``MAX_PER_MESSAGE`` a message.
- A message's attachments belong to its thread: the send claims them for it in the store, all
  or none and before its ``user_message`` is stored (``Journal.claim_attachments``); naming
  one of another thread is ``NotFound``, and of two threads claiming one at once, one wins.
  Deleting the thread deletes them; one never sent is deleted ``UNSENT_TTL`` after its upload.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Final

import attrs

if TYPE_CHECKING:
    from .journal import Journal

CHUNK_BYTES: Final = 256 * 1024     # bytes a stored chunk holds (the last one may hold fewer)
MAX_BYTES: Final = 20 * 1024 * 1024  # PROTOCOL.md: at most 20 MiB a file (the default limit)
USER_BYTES: Final = 1024 ** 3        # PROTOCOL.md: at most 1 GiB stored a user (the default)
MAX_PER_MESSAGE: Final = 10          # PROTOCOL.md: up to 10 attachment ids a send
UNSENT_TTL: Final = 24 * 3600.0      # seconds an attachment never sent is kept
UPLOAD_TTL: Final = 3600.0           # seconds an upload never finished (cut off) is kept
MAX_NAME: Final = 255                # characters of a file name


@attrs.frozen(slots=True)
class Attachment:
    """A stored attachment: what the store keeps of it beside its bytes."""

    user_id: str
    attachment_id: str
    name: str
    content_type: str
    size: int         # bytes
    sha256: str       # hex
    created_at: float
    thread_id: str | None = None  # the thread whose message named it first; None: unsent

    def wire(self) -> dict[str, Any]:
        """As a ``user_message`` lists it (PROTOCOL.md)."""
        return {"attachment_id": self.attachment_id, "name": self.name,
                "content_type": self.content_type, "size": self.size}


@attrs.frozen(slots=True)
class RunAttachment:
    """An attachment of the message a run answers, as its agent sees it (``run.attachments``):
    its metadata, and ``read()`` for its bytes (read from the store when called)."""

    attachment_id: str
    name: str
    content_type: str
    size: int
    read: Callable[[], Awaitable[bytes]] = attrs.field(repr=False, eq=False)


READ_CHUNKS: Final = 16  # chunks a store read takes (4 MiB)


async def read_bytes(journal: Journal, user_id: str, attachment_id: str) -> bytes:
    """The whole of the user's attachment, read ``READ_CHUNKS`` chunks at a time (empty for
    one that is gone, or another user's)."""
    out = bytearray()
    first = 0
    while True:
        chunks = await journal.attachment_chunks(user_id, attachment_id, first, READ_CHUNKS)
        for chunk in chunks:
            out += chunk
        if len(chunks) < READ_CHUNKS:
            return bytes(out)
        first += READ_CHUNKS


def for_run(journal: Journal, user_id: str, listed: list[dict[str, Any]]) -> list[RunAttachment]:
    """A run's ``run.attachments``, from its message's list (``user_message.attachments``)."""
    return [RunAttachment(str(a.get("attachment_id")), str(a.get("name", "")),
                          str(a.get("content_type", "")), int(a.get("size", 0)),
                          partial(read_bytes, journal, user_id, str(a.get("attachment_id"))))
            for a in listed]
