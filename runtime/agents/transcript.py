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
"""

from __future__ import annotations

import json
from typing import Any

from threadline.actors.history import ToolUse, Turn

__all__ = ["UNFINISHED", "denial_content", "messages_of", "tool_content"]

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
