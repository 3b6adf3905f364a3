"""The HTTP API beside the WebSocket (``transport/HTTP.md``): JSON routes on a user's threads.

Invariants:

- The user comes from the token (``Authorization: Bearer``, checked by the same
  ``Authenticator`` as a handshake) and nowhere else: a route names a thread id, and the handle
  it gets is the token's user's (``UserHandle``), so no request can name another user's thread.
  A path's other names (a run id, a call id, a message id: ``ROUTES``) are the request's
  fields, checked as the WebSocket frame's; a body never overrides them (``http_call.py``).
- A read never creates a thread: a thread that does not exist is 404 ``not_found`` (reads go to
  the journal, ``ThreadHandle.stored_info``). A message creates the thread, as a ``join`` does.
- The routes are here, but for the conversation tree's (regenerate, turns: ``http_tree.py``)
  and the attachments' (upload, download: ``http_attachments.py``).
- A request is routed, authenticated and counted against its user (``request_slot``: at most
  ``user_http_requests`` in flight; one of the user's connections while any is) at its head;
  only then is its body read. A refused one's body is never read. The slot is held until the
  answer is written: one user holds at most ``user_http_requests`` bodies and answers. An
  upload (``READS_ITS_BODY``) reads its own body, as it arrives, never whole; a download's
  answer (``Streamed``) is written as it is read from the store, in its slot. A
  message counts against the user's send rate and stored threads, shared with the user's
  WebSockets, as a WebSocket ``send`` does (a regenerate against the send rate); deleting a
  thread frees its place.
- ``HEAD`` is ``GET`` without the body; ``OPTIONS`` is a CORS preflight, and every answer
  carries the CORS headers of its request's origin (``cors.py``).
- Every failure is answered ``{"type": "error", "code", "message"}`` with the status of
  ``STATUS`` (the store or the runtime unavailable: 503 with ``Retry-After``); a bug is 500
  ``internal`` and logged. Nothing here ends the server's task.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

import trio
from websockets.http11 import Request, Response

from threadline.actors.errors import ActorStopped, AskTimeout, JournalUnavailable
from threadline.actors.gateway import Gateway
from threadline.actors.messages import is_thread_id
from threadline.actors.tracing import traceparent_of
from threadline.actors.usage import Usage

from .answers import answer_for
from . import http_attachments, http_tree
from .auth import AuthError, Authenticator, token_of
from .codec import MAX_THREADS_PAGE, THREADS_PAGE
from .cors import cors_headers, preflight
from .frames import Error
from .http import Streamed, json_response, methods_allowed, path_of
from .http_call import (Call, Refused, accepted_answer, existing, int_param, parse_body,
                        query_of)
from .http_front import After, Malformed, RequestReader
from .limits import Limits
from .messages import (BAD_FRAME, BUDGET_EXCEEDED, BUSY, INTERNAL, LIMIT_REACHED,
                       METHOD_NOT_ALLOWED, NOT_FOUND,
                       RATE_LIMITED, TIMEOUT, TOO_LARGE, UNAUTHORIZED, UNKNOWN_CALL, UNKNOWN_RUN,
                       UNSUPPORTED_TYPE, Cancel, Decide, Send)
from .paging import CursorKey, read_events_page, read_threads_page
from .quotas import UserQuotas
from .stats import ServerStats

log = logging.getLogger("threadline.http")

EVENTS_PAGE, MAX_EVENTS_PAGE = 100, 1000

#: The HTTP status of each error code.
STATUS = {BAD_FRAME: 400, UNAUTHORIZED: 401, NOT_FOUND: 404, UNKNOWN_RUN: 404, UNKNOWN_CALL: 404,
          METHOD_NOT_ALLOWED: 405, TIMEOUT: 408, BUSY: 409, TOO_LARGE: 413,
          UNSUPPORTED_TYPE: 415, RATE_LIMITED: 429, LIMIT_REACHED: 429, BUDGET_EXCEEDED: 429,
          INTERNAL: 500}
UNAVAILABLE = (JournalUnavailable, ActorStopped, AskTimeout)  # 503: retry later
ID, RUN, CALL, MESSAGE = "{thread_id}", "{run_id}", "{call_id}", "{message_id}"  # a path's names
ATTACHMENT = "{attachment_id}"
AUTH_CHECK = "/v1/auth/check"


# ``(api, call)``; an upload's (``READS_ITS_BODY``) also takes the request and its reader.
Handler = Callable[..., Awaitable[tuple[int, dict[str, Any]] | Streamed]]


class HttpApi:
    def __init__(self, gateway: Gateway, auth: Authenticator, quotas: UserQuotas,
                 limits: Limits, stats: ServerStats) -> None:
        self.gateway, self.auth, self.quotas = gateway, auth, quotas
        self.limits, self.stats = limits, stats
        self.cursors = CursorKey.of(auth)  # the WebSocket's sessions get the same key

    async def serve(self, method: str, request: Request, reader: RequestReader,
                    deadline: float, keep_alive: bool) -> After:
        """Answer a request under ``/v1/`` (other than the WebSocket's path) on the reader's
        connection (``RequestReader.answer``: kept alive if ``keep_alive`` and the request
        allow it). The user's request slot is held until the answer is written."""
        with ExitStack() as held:
            answer = await self._answer(method, request, reader, deadline, held)
            return await reader.answer(answer, keep_alive)

    async def _answer(self, method: str, request: Request, reader: RequestReader,
                      deadline: float, held: ExitStack) -> Response | Streamed:
        """The answer; the request's slot, once taken, is left in ``held``."""
        path = path_of(request.path)
        cors = cors_headers(self.auth, request.headers)
        user_id = "-"
        try:
            if path == AUTH_CHECK:
                if method == "OPTIONS":
                    return preflight(cors, methods_allowed("GET"))
                if method not in ("GET", "HEAD"):
                    raise _not_allowed("GET")
                user_id = self._user_id(request, query_token=True)
                return json_response(200, {"type": "ok", "user_id": user_id}, cors)
            methods, params = _resolve(path)
            thread_id = params.pop("thread_id", None)
            if method == "OPTIONS":
                return preflight(cors, methods_allowed(*methods))
            handler = _handler(method, methods, thread_id)
            user_id = self._user_id(request, query_token=False)
            user = self.gateway.user(user_id)
            quota = held.enter_context(self.quotas.request_slot(user))  # before the body
            query = query_of(request.path)
            thread = user.thread(thread_id) if thread_id else None
            if handler in READS_ITS_BODY:  # an upload: its body is read as it arrives
                call = Call(user, quota, thread, query, params, bytearray())
                result = await handler(self, call, request, reader)  # type: ignore[call-arg]
            else:
                body = await self._body(method, reader, deadline)
                traceparent = traceparent_of(request.headers.get("traceparent"))
                result = await handler(self, Call(user, quota, thread, query, params, body,
                                                  traceparent))
        except Exception as exc:
            status, answer, extra = self._failure(exc, method, request, user_id)
            return json_response(status, answer, extra + cors)
        if isinstance(result, Streamed):
            log.debug("%s %s of %s: %d", method, path, user_id, result.status)
            return result.with_headers(cors)
        status, answer = result
        log.debug("%s %s of %s: %d", method, path, user_id, status)
        return json_response(status, answer, cors)

    async def _body(self, method: str, reader: RequestReader, deadline: float) -> bytearray:
        with trio.CancelScope(deadline=deadline):
            return await reader.read_body(0 if method in ("GET", "HEAD") else
                                          self.limits.max_frame_bytes)
        raise Refused(TIMEOUT, "the request did not arrive in time")

    def _user_id(self, request: Request, *, query_token: bool) -> str:
        target = request.path if query_token else path_of(request.path)
        try:
            return self.auth.verify(token_of(target, request.headers)).user_id
        except AuthError as exc:
            self.stats.auth_failed(str(exc))
            raise Refused(UNAUTHORIZED if exc.status == 401 else BAD_FRAME, str(exc),
                          (("WWW-Authenticate", "Bearer"),)) from None

    def _failure(self, exc: Exception, method: str, request: Request,
                 user_id: str) -> tuple[int, dict[str, Any], tuple[tuple[str, str], ...]]:
        extra: tuple[tuple[str, str], ...] = ()
        if isinstance(exc, Refused):
            code, message, extra = exc.code, exc.message, exc.extra
        elif isinstance(exc, Malformed):
            code = {413: TOO_LARGE}.get(exc.status, BAD_FRAME)
            message = exc.reason
        elif isinstance(exc, UNAVAILABLE):
            log.warning("%s %s of %s: %r", method, path_of(request.path), user_id, exc)
            body = Error(INTERNAL, f"the server could not do it now: {exc}").wire()
            return 503, body, (("Retry-After", "1"),)
        else:
            known = answer_for(exc)
            if known is None:
                log.exception("%s %s of %s failed", method, path_of(request.path), user_id)
                known = (INTERNAL, "the server failed")
            code, message = known
        if code == RATE_LIMITED:
            self.stats.rate_limited += 1
        elif code == LIMIT_REACHED:
            self.stats.limits_reached += 1
        return STATUS[code], Error(code, message).wire(), extra

    # -- the routes --------------------------------------------------------------------------

    async def list_threads(self, call: Call) -> tuple[int, dict[str, Any]]:
        limit = int_param(call.query, "limit", THREADS_PAGE, 1, MAX_THREADS_PAGE)
        page, next_cursor = await read_threads_page(call.user, limit, call.query.get("before"),
                                                    self.cursors)
        return 200, {"type": "threads", "threads": page, "next_cursor": next_cursor}

    async def thread_info(self, call: Call) -> tuple[int, dict[str, Any]]:
        info = await existing(call)
        return 200, {"type": "thread", "thread_id": info.key.thread_id,
                     "last_seq": info.last_seq, "created_at": info.created_at,
                     "updated_at": info.updated_at}

    async def events(self, call: Call) -> tuple[int, dict[str, Any]]:
        after = int_param(call.query, "after", 0, 0, 2**62)
        limit = int_param(call.query, "limit", EVENTS_PAGE, 1, MAX_EVENTS_PAGE)
        info = await existing(call)
        assert call.thread is not None
        frames, next_after = await read_events_page(call.thread, after, limit, info.last_seq)
        return 200, {"type": "events", "thread_id": call.thread.thread_id,
                     "last_seq": info.last_seq, "events": frames, "next_after": next_after}

    async def post_message(self, call: Call) -> tuple[int, dict[str, Any]]:
        request = parse_body(call, "send")
        assert isinstance(request, Send) and call.thread is not None
        call.quota.admit_send()
        await call.quota.admit_thread(request.thread_id)
        thread = call.thread
        with thread.gateway.tracing.request("POST /v1/threads/{thread_id}/messages",
                                            call.traceparent, thread.key) as span:
            acc = await thread.send(request.text, client_msg_id=request.client_msg_id,
                                    strategy=request.strategy, parent=request.parent,
                                    attachments=request.attachments,
                                    traceparent=span.traceparent)
        return 200, accepted_answer(request.thread_id, acc)

    async def cancel(self, call: Call) -> tuple[int, dict[str, Any]]:
        request = parse_body(call, "cancel")
        assert isinstance(request, Cancel) and call.thread is not None
        await existing(call)
        run_id = await call.thread.cancel(request.run_id)
        return 200, {"type": "ok", "thread_id": request.thread_id, "run_id": run_id}

    async def decide(self, call: Call) -> tuple[int, dict[str, Any]]:
        request = parse_body(call, "decide", **call.params)
        assert isinstance(request, Decide) and call.thread is not None
        await existing(call)
        await call.thread.decide(request.run_id, request.call_id, request.approved,
                                 request.reason)
        return 200, {"type": "ok", "thread_id": request.thread_id, "run_id": request.run_id,
                     "call_id": request.call_id}

    async def usage(self, call: Call) -> tuple[int, dict[str, Any]]:
        """PROTOCOL.md 1.1: the user's tokens this UTC day and month, and their budgets."""
        spent = await call.user.usage()
        budget = spent.budget
        return 200, {"type": "usage", "day": _period(spent.day, budget.tokens_per_day),
                     "month": _period(spent.month, budget.tokens_per_month)}

    async def delete(self, call: Call) -> tuple[int, dict[str, Any]]:
        await existing(call)
        assert call.thread is not None
        await call.thread.delete()
        if call.quota.threads is not None:
            call.quota.threads.discard(call.thread.thread_id)
        return 200, {"type": "ok", "thread_id": call.thread.thread_id}


#: ``path shape -> {method: handler}``; ``ID`` stands for a thread id.
ROUTES: dict[tuple[str, ...], dict[str, Handler]] = {
    ("threads",): {"GET": HttpApi.list_threads},
    ("threads", ID): {"GET": HttpApi.thread_info, "DELETE": HttpApi.delete},
    ("threads", ID, "events"): {"GET": HttpApi.events},
    ("threads", ID, "messages"): {"POST": HttpApi.post_message},
    ("threads", ID, "messages", MESSAGE, "regenerate"): {"POST": http_tree.regenerate},
    ("threads", ID, "turns"): {"GET": http_tree.turns},
    ("threads", ID, "cancel"): {"POST": HttpApi.cancel},
    ("threads", ID, "runs", RUN, "approvals", CALL): {"POST": HttpApi.decide},
    ("attachments",): {"POST": http_attachments.upload},
    ("attachments", ATTACHMENT): {"GET": http_attachments.download},
    ("usage",): {"GET": HttpApi.usage},
}
_NAMES = (ID, RUN, CALL, MESSAGE, ATTACHMENT)
#: The handlers that read their request's body themselves, as it arrives: an upload.
READS_ITS_BODY: frozenset[Any] = frozenset({http_attachments.upload})


def _resolve(path: str) -> tuple[dict[str, Handler], dict[str, str]]:
    """The handlers of ``path`` (under ``/v1/``) and the names its shape holds, decoded (not
    yet checked: ``thread_id`` by ``_handler``, the others as the frame's fields); ``Refused``
    if none."""
    parts = path.removeprefix("/v1/").split("/")
    for shape, methods in ROUTES.items():
        if len(shape) == len(parts) and all(
                part == name or name in _NAMES for part, name in zip(parts, shape)):
            params = {}
            for part, name in zip(parts, shape):
                if name in _NAMES:
                    try:
                        params[name[1:-1]] = unquote(part, errors="strict")
                    except UnicodeDecodeError:
                        raise Refused(BAD_FRAME, f"the {name[1:-1]} is not UTF-8") from None
            return methods, params
    raise Refused(NOT_FOUND, "no such route")


def _period(usage: Usage, budget: int | None) -> dict[str, Any]:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "budget": budget}


def _handler(method: str, methods: dict[str, Handler], thread_id: str | None) -> Handler:
    """The handler of ``method`` (``HEAD``: ``GET``'s); ``Refused`` 405, or 400 for a bad
    thread id."""
    handler = methods.get("GET" if method == "HEAD" else method)
    if handler is None:
        raise _not_allowed(*methods)
    if thread_id is not None and not is_thread_id(thread_id):
        raise Refused(BAD_FRAME, "thread_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    return handler


def _not_allowed(*methods: str) -> Refused:
    allowed = (*methods_allowed(*methods), "OPTIONS")
    return Refused(METHOD_NOT_ALLOWED, f"use {' or '.join(methods)}",
                   (("Allow", ", ".join(allowed)),))
