"""Exceptions of the actor layer. Each one names the state the caller ran into."""

from __future__ import annotations


class ActorError(Exception):
    """Base class of every error raised by ``actors``."""


class MailboxFull(ActorError):
    """``tell`` found the mailbox at capacity; the message was not queued."""


class ActorStopped(ActorError):
    """The actor behind a mailbox has stopped (passivated, shut down or failed)."""


class ActorCrashed(ActorStopped):
    """The actor crashed while handling this request; it may have been partly done.

    Unlike a plain ``ActorStopped`` (the request was never handled), this one is not safe to
    retry blindly: retry a ``send`` with its ``client_msg_id``.
    """


class AskTimeout(ActorError, TimeoutError):
    """``ask`` got no reply within its timeout."""


class RestartIntensityExceeded(ActorError):
    """A supervised actor crashed more often than its restart intensity allows.

    ``__cause__`` is the last crash.
    """


class Busy(ActorError):
    """``send`` with strategy ``reject`` while a run of the thread is active."""


class UnknownRun(ActorError):
    """``cancel`` named a run that is not active."""


class SubscriberDropped(ActorError):
    """The thread dropped this subscriber because its mailbox was full.

    Everything delivered before the drop is still readable; resume with ``since`` set to the
    last ``seq`` seen.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AgentError(ActorError):
    """An agent's deliberate failure: its message is meant for the user and shown as is in
    ``agent_failed`` (any other exception is reported with its type name)."""


class UnknownCall(ActorError):
    """A decision for a tool call that is not waiting for approval (never asked, decided
    already, its run ended); nothing was stored."""


class NotFound(ActorError):
    """PROTOCOL.md 1.1 ``not_found``: a ``regenerate`` of a message the thread does not hold,
    or a ``parent`` that is not a run of the thread; nothing was stored."""


class ToolError(AgentError):
    """A tool call failed (raised, timed out, or is not registered).

    Raised inside an agent by ``Run.call_tool``; an agent may catch it and go on, otherwise the
    run ends with ``agent_failed``. A tool may raise it itself to report an error whose message
    is shown as is (any other exception is reported with its type name).
    """


class JournalUnavailable(ActorError):
    """The journal could not store or read; nothing of the failed call was stored.

    Durable journals raise this (chained to the driver's error) for every failure of the store
    itself, so that actors can tell a store outage, which they answer and survive, from a bug.
    """


class Fenced(JournalUnavailable):
    """The store refused a write because this process no longer holds the right to write
    the thread (its fencing token is stale: whoever hands out that right gave it to another
    writer). Nothing of the write was stored; the thread is served elsewhere now, and a
    request that got this was never handled here, so it is safe to send where the thread
    lives."""


class StoreConflict(JournalUnavailable):
    """The store holds something other than what the thread's state in memory says (another
    writer wrote the thread; a commit whose answer was lost did land): nothing of this write
    was stored. Not the client's fault (answered ``internal``); the thread reloads its state
    from the store at once (``ThreadReload``) and serves again."""


class ThreadReload(RuntimeError):
    """Raised by a thread actor whose numbering disagrees with its store: its supervisor
    starts it again at once, from the store's state (``ThreadActor.run``). Logged as a
    warning, without a traceback: it is not a bug."""


class Unstorable(ActorError, ValueError):
    """An event the stores cannot hold (a lone surrogate, a NUL character): refused before it
    is queued, by every store alike, and nothing of it is stored. Bad data, not an outage."""


class LimitReached(ActorError):
    """A per-user quota (connections, stored threads) would be exceeded; nothing was done."""


class RateLimited(ActorError):
    """A per-user rate (sends per second across connections) is exceeded; nothing was done."""


class JournalWedged(RuntimeError):
    """A journal write got no answer within its bound: the thread actor restarts (its
    supervisor reloads the last durable seq). Never turned into a run's failure: the counter
    may not match the journal any more."""


class ToolDenied(ToolError):
    """A tool call a person (or the server, when the wait expired) did not approve: the tool
    never ran. Its message is the ``tool_completed`` error, ``"denied: " + reason``; an agent
    may catch it and answer accordingly (the OpenAI agent hands it to the model as the tool's
    result)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
