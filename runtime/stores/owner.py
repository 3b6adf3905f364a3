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
  ``open_durable_journal`` holds from before migrating), and let go only after the store's connections are closed. A second
  opener, in this process or another, is refused at once (``StoreInUse``) and has touched
  nothing: the lock file is the only file it may have created.
- It is ``flock(LOCK_EX | LOCK_NB)`` on an open file description, so the kernel lets it go
  when the holder dies, ``kill -9`` included: no stale lock to clean up by hand. The file stays
  (removing it would race with an opener that holds the old inode); it holds the holder's pid
  and host, which the refusal quotes.
- On NFS, Linux carries ``flock`` as a lock of the whole file through the NFS lock manager, so
  two hosts are refused too; but SQLite's WAL mode needs one host (shared memory), so a store
  on a network filesystem is not supported: use PostgreSQL for several hosts.
- A store whose folder cannot be written (a read-only mount) cannot get a lock file made; the
  open is refused in the backend's words (``read-only``), as SQLite's WAL would refuse it too.
  An existing lock file that is read-only is locked through a read-only descriptor:
  ``flock`` needs none other.
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


def lock_path(path: str) -> str:
    return path + ".lock"


def acquire(path: str, name: str) -> int:
    """Hold the store at ``path`` for this process: the lock's file descriptor, to give to
    ``release``. ``StoreInUse`` (one line, naming ``name`` and the holder) if another holds
    it; ``OSError`` if the lock file cannot be opened (no folder, a read-only one)."""
    where = lock_path(path)
    fd = _open(where)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(f"{name}: cannot lock {where}: {exc.strerror}") from None
        raise StoreInUse(f"{name}: in use by {holder}; one server per "
                         "SQLite store: stop it first, or use PostgreSQL with --cluster for "
                         "several") from None
    _write_holder(fd)
    return fd


def release(fd: int) -> None:
    os.close(fd)  # the kernel lets the lock go with the last descriptor


def _open(where: str) -> int:
    try:
        return os.open(where, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except (PermissionError, OSError) as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        try:
            return os.open(where, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise exc from None


def _write_holder(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    except OSError:
        pass  # a read-only lock file: the lock holds all the same, only the refusal is vaguer


def _holder(fd: int) -> str:
    try:
        said = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        said = ""
    return said or "another process"
