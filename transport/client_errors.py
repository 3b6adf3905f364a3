"""The errors the bundled client (``threadline.transport.client``) raises; re-exported from there.

Every one is a ``ClientError``. A refused opening handshake raises ``HandshakeRejected`` with
its HTTP status. An ``error`` answer raises, from the request it answers, the ``ServerError``
subclass of its code: one per code of PROTOCOL.md (``RateLimited``, ``Busy``, ...), and
``ServerError`` itself for a code this client does not know, so that a newer server's code is
still caught as a ``ServerError``. A connection that ends before the answer raises
``ConnectionClosed`` with the close code and reason (None and a description when no close
frame came).
"""

from __future__ import annotations

from typing import Any

from threadline.actors import errors, usage

from .messages import (BAD_FRAME, BUDGET_EXCEEDED, BUSY, INTERNAL, LIMIT_REACHED, NOT_FOUND, NOT_JOINED,
                       RATE_LIMITED, UNKNOWN_CALL, UNKNOWN_RUN)

__all__ = ["BadFrame", "BudgetExceeded", "Busy", "ClientError", "ConnectionClosed", "HandshakeRejected", "Internal",
           "LimitReached", "NotFound", "NotJoined", "RateLimited", "ServerError", "UnknownCall",
           "UnknownRun"]


class ClientError(Exception):
    pass


class HandshakeRejected(ClientError):
    """The server answered the opening handshake with an HTTP error (401, 404, 503, ...)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class ServerError(ClientError):
    """The server answered a request with an ``error`` frame; a subclass per code of
    PROTOCOL.md (an unknown code raises this class itself)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @staticmethod
    def of(frame: dict[str, Any]) -> ServerError:
        code, message = str(frame.get("code", "?")), str(frame.get("message", ""))
        return _ERRORS.get(code, ServerError)(code, message)


class BadFrame(ServerError):
    """``bad_frame``: the request was not valid."""


class NotJoined(ServerError):
    """``not_joined``: join the thread first."""


# The ones below are also the in-process errors of the same name (``threadline.Busy`` ...), so
# that one ``except`` serves code that talks to a runtime in process and over a socket.

class Busy(ServerError, errors.Busy):
    """``busy``: ``strategy: reject`` while a run is active."""


class UnknownRun(ServerError, errors.UnknownRun):
    """``unknown_run``: no such active run to cancel."""


class UnknownCall(ServerError, errors.UnknownCall):
    """``unknown_call`` (1.1): no such tool call waits for a decision."""


class NotFound(ServerError, errors.NotFound):
    """``not_found`` (1.1): a ``regenerate`` of a message the thread does not hold, or a
    ``parent`` that is not a run of the thread; nothing was stored."""


class BudgetExceeded(ServerError, usage.BudgetExceeded):
    """``budget_exceeded`` (1.1): the user's token budget for the day or month is spent (the
    message says when it refills); nothing was stored."""


class RateLimited(ServerError, errors.RateLimited):
    """``rate_limited``: dropped; sending it later may work."""


class LimitReached(ServerError, errors.LimitReached):
    """``limit_reached``: a per-connection or per-user limit."""


class Internal(ServerError):
    """``internal``: nothing stored; retry with the same client_msg_id."""


_ERRORS: dict[str, type[ServerError]] = {
    BAD_FRAME: BadFrame, NOT_JOINED: NotJoined, BUSY: Busy, UNKNOWN_RUN: UnknownRun,
    UNKNOWN_CALL: UnknownCall, NOT_FOUND: NotFound, BUDGET_EXCEEDED: BudgetExceeded,
    RATE_LIMITED: RateLimited, LIMIT_REACHED: LimitReached, INTERNAL: Internal}


class ConnectionClosed(ClientError):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({code} {reason})".rstrip())
        self.code = code
        self.reason = reason
