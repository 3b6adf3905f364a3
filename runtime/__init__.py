"""threadline: an actor runtime on trio for multi-user AI chat backends.

This module is the public face. What it exports is the supported API; everything under
``threadline.actors``, ``threadline.transport`` and ``threadline.stores`` is internal and may
change between releases (docs/how-it-works.md, "Layout", says what lives where).

    import threadline, trio

    async def main():
        async with threadline.open_runtime() as rt:
            accepted = await rt.thread("ada", "main").send("hello")

Installed layout: this directory (``runtime/`` in the repository) is the package ``threadline``;
``actors/`` is ``threadline.actors`` and ``transport/`` is ``threadline.transport``.
"""

from .actors.approval import resumable
from .actors.engine import Agent, Run, RunContext
from .actors.history import ToolUse, Turn
from .actors.tools import ToolRegistry
from .actors.errors import (
    ActorError,
    AgentError,
    ActorStopped,
    AskTimeout,
    Busy,
    JournalUnavailable,
    LimitReached,
    MailboxFull,
    NotFound,
    RateLimited,
    SubscriberDropped,
    ToolDenied,
    ToolError,
    UnknownCall,
    UnknownRun,
    Unstorable,
)
from .actors.messages import (
    AGENT_CANCELLED,
    AGENT_COMPLETED,
    AGENT_DELTA,
    AGENT_FAILED,
    AGENT_STARTED,
    AGENT_THINKING,
    ANSWER_REQUESTED,
    LATEST,
    TERMINAL_EVENTS,
    THREAD_DELETED,
    TOOL_COMPLETED,
    TOOL_EXECUTING,
    USER_MESSAGE,
    Accepted,
    Event,
    Joined,
    ThreadInfo,
    ThreadKey,
)
from .actors.tree import TurnView
from .api import Runtime, RuntimeConfig, ThreadHandle, UserHandle, open_runtime
from .server import RunningServer, open_server
from .stores import DEFAULT_STORE, StoreError, open_journal
from .transport.auth import mint
from .transport.client import open_client
from .transport.client_errors import (BadFrame, ClientError, ConnectionClosed, HandshakeRejected,
                                      Internal, NotJoined, ServerError)
from .transport.limits import Limits

__all__ = [
    "AGENT_CANCELLED", "AGENT_COMPLETED", "AGENT_DELTA", "AGENT_FAILED", "AGENT_STARTED", "AGENT_THINKING",
    "ANSWER_REQUESTED", "LATEST", "NotFound", "TurnView",
    "DEFAULT_STORE", "TERMINAL_EVENTS", "THREAD_DELETED", "TOOL_COMPLETED", "TOOL_EXECUTING", "USER_MESSAGE",
    "Accepted", "ActorError", "AgentError", "BadFrame", "ClientError", "ConnectionClosed", "HandshakeRejected", "Internal", "ActorStopped", "Agent", "AskTimeout", "Busy", "Event", "Joined",
    "JournalUnavailable", "LimitReached", "Limits", "MailboxFull", "NotJoined", "RateLimited", "Run",
    "RunContext", "Runtime", "ServerError", "SubscriberDropped", "RuntimeConfig", "RunningServer", "StoreError", "ThreadHandle",
    "ThreadInfo", "ThreadKey", "ToolDenied", "ToolError", "ToolRegistry", "ToolUse", "Turn",
    "UnknownCall", "UnknownRun", "Unstorable", "UserHandle", "mint", "open_client",
    "open_journal", "open_runtime", "open_server", "resumable",
]
