"""threadline's actor layer: mailboxes, supervision, the directory, thread actors, the engine.

No I/O of its own: storage comes in through the ``Journal`` protocol, agents through ``Agent``.
"""

from .agents import calculate, echo_agent, echo_tools
from .directory import Directory
from .engine import Agent, Run, RunContext
from .tools import ToolRegistry
from .errors import (
    ActorCrashed,
    ActorError,
    ActorStopped,
    AskTimeout,
    Busy,
    JournalUnavailable,
    MailboxFull,
    RestartIntensityExceeded,
    SubscriberDropped,
    ToolError,
    UnknownRun,
)
from .journal import Journal
from .memory_journal import MemoryJournal
from .mailbox import ActorRef, Mailbox
from .reply import Reply
from .messages import Accepted, Event, Joined, ThreadInfo, ThreadKey
from .subscription import Subscription
from .supervisor import RestartBudget, RestartPolicy
from .thread import Subscriber, ThreadActor, ThreadEnv

__all__ = [
    "Accepted", "ActorCrashed", "ActorError", "ActorRef", "ActorStopped", "Agent",
    "AskTimeout", "Busy", "Directory", "Event", "Joined", "Journal", "JournalUnavailable",
    "Mailbox", "MailboxFull", "MemoryJournal", "Reply", "RestartBudget",
    "RestartIntensityExceeded", "RestartPolicy", "Run", "RunContext", "Subscriber",
    "SubscriberDropped", "Subscription", "ThreadActor", "ThreadEnv", "ThreadInfo",
    "ThreadKey", "ToolError", "ToolRegistry", "UnknownRun", "calculate", "echo_agent",
    "echo_tools",
]
