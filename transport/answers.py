"""What a failed request is answered with: the protocol's error code for each failure.

The connection stays open for every one of these (PROTOCOL.md, "Error codes"). Failures that
close the connection instead (a full outgoing queue: 1013) are the session's, not here.
"""

from __future__ import annotations

from threadline.actors.errors import (
    ActorStopped,
    AskTimeout,
    Busy,
    JournalUnavailable,
    LimitReached,
    NotFound,
    RateLimited,
    UnknownCall,
    UnknownRun,
    Unstorable,
)
from threadline.actors.usage import BudgetExceeded

from .messages import (BAD_FRAME, BUDGET_EXCEEDED, BUSY, INTERNAL, LIMIT_REACHED, NOT_FOUND, RATE_LIMITED,
                       UNKNOWN_CALL, UNKNOWN_RUN, BadFrame)

#: First match wins. Anything else is a bug: answered ``internal``, and logged.
ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (Busy, BUSY),
    (UnknownRun, UNKNOWN_RUN),
    (UnknownCall, UNKNOWN_CALL),      # 1.1: a decide for a call that is not waiting
    (NotFound, NOT_FOUND),            # 1.1: a regenerate's message, a send's parent
    (BudgetExceeded, BUDGET_EXCEEDED),  # 1.1: the user's tokens for the period are spent
    (Unstorable, BAD_FRAME),
    (BadFrame, BAD_FRAME),
    (LimitReached, LIMIT_REACHED),
    (RateLimited, RATE_LIMITED),
    (JournalUnavailable, INTERNAL),   # the store failed: nothing was stored
    (ActorStopped, INTERNAL),
    (AskTimeout, INTERNAL),
)


def answer_for(exc: Exception) -> tuple[str, str] | None:
    """``(code, message)`` for a known failure, None for a bug."""
    for kind, code in ERRORS:
        if isinstance(exc, kind):
            if code == INTERNAL:
                return code, f"the server could not do it: {exc}"
            return code, str(exc)
    return None
