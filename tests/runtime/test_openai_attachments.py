"""The OpenAI agent sends attachments (PROTOCOL.md 1.1) to the model as the chat-completions API
takes them: embedded runtime, the real ``openai`` SDK, the scripted server of
``tests/llm_server.py``; the request's ``messages`` are compared as JSON, whole."""

from __future__ import annotations

import base64
import hashlib
import time
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from tests.llm_server import Answer, open_llm_server
from tests.runtime.test_openai_agent import turn as agent_turn
from threadline import RuntimeConfig, ToolRegistry, open_runtime
from threadline.actors.attachments import CHUNK_BYTES, RunAttachment
from threadline.agents.openai import OpenAIAgent, OpenAIConfig
from threadline.agents.transcript import kind_of, media_type

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")

# The smallest files of each kind: the bytes only need to be what their type says.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000100e2212bc20000000049454e44ae426082")
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_part(data: bytes, media: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{b64(data)}"}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


# -- helpers ----------------------------------------------------------------------------------


@asynccontextmanager
async def agent_runtime(llm, **config):
    agent = OpenAIAgent(OpenAIConfig("test-model", system_prompt="Be brief.",
                                     base_url=llm.base_url, api_key="sk-test", max_retries=0,
                                     **config))
    try:
        async with open_runtime(agent=agent, tools=ToolRegistry(),
                                config=RuntimeConfig()) as rt:
            yield rt
    finally:
        await agent.aclose()


async def upload(rt, attachment_id: str, name: str, content_type: str, data: bytes,
                 user: str = "ada") -> str:
    journal = rt.journal
    await journal.begin_upload(user, attachment_id, name, content_type, time.time())
    for n, at in enumerate(range(0, len(data), CHUNK_BYTES)):
        await journal.write_chunk(user, attachment_id, n, data[at:at + CHUNK_BYTES], 1 << 30)
    await journal.finish_upload(user, attachment_id, len(data), hashlib.sha256(data).hexdigest())
    return attachment_id


async def turn(rt, text: str, attachments=(), user="ada", thread="main"):
    """Send ``text`` with ``attachments``; the run's events up to its terminal one, which
    must be ``agent_completed``."""
    out = await agent_turn(rt, text, user=user, thread=thread, attachments=attachments)
    assert out[-1].event == "agent_completed", out[-1].data
    return out


SYSTEM = {"role": "system", "content": "Be brief."}


# -- the run's own message --------------------------------------------------------------------


async def test_an_image_and_text_files_reach_the_model_as_content_parts():
    async with open_llm_server() as llm, agent_runtime(llm) as rt:
        ids = [await upload(rt, "att_png", "shot.png", "image/png", PNG),
               await upload(rt, "att_txt", "notes.txt", "text/plain",
                            "héllo\n".encode() + b"\xff end"),
               await upload(rt, "att_csv", "data.csv", "text/csv", b"a,b\n1,2\n"),
               await upload(rt, "att_json", "conf.json", "application/json", b'{"k": [1]}')]
        llm.script(Answer(pieces=("a cat",)))
        await turn(rt, "what is this?", ids)
    assert llm.requests[0].refused is None
    assert llm.requests[0].body["messages"] == [SYSTEM, {"role": "user", "content": [
        text_part("what is this?"),
        image_part(PNG, "image/png"),
        text_part("Attached file notes.txt (text/plain):\nhéllo\n\ufffd end"),
        text_part("Attached file data.csv (text/csv):\na,b\n1,2\n"),
        text_part('Attached file conf.json (application/json):\n{"k": [1]}')]}]


async def test_a_pdf_is_a_file_part_and_an_unknown_type_is_named_only():
    async with open_llm_server() as llm, agent_runtime(llm) as rt:
        ids = [await upload(rt, "att_pdf", "report.pdf", "application/pdf", PDF),
               await upload(rt, "att_zip", "a.zip", "application/zip", b"PK\x03\x04")]
        llm.script(Answer(pieces=("ok",)))
        await turn(rt, "summarise", ids)
    assert llm.requests[0].body["messages"][1] == {"role": "user", "content": [
        text_part("summarise"),
        {"type": "file", "file": {"filename": "report.pdf",
                                  "file_data": f"data:application/pdf;base64,{b64(PDF)}"}},
        text_part("Attached file a.zip (application/zip, 4 bytes): a type the model is not "
                  "sent.")]}


async def test_a_message_of_attachments_alone_has_no_empty_text_part():
    async with open_llm_server() as llm, agent_runtime(llm) as rt:
        attachment_id = await upload(rt, "att_png", "shot.png", "image/png", PNG)
        llm.script(Answer(pieces=("ok",)))
        await turn(rt, "", [attachment_id])
    assert llm.requests[0].body["messages"][1] == {
        "role": "user", "content": [image_part(PNG, "image/png")]}


async def test_a_long_text_file_is_cut_and_the_cut_is_said():
    async with open_llm_server() as llm, agent_runtime(llm, text_chars=10) as rt:
        attachment_id = await upload(rt, "att_txt", "long.txt", "text/plain", b"0123456789abc")
        llm.script(Answer(pieces=("ok",)))
        await turn(rt, "read", [attachment_id])
    assert llm.requests[0].body["messages"][1]["content"][1] == text_part(
        "Attached file long.txt (text/plain):\n0123456789\n[cut: the first 10 of 13 "
        "characters]")


async def test_messages_without_attachments_keep_plain_string_contents():
    async with open_llm_server() as llm, agent_runtime(llm) as rt:
        llm.script(Answer(pieces=("one",)), Answer(pieces=("two",)))
        await turn(rt, "first")
        await turn(rt, "second")
    assert llm.requests[1].body["messages"] == [
        SYSTEM, {"role": "user", "content": "first"}, {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"}]


# -- history ----------------------------------------------------------------------------------


async def test_an_earlier_image_goes_back_to_the_model_with_its_message():
    async with open_llm_server() as llm, agent_runtime(llm) as rt:
        attachment_id = await upload(rt, "att_png", "shot.png", "image/png", PNG)
        llm.script(Answer(pieces=("a cat",)), Answer(pieces=("grey",)))
        await turn(rt, "what is this?", [attachment_id])
        await turn(rt, "what colour?")
    assert llm.requests[1].refused is None
    assert llm.requests[1].body["messages"] == [
        SYSTEM,
        {"role": "user", "content": [text_part("what is this?"), image_part(PNG, "image/png")]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "what colour?"}]  # no attachments: a plain string


async def test_history_sends_only_the_newest_images_and_files_and_names_the_others():
    async with open_llm_server() as llm, agent_runtime(llm, history_images=1,
                                                       history_files=1) as rt:
        first = [await upload(rt, "att_a", "a.png", "image/png", PNG),
                 await upload(rt, "att_t1", "t1.txt", "text/plain", b"one")]
        second = [await upload(rt, "att_b", "b.jpg", "image/jpeg", JPEG),
                  await upload(rt, "att_c", "c.png", "image/png", PNG),
                  await upload(rt, "att_t2", "t2.txt", "text/plain", b"two")]
        now = [await upload(rt, "att_d", "d.png", "image/png", PNG)]
        llm.script(*[Answer(pieces=(f"answer {n}",)) for n in range(3)])
        await turn(rt, "first", first)
        await turn(rt, "second", second)
        await turn(rt, "third", now)
    assert llm.requests[2].body["messages"] == [
        SYSTEM,
        {"role": "user", "content": [
            text_part("first"),
            text_part(f"Attached file a.png (image/png, {len(PNG)} bytes): an earlier "
                      "attachment, not sent again."),
            text_part("Attached file t1.txt (text/plain, 3 bytes): an earlier attachment, "
                      "not sent again.")]},
        {"role": "assistant", "content": "answer 0"},
        {"role": "user", "content": [
            text_part("second"),
            image_part(JPEG, "image/jpeg"),  # the newest message first, in its order
            text_part(f"Attached file c.png (image/png, {len(PNG)} bytes): an earlier "
                      "attachment, not sent again."),
            text_part("Attached file t2.txt (text/plain):\ntwo")]},
        {"role": "assistant", "content": "answer 1"},
        # The run's own message sends all of its attachments, whatever the history's bound.
        {"role": "user", "content": [text_part("third"), image_part(PNG, "image/png")]}]


@pytest.mark.parametrize("history_images, sent", [(0, False), (4, True)])
async def test_history_images_bounds_the_earlier_images_sent(history_images, sent):
    async with open_llm_server() as llm, agent_runtime(llm,
                                                       history_images=history_images) as rt:
        attachment_id = await upload(rt, "att_png", "shot.png", "image/png", PNG)
        llm.script(Answer(pieces=("a cat",)), Answer(pieces=("grey",)))
        await turn(rt, "what is this?", [attachment_id])
        await turn(rt, "what colour?")
    assert llm.requests[1].body["messages"][1]["content"][1] == (
        image_part(PNG, "image/png") if sent else
        text_part(f"Attached file shot.png (image/png, {len(PNG)} bytes): an earlier "
                  "attachment, not sent again."))


async def test_an_earlier_attachment_no_longer_stored_is_named_as_gone():
    async with open_llm_server() as llm, agent_runtime(llm) as rt:
        attachment_id = await upload(rt, "att_pdf", "r.pdf", "application/pdf", PDF)
        llm.script(Answer(pieces=("read",)), Answer(pieces=("gone",)))
        await turn(rt, "read this", [attachment_id])
        await rt.journal.delete_user_attachments("ada")
        await turn(rt, "again?")
    assert llm.requests[1].body["messages"][1]["content"] == [
        text_part("read this"),
        text_part(f"Attached file r.pdf (application/pdf, {len(PDF)} bytes): no longer "
                  "stored.")]


# -- Run.read_attachment ----------------------------------------------------------------------


async def test_read_attachment_reads_only_the_runs_own_thread_and_user():
    read: dict[str, bytes] = {}

    async def agent(run):
        for attachment_id in ("att_mine", "att_other_thread", "att_bob", "att_unsent",
                              "att_none"):
            read[attachment_id] = await run.read_attachment(attachment_id)
        return "ok"

    async with open_runtime(agent=agent) as rt:
        big = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 7)  # three chunks
        await upload(rt, "att_mine", "m.bin", "text/plain", big)
        await upload(rt, "att_other_thread", "o.txt", "text/plain", b"other")
        await upload(rt, "att_bob", "b.txt", "text/plain", b"bob's", user="bob")
        await upload(rt, "att_unsent", "u.txt", "text/plain", b"unsent")
        await turn(rt, "elsewhere", ["att_other_thread"], thread="other")
        await turn(rt, "bob", ["att_bob"], user="bob")
        read.clear()
        await turn(rt, "mine", ["att_mine"])
    assert read == {"att_mine": big, "att_other_thread": b"", "att_bob": b"",
                    "att_unsent": b"", "att_none": b""}


# -- units ------------------------------------------------------------------------------------


async def test_a_large_attachment_is_encoded_whole_off_the_event_loop():
    data = bytes(range(256)) * (3 << 12)  # 3 MiB: over the threshold of a worker thread

    class FakeRun:
        text = "big"
        attachments = [RunAttachment("att_big", "big.png", "image/png", len(data),
                                     read=lambda: _value(data))]

        async def history(self, limit):
            return []

    agent = OpenAIAgent(OpenAIConfig("m", api_key="k"))
    messages = await agent.messages(FakeRun())
    assert messages == [{"role": "user", "content": [text_part("big"),
                                                      image_part(data, "image/png")]}]


async def _value(data: bytes) -> bytes:
    await trio.lowlevel.checkpoint()
    return data


@pytest.mark.parametrize("content_type, kind", [
    ("image/png", "image"), ("IMAGE/JPEG", "image"), ("image/gif", "image"),
    ("image/webp", "image"), ("image/svg+xml", None), ("text/plain; charset=utf-8", "text"),
    ("text/csv", "text"), ("text/markdown", "text"), ("application/json", "text"),
    ("application/pdf", "file"), ("application/zip", None), ("", None)])
def test_kind_of(content_type, kind):
    assert kind_of(content_type) == kind


def test_media_type_drops_parameters_and_case():
    assert media_type(" Text/Plain ; charset=UTF-8") == "text/plain"
