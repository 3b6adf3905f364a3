"""The HTTP peer: the two routes of threadline's HTTP API that ``bench/http.py`` drives (``POST
/v1/threads/{thread_id}/messages`` and ``GET /v1/threads/{thread_id}/events``), served the way
FastAPI's documentation teaches: path operations with a Pydantic body model and query
parameters, the user from a JWT bearer token through a dependency (``HTTPBearer``, PyJWT), and
the echo agent as a background task per message (``BackgroundTasks``), which appends the
run's events. The events live in a dictionary keyed by ``(user, thread_id)``, in memory, as
``fastapi_app.py`` keeps its WebSocket peer's: compared with ``threadline serve --store
memory``. Same tokens, same answers' shapes as threadline.

Run: ``uvicorn bench.peers.fastapi_http:app --port 8000`` (``THREADLINE_SECRET`` for tokens);
uvicorn with its standard extras (uvloop, httptools) keeps connections alive by default.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from typing import Annotated, Any

import jwt
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Query, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

SECRET = os.environ.get("THREADLINE_SECRET", "bench-only-secret-0123456789abcdef0123456789")

app = FastAPI()
bearer = HTTPBearer()
# (user_id, thread_id) -> the thread's events, seq = index + 1
threads: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)


class Message(BaseModel):
    text: str = Field(max_length=65536)
    client_msg_id: str | None = None


async def current_user(
        credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]) -> str:
    try:
        return str(jwt.decode(credentials.credentials, SECRET, algorithms=["HS256"])["sub"])
    except (jwt.InvalidTokenError, KeyError):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token",
                            headers={"WWW-Authenticate": "Bearer"}) from None


def append(key: tuple[str, str], event: str, run_id: str, data: dict[str, Any]) -> int:
    events = threads[key]
    events.append({"type": "event", "thread_id": key[1], "seq": len(events) + 1,
                   "event": event, "run_id": run_id, "ts": time.time(), "data": data})
    return len(events)


async def echo_agent(key: tuple[str, str], run_id: str, message_id: str, text: str) -> None:
    append(key, "agent_started", run_id, {"message_id": message_id})
    append(key, "agent_thinking", run_id, {"text": "echoing"})
    append(key, "agent_completed", run_id, {"text": text})


@app.post("/v1/threads/{thread_id}/messages")
async def post_message(thread_id: str, message: Message, background: BackgroundTasks,
                       user: Annotated[str, Depends(current_user)]) -> dict[str, Any]:
    key = (user, thread_id)
    run_id, message_id = f"run_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
    seq = append(key, "user_message", run_id, {"message_id": message_id, "text": message.text})
    background.add_task(echo_agent, key, run_id, message_id, message.text)
    return {"type": "accepted", "thread_id": thread_id, "message_id": message_id,
            "run_id": run_id, "seq": seq}


@app.get("/v1/threads/{thread_id}/events")
async def read_events(thread_id: str, user: Annotated[str, Depends(current_user)],
                      after: Annotated[int, Query(ge=0)] = 0,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    key = (user, thread_id)
    if key not in threads:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such thread")
    events = threads[key]
    page = events[after:after + limit]
    full = len(page) == limit and after + limit < len(events)
    return {"type": "events", "thread_id": thread_id, "last_seq": len(events), "events": page,
            "next_after": page[-1]["seq"] if full else None}
