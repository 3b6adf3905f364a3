"""``OpenAIAgent``: an agent that answers with a language model behind an OpenAI-compatible
chat-completions API (OpenAI, or vLLM, Ollama, llama.cpp, LiteLLM... speaking it), through the
official ``openai`` SDK, which runs under trio (it is built on anyio).

One run: the thread's earlier turns (``run.history``, with their tool calls and what became
of them, as chat-completions messages: ``transcript.py``) and the message go to the model, with
the run's tools offered as functions (each with its JSON Schema: given at registration, else read
from the tool's signature, ``tool_schema``). The answer is streamed as it comes (``run.write``:
``agent_delta`` events). When the model calls tools, each call goes through ``run.call_tool``
(so it is recorded as ``tool_executing``/``tool_completed``), the results go back to the model,
and it is asked again: at most ``max_rounds`` times a run.

Attachments (PROTOCOL.md 1.1) go with their message as content parts (``transcript.py``:
images as ``image_url`` parts, text, CSV and JSON as ``text`` parts, PDFs as ``file`` parts,
each inline as base64 or text; a message without any keeps its plain string ``content``, so
such a request is byte for byte what it was before attachments). The run's own message sends
all of its attachments. Earlier messages (``run.history``) send theirs again, bounded, since
every model call pays for them again: the ``history_images`` newest images and the
``history_files`` newest text files and PDFs of the history (newest message first; within a
message, in its order) go whole, read through ``run.read_attachment``; every other earlier
attachment is a text part naming it (``an earlier attachment, not sent again``), so the model
knows it was there and can ask for it again. One text file is at most ``text_chars``
characters (a longer one is cut, and the part says so). An attachment whose bytes are gone
(size > 0, nothing stored) is a text part saying so. Bytes over ``_OFFLOAD`` are encoded in a
worker thread (the SDK then serializes the request in the event loop: large attachments cost
the server's loop that once per model call).

Tokens and budgets (PROTOCOL.md 1.1): each model call is a ``run.model_call`` (the user's
budget is checked before it: a run that crossed it during its last call ends ``agent_failed``
``budget_exceeded`` instead of calling again; the call is a ``chat {model}`` span), and asks the
API for its usage (``stream_options.include_usage``: the SDK then gives a last chunk with no
choices and a ``CompletionUsage``), reported with ``run.report_usage``: ``prompt_tokens``,
``completion_tokens``, ``prompt_tokens_details.cached_tokens``. The API sends that chunk after
the finish reason, so a call cut or cancelled before its end reports nothing: the OpenAI
reference says as much, and PROTOCOL.md counts only the model's own figures.

One concept, a run as the chat-completions API sees it: what is sent (history, attachments,
tools), the rounds of streamed calls and tool results, and what the API's failures become. How
earlier turns and attachments are spelled as messages is ``transcript.py``'s, a tool's schema
``tool_schema.py``'s; what stays here shares the config, the SDK client and the run.

Invariants:

- The HTTP stream to the model lives inside ``async with``: a cancelled run (``cancel``,
  ``interrupt``, shutdown) closes the connection at once, so a cancelled answer stops costing.
- Every upstream failure (no connection, 401, 429 after the SDK's retries, 5xx, a stream cut in
  the middle, a malformed tool call, too many rounds) raises ``ModelError`` with one plain
  sentence, safe to show a user and enough for an operator (``the model endpoint answered 429
  Too Many Requests (rate limited)``): the run ends ``agent_failed`` with it and the engine logs
  it, once, as a warning without a traceback (``actors/execution.py``). The sentence names a
  status and its reason phrase, never the upstream's body (OpenAI's 401 body quotes part of the
  key); that body, the error's type and the request id go to this module's log at debug level.
- ``describe()`` names the agent, the model and the endpoint for the start-up log: the URL
  without its user, password, query or fragment; never the API key.
- A tool that fails is not a failed run: its error goes back to the model as the tool's result.
  So does a call a person denied (or whose approval expired: ``ToolDenied``): the model hears
  that the tool did not run and why, and answers (``I did not send it``); the run completes.
  The same call reads the same in later turns (``transcript.py``), so a model that proposed a
  transfer and was refused still knows it the next turn.
- The SDK's client is made on first use inside the trio run and closed by ``aclose`` (the SDK
  would otherwise try to close it with asyncio, which does not run here).
"""

from __future__ import annotations

import json
import logging
import os
from http import HTTPStatus
from functools import partial
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import attrs
import openai
import trio

from threadline.actors.engine import Run
from threadline.actors.errors import AgentError, ToolDenied, ToolError
from threadline.actors.history import Turn, answer_so_far
from threadline.actors.tools import ToolRegistry
from threadline.actors.tracing import (FINISH_REASONS, INPUT_MESSAGES, OUTPUT_MESSAGES,
                                       RESPONSE_ID, RESPONSE_MODEL, Span)

from .tool_schema import describe_tool
from .transcript import (
    attachment_part,
    denial_content,
    kind_of,
    left_out_part,
    messages_of,
    user_message,
)

log = logging.getLogger("threadline.agents.openai")

__all__ = ["ModelError", "OpenAIAgent", "OpenAIConfig"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the SDK's, without base_url or OPENAI_BASE_URL


class ModelError(AgentError):
    """The model could not give an answer; the message is for the user."""


@attrs.frozen
class OpenAIConfig:
    model: str
    system_prompt: str | None = None
    base_url: str | None = None   # None: OPENAI_BASE_URL, else the SDK's default (api.openai.com)
    api_key: str | None = None    # None: OPENAI_API_KEY
    max_rounds: int = 8           # model calls per run: tool rounds end there
    history_turns: int = 50       # earlier turns sent with each message (with their calls)
    max_retries: int = 2          # the SDK's retries of a refused request (429, 5xx, network)
    timeout: float = 60.0         # seconds: to connect, and of silence while streaming
    history_images: int = 4       # images of earlier messages sent again, newest first
    history_files: int = 4        # text files and PDFs of earlier messages sent again, same
    text_chars: int = 200_000     # characters of one text attachment sent (longer: cut)
    # Ask for the tokens of each streamed answer (``stream_options.include_usage``); False
    # for an endpoint that refuses the option (its runs then report no usage).
    stream_usage: bool = True


class OpenAIAgent:
    """Call it as an agent (``agent(run)``); ``await agent.aclose()`` when done with it."""

    agent_name = "openai"  # its ``invoke_agent`` spans (``tracing.py``)

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        self._client: openai.AsyncOpenAI | None = None
        self._functions: dict[tuple[str, Any], dict[str, Any]] = {}

    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            c = self.config
            self._client = openai.AsyncOpenAI(base_url=c.base_url, api_key=c.api_key,
                                              max_retries=c.max_retries, timeout=c.timeout)
        return self._client

    def describe(self) -> str:
        """``openai, model M at URL``: what the start-up log says (never the key)."""
        return f"openai, model {self.config.model} at {self.endpoint()}"

    def endpoint(self) -> str:
        """The base URL the SDK uses, as the SDK picks it, without user, password or query."""
        url = self.config.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            host = f"[{host}]" if ":" in host else host
            port = f":{parts.port}" if parts.port is not None else ""
        except ValueError:  # the SDK will say so at the first run; the log need not
            return "an unreadable base URL"
        return f"{parts.scheme}://{host}{port}{parts.path}"

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    resumable = True  # a wait for approval parks the run (``approval.resumable``)

    async def __call__(self, run: Run) -> str | None:
        messages = await self.messages(run)
        tools = self.functions(run.tools)
        if run.resumed:
            messages += await self._resumed(run)
        for round_ in range(self.config.max_rounds):
            text, calls = await self._complete(run, messages, tools)
            if not calls:
                return None  # completes with what was streamed, over all rounds
            if round_ == self.config.max_rounds - 1:
                break  # no round left to give the results to: do not run the tools
            messages.append({"role": "assistant", "content": text or None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": arguments}}
                for call_id, name, arguments in calls]})
            for call_id, name, arguments in calls:
                messages.append({"role": "tool", "tool_call_id": call_id,
                                 "content": await self._call(run, name, arguments)})
        raise ModelError(f"the model asked for tools {self.config.max_rounds} times without "
                         "answering")

    async def messages(self, run: Run) -> list[dict[str, Any]]:
        """What the model is sent: the system prompt, the earlier turns (their tool calls
        and attachments included), the message with its attachments."""
        out: list[dict[str, Any]] = []
        if self.config.system_prompt:
            out.append({"role": "system", "content": self.config.system_prompt})
        turns = await run.history(self.config.history_turns)
        shown = self._shown(turns)
        for turn in turns:
            if turn.role == "user" and turn.attachments:
                parts = []
                for i, listed in enumerate(turn.attachments):
                    attachment_id = str(listed.get("attachment_id", ""))
                    parts.append(await self._part(
                        str(listed.get("name", "")), str(listed.get("content_type", "")),
                        _size(listed.get("size")), partial(run.read_attachment, attachment_id),
                        shown=(turn.seq, i) in shown))
                out.append(user_message(turn.text, parts))
            else:
                out += messages_of(turn)
        out.append(user_message(run.text, [
            await self._part(a.name, a.content_type, a.size, a.read)
            for a in run.attachments]))
        return out

    def _shown(self, turns: list[Turn]) -> set[tuple[int, int]]:
        """The earlier attachments sent whole, as ``(turn.seq, index)``: the newest
        ``history_images`` images and ``history_files`` other files the API takes."""
        left = {"image": self.config.history_images, "files": self.config.history_files}
        shown: set[tuple[int, int]] = set()
        for turn in reversed(turns):
            if turn.role != "user":
                continue
            for i, listed in enumerate(turn.attachments):
                kind = kind_of(str(listed.get("content_type", "")))
                pool = "image" if kind == "image" else "files" if kind is not None else None
                if pool is not None and left[pool] > 0:
                    left[pool] -= 1
                    shown.add((turn.seq, i))
        return shown

    async def _part(self, name: str, content_type: str, size: int,
                    read: Callable[[], Awaitable[bytes]], *, shown: bool = True
                    ) -> dict[str, Any]:
        """The content part of one attachment (``transcript.attachment_part``); its bytes are
        read only when they are sent."""
        if kind_of(content_type) is None:
            return left_out_part(name, content_type, size, "a type the model is not sent")
        if not shown:
            return left_out_part(name, content_type, size,
                                 "an earlier attachment, not sent again")
        data = await read()
        if size > 0 and not data:
            return left_out_part(name, content_type, size, "no longer stored")
        make = partial(attachment_part, name, content_type, data,
                       text_chars=self.config.text_chars)
        return await trio.to_thread.run_sync(make) if len(data) > _OFFLOAD else make()

    def functions(self, tools: ToolRegistry) -> list[dict[str, Any]]:
        """The tools as the API's ``tools``: a function each, with its JSON Schema."""
        out = []
        for name in tools.names():
            spec = tools.get(name)
            assert spec is not None
            key = (name, spec.fn)
            if key not in self._functions:
                description, schema = describe_tool(spec.fn) if spec.schema is None else (
                    None, spec.schema)
                function: dict[str, Any] = {"name": name, "parameters": schema}
                if spec.description or description:
                    function["description"] = spec.description or description
                self._functions[key] = {"type": "function", "function": function}
            out.append(self._functions[key])
        return out

    async def _complete(self, run: Run, messages: list[dict[str, Any]],
                        tools: list[dict[str, Any]]) -> tuple[str, list[tuple[str, str, str]]]:
        """One streamed completion: its text (written to the run as it comes) and its tool
        calls as ``(id, name, arguments)``. Raises ``ModelError``."""
        async with run.model_call(self.config.model) as span:  # the budget, the span
            if run.tracing.capture_content:
                span.set(INPUT_MESSAGES, _content(messages))
            text, calls, finish = await self._stream(run, span, messages, tools)
            span.set(FINISH_REASONS, [finish])
            if run.tracing.capture_content:
                span.set(OUTPUT_MESSAGES, _content([{"role": "assistant", "content": text}]))
        return text, calls

    async def _stream(self, run: Run, span: Span, messages: list[dict[str, Any]],
                      tools: list[dict[str, Any]]
                      ) -> tuple[str, list[tuple[str, str, str]], str]:
        """``_complete``'s model call: text, calls and finish reason. Its tokens are
        reported when the API sent them (``stream_options.include_usage``: a last chunk
        before ``[DONE]``, which a stream cut or cancelled before its end never has), also
        when the call then fails."""
        text: list[str] = []
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        finish = None
        usage = None
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        if self.config.stream_usage:
            extra["stream_options"] = {"include_usage": True}
        # The text of a later round (after tool calls) starts a new paragraph of the answer.
        separator = "\n\n" if run.written else ""
        failed: ModelError | None = None
        try:
            # The chunks as the API's JSON (``cast_to=object``): the SDK's request, retries,
            # errors and stream of server-sent events, without a pydantic model built for
            # every chunk, about half of its cost per token (``bench/model_client.py``).
            body = {"model": self.config.model, "messages": messages, "stream": True, **extra}
            opened = await self.client().post("/chat/completions", cast_to=object, body=body,
                                              stream=True, stream_cls=openai.AsyncStream[object])
            async with opened as stream:
                chunks = aiter(stream)
                while (chunk := await _next_chunk(chunks, run)) is not None:
                    try:
                        if (got := chunk.get("usage")) is not None:
                            usage = got
                            span.set(RESPONSE_MODEL, chunk.get("model"))
                            span.set(RESPONSE_ID, chunk.get("id"))
                        for choice in chunk.get("choices") or ():
                            delta = choice.get("delta") or {}
                            if content := delta.get("content"):
                                text.append(content)
                                await run.write(separator + content)
                                separator = ""
                            for part in delta.get("tool_calls") or ():
                                call = calls.setdefault(part["index"], ["", "", ""])
                                call[0] = part.get("id") or call[0]
                                if (function := part.get("function")) is not None:
                                    call[1] = function.get("name") or call[1]
                                    call[2] += function.get("arguments") or ""
                            finish = choice.get("finish_reason") or finish
                    except (AttributeError, KeyError, TypeError) as exc:
                        log.debug("run %s: the model sent a chunk not shaped as one: %.200r",
                                  run.context.run_id, chunk)
                        raise ModelError("the model sent a malformed answer") from exc
        except openai.APIError as exc:
            failed = _model_error(exc, run)
            span.error(type(exc).__name__, str(failed))
        if usage is not None:
            await run.report_usage(**_tokens(usage), model=self.config.model)
        if failed is not None:
            raise failed
        if finish is None:
            log.debug("run %s: the model's stream ended without a finish reason",
                      run.context.run_id)
            span.error("cut_off")
            raise ModelError("the model's answer was cut off")
        return "".join(text), [(c[0], c[1], c[2]) for _, c in sorted(calls.items())], finish

    async def _resumed(self, run: Run) -> list[dict[str, Any]]:
        """The run was parked on a call waiting for approval and goes on: its own rounds so
        far, from its stored events, the call it parked on answered now (``run.call_tool``
        runs it once approved, or gives the denial; the calls made before it answer from the
        store), so that the model is asked for its next round."""
        transcript = run.transcript()
        turn = answer_so_far(transcript)
        answered = {e.data.get("call_id") for e in transcript if e.event == "tool_completed"}
        calls = []
        for use in turn.calls:
            if use.call_id not in answered:  # the call it parked on
                try:
                    use = attrs.evolve(use, status="completed",
                                       result=await run.call_tool(use.tool, **use.args))
                except ToolDenied as exc:
                    use = attrs.evolve(use, status="denied", error=str(exc))
                except ToolError as exc:
                    use = attrs.evolve(use, status="failed", error=str(exc))
            calls.append(use)
        return messages_of(attrs.evolve(turn, calls=tuple(calls)))

    async def _call(self, run: Run, name: str, arguments: str) -> str:
        """Run one tool call; its result (or its error) as the content the model gets back."""
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            log.debug("run %s: malformed arguments for tool %r: %.200r", run.context.run_id,
                      name, arguments)
            raise ModelError(f"the model sent a malformed call of tool {name!r}")
        try:
            result = await run.call_tool(name, **args)
        except ToolDenied as exc:
            return denial_content(str(exc))
        except ToolError as exc:
            return json.dumps({"error": str(exc)})
        return json.dumps(result)


_OFFLOAD = 1 << 20  # bytes of an attachment from which its part is made in a worker thread


def _content(messages: list[dict[str, Any]]) -> str:
    """Messages as a span attribute (the operator opted in): JSON, at most 64 KiB of it."""
    return json.dumps(messages, ensure_ascii=False, default=str)[:65536]


def _size(value: Any) -> int:
    """A listed attachment's ``size`` (0 when it is not a number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _tokens(usage: Any) -> dict[str, int]:
    """A chunk's ``usage`` as ``report_usage`` takes it; a count that is not one is 0."""
    def count(obj: Any, name: str) -> int:
        value = obj.get(name) if isinstance(obj, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return {"input_tokens": count(usage, "prompt_tokens"),
            "output_tokens": count(usage, "completion_tokens"),
            "cached_input_tokens": count(usage.get("prompt_tokens_details")
                                         if isinstance(usage, dict) else None, "cached_tokens")}


async def _next_chunk(chunks: Any, run: Run) -> Any:
    """The next chunk of a stream, None at its end. Raises ``ModelError`` for data that is not
    a chunk (the SDK parses the event's JSON outside its own error handling)."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None
    except (ValueError, TypeError) as exc:
        log.debug("run %s: the model sent data that is not a chunk: %.200s",
                  run.context.run_id, exc)
        raise ModelError("the model sent a malformed answer") from None


def _model_error(exc: openai.APIError, run: Run) -> ModelError:
    """The plain sentence for an SDK error (the user's and the operator's); the details go to
    the debug log."""
    status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
    # A 401/403 body may quote part of the key: its message is not logged even at debug.
    detail = "" if status in (401, 403) else f": {exc.message:.200}"
    log.debug("run %s: the model call failed: %s%s%s", run.context.run_id, type(exc).__name__,
              f" (request {exc.request_id})" if isinstance(exc, openai.APIStatusError)
              and exc.request_id else "", detail)
    if isinstance(exc, openai.APITimeoutError):
        return ModelError("the model endpoint did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        if cause is not None and "RemoteProtocol" in type(cause).__name__:
            return ModelError("the connection to the model was lost in the middle of the answer")
        return ModelError("the model endpoint could not be reached")
    if status is not None:
        return ModelError(f"the model endpoint answered {_status_line(status)}"
                          f"{_MEANING.get(status, '')}")
    return ModelError("the model endpoint reported an error")


_MEANING = {401: " (the API key was refused)", 403: " (access denied)",
            404: " (no such model or path)", 429: " (rate limited)"}


def _status_line(status: int) -> str:
    """``429 Too Many Requests``; a status Python does not know is its number alone."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
