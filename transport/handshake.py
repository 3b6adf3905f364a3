"""The WebSocket handshake's parts that are not routing: the websockets engine's own reading of
the opening request, the subprotocol choice, and strict header access.

The request was read by h11 first (``http_front``); its bytes are fed to the websockets engine
as they came, so that its parser, its limits and its state machine see exactly what the client
sent, and whatever the client sent after it.
"""

from __future__ import annotations

import logging
from typing import Sequence

import trio
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from .connection import WebSocketConnection
from .http import text_response
from .messages import SUBPROTOCOLS

log = logging.getLogger("threadline.server")


def select_subprotocol(protocol: ServerProtocol,
                       offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """The first of ours the client offers. None (no header; JSON) when it offers none of
    ours: PROTOCOL.md makes JSON the default. A program's client takes that; a browser that
    offered only others fails the connection (the WebSocket standard requires an answer that
    names one it offered, and ours could only name one we do not speak): logged, and written
    in PROTOCOL.md."""
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    if offered:
        log.info("a client offered only subprotocols %s, none of ours: answered without one "
                 "(JSON); a browser fails such a connection", ", ".join(offered)[:200])
    return None


class BadRequest(Exception):
    """A request the server answers 400 (e.g. a header that must appear once, twice)."""


def header(headers: Headers, name: str) -> str | None:
    """One header's value; ``BadRequest`` if it is there more than once (``Headers.get``
    would raise websockets' ``MultipleValuesError``, a ``LookupError``, instead)."""
    values = headers.get_all(name)
    if len(values) > 1:
        raise BadRequest(f"more than one {name} header")
    return values[0] if values else None


async def handshake_request(conn: WebSocketConnection, raw: bytes,
                            deadline: float) -> Request | None:
    """The websockets engine's ``Request``, fed ``raw`` (the bytes h11 read) and more, should
    it want them, until ``deadline``. None if there is none: a request h11 took and websockets
    does not is answered 400 here; one cut off by the peer or the deadline is not answered."""
    protocol = conn.protocol
    protocol.receive_data(raw)
    events = protocol.events_received()
    with trio.CancelScope(deadline=deadline):
        while True:
            for i, event in enumerate(events):
                if isinstance(event, Request):
                    conn.hold(events[i + 1:])  # frames sent with the handshake: not lost
                    return event
            if protocol.handshake_exc is not None:
                await conn.stream.send_all(
                    text_response(400, "malformed WebSocket handshake").serialize())
                return None
            if conn.eof:
                return None
            events = await conn.receive()
    return None
