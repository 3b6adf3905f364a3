"""The codec alone: no sockets."""

import json

import msgpack
import pytest

from threadline.actors.messages import Event, ThreadKey
from threadline.transport.codec import EVENT_CACHE, Codec
from threadline.transport.frames import (Accepted, Error, EventFrame, Joined, Left, Ok, Pong,
                                         ThreadsPage)
from threadline.transport.messages import JSON, MSGPACK, BadFrame, Cancel, Join, Leave, Ping, Send, Threads

json_codec = Codec(JSON)
msgpack_codec = Codec(MSGPACK)


def decode(obj, codec=json_codec):
    if codec.binary:
        return codec.decode(msgpack.packb(obj), binary=True)
    return codec.decode(json.dumps(obj), binary=False)


@pytest.mark.parametrize("codec", [json_codec, msgpack_codec], ids=["json", "msgpack"])
@pytest.mark.parametrize("obj, request_", [
    ({"type": "join", "thread_id": "main"}, Join(None, "main", None)),
    ({"type": "join", "thread_id": "a.b:c-d_E9", "since": 0, "ref": 7}, Join(7, "a.b:c-d_E9", 0)),
    ({"type": "leave", "thread_id": "main", "ref": "x"}, Leave("x", "main")),
    ({"type": "send", "thread_id": "t", "text": "hi"}, Send(None, "t", "hi", None, "enqueue")),
    ({"type": "send", "thread_id": "t", "text": "", "client_msg_id": "c1", "strategy": "reject",
      "ref": "r"}, Send("r", "t", "", "c1", "reject")),
    ({"type": "cancel", "thread_id": "t"}, Cancel(None, "t", None)),
    ({"type": "cancel", "thread_id": "t", "run_id": "run_1"}, Cancel(None, "t", "run_1")),
    ({"type": "threads", "ref": 1}, Threads(1, 100, None)),
    ({"type": "threads", "limit": 5, "cursor": "abc"}, Threads(None, 5, "abc")),
    ({"type": "ping", "extra": "ignored"}, Ping(None)),
])
def test_valid_frames(codec, obj, request_):
    assert decode(obj, codec) == request_


@pytest.mark.parametrize("obj, message, ref", [
    ([1, 2], "a frame must be an object", None),
    ("join", "a frame must be an object", None),
    ({"thread_id": "t"}, "missing type", None),
    ({"type": "dance", "ref": 3}, "unknown type 'dance'", 3),
    ({"type": 5}, "unknown type 5", None),
    ({"type": "join", "ref": "r"}, "missing thread_id", "r"),
    ({"type": "join", "thread_id": ""}, "thread_id must be", None),
    ({"type": "join", "thread_id": "a b"}, "thread_id must be", None),
    ({"type": "join", "thread_id": "a@b"}, "thread_id must be", None),
    ({"type": "join", "thread_id": "x" * 129}, "thread_id must be", None),
    ({"type": "join", "thread_id": 12}, "thread_id must be", None),
    ({"type": "join", "thread_id": "t", "since": -1}, "since must be", None),
    ({"type": "join", "thread_id": "t", "since": "3"}, "since must be", None),
    ({"type": "join", "thread_id": "t", "since": True}, "since must be", None),
    ({"type": "join", "thread_id": "t", "since": 1.5}, "since must be", None),
    ({"type": "send", "thread_id": "t"}, "missing text", None),
    ({"type": "send", "thread_id": "t", "text": 3}, "text must be a string", None),
    ({"type": "send", "thread_id": "t", "text": "x" * (64 * 1024 + 1)}, "text longer than 64 KiB", None),
    ({"type": "send", "thread_id": "t", "text": "é" * (32 * 1024 + 1)}, "text longer than 64 KiB", None),
    ({"type": "send", "thread_id": "t", "text": "x", "strategy": "now"}, "strategy must be", None),
    ({"type": "send", "thread_id": "t", "text": "x", "client_msg_id": 5}, "client_msg_id must be", None),
    ({"type": "cancel", "thread_id": "t", "run_id": ["r"]}, "run_id must be", None),
    ({"type": "ping", "ref": True}, "ref must be a string or an integer", None),
    ({"type": "ping", "ref": 1.5}, "ref must be a string or an integer", None),
    ({"type": "ping", "ref": "r" * 65}, "ref longer than 64", None),
])
def test_bad_frames_say_what_is_wrong(obj, message, ref):
    for codec in (json_codec, msgpack_codec):
        with pytest.raises(BadFrame) as info:
            decode(obj, codec)
        assert info.value.message.startswith(message), info.value.message
        assert info.value.ref == ref


def test_text_of_exactly_64_kib_is_accepted():
    assert decode({"type": "send", "thread_id": "t", "text": "é" * (32 * 1024)}).text


@pytest.mark.parametrize("payload, binary, codec, message", [
    ("{not json", False, json_codec, "not valid JSON"),
    (b"\xc1", True, msgpack_codec, "not valid msgpack"),
    (b'{"type":"ping"}', True, json_codec, "threadline.v1.json expects text frames"),
    ('{"type":"ping"}', False, msgpack_codec, "threadline.v1.msgpack expects binary frames"),
])
def test_undecodable_payloads(payload, binary, codec, message):
    with pytest.raises(BadFrame, match=message):
        codec.decode(payload, binary=binary)


def test_server_frames_encode_the_same_in_both_encodings():
    event = Event(ThreadKey("u", "t"), 3, "tool_completed", "run_1", 1.5,
                  {"call_id": "c", "tool": "calculator", "result": 2.5, "text": "ünï"})
    frames = [EventFrame(event), Joined("r1", "t", 3), Joined(None, "t", 3, created_at=1.0),
              Left(None, "t", "deleted"), Accepted("r2", "t", "msg_1", "run_1", 4),
              Ok("r3", "t", None), Ok("r4", "t", "run_1", "call_1"), ThreadsPage("r5", [], None),
              Pong(None), Error("busy", "a run is active", 9)]
    for frame in frames:
        wire = frame.wire()
        text = json_codec.encode(frame)
        assert isinstance(text, bytes) and json.loads(text) == wire
        assert json_codec.decode_frame(text) == wire == msgpack_codec.decode_frame(
            msgpack_codec.encode(frame))
        binary = msgpack_codec.encode(frame)
        assert isinstance(binary, bytes) and msgpack.unpackb(binary) == wire
    assert EventFrame(event).wire() == {"type": "event", "thread_id": "t", "seq": 3,
                                        "event": "tool_completed", "run_id": "run_1",
                                        "ts": 1.5, "data": event.data}
    assert list(Accepted("r", "t", "m", "run", 4).wire()) == [
        "type", "thread_id", "message_id", "run_id", "seq", "ref"]  # PROTOCOL.md's order
    assert Pong(None).wire() == {"type": "pong"}  # no ref when the request had none
    assert Joined("r", "t", 3).wire() == {"type": "joined", "thread_id": "t", "last_seq": 3,
                                          "ref": "r"}
    assert Ok("r", "t", None).wire() == {"type": "ok", "thread_id": "t", "run_id": None,
                                         "ref": "r"}
    assert Error("busy", "x", 9).wire() == {"type": "error", "code": "busy", "message": "x",
                                            "ref": 9}


def test_an_event_is_encoded_once_per_encoding_for_every_connection():
    """Two connections' codecs (a user's two tabs) get the same bytes object for the same
    event: encoded once. Another event, or an equal but distinct one, is encoded anew."""
    event = Event(ThreadKey("u", "t"), 1, "agent_delta", "run_1", 1.0, {"offset": 0, "text": "hi"})
    tab1, tab2 = Codec(JSON), Codec(JSON)
    first = tab1.encode(EventFrame(event))
    assert tab2.encode(EventFrame(event)) is first
    twin = Event(ThreadKey("u", "t"), 1, "agent_delta", "run_1", 1.0, {"offset": 0, "text": "hi"})
    again = tab2.encode(EventFrame(twin))
    assert again == first and again is not first
    assert Codec(MSGPACK).encode(EventFrame(event)) == msgpack.packb(EventFrame(event).wire())
    for seq in range(2, EVENT_CACHE + 10):  # bounded: past its size it starts over
        tab1.encode(EventFrame(Event(event.key, seq, "agent_delta", "run_1", 1.0, {})))
    assert tab1.encode(EventFrame(event)) is not first  # forgotten: encoded anew


def test_unserialisable_tool_results_are_sent_as_text():
    event = Event(ThreadKey("u", "t"), 1, "tool_completed", "run_1", 1.0,
                  {"result": {1, 2}.__class__})
    assert b"class" in json_codec.encode(EventFrame(event))
    assert b"class" in msgpack_codec.encode(EventFrame(event))
