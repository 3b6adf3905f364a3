"""The node-to-node protocol, sans-IO: frames, messages, values, errors and handshake proofs.

A frame is a 4-byte big-endian length and that much msgpack: a list, the message's tag first.
``FrameDecoder.feed`` takes bytes as they come (split anywhere, several frames at once) and
returns whole messages, every field's type checked exactly, a ``Result``'s value included (on
both sides an ``Accepted``, a run id, a ``ThreadInfo`` or None). Anything else, or a length over
``max_frame`` (``HANDSHAKE_FRAME`` until the handshake is done), raises ``WireError``: close.

Handshake, client first: ``Hello``, ``Challenge``, ``Proof``. A proof is an HMAC-SHA256 under the
shared secret over both 16-byte nonces, prefixed with the prover's role: neither proof can be
replayed as the other, nor on another connection.

A ``Follow`` (the caller's node follows exactly these shards: a bitmap of ``SHARDS`` bits, the
whole set each time) is answered with a ``Result`` of None (``interest.py``).

A ``Usage`` (what the caller's node's users use: ``{user_id: [connections, sends, threads]}``,
each value exactly what ``UserUsage.to_wire`` makes, ``usage.py``) is one-way: no id, no answer.
Its sender is the link's proved node, never a field of the frame.

A ``Post``'s ``parent`` (PROTOCOL.md 1.1) is the run id, nil for a new root, or ``["latest"]``
when the sender named none (``LATEST``: the thread's newest run, chosen by the owner), so the
three never look alike. Its ``attachments`` (1.1) are a list of at most ``MAX_PER_MESSAGE``
attachment ids (strings), empty for none; whether each is the user's is the owner's to say.
A ``Regenerate`` asks the owner for another answer to a message.

A ``Call`` is answered with a ``Result`` or a ``Failure`` (a code from ``ERRORS`` and the error's
message, raised again as the same class by ``error_of``). Any other exception is a bug there,
sent as ``internal`` with a fixed message (never its text: it may hold user data), raised here as
``PeerError``.

One concept, the peer protocol as bytes: every message is a line of ``_SHAPES`` and every
error a line of ``ERRORS``; the decoder, the encoder and the requests' mapping read those
tables, so they stay in one module.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from typing import Any, Callable, Final

import attrs
import msgpack

from threadline.actors.approval import MAX_REASON_BYTES
from threadline.actors.attachments import MAX_PER_MESSAGE
from threadline.actors.errors import (ActorCrashed, ActorStopped, AskTimeout, Busy,
                                      JournalUnavailable, LimitReached, MailboxFull, NotFound,
                                      RateLimited, UnknownCall, UnknownRun, Unstorable)
from threadline.actors.messages import Decide as DecideRequest
from threadline.actors.messages import Regenerate as RegenerateRequest
from threadline.actors.messages import (LATEST, STRATEGIES, Accepted, CancelRun, DeleteThread,
                                        GetInfo, Parent, PostMessage, ThreadInfo, ThreadKey,
                                        ThreadRequest)
from threadline.actors.reply import Reply
from threadline.actors.tracing import traceparent_of
from threadline.actors.usage import BudgetExceeded
from threadline.transport.quotas import UserUsage

from .shards import SHARDS

MAX_FRAME: Final = 8 * 1024 * 1024  # bytes of one body; before the handshake, HANDSHAKE_FRAME
HANDSHAKE_FRAME, NONCE_BYTES = 1024, 16
_LENGTH = struct.Struct(">I")


class WireError(ValueError):
    """Bytes that are not a frame of this protocol: the link must be closed."""


class NotOwner(ActorStopped):
    """The node asked does not own this thread's shard now: it never handled the request; ask
    again where the thread lives."""


class PeerUnreachable(ActorStopped):
    """No link to the peer could be made: the request was never sent, so it is safe to retry."""


class PeerLost(ActorCrashed):
    """The link broke after the request was sent: it may have been handled. Only a send with a
    ``client_msg_id`` is safe to retry."""


class PeerError(ActorCrashed):
    """The peer failed with an error it does not name (a bug there): it may be partly done."""


# -- messages ------------------------------------------------------------------------------------

@attrs.frozen(slots=True)
class Hello:
    node_id: str
    nonce: bytes


@attrs.frozen(slots=True)
class Challenge:
    node_id: str
    nonce: bytes
    proof: bytes


@attrs.frozen(slots=True)
class Proof:
    proof: bytes


@attrs.frozen(slots=True)
class Post:
    text: str
    client_msg_id: str | None
    strategy: str
    parent: Parent = LATEST  # on the wire: ["latest"], nil (a root) or the run id
    attachments: tuple[str, ...] = ()  # on the wire: a list of attachment ids
    traceparent: str | None = None  # the request's span: the trace goes on at the owner


@attrs.frozen(slots=True)
class Regenerate:
    """Another answer to a stored message; answered with its ``Accepted``."""
    message_id: str
    client_msg_id: str | None
    strategy: str
    traceparent: str | None = None


@attrs.frozen(slots=True)
class Cancel:
    run_id: str | None


@attrs.frozen(slots=True)
class Decide:
    """A decision on a tool call waiting for approval; answered None once it is stored."""
    run_id: str
    call_id: str
    approved: bool
    reason: str | None


@attrs.frozen(slots=True)
class Info:
    """Answered with the thread's ``ThreadInfo``."""


@attrs.frozen(slots=True)
class Delete:
    """Answered None once the thread's erasure is durable."""


@attrs.frozen(slots=True)
class Call:
    id: int
    user_id: str
    thread_id: str
    request: Post | Regenerate | Cancel | Decide | Info | Delete


@attrs.frozen(slots=True)
class Follow:
    """The caller's node has subscribers of these shards' threads (a bitmap, bit ``s % 8`` of
    byte ``s // 8``): notify it when you write them. Replaces what it said before."""
    id: int
    shards: bytes


@attrs.frozen(slots=True)
class Usage:
    """What the sending node's users use (its ``UserQuotas.take_report``, or a part of it):
    count it against the users' quotas here. One-way: never answered."""
    users: dict[str, UserUsage]


@attrs.frozen(slots=True)
class Result:
    id: int
    value: Any  # Accepted | str | ThreadInfo | None


@attrs.frozen(slots=True)
class Failure:
    id: int
    code: str
    message: str


CallRequest = Post | Regenerate | Cancel | Decide | Info | Delete
Message = Hello | Challenge | Proof | Call | Follow | Usage | Result | Failure


# -- proofs --------------------------------------------------------------------------------------

def server_proof(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.digest(secret, b"server" + client_nonce + server_nonce, hashlib.sha256)


def client_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.digest(secret, b"client" + server_nonce + client_nonce, hashlib.sha256)


# -- encoding and decoding -----------------------------------------------------------------------
# A field's kind is a tuple of exact types (a bool is not an int here) or a decoding function.

_STR, _BYTES, _INT, _OPT_STR, _NUMBER = (str,), (bytes,), (int,), (str, type(None)), (int, float)
_BOOL = (bool,)


def _fields(values: Any, kinds: tuple[Any, ...]) -> list[Any]:
    if type(values) is not list or len(values) != len(kinds):
        raise WireError("not the fields expected")
    for value, kind in zip(values, kinds):
        if not callable(kind) and type(value) not in kind:
            raise WireError(f"a field of type {type(value).__name__}")
    return [kind(value) if callable(kind) else value for value, kind in zip(values, kinds)]


def _decode(obj: Any, tags: frozenset[str]) -> Any:
    """Only the ``tags`` allowed where ``obj`` is: nesting is never deeper than the shapes'."""
    if type(obj) is not list or not obj or type(obj[0]) is not str or obj[0] not in tags:
        raise WireError("not a tagged message")
    cls, kinds = _SHAPES[obj[0]]
    return cls(*_fields(obj[1:], kinds))


def decode_value(data: Any) -> Any:
    return data if data is None or type(data) is str else _decode(data, _VALUES)


def encode_value(value: Any) -> Any:
    """An answer as msgpack-friendly data; ``TypeError`` for what no forwarded request returns."""
    if value is None or type(value) in (str, Accepted, ThreadInfo):
        return _plain(value)
    raise TypeError(f"no wire encoding for a {type(value).__name__}")


_MESSAGES: Final = frozenset({"hello", "challenge", "proof", "call", "follow", "usage",
                              "result", "failure"})
_REQUESTS: Final = frozenset({"post", "regenerate", "cancel", "decide", "info", "delete"})
_VALUES: Final = frozenset({"accepted", "thread_info"})
_KEY = functools.partial(_decode, tags=frozenset({"key"}))
_SHAPES: Final[dict[str, tuple[type, tuple[Any, ...]]]] = {
    "hello": (Hello, (_STR, _BYTES)),
    "challenge": (Challenge, (_STR, _BYTES, _BYTES)),
    "proof": (Proof, (_BYTES,)),
    "call": (Call, (_INT, _STR, _STR, functools.partial(_decode, tags=_REQUESTS))),
    "follow": (Follow, (_INT, lambda b: _bitmap(b))),
    "usage": (Usage, (lambda u: _users(u),)),
    "result": (Result, (_INT, decode_value)),
    "failure": (Failure, (_INT, _STR, _STR)),
    "post": (Post, (_STR, _OPT_STR, _STR, lambda p: _parent(p), lambda a: _ids(a),
                    lambda t: _traceparent(t))),
    "regenerate": (Regenerate, (_STR, _OPT_STR, _STR, lambda t: _traceparent(t))),
    "cancel": (Cancel, (_OPT_STR,)),
    "decide": (Decide, (_STR, _STR, _BOOL, _OPT_STR)),
    "info": (Info, ()),
    "delete": (Delete, ()),
    "accepted": (Accepted, (_KEY, _STR, _STR, _INT)),
    "thread_info": (ThreadInfo, (_KEY, _INT, _NUMBER, _NUMBER, _OPT_STR)),  # ..., title
    "key": (ThreadKey, (_STR, _STR)),
}
_TAGS: Final = {cls: tag for tag, (cls, _) in _SHAPES.items()}


_LATEST: Final = ["latest"]  # a Post's parent when the sender named none: the newest run


def _parent(value: Any) -> Parent:
    if value is None or type(value) is str:
        return value
    if type(value) is list and value == _LATEST:
        return LATEST
    raise WireError("a parent is nil, a run id or [\"latest\"]")


def _traceparent(value: Any) -> str | None:
    """nil or a string; a string that is no W3C ``traceparent`` is dropped (as the client's)."""
    if value is not None and type(value) is not str:
        raise WireError("a traceparent is nil or a string")
    return traceparent_of(value)


def _ids(value: Any) -> tuple[str, ...]:
    if type(value) is not list or len(value) > MAX_PER_MESSAGE or \
            not all(type(item) is str for item in value):
        raise WireError(f"attachments are a list of at most {MAX_PER_MESSAGE} strings")
    return tuple(value)


def _bitmap(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != SHARDS // 8:
        raise WireError(f"a shard bitmap is {SHARDS // 8} bytes")
    return value


def _users(value: Any) -> dict[str, UserUsage]:
    if type(value) is not dict:
        raise WireError("a usage report is a map of user ids")
    users = {}
    for user_id, usage in value.items():
        if type(user_id) is not str or not user_id:
            raise WireError("a usage report is keyed by user ids")
        try:
            users[user_id] = UserUsage.from_wire(usage)
        except ValueError as exc:
            raise WireError(str(exc)) from None
    return users


def shards_bitmap(shards: Any) -> bytes:
    bits = bytearray(SHARDS // 8)
    for s in shards:
        bits[s // 8] |= 1 << (s % 8)
    return bytes(bits)


def bitmap_shards(bits: bytes) -> frozenset[int]:
    return frozenset(i for i in range(SHARDS) if bits[i // 8] >> (i % 8) & 1)


def _plain(obj: Any) -> Any:
    kind = type(obj)
    if kind is Result:
        return ["result", obj.id, encode_value(obj.value)]
    if kind is Usage:
        return ["usage", {user_id: u.to_wire() for user_id, u in obj.users.items()}]
    if kind in _TAGS:
        return [_TAGS[kind], *map(_plain, attrs.astuple(obj, recurse=False))]
    if obj is LATEST:
        return _LATEST
    return obj


def encode(message: Message) -> bytes:
    """One whole frame. ``TypeError`` for a ``Result`` whose value has no encoding."""
    body = msgpack.packb(_plain(message), use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise WireError(f"a frame of {len(body)} bytes is over {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Bytes in, whole messages out; keeps the unfinished rest for the next ``feed``."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self.max_frame = max_frame  # raised once the handshake is done

    def feed(self, data: bytes) -> list[Message]:
        buffer = self._buffer
        buffer += data
        messages, start = [], 0
        while len(buffer) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if size > self.max_frame:
                raise WireError(f"a frame of {size} bytes is over {self.max_frame}")
            end = start + _LENGTH.size + size
            if len(buffer) < end:
                break
            try:
                obj = msgpack.unpackb(buffer[start + _LENGTH.size:end], raw=False)
            except Exception as exc:  # msgpack raises several kinds for bad bytes
                raise WireError("a frame body that is not msgpack") from exc
            messages.append(_decode(obj, _MESSAGES))
            start = end
        del buffer[:start]
        return messages


# -- actor requests ------------------------------------------------------------------------------

def call_of(id: int, key: ThreadKey, msg: ThreadRequest) -> Call:
    """The call for one of the six requests that can be forwarded (its ``reply`` stays here)."""
    kind = type(msg)
    if kind is PostMessage:
        request: CallRequest = Post(msg.text, msg.client_msg_id, msg.strategy, msg.parent,
                                    tuple(msg.attachments), msg.traceparent)
    elif kind is RegenerateRequest:
        request = Regenerate(msg.message_id, msg.client_msg_id, msg.strategy, msg.traceparent)
    elif kind is CancelRun:
        request = Cancel(msg.run_id)
    elif kind is DecideRequest:
        request = Decide(msg.run_id, msg.call_id, msg.approved, msg.reason)
    elif kind is GetInfo or kind is DeleteThread:
        request = Info() if kind is GetInfo else Delete()
    else:
        raise TypeError(f"a {kind.__name__} cannot be forwarded")
    return Call(id, key.user_id, key.thread_id, request)


def make_of(call: Call) -> tuple[ThreadKey, Callable[[Reply], ThreadRequest]]:
    """The far side of ``call_of``: the key, and what builds the actor request with a reply.
    ``ValueError`` for a strategy this node does not know, or a reason over 1 KiB."""
    r = call.request
    make: Callable[[Reply], ThreadRequest]
    if isinstance(r, (Post, Regenerate)) and r.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {r.strategy!r}")  # bad input, not a broken link
    if type(r) is Post:
        make = functools.partial(PostMessage, r.text, r.client_msg_id, r.strategy,
                                 parent=r.parent, attachments=r.attachments,
                                 traceparent=r.traceparent)
    elif type(r) is Regenerate:
        make = functools.partial(RegenerateRequest, r.message_id, r.client_msg_id, r.strategy,
                                 traceparent=r.traceparent)
    elif type(r) is Cancel:
        make = functools.partial(CancelRun, r.run_id)
    elif type(r) is Decide:
        if r.reason is not None and len(r.reason.encode("utf-8", "replace")) > MAX_REASON_BYTES:
            raise ValueError(f"a reason is at most {MAX_REASON_BYTES} bytes")
        make = functools.partial(DecideRequest, r.run_id, r.call_id, r.approved, r.reason)
    else:
        make = GetInfo if type(r) is Info else DeleteThread
    return ThreadKey(call.user_id, call.thread_id), make


# -- errors --------------------------------------------------------------------------------------

INTERNAL: Final = "internal"
INTERNAL_MESSAGE: Final = "the node that owns this thread failed to handle the request"

#: First match wins: a subclass comes before its base (ActorCrashed before ActorStopped).
ERRORS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (Busy, "busy"), (UnknownRun, "unknown_run"), (UnknownCall, "unknown_call"),
    (NotFound, "not_found"), (BudgetExceeded, "budget_exceeded"),
    (JournalUnavailable, "journal_unavailable"), (Unstorable, "unstorable"),
    (ActorCrashed, "actor_crashed"), (NotOwner, "not_owner"), (ActorStopped, "actor_stopped"),
    (AskTimeout, "ask_timeout"), (MailboxFull, "mailbox_full"),
    (LimitReached, "limit_reached"), (RateLimited, "rate_limited"),
    (ValueError, "bad_input"),
)
_BY_CODE: Final = {code: kind for kind, code in ERRORS}


def failure_of(id: int, exc: BaseException) -> Failure:
    for kind, code in ERRORS:
        if isinstance(exc, kind):
            return Failure(id, code, str(exc))
    return Failure(id, INTERNAL, INTERNAL_MESSAGE)


def error_of(failure: Failure) -> Exception:
    """The exception to raise for ``failure``; a code this node does not know is ``PeerError``."""
    return _BY_CODE.get(failure.code, PeerError)(failure.message)
