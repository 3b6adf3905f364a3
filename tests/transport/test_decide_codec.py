"""The ``decide`` frame (PROTOCOL.md 1.1) in the codec alone: no sockets. What it takes, in
either encoding, and every way it is refused (``bad_frame``, with the frame's ``ref``)."""

import json

import msgpack
import pytest

from threadline.transport.answers import answer_for
from threadline.actors.errors import UnknownCall
from threadline.transport.codec import Codec
from threadline.transport.messages import JSON, MSGPACK, UNKNOWN_CALL, BadFrame, Decide

CODECS = [Codec(JSON), Codec(MSGPACK)]
BASE = {"type": "decide", "thread_id": "t", "run_id": "run_1", "call_id": "call_1",
        "approved": True}


def decode(obj, codec):
    if codec.binary:
        return codec.decode(msgpack.packb(obj), binary=True)
    return codec.decode(json.dumps(obj), binary=False)


@pytest.mark.parametrize("codec", CODECS, ids=["json", "msgpack"])
@pytest.mark.parametrize("extra, wanted", [
    ({}, Decide(None, "t", "run_1", "call_1", True, None)),
    ({"approved": False, "ref": 9}, Decide(9, "t", "run_1", "call_1", False, None)),
    ({"approved": False, "reason": "too much"}, Decide(None, "t", "run_1", "call_1", False,
                                                        "too much")),
    ({"reason": None, "ref": "r"}, Decide("r", "t", "run_1", "call_1", True, None)),
    ({"reason": ""}, Decide(None, "t", "run_1", "call_1", True, "")),
    ({"reason": "x" * 1024}, Decide(None, "t", "run_1", "call_1", True, "x" * 1024)),
    ({"reason": "é" * 512}, Decide(None, "t", "run_1", "call_1", True, "é" * 512)),  # 1024 B
    ({"reason": "🙂" * 256}, Decide(None, "t", "run_1", "call_1", True, "🙂" * 256)),
    ({"extra": [1, 2]}, Decide(None, "t", "run_1", "call_1", True, None)),  # ignored
])
def test_a_decision_decodes(codec, extra, wanted):
    assert decode({**BASE, **extra}, codec) == wanted


@pytest.mark.parametrize("codec", CODECS, ids=["json", "msgpack"])
@pytest.mark.parametrize("change, message", [
    ({"thread_id": None}, "missing thread_id"),
    ({"thread_id": "a b"}, "thread_id must be"),
    ({"run_id": None}, "missing run_id"),
    ({"run_id": ""}, "run_id must be a string of 1-256"),
    ({"run_id": 5}, "run_id must be a string"),
    ({"run_id": "r" * 257}, "run_id must be a string of 1-256"),
    ({"run_id": "r\x00"}, "run_id must be valid Unicode"),
    ({"call_id": None}, "missing call_id"),
    ({"call_id": ""}, "call_id must be a string of 1-256"),
    ({"call_id": ["c"]}, "call_id must be a string"),
    ({"call_id": "c" * 257}, "call_id must be a string of 1-256"),
    ({"approved": None}, "missing approved"),
    ({"approved": 1}, "approved must be true or false"),
    ({"approved": 0}, "approved must be true or false"),
    ({"approved": "true"}, "approved must be true or false"),
    ({"approved": []}, "approved must be true or false"),
    ({"reason": 3}, "reason must be a string"),
    ({"reason": {"why": "no"}}, "reason must be a string"),
    ({"reason": "x" * 1025}, "reason longer than 1024 bytes"),
    ({"reason": "é" * 512 + "x"}, "reason longer than 1024 bytes"),  # 1025 bytes, 513 chars
    ({"reason": "🙂" * 256 + "x"}, "reason longer than 1024 bytes"),
    ({"reason": "no\x00"}, "reason must be valid Unicode"),
])
def test_a_bad_decision_is_a_bad_frame_that_keeps_its_ref(codec, change, message):
    obj = {**BASE, "ref": 41, **change}
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(BadFrame) as info:
        decode(obj, codec)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.ref == 41


def test_a_lone_surrogate_in_the_reason_is_a_bad_frame():
    payload = json.dumps(BASE)[:-1] + ', "reason": "\\ud800"}'
    with pytest.raises(BadFrame, match="reason must be valid Unicode"):
        Codec(JSON).decode(payload, binary=False)


def test_unknown_call_is_its_own_error_code():
    assert answer_for(UnknownCall("no tool call c of run r waits")) == (
        UNKNOWN_CALL, "no tool call c of run r waits")
    assert UNKNOWN_CALL == "unknown_call"
