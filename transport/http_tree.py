"""The HTTP routes of the conversation tree (PROTOCOL.md 1.1, "The conversation tree";
``HTTP.md``): another answer to a message, and a thread's turns as a client renders them.
Routed by ``http_api.ROUTES``; a message's ``parent`` is the messages route's (``http_api.py``).

- ``POST /v1/threads/{thread_id}/messages/{message_id}/regenerate``: the WebSocket's
  ``regenerate`` frame, its body (``client_msg_id``, ``strategy``) checked as the frame's and
  ``message_id`` from the path; admitted as a message is (the user's send rate) once the thread
  is known to exist (404 ``not_found`` otherwise: a regenerate never creates a thread); answered
  as the messages route is, with the WebSocket's ``accepted``. No such message: 404
  ``not_found``.
- ``GET /v1/threads/{thread_id}/turns?after=SEQ&limit=N``: the thread's runs with ``seq >
  after`` in seq order (``ThreadHandle.turns``, read from the journal: never activates the
  thread), each ``TurnView``'s fields as an object, paged as the events are
  (``paging.seq_page``): ``next_after`` is the last turn's seq when more may follow (the page
  is full, or was cut at ``PAGE_BYTES`` of JSON: at least one turn), else null.
"""

from __future__ import annotations

from typing import Any

import attrs

from threadline.actors.tree import TurnView

from .http_call import Call, accepted_answer, existing, int_param, parse_body
from .messages import Regenerate
from .paging import seq_page

TURNS_PAGE, MAX_TURNS_PAGE = 100, 1000


async def regenerate(api: object, call: Call) -> tuple[int, dict[str, Any]]:
    request = parse_body(call, "regenerate", **call.params)
    assert isinstance(request, Regenerate) and call.thread is not None
    await existing(call)
    call.quota.admit_send()
    thread = call.thread
    with thread.gateway.tracing.request(
            "POST /v1/threads/{thread_id}/messages/{message_id}/regenerate", call.traceparent,
            thread.key) as span:
        acc = await thread.regenerate(request.message_id, client_msg_id=request.client_msg_id,
                                      strategy=request.strategy, traceparent=span.traceparent)
    return 200, accepted_answer(request.thread_id, acc)


async def turns(api: object, call: Call) -> tuple[int, dict[str, Any]]:
    after = int_param(call.query, "after", 0, 0, 2**62)
    limit = int_param(call.query, "limit", TURNS_PAGE, 1, MAX_TURNS_PAGE)
    await existing(call)
    assert call.thread is not None
    views = await call.thread.turns(after, limit)
    frames, next_after = seq_page(views, limit, turn_frame)
    return 200, {"type": "turns", "thread_id": call.thread.thread_id, "turns": frames,
                 "next_after": next_after}


def turn_frame(view: TurnView) -> dict[str, Any]:
    """A turn as JSON: every field of ``TurnView``, by its name."""
    return attrs.asdict(view, recurse=False)

