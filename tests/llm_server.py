"""A scripted OpenAI-compatible chat-completions server for the tests: trio, h11, loopback.

    async with open_llm_server() as llm:  # then AsyncOpenAI(base_url=llm.base_url, ...)
        llm.script(Answer(pieces=("Hel", "lo"), delay=0.05), Failure(429, retry_after=0.01))

Invariants:

- 127.0.0.1, a free port, real HTTP/1.1 through h11 (keep-alive, chunked bodies). Each
  ``POST /v1/chat/completions`` with a JSON object body is recorded in ``llm.requests`` in
  arrival order and gets the next scripted answer (none left: a 500 that says so). Anything else
  gets a 404 and is not recorded.
- A request whose ``messages`` break the API's rules for tool calls is refused as OpenAI
  refuses it, with a 400 and its message, and takes no scripted answer (``Received.refused``
  says why): every ``tool_calls`` id answered by one ``tool`` message right after its assistant
  message, no ``tool`` message answering nothing, string contents (``conversation_problem``).
- ``"stream": true`` gets server-sent events: a ``chat.completion.chunk`` per delta (the first
  carries the role), ``delay`` s before each but the first, then what ``Ending`` says. Otherwise
  the whole ``chat.completion`` is sent at once. Tool calls go as OpenAI sends them: per call a
  delta with ``index``, ``id``, ``type``, ``name`` and empty arguments, then the argument text, as
  given (it may be malformed), in ``fragments`` deltas with the same ``index``. A request with
  ``stream_options.include_usage`` gets ``usage`` as the API sends it: ``null`` on every chunk,
  then a chunk with no choices and the ``Answer``'s ``tokens`` before ``[DONE]``.
- A client that closes (end of file or reset) before the last byte of an ``Answer`` is sent has
  disconnected: its ``Received.disconnected`` is set and ``llm.disconnects`` counts it. A task
  reads the socket while an ``Answer`` is sent, so a leave is seen at once, even in a hang.
- Bounded: bodies up to ``MAX_BODY`` bytes (larger: the connection is closed), ``MAX_REQUESTS``
  per connection, ``IDLE_TIMEOUT`` s for a request to arrive, delays up to ``MAX_DELAY`` s, hangs
  up to ``HANG_LIMIT`` s; leaving ``open_llm_server`` closes every connection.
"""

from __future__ import annotations

import enum
import itertools
import json
import math
from collections import deque
from contextlib import asynccontextmanager
from functools import partial
from http import HTTPStatus
from typing import Any, AsyncIterator

import attrs
import h11
import trio

from tests.llm_conversation import conversation_problem

PATH = b"/v1/chat/completions"
MAX_BODY = 1 << 20
MAX_REQUESTS = 100
IDLE_TIMEOUT = 30.0
MAX_DELAY = 10.0
HANG_LIMIT = 60.0
CREATED = 1_700_000_000
_CALL_IDS = itertools.count()


class Ending(enum.Enum):
    """What follows the deltas of a streamed answer (unstreamed: CUT and HANG come first)."""
    DONE = "done"  # a chunk with the finish_reason, `data: [DONE]`, the end of the body
    END = "end"    # the body ends cleanly: no finish_reason, no [DONE]
    CUT = "cut"    # the connection is closed in the middle of the chunked body
    HANG = "hang"  # nothing more until the client leaves; after HANG_LIMIT s, as CUT


@attrs.frozen
class ToolCall:
    """One call of a function tool; ``arguments`` is sent as given (a dict is JSON-encoded)."""
    name: str
    arguments: str = attrs.field(default="{}", converter=lambda value: value if isinstance(
        value, str) else json.dumps(value))
    fragments: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    id: str = attrs.field(factory=lambda: f"call_{next(_CALL_IDS)}")

    def whole(self, arguments: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {
            "name": self.name, "arguments": self.arguments if arguments is None else arguments}}

    def pieces(self) -> list[str]:
        step = math.ceil(len(self.arguments) / self.fragments) or 1
        return [self.arguments[i:i + step] for i in range(0, len(self.arguments), step)]


@attrs.frozen
class Answer:
    """The assistant's answer: text ``pieces``, then ``calls``."""
    pieces: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    calls: tuple[ToolCall, ...] = attrs.field(default=(), converter=tuple)
    delay: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0.0),
                                                      attrs.validators.le(MAX_DELAY)])
    ending: Ending = Ending.DONE
    # The request's tokens as the API counts them: prompt, completion, cached prompt (None:
    # 10 prompt tokens, and a completion token per text piece and per call).
    tokens: tuple[int, int, int] | None = None
    # Event data sent as it is before the deltas (streamed only): what is not a chunk.
    raw: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    def usage(self) -> dict[str, Any]:
        """The ``usage`` object the API sends (a ``CompletionUsage``)."""
        prompt, completion, cached = self.tokens or (10, len(self.pieces) + len(self.calls), 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}

    def deltas(self) -> list[dict[str, Any]]:
        text = "" if self.pieces or not self.calls else None
        out: list[dict[str, Any]] = [{"role": "assistant", "content": text}]
        out += [{"content": piece} for piece in self.pieces]
        for index, call in enumerate(self.calls):
            out.append({"tool_calls": [{"index": index, **call.whole(arguments="")}]})
            out += [{"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                    for piece in call.pieces()]
        return out

    def message(self) -> dict[str, Any]:
        message = {"role": "assistant", "refusal": None,
                   "content": "".join(self.pieces) if self.pieces else None}
        return message | ({"tool_calls": [c.whole() for c in self.calls]} if self.calls else {})


@attrs.frozen
class Failure:
    """An HTTP error status with an OpenAI-style body ``{"error": {message, type, param, code}}``;
    ``retry_after`` (seconds) is sent as the ``retry-after`` header."""
    status: int
    message: str = "scripted failure"
    retry_after: float | None = None

    def body(self) -> dict[str, Any]:
        kind, code = {401: ("invalid_request_error", "invalid_api_key"),
                      429: ("requests", "rate_limit_exceeded")}.get(self.status, (
                          "server_error" if self.status >= 500 else "invalid_request_error", None))
        return {"error": {"message": self.message, "type": kind, "param": None, "code": code}}

    def headers(self) -> list[tuple[str, str]]:
        return [] if self.retry_after is None else [("retry-after", str(self.retry_after))]


@attrs.frozen(eq=False)
class Received:
    """One chat request: its JSON body, its headers (names in lower case: "authorization")."""
    body: dict[str, Any]
    headers: dict[str, str]
    refused: str | None = None  # the 400's message when ``messages`` broke the API's rules
    disconnected: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class _Exchange:
    """One request and its answer on one connection."""
    stream: trio.SocketStream
    conn: h11.Connection

    async def send(self, *events: Any) -> None:
        await self.stream.send_all(b"".join(self.conn.send(event) for event in events))

    async def send_json(self, status: int, obj: Any, headers: list[tuple[str, str]]) -> None:
        data = json.dumps(obj).encode()
        await self.send(h11.Response(status_code=status, reason=HTTPStatus(status).phrase, headers=[
            ("content-type", "application/json"), ("content-length", str(len(data))), *headers]),
            h11.Data(data=data), h11.EndOfMessage())


class LLMServer:
    """The running server: ``base_url``, ``requests``, ``connections``, ``disconnects``."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[Received] = []
        self.connections = 0
        self.disconnects = 0
        self._answers: deque[Answer | Failure] = deque()

    def script(self, *answers: Answer | Failure) -> None:
        """Queue the answers to the next requests, in order."""
        self._answers.extend(answers)

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        async with stream:
            try:
                for _ in range(MAX_REQUESTS):
                    request = None
                    with trio.move_on_after(IDLE_TIMEOUT):
                        request = await _receive_request(stream, conn)
                    if request is None or not await self._respond(_Exchange(stream, conn),
                                                                  *request):
                        return
                    if conn.our_state is h11.DONE:  # else MUST_CLOSE: `Connection: close`
                        conn.start_next_cycle()
            except trio.BrokenResourceError:
                return  # the client left: between requests, or during a JSON answer

    async def _respond(self, ex: _Exchange, head: h11.Request, body: bytes) -> bool:
        """Answer one request; False when the connection must close."""
        try:
            payload = json.loads(body) if (head.method, head.target) == (b"POST", PATH) else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            await ex.send_json(404, Failure(404, "not a chat completions request").body(), [])
            return True
        problem = conversation_problem(payload.get("messages"))
        received = Received(payload, {k.decode().lower(): v.decode() for k, v in head.headers},
                            problem)
        self.requests.append(received)
        number = len(self.requests)
        if problem is not None:
            await ex.send_json(400, Failure(400, problem).body(), [("x-request-id",
                                                                     f"req_{number}")])
            return True
        answer = (self._answers.popleft() if self._answers else
                  Failure(500, f"llm_server: nothing scripted for request {number}"))
        request_id = [("x-request-id", f"req_{number}")]
        if isinstance(answer, Failure):
            await ex.send_json(answer.status, answer.body(), request_id + answer.headers())
            return True
        finished = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, ex, received, nursery.cancel_scope)
            try:
                finished = await _send_answer(ex, answer, payload, number, request_id)
            except trio.BrokenResourceError:
                self._left(received)
            nursery.cancel_scope.cancel()
        return finished

    async def _watch(self, ex: _Exchange, received: Received, scope: trio.CancelScope) -> None:
        """Until cancelled, notice the client leaving and stop the answer. Early bytes of a next
        request are kept by h11, up to MAX_BODY."""
        kept = 0
        try:
            while kept <= MAX_BODY and (data := await ex.stream.receive_some(65536)):
                ex.conn.receive_data(data)
                kept += len(data)
        except trio.BrokenResourceError:
            pass
        self._left(received)
        scope.cancel()

    def _left(self, received: Received) -> None:
        if not received.disconnected.is_set():
            received.disconnected.set()
            self.disconnects += 1


async def _receive_request(stream: trio.SocketStream,
                           conn: h11.Connection) -> tuple[h11.Request, bytes] | None:
    """The next request and its body; None at end of file, on a protocol error or when the body
    is larger than MAX_BODY."""
    head: h11.Request | None = None
    body = bytearray()
    try:
        while len(body) <= MAX_BODY:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return head, bytes(body)
            else:
                return None
    except h11.RemoteProtocolError:
        pass
    return None


async def _stopped(ending: Ending) -> bool:
    """Carry out a HANG; True when the answer stops here and its connection is to be closed."""
    if ending is Ending.HANG:
        await trio.sleep(HANG_LIMIT)
    return ending in (Ending.CUT, Ending.HANG)


async def _send_answer(ex: _Exchange, answer: Answer, payload: dict[str, Any], number: int,
                       headers: list[tuple[str, str]]) -> bool:
    """Send ``answer``; False when its ending leaves the connection to be closed."""
    finish_reason = "tool_calls" if answer.calls else "stop"
    chunk = {"id": f"chatcmpl-{number}", "object": "chat.completion.chunk", "created": CREATED,
             "model": payload.get("model", "test-model")}
    if payload.get("stream") is not True:
        if await _stopped(answer.ending):
            return False
        choice = {"index": 0, "message": answer.message(), "logprobs": None,
                  "finish_reason": finish_reason}
        await ex.send_json(200, chunk | {"object": "chat.completion", "choices": [choice],
                                         "usage": answer.usage()}, headers)
        return True
    # ``stream_options.include_usage``: every chunk has ``usage: null``, and one more chunk,
    # with no choices and the usage, comes after the finish reason and before [DONE]; an
    # answer cut before it never sends it (as the API's reference says).
    options = payload.get("stream_options")
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    if with_usage:
        chunk["usage"] = None

    def event(delta: dict[str, Any] | str, finish_reason: str | None = None) -> bytes:
        data = delta if isinstance(delta, str) else json.dumps(chunk | {"choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]})
        return f"data: {data}\n\n".encode()

    await ex.send(h11.Response(status_code=200, reason=b"OK", headers=[
        ("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
        *headers]))
    for data in answer.raw:
        await ex.send(h11.Data(data=event(data)))
    for index, delta in enumerate(answer.deltas()):
        await trio.sleep(answer.delay if index else 0)
        await ex.send(h11.Data(data=event(delta)))
    if await _stopped(answer.ending):
        return False
    if answer.ending is Ending.END:
        await ex.send(h11.EndOfMessage())
        return True
    usage = (f"data: {json.dumps(chunk | {'choices': [], 'usage': answer.usage()})}\n\n"
             .encode() if with_usage else b"")
    await ex.send(h11.Data(data=event({}, finish_reason) + usage + event("[DONE]")),
                  h11.EndOfMessage())
    return True


@asynccontextmanager
async def open_llm_server() -> AsyncIterator[LLMServer]:
    """Serve on 127.0.0.1 (a free port) until the block is left; then close every connection."""
    server = LLMServer()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.serve_connection, 0,
                                                host="127.0.0.1"))
        server.base_url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v1"
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
