"""The node-to-node protocol without sockets: messages, values, frames, errors and proofs."""

import hmac
import os
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from threadline.actors.errors import (ActorCrashed, ActorStopped, AskTimeout, Busy,
                                      JournalUnavailable, LimitReached, MailboxFull, NotFound,
                                      RateLimited, SubscriberDropped, UnknownRun, Unstorable)
from threadline.actors.messages import Regenerate as RegenerateRequest
from threadline.actors.messages import (LATEST, Accepted, CancelRun, DeleteThread, GetInfo,
                                        PostMessage, Subscribe, ThreadInfo, ThreadKey)
from threadline.actors.reply import Reply
from threadline.cluster.wire import (INTERNAL, MAX_FRAME, Call, Cancel, Challenge, Delete,
                                     Failure, FrameDecoder, Hello, Info, NotOwner, PeerError,
                                     Post, Proof, Regenerate, Result, WireError, call_of,
                                     client_proof,
                                     decode_value, encode, encode_value, error_of, failure_of,
                                     make_of, server_proof)

KEY = ThreadKey("ada@example.org", "t-1")
VALUES = [
    Accepted(KEY, "m-1", "r-1", 3),
    ThreadInfo(KEY, 12, 1700000000.25, 1700000100.5),
    ThreadInfo(KEY, 0, 1, 2),  # whole-number times, as a store may give them
    ThreadInfo(KEY, 3, 1.5, 2.5, "hello ✓"),  # with a title (1.1)
    "r-1",
    "",
    None,
]
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # a W3C traceparent

MESSAGES = [
    Hello("node-a", os.urandom(16)),
    Challenge("node-b", os.urandom(16), os.urandom(32)),
    Proof(os.urandom(32)),
    Call(1, KEY.user_id, KEY.thread_id, Post("hello ✓", "c-1", "enqueue")),
    Call(2, KEY.user_id, KEY.thread_id, Post("", None, "interrupt")),
    Call(2, KEY.user_id, KEY.thread_id, Post("edit", "c-2", "enqueue", "run_1")),  # 1.1
    Call(2, KEY.user_id, KEY.thread_id, Post("root", None, "reject", None)),
    Call(2, KEY.user_id, KEY.thread_id, Post("see", "c-4", "enqueue", LATEST,
                                             ("att_1", "att_2 ✓"))),  # 1.1: attachments
    Call(2, KEY.user_id, KEY.thread_id, Post("ten", None, "enqueue", None,
                                             tuple(f"att_{i}" for i in range(10)))),
    Call(6, KEY.user_id, KEY.thread_id, Regenerate("msg_1", "c-3", "interrupt")),
    Call(6, KEY.user_id, KEY.thread_id, Regenerate("msg_1", None, "enqueue")),
    Call(7, KEY.user_id, KEY.thread_id, Post("traced", None, "enqueue", LATEST, (), TP)),
    Call(7, KEY.user_id, KEY.thread_id, Regenerate("msg_1", None, "enqueue", TP)),
    Call(3, KEY.user_id, KEY.thread_id, Cancel("r-1")),
    Call(4, KEY.user_id, KEY.thread_id, Cancel(None)),
    Call(5, KEY.user_id, KEY.thread_id, Info()),
    Call(2**63, KEY.user_id, KEY.thread_id, Delete()),
    *(Result(10 + i, value) for i, value in enumerate(VALUES)),
    Failure(20, "busy", "a run is active"),
]
#: Every class the table maps, and the code it travels as.
MAPPED = [Busy, UnknownRun, NotFound, JournalUnavailable, Unstorable, ActorCrashed, NotOwner,
          ActorStopped, AskTimeout, MailboxFull, LimitReached, RateLimited, ValueError]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    assert FrameDecoder().feed(encode(message)) == [message]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_every_value_round_trips(value):
    data = encode_value(value)
    assert msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False) == data
    assert decode_value(data) == value and type(decode_value(data)) is type(value)
    if type(value) is ThreadInfo:  # a title is no part of a ThreadInfo's equality
        assert decode_value(data).title == value.title


def test_a_value_no_request_answers_with_is_refused_when_encoded():
    with pytest.raises(TypeError):
        encode_value({"a": 1})
    with pytest.raises(TypeError):
        encode(Result(1, 3.5))


@pytest.mark.parametrize("msg, wanted", [
    (PostMessage("hi", "c-9", "reject", Reply()), Post("hi", "c-9", "reject")),
    (PostMessage("hi", None, "enqueue", Reply()), Post("hi", None, "enqueue")),
    (PostMessage("hi", None, "enqueue", Reply(), LATEST), Post("hi", None, "enqueue", LATEST)),
    (PostMessage("hi", "c-1", "enqueue", Reply(), None), Post("hi", "c-1", "enqueue", None)),
    (PostMessage("hi", None, "interrupt", Reply(), "run_7"),
     Post("hi", None, "interrupt", "run_7")),
    (PostMessage("look", "c-3", "enqueue", Reply(), LATEST, ("att_a", "att_b")),
     Post("look", "c-3", "enqueue", LATEST, ("att_a", "att_b"))),
    (PostMessage("hi", None, "enqueue", Reply(), LATEST, (), TP),
     Post("hi", None, "enqueue", LATEST, (), TP)),
    (RegenerateRequest("msg_1", None, "enqueue", Reply(), TP),
     Regenerate("msg_1", None, "enqueue", TP)),
    (RegenerateRequest("msg_1", "c-2", "reject", Reply()), Regenerate("msg_1", "c-2", "reject")),
    (RegenerateRequest("msg_1", None, "enqueue", Reply()), Regenerate("msg_1", None, "enqueue")),
    (CancelRun("r-2", Reply()), Cancel("r-2")),
    (CancelRun(None, Reply()), Cancel(None)),
    (GetInfo(Reply()), Info()),
    (DeleteThread(Reply()), Delete()),
])
def test_requests_cross_and_are_rebuilt_with_the_far_sides_reply(msg, wanted):
    call = call_of(7, KEY, msg)
    assert call == Call(7, KEY.user_id, KEY.thread_id, wanted)
    [received] = FrameDecoder().feed(encode(call))
    key, make = make_of(received)
    reply = Reply()
    rebuilt = make(reply)
    assert key == KEY
    assert type(rebuilt) is type(msg) and rebuilt.reply is reply
    assert [getattr(rebuilt, f) for f in msg.__slots__ if f != "reply"] == \
        [getattr(msg, f) for f in msg.__slots__ if f != "reply"]


def test_only_the_four_forwardable_requests_become_calls():
    with pytest.raises(TypeError):
        call_of(1, KEY, Subscribe(object(), None, None, Reply()))


@pytest.mark.parametrize("request_", [Post("x", None, "shove"),
                                      Regenerate("msg_1", None, "shove")],
                         ids=lambda r: type(r).__name__)
def test_an_unknown_strategy_is_bad_input_for_that_call(request_):
    [call] = FrameDecoder().feed(encode(Call(1, "u", "t", request_)))
    with pytest.raises(ValueError, match="shove"):
        make_of(call)


def test_a_parent_left_out_never_looks_like_a_root_nor_a_run_id():
    """LATEST (the newest run), None (a new root) and a run id, even one spelled "latest",
    each cross as themselves."""
    parents = [LATEST, None, "latest", "run_1"]
    frames = [encode(Call(1, "u", "t", Post("x", None, "enqueue", p))) for p in parents]
    assert len(set(frames)) == len(parents)
    for parent, data in zip(parents, frames):
        [call] = FrameDecoder().feed(data)
        assert call.request.parent is parent or call.request.parent == parent
        _, make = make_of(call)
        assert make(Reply()).parent == parent
    [call] = FrameDecoder().feed(frames[0])
    assert call.request.parent is LATEST


def test_frames_split_at_every_byte_boundary():
    data = b"".join(encode(m) for m in MESSAGES)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == MESSAGES


def test_frames_fed_one_byte_at_a_time_and_all_at_once():
    data = b"".join(encode(m) for m in MESSAGES)
    decoder = FrameDecoder()
    assert [m for i in range(len(data)) for m in decoder.feed(data[i:i + 1])] == MESSAGES
    assert FrameDecoder().feed(data) == MESSAGES


@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=40)),
       st.lists(st.integers(min_value=0, max_value=400), max_size=4))
def test_any_text_round_trips_however_it_is_cut(text, client_msg_id, cuts):
    message = Call(9, "u", "t", Post(text, client_msg_id, "enqueue"))
    data = encode(message) * 2
    decoder, out, start = FrameDecoder(), [], 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        out += decoder.feed(data[start:cut])
        start = cut
    assert out == [message, message]


def test_a_frame_of_max_size_is_read_and_one_byte_more_is_refused_at_its_header():
    overhead = len(msgpack.packb(["proof", b"x" * 70_000], use_bin_type=True)) - 70_000
    largest = Proof(b"x" * (MAX_FRAME - overhead))
    assert len(encode(largest)) == 4 + MAX_FRAME
    assert FrameDecoder().feed(encode(largest)) == [largest]
    with pytest.raises(WireError):
        encode(Proof(b"x" * (MAX_FRAME - overhead + 1)))
    with pytest.raises(WireError, match="over"):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME + 1))  # the header alone is enough


@pytest.mark.parametrize("body", [
    b"",                                                        # no body at all
    b"\xc1",                                                    # a byte msgpack never uses
    b"\x92\xa5hello",                                           # a list cut short
    msgpack.packb({"hello": 1}),                                # not a list
    msgpack.packb([]),
    msgpack.packb(["goodbye", 1]),                              # no such tag
    msgpack.packb(["info"]),                                    # a request is not a message
    msgpack.packb(["accepted", ["u", "t"], "m", "r", 1]),       # nor is a value
    msgpack.packb(["hello", "node"], use_bin_type=True),        # a field missing
    msgpack.packb(["hello", "node", b"n", 1], use_bin_type=True),  # one too many
    msgpack.packb(["hello", "node", "not bytes"], use_bin_type=True),
    msgpack.packb(["proof", None], use_bin_type=True),
    msgpack.packb(["failure", True, "busy", "x"]),              # a bool is not an id
    msgpack.packb(["failure", 1.0, "busy", "x"]),
    msgpack.packb(["call", 1, "u", "t", ["call", 2, "u", "t", ["info"]]]),  # nested message
    msgpack.packb(["call", 1, "u", "t", ["post", "x", 5, "enqueue", None, []]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue"]]),  # no parent field
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None]]),  # no attachments
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", 5, []]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", ["newest"], []]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", ["latest", 1], []]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", [], []]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", {"latest": True}, []]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", True, []]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None, None]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None, "att_1"]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None, [5]]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None, [None]]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None, [b"att"]]],
                  use_bin_type=True),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None, {"a": 1}]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None,
                                         [f"att_{i}" for i in range(11)]]]),  # over 10
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None, []]]),  # no trace
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None, [], None, None]]),
    msgpack.packb(["call", 1, "u", "t", ["post", "x", None, "enqueue", None, [], 5]]),
    msgpack.packb(["call", 1, "u", "t", ["regenerate", 5, None, "enqueue", None]]),
    msgpack.packb(["call", 1, "u", "t", ["regenerate", "m", None]]),
    msgpack.packb(["call", 1, "u", "t", ["regenerate", "m", None, "enqueue"]]),
    msgpack.packb(["call", 1, "u", "t", ["regenerate", "m", None, "enqueue", None, None]]),
    msgpack.packb(["call", 1, "u", "t", ["regenerate", "m", None, "enqueue", ["00-"]]]),
    msgpack.packb(["call", 1, "u", "t", ["regenerate", None, None, "enqueue"]]),
    msgpack.packb(["call", 1, "u", None, ["info"]]),
    msgpack.packb(["result", 1, ["thread_info", ["u"], 1, 1.0, 2.0, None]]),
    msgpack.packb(["result", 1, ["thread_info", ["key", "u", "t"], 1, 1.0, 2.0]]),
    msgpack.packb(["result", 1, ["thread_info", ["key", "u", "t"], 1, 1.0, 2.0, 5]]),
    msgpack.packb(["result", 1, ["accepted", "u/t", "m", "r", 1]]),
    msgpack.packb(["result", 1, 42]),
    msgpack.packb(["result", 1, {"run_id": "r"}]),
    msgpack.packb(["proof", msgpack.ExtType(5, b"x")]),
    b"\xa2\xff\xfe",                                            # a str that is not UTF-8
])
def test_a_body_that_is_not_a_message_is_a_wire_error(body):
    decoder = FrameDecoder()
    with pytest.raises(WireError):
        decoder.feed(encode(Proof(b"ok")) + frame(body))


@pytest.mark.parametrize("kind", MAPPED, ids=lambda k: k.__name__)
def test_each_mapped_error_comes_back_as_the_same_class_and_message(kind):
    failure = failure_of(4, kind(f"{kind.__name__}: on thread t-1"))
    [received] = FrameDecoder().feed(encode(failure))
    error = error_of(received)
    assert received.id == 4 and received.code != INTERNAL
    assert type(error) is kind and str(error) == f"{kind.__name__}: on thread t-1"


def test_mapped_codes_are_distinct():
    codes = [failure_of(1, kind("x")).code for kind in MAPPED]
    assert len(set(codes)) == len(MAPPED)


@pytest.mark.parametrize("exc", [RuntimeError("ada's password is hunter2"),
                                 KeyError("hunter2"), SubscriberDropped("hunter2")],
                         ids=lambda e: type(e).__name__)
def test_an_unknown_exception_is_internal_without_its_text(exc):
    failure = failure_of(5, exc)
    assert failure.code == INTERNAL and "hunter2" not in failure.message
    error = error_of(failure)
    assert type(error) is PeerError and isinstance(error, ActorCrashed)
    assert "hunter2" not in str(error)


def test_a_code_this_node_does_not_know_is_a_peer_error_with_its_message():
    error = error_of(Failure(1, "from_a_newer_node", "it said so"))
    assert type(error) is PeerError and str(error) == "it said so"


def test_proofs_hold_with_the_same_secret_and_fail_with_another():
    secret, other = b"s" * 32, b"o" * 32
    client_nonce, server_nonce = os.urandom(16), os.urandom(16)
    assert hmac.compare_digest(server_proof(secret, client_nonce, server_nonce),
                               server_proof(secret, client_nonce, server_nonce))
    assert not hmac.compare_digest(server_proof(other, client_nonce, server_nonce),
                                   server_proof(secret, client_nonce, server_nonce))
    assert not hmac.compare_digest(client_proof(other, server_nonce, client_nonce),
                                   client_proof(secret, server_nonce, client_nonce))
    # each role's proof differs from the other's, and from one over other nonces
    assert server_proof(secret, client_nonce, server_nonce) != \
        client_proof(secret, client_nonce, server_nonce)
    assert server_proof(secret, client_nonce, server_nonce) != \
        server_proof(secret, client_nonce, os.urandom(16))
    assert len(server_proof(secret, client_nonce, server_nonce)) == 32
