"""What the OpenAI chat-completions API refuses in a request's ``messages``, in its words: the
scripted server (``llm_server.py``) answers such a request with a 400 as OpenAI does, so a test
of an agent fails when the agent sends a conversation the real API would refuse.

Invariants:

- Every id of an assistant message's ``tool_calls`` is answered by exactly one ``tool``
  message, and those come right after it (before any other message); a ``tool`` message that
  answers no waiting call is refused. OpenAI's sentences are kept, its typo included.
- Contents are strings: a ``tool``'s, a user's and a system prompt's always; an assistant's
  unless it has ``tool_calls`` (then it may be null). A call is ``{id, type: "function",
  function: {name, arguments}}`` with string name and arguments.
"""

from __future__ import annotations

import base64

from typing import Any

ROLES = ("system", "developer", "user", "assistant", "tool")


def conversation_problem(messages: Any) -> str | None:
    """What the OpenAI API refuses in a request's ``messages`` (their shapes, and the rules of
    tool calls), in its words; None when they are fine."""
    if not isinstance(messages, list) or not messages:
        return "Invalid 'messages': expected a non-empty array."
    waiting: list[str] = []  # ids of the last assistant message's calls not answered yet
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"Invalid value for 'messages[{i}].role'."
        if m["role"] == "tool":
            if m.get("tool_call_id") not in waiting:
                return ("Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'.")
            waiting.remove(m["tool_call_id"])
            if not isinstance(m.get("content"), str):
                return f"Invalid type for 'messages[{i}].content': expected a string."
            continue
        if waiting:
            break
        if m["role"] == "assistant" and m.get("tool_calls") is not None:
            calls = m["tool_calls"]
            if not isinstance(calls, list) or not calls or not all(_is_call(c) for c in calls):
                return f"Invalid value for 'messages[{i}].tool_calls'."
            waiting = [c["id"] for c in calls]
            if m.get("content") is not None and not isinstance(m["content"], str):
                return f"Invalid type for 'messages[{i}].content': expected a string."
        elif m["role"] == "user" and isinstance(m.get("content"), list):
            if (problem := _content_problem(i, m["content"])) is not None:
                return problem
        elif not isinstance(m.get("content"), str):
            return f"Invalid type for 'messages[{i}].content': expected a string."
    if waiting:
        return ("An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(waiting)}")
    return None


def _is_call(call: Any) -> bool:
    function = call.get("function") if isinstance(call, dict) else None
    return (isinstance(call.get("id"), str) and call.get("type") == "function"
            and isinstance(function, dict) and isinstance(function.get("name"), str)
            and isinstance(function.get("arguments"), str))


# A user message's ``content`` may be an array of content parts (text, image_url, file), each
# with its required fields and no others; a data URL must decode as base64.
_PART_FIELDS = {"text": {"text": str}, "image_url": {"url": str},
                "file": {"filename": str, "file_data": str}}


def _content_problem(i: int, parts: list[Any]) -> str | None:
    if not parts:
        return f"Invalid 'messages[{i}].content': empty array."
    for j, part in enumerate(parts):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _PART_FIELDS:
            return f"Invalid value for '{where}.type'."
        if set(part) != {"type", kind}:
            return f"Unrecognized request argument supplied in '{where}'."
        body = {"text": part["text"]} if kind == "text" else part[kind]
        if not isinstance(body, dict):
            return f"Invalid type for '{where}.{kind}'."
        fields = _PART_FIELDS[kind]
        if set(body) != set(fields) or not all(isinstance(body[k], t)
                                               for k, t in fields.items()):
            return f"Invalid value for '{where}.{kind}'."
        url = body.get("url") or body.get("file_data")
        if url is not None:
            head, _, data = url.partition(";base64,")
            if not head.startswith("data:") or not data:
                return f"Invalid '{where}': expected a base64 data URL."
            try:
                base64.b64decode(data, validate=True)
            except ValueError:
                return f"Invalid '{where}': expected a base64 data URL."
    return None
