"""The conversation tree's frames (PROTOCOL.md 1.1) in the codec alone: no sockets. A ``send``'s
``parent`` (absent, null, a run id) and the ``regenerate`` frame, in either encoding, and every
way each is refused (``bad_frame``, with the frame's ``ref``); ``not_found`` as its own code."""

import json

import msgpack
import pytest

from threadline.actors.errors import NotFound
from threadline.actors.messages import LATEST
from threadline.transport.answers import answer_for
from threadline.transport.client_errors import NotFound as ClientNotFound
from threadline.transport.client_errors import ServerError
from threadline.transport.codec import Codec
from threadline.transport.http_api import STATUS
from threadline.transport.messages import (JSON, MSGPACK, NOT_FOUND, BadFrame, Regenerate,
                                           Send)

CODECS = [Codec(JSON), Codec(MSGPACK)]
SEND = {"type": "send", "thread_id": "t", "text": "hi"}
REGENERATE = {"type": "regenerate", "thread_id": "t", "message_id": "msg_1"}


def decode(obj, codec):
    if codec.binary:
        return codec.decode(msgpack.packb(obj), binary=True)
    return codec.decode(json.dumps(obj), binary=False)


@pytest.mark.parametrize("codec", CODECS, ids=["json", "msgpack"])
@pytest.mark.parametrize("extra, parent", [
    ({}, LATEST),                           # absent: the thread's newest run
    ({"parent": None}, None),               # null: a new root
    ({"parent": "run_1"}, "run_1"),
    ({"parent": "latest"}, "latest"),       # a run id like any other, never LATEST
    ({"parent": "r" * 128}, "r" * 128),
    ({"parent": "é✓"}, "é✓"),
])
def test_a_sends_parent_decodes(codec, extra, parent):
    request = decode({**SEND, "ref": 3, **extra}, codec)
    assert request == Send(3, "t", "hi", None, "enqueue", parent)
    assert (request.parent is LATEST) == (parent is LATEST)


def test_a_send_without_parent_is_as_in_1_0():
    assert Send(None, "t", "hi", None, "enqueue") == decode(SEND, Codec(JSON))


@pytest.mark.parametrize("codec", CODECS, ids=["json", "msgpack"])
@pytest.mark.parametrize("parent, message", [
    ("", "parent must be null or a run id of 1-128"),
    ("r" * 129, "parent must be null or a run id of 1-128"),
    (5, "parent must be null or a run id"),
    (0, "parent must be null or a run id"),
    (False, "parent must be null or a run id"),
    (["run_1"], "parent must be null or a run id"),
    ({"run_id": "run_1"}, "parent must be null or a run id"),
    ("run\x00", "parent must be valid Unicode"),
])
def test_a_bad_parent_is_a_bad_frame_that_keeps_its_ref(codec, parent, message):
    with pytest.raises(BadFrame) as info:
        decode({**SEND, "ref": 41, "parent": parent}, codec)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.ref == 41


def test_a_lone_surrogate_in_the_parent_is_a_bad_frame():
    payload = json.dumps({**SEND, "ref": "r"})[:-1] + ', "parent": "\\ud800"}'
    with pytest.raises(BadFrame, match="parent must be valid Unicode") as info:
        Codec(JSON).decode(payload, binary=False)
    assert info.value.ref == "r"


@pytest.mark.parametrize("codec", CODECS, ids=["json", "msgpack"])
@pytest.mark.parametrize("extra, wanted", [
    ({}, Regenerate(None, "t", "msg_1", None, "enqueue")),
    ({"ref": 9, "client_msg_id": "c-1"}, Regenerate(9, "t", "msg_1", "c-1", "enqueue")),
    ({"strategy": "interrupt"}, Regenerate(None, "t", "msg_1", None, "interrupt")),
    ({"strategy": "reject", "ref": "r"}, Regenerate("r", "t", "msg_1", None, "reject")),
    ({"strategy": None, "client_msg_id": None}, Regenerate(None, "t", "msg_1", None, "enqueue")),
    ({"message_id": "m" * 128}, Regenerate(None, "t", "m" * 128, None, "enqueue")),
    ({"text": "ignored", "parent": "run_1"}, Regenerate(None, "t", "msg_1", None, "enqueue")),
])
def test_a_regenerate_decodes(codec, extra, wanted):
    assert decode({**REGENERATE, **extra}, codec) == wanted


@pytest.mark.parametrize("codec", CODECS, ids=["json", "msgpack"])
@pytest.mark.parametrize("change, message", [
    ({"thread_id": None}, "missing thread_id"),
    ({"thread_id": "a b"}, "thread_id must be"),
    ({"message_id": None}, "missing message_id"),
    ({"message_id": ""}, "message_id must be a string of 1-128"),
    ({"message_id": "m" * 129}, "message_id must be a string of 1-128"),
    ({"message_id": 7}, "message_id must be a string"),
    ({"message_id": ["msg_1"]}, "message_id must be a string"),
    ({"message_id": "m\x00"}, "message_id must be valid Unicode"),
    ({"strategy": "shove"}, "strategy must be enqueue, interrupt or reject"),
    ({"strategy": 1}, "strategy must be enqueue, interrupt or reject"),
    ({"client_msg_id": ""}, "client_msg_id must be a string of 1-256"),
    ({"client_msg_id": 5}, "client_msg_id must be a string"),
    ({"client_msg_id": "c" * 257}, "client_msg_id must be a string of 1-256"),
])
def test_a_bad_regenerate_is_a_bad_frame_that_keeps_its_ref(codec, change, message):
    obj = {**REGENERATE, "ref": 41, **change}
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(BadFrame) as info:
        decode(obj, codec)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.ref == 41


def test_not_found_is_its_own_code_over_the_websocket_http_and_the_client():
    assert answer_for(NotFound("no message msg_9 in this thread")) == (
        NOT_FOUND, "no message msg_9 in this thread")
    assert NOT_FOUND == "not_found" and STATUS[NOT_FOUND] == 404
    error = ServerError.of({"type": "error", "code": "not_found", "message": "no message"})
    assert type(error) is ClientNotFound and isinstance(error, NotFound)
    assert error.code == "not_found" and error.message == "no message"
