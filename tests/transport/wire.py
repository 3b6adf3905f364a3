"""Raw wire helpers for the hardening tests: bytes on a loopback socket, frames by hand, and a
bystander that proves the server still serves everyone else."""

from __future__ import annotations

import json
from typing import Any, Callable

import trio
from trio_websocket import ConnectionClosed, open_websocket_url
from websockets.frames import Frame

from tests.servers import token
from threadline.transport.connection import WebSocketConnection


async def raw_http(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` as is, then half-close (so that a kept-alive connection ends after its
    answer); everything the server answers until it closes (or ``timeout``)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    data = b""
    with trio.move_on_after(timeout):
        try:
            await stream.send_all(request)
            await stream.send_eof()  # no second request: the server closes after its answer
            while chunk := await stream.receive_some(65536):
                data += chunk
        except (trio.BrokenResourceError, OSError):
            pass
    await stream.aclose()
    return data


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


async def still_serves(server: Any, user: str = "bystander") -> None:
    """A whole conversation on a fresh connection, through an independent client."""
    with trio.fail_after(20):
        async with open_websocket_url(f"{server.url}?token={token(user)}") as ws:
            await ws.send_message(json.dumps({"type": "join", "thread_id": "main", "ref": 1}))
            await ws.send_message(json.dumps({"type": "send", "thread_id": "main",
                                              "text": "still there?", "ref": 2}))
            while True:
                frame = json.loads(await ws.get_message())
                if frame.get("event") == "agent_completed":
                    assert frame["data"]["text"] == "still there?"
                    return


async def _read(conn: WebSocketConnection, done: Callable[[dict[str, Any]], bool],
                timeout: float) -> list[dict[str, Any]]:
    """Frames until one satisfies ``done`` (that one included) or the connection closes."""
    frames: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while conn.open:
            for event in await conn.receive():
                if isinstance(event, Frame) and (message := conn.assemble(event)) is not None:
                    frames.append(json.loads(message[1]))
                    if done(frames[-1]):
                        return frames
    return frames


async def frames_until(conn: WebSocketConnection, done: Callable[[dict[str, Any]], bool],
                       timeout: float = 20.0) -> list[dict[str, Any]]:
    """Frames a raw connection receives until one satisfies ``done`` (that one included);
    fails if the connection closes first."""
    frames = await _read(conn, done, timeout)
    assert frames and done(frames[-1]), f"closed after {frames}"
    return frames


async def frames_until_closed(conn: WebSocketConnection,
                              timeout: float = 20.0) -> list[dict[str, Any]]:
    """Frames a raw connection receives until the server closes it."""
    return await _read(conn, lambda frame: False, timeout)


def close_code(conn: WebSocketConnection) -> int | None:
    rcvd = conn.protocol.close_rcvd
    return rcvd.code if rcvd is not None else None


async def closed_code(ws: Any, timeout: float = 20.0) -> int:
    """Read a trio-websocket connection until the server closes it; the close code."""
    with trio.fail_after(timeout):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code
