"""The peer: the same protocol subset (``join``, ``send``, the run events of the echo agent)
served the way most Python teams build it today, following FastAPI's WebSockets documentation:
a ``ConnectionManager`` that keeps the accepted connections in a dictionary (here with the
threads each joined), and an agent task per message whose events the manager sends to every
connection that joined that thread (filtered by ``(user, thread_id)``). JWT checked at connect,
with the same tokens as threadline. No storage, as in the documentation (``durable_app.py`` is
this app with each event committed to a database before it is sent).

Run: ``uvicorn bench.peers.fastapi_app:app --port 8000`` (``THREADLINE_SECRET`` for tokens).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import defaultdict
from typing import Any

import jwt
from fastapi import FastAPI, WebSocket, WebSocketDisconnect, status

SECRET = os.environ.get("THREADLINE_SECRET", "bench-only-secret-0123456789abcdef0123456789")

class ConnectionManager:
    def __init__(self) -> None:
        # websocket -> the (user_id, thread_id) it joined
        self.active_connections: dict[WebSocket, set[tuple[str, str]]] = {}
        self.seq: dict[tuple[str, str], int] = defaultdict(int)
        self.locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections[websocket] = set()

    def disconnect(self, websocket: WebSocket) -> None:
        self.active_connections.pop(websocket, None)

    async def send_personal_message(self, message: dict, websocket: WebSocket) -> None:
        await websocket.send_json(message)

    def next_event(self, thread: tuple[str, str], event: str, run_id: str,
                   data: dict) -> dict[str, Any]:
        self.seq[thread] += 1
        return {"type": "event", "thread_id": thread[1], "seq": self.seq[thread],
                "event": event, "run_id": run_id, "ts": time.time(), "data": data}

    async def publish(self, thread: tuple[str, str], event: str, run_id: str, data: dict) -> None:
        await self.broadcast(thread, self.next_event(thread, event, run_id, data))

    async def broadcast(self, thread: tuple[str, str], message: dict[str, Any]) -> None:
        for connection, joined in list(self.active_connections.items()):
            if thread in joined:
                try:
                    await connection.send_json(message)
                except (WebSocketDisconnect, RuntimeError):
                    self.disconnect(connection)


async def echo_agent(manager: ConnectionManager, thread: tuple[str, str], run_id: str,
                     text: str) -> None:
    async with manager.locks[thread]:  # one run at a time per thread, in order
        await manager.publish(thread, "agent_started", run_id, {})
        await manager.publish(thread, "agent_thinking", run_id, {"text": "echoing"})
        await manager.publish(thread, "agent_completed", run_id, {"text": text})


def build(manager: ConnectionManager, **fastapi: Any) -> FastAPI:
    """The app around ``manager`` (``fastapi``: FastAPI's own arguments, e.g. a lifespan)."""
    app = FastAPI(**fastapi)

    @app.websocket("/v1/ws")
    async def endpoint(websocket: WebSocket) -> None:
        await websocket_endpoint(manager, websocket)

    return app


async def websocket_endpoint(manager: ConnectionManager, websocket: WebSocket) -> None:
    auth = websocket.headers.get("authorization", "")
    try:
        user_id = jwt.decode(auth.removeprefix("Bearer "), SECRET, algorithms=["HS256"])["sub"]
    except (jwt.InvalidTokenError, KeyError):
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION)
        return
    await manager.connect(websocket)
    tasks: set[asyncio.Task] = set()
    try:
        while True:
            frame = await websocket.receive_json()
            thread = (user_id, frame.get("thread_id", ""))
            if frame.get("type") == "join":
                manager.active_connections[websocket].add(thread)
                await manager.send_personal_message(
                    {"type": "joined", "thread_id": thread[1], "last_seq": manager.seq[thread]},
                    websocket)
            elif frame.get("type") == "send":
                run_id, message_id = uuid.uuid4().hex, uuid.uuid4().hex
                await manager.publish(thread, "user_message", run_id,
                                      {"message_id": message_id, "text": frame["text"]})
                await manager.send_personal_message(
                    {"type": "accepted", "thread_id": thread[1], "message_id": message_id,
                     "run_id": run_id, "seq": manager.seq[thread]}, websocket)
                task = asyncio.create_task(echo_agent(manager, thread, run_id, frame["text"]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    except WebSocketDisconnect:
        manager.disconnect(websocket)


app = build(ConnectionManager())
