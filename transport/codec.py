"""Sans-IO codec of protocol v1: client frames to ``Request`` objects, server frames to bytes.

No I/O: ``decode`` takes a whole WebSocket message's payload, ``encode_*`` return the payload to
send. Every rule of PROTOCOL.md's "Frames from the client" is checked here, so the session only
ever sees well-typed requests; anything else raises ``BadFrame`` with a message a client author
can act on.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import msgpack

from threadline.actors.approval import MAX_REASON_BYTES
from threadline.actors.attachments import MAX_PER_MESSAGE
from threadline.actors.tracing import traceparent_of
from threadline.actors.journal import unstorable_reason
from threadline.actors.messages import LATEST, STRATEGIES, Event, Parent, Strategy, is_thread_id

from .frames import EventFrame, ServerFrame, event_wire
from .messages import (
    JSON,
    MSGPACK,
    BadFrame,
    Cancel,
    Decide,
    Join,
    Leave,
    Ping,
    Ref,
    Regenerate,
    Request,
    Send,
    Threads,
)

MAX_TEXT_BYTES = 64 * 1024      # PROTOCOL.md: send.text is at most 64 KiB
MAX_REF_CHARS = 64              # PROTOCOL.md: ref is a string of at most 64 characters
MAX_CLIENT_MSG_ID = 256         # not in PROTOCOL.md: bounds what a client can make us store
MAX_RUN_ID = 256
MAX_CALL_ID = 256
MAX_TREE_ID = 128               # 1.1: a send's parent (a run id), a regenerate's message_id
MAX_ATTACHMENT_ID = 128         # 1.1: an attachment id (a send's ``attachments``, a download's)
THREADS_PAGE = 100              # PROTOCOL.md (ours): a threads page, by default ...
MAX_THREADS_PAGE = 1000         # ... and at most; 1,000 entries stay far below the frame limit
MAX_CURSOR = 512


#: Events whose payloads are kept, per encoding (see ``Codec.encode_event``): enough for a
#: round of deliveries to every tab of a thread.
EVENT_CACHE = 256
_EVENTS: dict[str, dict[int, tuple[Event, bytes]]] = {JSON: {}, MSGPACK: {}}


class Codec:
    """One connection's encoding: ``threadline.v1.json`` (text frames) or
    ``threadline.v1.msgpack`` (binary frames). Clients use it too, with ``decode_frame``."""

    def __init__(self, subprotocol: str = JSON) -> None:
        if subprotocol not in (JSON, MSGPACK):
            raise ValueError(f"unknown subprotocol {subprotocol!r}")
        self.subprotocol = subprotocol
        self.binary = subprotocol == MSGPACK
        self._dumps: Callable[[Any], bytes] = _pack if self.binary else _dumps
        self._events = _EVENTS[subprotocol]  # shared by every connection of the encoding

    # -- client frames ---------------------------------------------------------------------

    def decode(self, payload: bytes | str, *, binary: bool) -> Request:
        """Decode and validate one client message. Raises ``BadFrame``."""
        if binary != self.binary:
            kind = "binary" if self.binary else "text"
            raise BadFrame(f"{self.subprotocol} expects {kind} frames")
        if isinstance(payload, bytes) and not self.binary:
            # json.loads(bytes) decodes with surrogatepass, letting encoded surrogates in; the
            # connection has already refused a text frame that is not UTF-8 (close 1007).
            try:
                payload = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise BadFrame("a text frame must be valid UTF-8") from None
        try:
            obj = msgpack.unpackb(payload, raw=False) if self.binary else json.loads(payload)
        except Exception:
            raise BadFrame("not valid " + ("msgpack" if self.binary else "JSON")) from None
        return parse_request(obj)

    def decode_frame(self, payload: bytes) -> dict[str, Any]:
        """A server frame as a dict (the client's side). Raises ``ValueError``."""
        obj = msgpack.unpackb(payload, raw=False) if self.binary else json.loads(payload)
        if not isinstance(obj, dict):
            raise ValueError("a frame must be an object")
        return obj

    # -- server frames ---------------------------------------------------------------------

    def encode_client_frame(self, frame: dict[str, Any]) -> bytes:
        """The payload of a client's frame (the client's side: it builds them as dicts)."""
        return self._dumps(frame)

    def encode(self, frame: ServerFrame) -> bytes:
        """The payload of one frame (UTF-8 JSON for a text frame, msgpack for a binary one)."""
        if type(frame) is EventFrame:
            return self.encode_event(frame.event)
        return self._dumps(frame.wire())

    def encode_event(self, event: Event) -> bytes:
        """The payload of ``event``'s frame, encoded once per encoding whatever the number of
        connections it goes to (``frames.py``): the last ``EVENT_CACHE`` events' are kept."""
        cache = self._events
        hit = cache.get(id(event))
        if hit is not None and hit[0] is event:  # the entry holds the event: its id is its own
            return hit[1]
        payload = self._dumps(event_wire(event))
        if len(cache) >= EVENT_CACHE:
            cache.clear()
        cache[id(event)] = (event, payload)
        return payload


def _dumps(frame: dict[str, Any]) -> bytes:
    # default=str: a tool result that is not JSON-able is shown as text, never a dead writer.
    text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False, default=str)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate the stores should have refused: escaped as \udXXX, still valid
        # UTF-8 and valid JSON, so one odd string never kills a connection's writer.
        return json.dumps(frame, separators=(",", ":"), default=str).encode("ascii")


def _pack(frame: dict[str, Any]) -> bytes:
    try:
        return msgpack.packb(frame, default=str)
    except UnicodeEncodeError:  # as above
        return msgpack.packb(frame, default=str, unicode_errors="backslashreplace")


# -- validation ------------------------------------------------------------------------------


def parse_request(obj: Any) -> Request:
    if not isinstance(obj, dict):
        raise BadFrame("a frame must be an object")
    ref = _ref(obj)
    kind = obj.get("type")
    parse = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parse is None:
        raise BadFrame("missing type" if kind is None else f"unknown type {kind!r}"[:100], ref)
    return parse(obj, ref)


def storable(value: str) -> bool:
    """A string every store can hold and every encoding can carry: the journals' own rule
    (``threadline.actors.journal.unstorable_reason``: no lone surrogate, which JSON's \\ud800 escape
    can smuggle in, and no NUL, which PostgreSQL refuses)."""
    return unstorable_reason(value) is None


def _ref(obj: dict[str, Any]) -> Ref:
    ref = obj.get("ref")
    if ref is None:
        return None
    if isinstance(ref, bool) or not isinstance(ref, (str, int)):
        raise BadFrame("ref must be a string or an integer")
    if isinstance(ref, int) and not -2**63 <= ref < 2**64:
        raise BadFrame("ref must fit in 64 bits")  # msgpack carries no more: echoed as sent
    if isinstance(ref, str) and len(ref) > MAX_REF_CHARS:
        raise BadFrame(f"ref longer than {MAX_REF_CHARS} characters")
    if isinstance(ref, str) and not storable(ref):
        raise BadFrame("ref must be valid Unicode without NUL characters")
    return ref


def _thread_id(obj: dict[str, Any], ref: Ref) -> str:
    value = obj.get("thread_id")
    if value is None:
        raise BadFrame("missing thread_id", ref)
    if not is_thread_id(value):
        raise BadFrame("thread_id must be 1-128 characters of A-Z a-z 0-9 _ . : -", ref)
    return value


def _optional_str(obj: dict[str, Any], field: str, ref: Ref, limit: int) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadFrame(f"{field} must be a string of 1-{limit} characters", ref)
    if not storable(value):
        raise BadFrame(f"{field} must be valid Unicode without NUL characters", ref)
    return value


def _join(obj: dict[str, Any], ref: Ref) -> Join:
    thread_id = _thread_id(obj, ref)
    since = obj.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        raise BadFrame("since must be an integer >= 0", ref)
    return Join(ref, thread_id, since)


def _leave(obj: dict[str, Any], ref: Ref) -> Leave:
    return Leave(ref, _thread_id(obj, ref))


def _send(obj: dict[str, Any], ref: Ref) -> Send:
    thread_id = _thread_id(obj, ref)
    text = obj.get("text")
    if not isinstance(text, str):
        raise BadFrame("missing text" if text is None else "text must be a string", ref)
    if not storable(text):
        raise BadFrame("text must be valid Unicode without NUL characters", ref)
    # Characters are at most 4 UTF-8 bytes: encode only when the length alone cannot tell.
    if len(text) > MAX_TEXT_BYTES // 4 and len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise BadFrame("text longer than 64 KiB", ref)
    strategy = _strategy(obj, ref)
    client_msg_id = _optional_str(obj, "client_msg_id", ref, MAX_CLIENT_MSG_ID)
    return Send(ref, thread_id, text, client_msg_id, strategy, _parent(obj, ref),
                _attachments(obj, ref), traceparent_of(obj.get("traceparent")))


def _strategy(obj: dict[str, Any], ref: Ref) -> Strategy:
    strategy = obj.get("strategy")
    if strategy is None:
        return "enqueue"
    if strategy not in STRATEGIES:
        raise BadFrame("strategy must be enqueue, interrupt or reject", ref)
    return strategy


def _parent(obj: dict[str, Any], ref: Ref) -> Parent:
    """1.1: a send's ``parent``: absent, ``LATEST`` (the thread's newest run); null (JSON
    ``null``, msgpack nil), None: a new root; else a run id (whether the thread has that run
    is the thread's to say: ``not_found``)."""
    if "parent" not in obj:
        return LATEST
    value = obj["parent"]
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TREE_ID:
        raise BadFrame(f"parent must be null or a run id of 1-{MAX_TREE_ID} characters", ref)
    if not storable(value):
        raise BadFrame("parent must be valid Unicode without NUL characters", ref)
    return value


def is_attachment_id(value: Any) -> bool:
    """1-128 characters, storable: what an attachment id may be (whose it is, and whether it
    exists, is the store's to say: ``not_found``)."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_ATTACHMENT_ID
            and storable(value))


def _attachments(obj: dict[str, Any], ref: Ref) -> tuple[str, ...]:
    """1.1: a send's ``attachments``: absent (none), or a list of at most 10 attachment ids
    (``null`` and anything else are ``bad_frame``). An id given twice counts once."""
    if "attachments" not in obj:
        return ()
    value = obj["attachments"]
    if not isinstance(value, list) or len(value) > MAX_PER_MESSAGE:
        raise BadFrame(f"attachments must be a list of at most {MAX_PER_MESSAGE} attachment "
                       "ids", ref)
    if not all(is_attachment_id(item) for item in value):
        raise BadFrame(f"an attachment id is a string of 1-{MAX_ATTACHMENT_ID} characters "
                       "(valid Unicode, no NUL)", ref)
    return tuple(value)


def _regenerate(obj: dict[str, Any], ref: Ref) -> Regenerate:
    thread_id = _thread_id(obj, ref)
    message_id = _optional_str(obj, "message_id", ref, MAX_TREE_ID)
    if message_id is None:
        raise BadFrame("missing message_id", ref)
    strategy = _strategy(obj, ref)
    client_msg_id = _optional_str(obj, "client_msg_id", ref, MAX_CLIENT_MSG_ID)
    return Regenerate(ref, thread_id, message_id, client_msg_id, strategy,
                      traceparent_of(obj.get("traceparent")))


def _cancel(obj: dict[str, Any], ref: Ref) -> Cancel:
    return Cancel(ref, _thread_id(obj, ref), _optional_str(obj, "run_id", ref, MAX_RUN_ID))


def _decide(obj: dict[str, Any], ref: Ref) -> Decide:
    thread_id = _thread_id(obj, ref)
    run_id = _optional_str(obj, "run_id", ref, MAX_RUN_ID)
    call_id = _optional_str(obj, "call_id", ref, MAX_CALL_ID)
    if run_id is None or call_id is None:
        raise BadFrame(f"missing {'run_id' if run_id is None else 'call_id'}", ref)
    approved = obj.get("approved")
    if type(approved) is not bool:  # not 0 or 1: a decision is said, never guessed
        raise BadFrame("missing approved" if approved is None else
                       "approved must be true or false", ref)
    reason = obj.get("reason")
    if reason is not None:
        if not isinstance(reason, str):
            raise BadFrame("reason must be a string", ref)
        if not storable(reason):
            raise BadFrame("reason must be valid Unicode without NUL characters", ref)
        if len(reason) > MAX_REASON_BYTES // 4 and len(reason.encode("utf-8")) > MAX_REASON_BYTES:
            raise BadFrame(f"reason longer than {MAX_REASON_BYTES} bytes", ref)
    return Decide(ref, thread_id, run_id, call_id, approved, reason)


def _threads(obj: dict[str, Any], ref: Ref) -> Threads:
    limit = obj.get("limit")
    if limit is None:
        limit = THREADS_PAGE
    elif isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_THREADS_PAGE:
        raise BadFrame(f"limit must be an integer from 1 to {MAX_THREADS_PAGE}", ref)
    return Threads(ref, limit, _optional_str(obj, "cursor", ref, MAX_CURSOR))


_PARSERS: dict[str, Callable[[dict[str, Any], Ref], Request]] = {
    "join": _join,
    "leave": _leave,
    "send": _send,
    "regenerate": _regenerate,
    "cancel": _cancel,
    "decide": _decide,
    "threads": lambda obj, ref: _threads(obj, ref),
    "ping": lambda obj, ref: Ping(ref),
}

