"""``threadline.agents.transcript``: earlier turns as chat-completions messages, for the turns
a runtime rarely writes (the end-to-end cases are in ``test_openai_approval.py``): every call
answered, whatever its place in the text, and each conversation one the API takes
(``tests/llm_conversation.py``)."""

from __future__ import annotations

import json

from tests.llm_conversation import conversation_problem
from threadline.actors.history import ToolUse, Turn
from threadline.agents.transcript import UNFINISHED, messages_of

USER = {"role": "user", "content": "go"}


def answer(text: str, *calls: ToolUse, outcome: str = "completed") -> Turn:
    return Turn("assistant", text, "r1", 9, outcome, calls)  # type: ignore[arg-type]


def test_a_call_placed_past_the_answer_comes_before_it():
    # An agent that wrote "abcdef", called, then returned "xyz": the call's place is clamped.
    turn = answer("xyz", ToolUse("c1", "f", {"a": 1}, 6, "completed", result=[1, 2]))
    messages = messages_of(turn)
    assert messages == [
        {"role": "assistant", "content": "xyz", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "[1, 2]"}]
    assert conversation_problem([USER, *messages]) is None


def test_rounds_are_split_at_the_text_between_them_and_every_call_is_answered():
    turn = answer("One.\n\nTwo.\n\nThree.",
                  ToolUse("c1", "f", {}, 4, "failed", error="ValueError: x"),
                  ToolUse("c2", "g", {}, 11, "denied", error="denied: no"),
                  ToolUse("c3", "f", {}, 11, "unfinished"), outcome="failed")
    messages = messages_of(turn)
    assert [(m["role"], m.get("content")) for m in messages] == [
        ("assistant", "One."), ("tool", json.dumps({"error": "ValueError: x"})),
        ("assistant", "Two."), ("tool", json.dumps({"error": "denied: no", "denied": True})),
        ("tool", json.dumps({"error": UNFINISHED})), ("assistant", "Three.")]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c2", "c3"]
    assert conversation_problem([USER, *messages]) is None


def test_a_turn_that_said_and_called_nothing_sends_nothing():
    assert messages_of(answer("", outcome="failed")) == []
    assert messages_of(Turn("user", "", "r1", 1)) == []
