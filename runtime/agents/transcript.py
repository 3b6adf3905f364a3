"""A thread's earlier turns (``run.history``, ``actors/history.py``) as chat-completions
messages, and a tool call's outcome as the content of its ``tool`` message.

``messages_of(turn)`` gives a user's turn as ``{"role": "user", ...}`` and an answer as the
assistant's messages, tool calls included: for each group of calls made with no text between
them (``ToolUse.at``), an assistant message with the text written before them (or ``None``) and
``tool_calls``, then one ``tool`` message per call, in order; then the text written after the
last call. ``tool_content`` is what a ``tool`` message says, in a run and in the turns after it.

Invariants:

- Every ``tool_calls`` id is answered by exactly one ``tool`` message right after its
  assistant message, whatever became of the call: the API refuses a conversation with a call
  left unanswered (a run cancelled while a call waited for approval, or ran).
- A call's content is the same in its own run and in later turns: the result as JSON; an error
  as ``{"error": ...}``; a denial as ``{"error": "denied: REASON", "denied": true}``, so the
  model knows the tool did not run and why, and can say so; a call the run never finished as
  ``{"error": "no result: ..."}``.
- A call's id in later turns is the journal's ``call_id`` (the model's own id of a past round is
  not stored); its arguments are the stored ``args`` as JSON. Ids only have to match within
  the conversation sent.
- An answer that said nothing and called nothing (a run that failed before writing) sends
  nothing; nor does an empty user message.

Attachments (PROTOCOL.md 1.1) are content parts of their user message, in the API's format
(the SDK's ``ChatCompletionContentPartParam``): ``user_message(text, parts)`` gives a message
with parts ``content`` as a list, its text first (left out when empty), then the parts in the
order the message lists its attachments; without parts, ``content`` stays the plain string.
``attachment_part`` makes a part of an attachment's bytes:

- images (``image/png``, ``image/jpeg``, ``image/gif``, ``image/webp``): an ``image_url`` part
  whose URL is a ``data:TYPE;base64,...`` URL;
- ``text/*`` (CSV is ``text/csv``) and ``application/json``: a ``text`` part, the bytes decoded
  as UTF-8 (an undecodable byte becomes U+FFFD), introduced by a line naming the file
  (``Attached file NAME (TYPE):``); at most ``text_chars`` characters of it, a longer one cut
  and the cut said on a last line, so one large file cannot fill the model's context;
- PDFs (``application/pdf``): a ``file`` part, ``{filename, file_data}`` with a data URL;
- anything else (a type an operator allowed that the API does not take): a ``text`` part that
  names the file and says it is not shown (``left_out_part``), as for an attachment left out
  of the history or no longer stored.

A content type is compared without its parameters and case (``text/plain; charset=utf-8`` is
``text/plain``).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from threadline.actors.history import ToolUse, Turn

__all__ = ["IMAGE_TYPES", "UNFINISHED", "attachment_part", "denial_content", "kind_of",
           "left_out_part", "media_type", "messages_of", "tool_content", "user_message"]

UNFINISHED = "no result: the run ended before this call finished"


def tool_content(use: ToolUse) -> str:
    """The content of the ``tool`` message of a stored call (see the module header)."""
    if use.status == "completed":
        return json.dumps(use.result)
    if use.status == "denied":
        return denial_content(use.error or "denied")
    return json.dumps({"error": use.error if use.status == "failed" else UNFINISHED})


def denial_content(error: str) -> str:
    """The content of the ``tool`` message of a denied call; ``error`` is ``"denied: " +
    reason``, as ``tool_completed`` stores it and ``ToolDenied`` says it."""
    return json.dumps({"error": error, "denied": True})


def messages_of(turn: Turn) -> list[dict[str, Any]]:
    """The chat-completions messages of one turn (see the module header)."""
    if turn.role == "user" or not turn.calls:
        return [{"role": turn.role, "content": turn.text}] if turn.text else []
    out: list[dict[str, Any]] = []
    text, start = turn.text, 0
    calls = list(turn.calls)
    while calls:
        at = min(max(calls[0].at, start), len(text))
        group = [calls.pop(0)]
        while calls and min(max(calls[0].at, start), len(text)) == at:
            group.append(calls.pop(0))
        out.append({"role": "assistant", "content": text[start:at].strip() or None,
                    "tool_calls": [{"id": use.call_id, "type": "function",
                                    "function": {"name": use.tool,
                                                 "arguments": json.dumps(use.args)}}
                                   for use in group]})
        out += [{"role": "tool", "tool_call_id": use.call_id, "content": tool_content(use)}
                for use in group]
        start = at
    if rest := text[start:].strip():
        out.append({"role": "assistant", "content": rest})
    return out


# -- attachments ------------------------------------------------------------------------------

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
PDF_TYPE = "application/pdf"

Kind = Literal["image", "text", "file"]


def media_type(content_type: str) -> str:
    """``content_type`` without its parameters, in lower case."""
    return content_type.split(";", 1)[0].strip().lower()


def kind_of(content_type: str) -> Kind | None:
    """The kind of part an attachment of ``content_type`` becomes: ``image``, ``text``,
    ``file`` (a PDF), or None (not one the API takes: named in a text part only)."""
    media = media_type(content_type)
    if media in IMAGE_TYPES:
        return "image"
    if media.startswith("text/") or media == "application/json":
        return "text"
    if media == PDF_TYPE:
        return "file"
    return None


def attachment_part(name: str, content_type: str, data: bytes, *,
                    text_chars: int) -> dict[str, Any]:
    """The content part of one attachment's bytes (see the module header)."""
    media = media_type(content_type)
    kind = kind_of(content_type)
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _data_url(media, data)}}
    if kind == "file":
        return {"type": "file", "file": {"filename": name, "file_data": _data_url(media, data)}}
    if kind == "text":
        text = data.decode("utf-8", errors="replace")
        if len(text) > text_chars:
            text = (f"{text[:text_chars]}\n[cut: the first {text_chars} of {len(text)} "
                    "characters]")
        return {"type": "text", "text": f"Attached file {name} ({media}):\n{text}"}
    return left_out_part(name, content_type, len(data), "a type the model is not sent")


def left_out_part(name: str, content_type: str, size: int, why: str) -> dict[str, Any]:
    """A text part naming an attachment whose content is not sent, and why."""
    return {"type": "text",
            "text": f"Attached file {name} ({media_type(content_type)}, {size} bytes): {why}."}


def user_message(text: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A user message: ``content`` the text alone without parts (as ever), else the list of
    the text's part (when not empty) and ``parts``."""
    if not parts:
        return {"role": "user", "content": text}
    return {"role": "user",
            "content": ([{"type": "text", "text": text}] if text else []) + parts}


def _data_url(media: str, data: bytes) -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"
