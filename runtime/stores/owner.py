"""One owner per store. A process that opens a SQLite store holds an exclusive OS lock on a
file beside it (``PATH.lock``, this module) for as long as the store is open; one that opens a
PostgreSQL store holds an advisory lock on a connection of its own (``PostgresBackend.claim``),
exclusive, or shared among the nodes of a cluster, whose writes are fenced. Either way a
second owner is refused with ``StoreInUse`` before it has read or written anything.

Why a lock and not a check: two servers on one store break each other's threads (the second
one's start-up recovery closes the first one's live runs; both number the same threads from
their own memory, so one of them meets a duplicate key on every write). A look at the store
("is someone using it?") races with a start a millisecond later; a lock does not.

Invariants of the SQLite lock:

- The lock is taken before anything reads or writes the store (``Backend.claim``, which
  ``open_durable_journal`` holds from before migrating), and let go only after the store's
  connections are closed. A second opener, in this process or another, is refused at once
  (``StoreInUse``) and has touched nothing.
- It is ``flock(LOCK_EX | LOCK_NB)`` on the database file itself (made empty if new, as SQLite
  would), on an open file description of its own: so every name of the file is refused alike
  (a symbolic link, a hard link, another spelling of the path), and the kernel lets it go when
  the holder's last descriptor closes, ``kill -9`` included. SQLite's own locks are POSIX
  (``fcntl``) byte-range locks, which Linux keeps apart from ``flock`` on a local filesystem. A
  child the holder forked keeps the descriptor, and so the lock, until it exits.
- Who holds it is written, for the refusal's words only, to ``PATH.lock`` beside the file's
  real path; that file decides nothing (deleting it frees nothing).
- On NFS, Linux carries ``flock`` as a POSIX lock of the whole file through the NFS lock
  manager, which would meet SQLite's own; and SQLite's WAL mode needs one host (shared memory)
  anyway: a store on a network filesystem is not supported: use PostgreSQL for several hosts.
- A store in a folder that cannot be written (a read-only mount) is refused in the backend's
  words (``read-only``), as SQLite's WAL would refuse it; an existing database file that is
  read-only is locked through a read-only descriptor: ``flock`` needs none other.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket

from .errors import StoreError

__all__ = ["StoreInUse", "acquire", "release"]


class StoreInUse(StoreError, RuntimeError):
    """Another process (or another journal in this one) has the store open."""


def holder_path(path: str) -> str:
    """Where the holder's pid is written (for the refusal's words; it decides nothing)."""
    return os.path.realpath(path) + ".lock"


def acquire(path: str, name: str) -> int:
    """Hold the store at ``path`` for this process: the lock's file descriptor, to give to
    ``release``. ``StoreInUse`` (one line, naming ``name`` and the holder) if another holds
    it; ``OSError`` if the file cannot be opened (no folder, a read-only one, a folder)."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(f"{name}: cannot lock it: {exc.strerror}") from None
        raise StoreInUse(f"{name}: in use by {_holder(path)}; one server per SQLite store: "
                         "stop it first, or use PostgreSQL with --cluster for several") from None
    _write_holder(path)
    return fd


def release(fd: int) -> None:
    os.close(fd)  # the kernel lets the lock go with the last descriptor


def _open(path: str) -> int:
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a folder", path)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except (PermissionError, OSError) as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise exc from None


def _write_holder(path: str) -> None:
    try:
        with open(holder_path(path), "w") as f:
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    except OSError:
        pass  # a read-only folder: the lock holds all the same, only the refusal is vaguer


def _holder(path: str) -> str:
    try:
        with open(holder_path(path)) as f:
            said = f.read(200).strip()
    except (OSError, UnicodeDecodeError):
        said = ""
    if not said:
        return "another process"
    pid, _, host = said.removeprefix("pid ").partition(" on ")
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        return f"a process started by pid {pid}, which has exited (a child keeps the lock)"
    return said


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
