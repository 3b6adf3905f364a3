"""Opening the bundled client's WebSocket (``threadline.transport.client``): the opening handshake with
the token, and opening it again after a loss.

Invariants: ``connect`` returns a connection whose handshake succeeded, or raises with the
connection closed (``HandshakeRejected`` for an HTTP refusal). ``reconnect`` retries only
while the refusal may pass (the network, a draining server's 503), with backoff from 50 ms
to 2 s and each attempt bounded by ``HANDSHAKE_TIMEOUT``; any other HTTP refusal is for good
(e.g. 401: the token expired). A connection lost with a code in ``NO_RECONNECT`` is not
opened again at all.
"""

from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

import trio
from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from .client_errors import ConnectionClosed, HandshakeRejected
from .connection import WebSocketConnection
from .messages import (CLOSE_INVALID_DATA, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOKEN_EXPIRED,
                       CLOSE_TOO_BIG, JSON)

__all__ = ["HANDSHAKE_TIMEOUT", "NO_RECONNECT", "connect", "handshake", "reconnect"]

# Reconnecting would only repeat these: a normal close, a fault of what was sent, a token
# that expired (the same token is refused with 401).
NO_RECONNECT = {CLOSE_NORMAL, CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_TOO_BIG,
                CLOSE_TOKEN_EXPIRED}
HANDSHAKE_TIMEOUT = 10.0  # per reconnection attempt, as the server's own handshake_timeout


async def connect(url: str, token: str | None, subprotocol: str = JSON, *,
                  max_size: int | None = None) -> WebSocketConnection:
    """Open a WebSocket to ``url`` with ``token`` (if any) in the Authorization header.
    Raises ``HandshakeRejected``."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError("only ws:// URLs are supported")
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    return await handshake(stream, url, token, subprotocol, max_size=max_size)


async def handshake(stream: trio.abc.Stream, url: str, token: str | None,
                    subprotocol: str = JSON, *,
                    max_size: int | None = None) -> WebSocketConnection:
    """The opening handshake over any trio stream (a socket, or an in-memory stream in the
    tests). Raises ``HandshakeRejected``; the stream is closed if it fails."""
    protocol = ClientProtocol(parse_uri(url), subprotocols=[Subprotocol(subprotocol)],
                              max_size=max_size)
    conn = WebSocketConnection(stream, protocol)
    try:
        request = protocol.connect()
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        protocol.send_request(request)
        await conn.flush()
        while not conn.eof:
            events = await conn.receive()
            for n, event in enumerate(events):
                if isinstance(event, Response):
                    if event.status_code != 101 or protocol.handshake_exc is not None:
                        body = (event.body or b"").decode("utf-8", "replace").strip()
                        raise HandshakeRejected(event.status_code, body)
                    # Frames the server sent right after its answer, read with it (a refusal
                    # such as limit_reached, then the close): the reader gets them first.
                    conn.hold(events[n + 1:])
                    return conn
        raise ConnectionClosed(None, "closed during the handshake")
    except BaseException:
        await conn.aclose()
        raise


async def reconnect(url: str, token: str | None, subprotocol: str,
                    stopped: Callable[[], bool]) -> WebSocketConnection | None:
    """A new connection, retried with backoff while the network or a draining server (503)
    refuses it (see the header); None once ``stopped()`` (a connection opened meanwhile is
    closed normally). Raises ``HandshakeRejected`` if the server refuses for good."""
    delay = 0.05
    while not stopped():
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            try:
                conn = await connect(url, token, subprotocol)
                if stopped():  # the client was closed meanwhile
                    await conn.close(CLOSE_NORMAL, "", 2.0)
                    return None
                return conn
            except HandshakeRejected as exc:
                if exc.status != 503:
                    raise
            except (OSError, ConnectionClosed, trio.BrokenResourceError):
                pass  # refused, reset (trio's own error for a reset during the handshake)
        await trio.sleep(delay)
        delay = min(delay * 2, 2.0)
    return None
