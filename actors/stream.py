"""The answer a run writes while it writes it (``run.write``), as ``agent_delta`` events.

PROTOCOL.md, "Events": an ``agent_delta`` is ``{offset, text}``, where ``offset`` is the length in
Unicode code points of the answer before the piece. ``AnswerStream`` turns an agent's writes,
however small and however many, into such pieces.

Invariants:

- The pieces, laid end to end at their offsets, are exactly what was written, in order: every
  piece starts where the previous one ended (``offset`` counts code points, as ``len`` of a
  Python string does), and nothing written is left out once ``close`` has returned.
- At most one piece per ``interval`` seconds (50 ms by default) while the agent writes; the
  first one after a pause goes out at once. A piece holds at most ``PIECE_BYTES`` of UTF-8 and
  never splits a code point.
- Nothing written is ever behind another event of its run: ``flush`` (called under the run's
  ``lock`` before every other event of the run, the terminal one included, and on cancellation)
  writes everything pending first. So a delta that must precede another event goes out then,
  even within ``interval`` of the previous one.
- ``write`` does not wait for durability: the pieces are written by a task of their own (``run``,
  started by the engine in the thread's nursery) while the agent goes on, e.g. reading its
  model. It waits only while more than ``MAX_PENDING`` code points are unwritten: that bounds
  the memory one run can hold, and slows an agent that writes faster than the store keeps up.
- A write that cannot be stored (``Unstorable``: a NUL, a lone surrogate) raises at ``write``
  and is not kept. A piece the journal fails to store stops the stream: the next ``write`` or
  ``flush`` raises that error, and the run ends ``agent_failed``.
"""

from __future__ import annotations

import math
from typing import Any, Awaitable, Callable

import trio

from .errors import JournalUnavailable, JournalWedged, Unstorable
from .journal import unstorable_reason

PIECE_BYTES = 4096         # PROTOCOL.md: each agent_delta at most 4 KiB of text in UTF-8
MAX_PENDING = 64 * 1024    # code points written and not yet stored, per run
DEFAULT_INTERVAL = 0.05    # PROTOCOL.md: at most one agent_delta per run every 50 ms


class AnswerStream:
    """One run's streamed answer. ``emit`` stores and delivers one ``agent_delta`` ``data``."""

    __slots__ = ("interval", "lock", "offset", "error", "_emit", "_pending", "_pending_len",
                 "_parts", "_last", "_wake", "_room", "_scope")

    def __init__(self, emit: Callable[[dict[str, Any]], Awaitable[None]], *,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = interval
        self.lock = trio.Lock()  # held while any event of the run is written
        self.offset = 0          # code points already in stored pieces
        self.error: BaseException | None = None
        self._emit = emit
        self._pending: list[str] = []
        self._pending_len = 0
        self._parts: list[str] = []  # everything written: the answer, for agent_completed
        self._last = -math.inf       # trio time of the last piece
        self._wake = trio.Event()
        self._room = trio.Event()
        self._scope = trio.CancelScope()

    @property
    def text(self) -> str:
        """Everything written so far."""
        return "".join(self._parts)

    async def write(self, text: str) -> None:
        """Append ``text`` to the answer. A cancellation point, but it yields only while too
        much is unwritten (see the header): an agent writes each token, and a scheduling round
        per token would cost more than the rest of the write. Raises ``Unstorable``, or the
        error that stopped the stream."""
        if self.error is not None:
            raise self.error
        if (reason := unstorable_reason(text)) is not None:
            raise Unstorable(f"the answer {reason}")
        while self._pending_len >= MAX_PENDING and self.error is None:
            if self._room.is_set():  # one event for every waiting writer: a piece wakes all
                self._room = trio.Event()
            await self._room.wait()
        if self.error is not None:
            raise self.error
        if text:
            # In chunks of at most a piece's code points: a piece is then made from a few
            # chunks, never by re-reading one long write (quadratic in its length).
            if len(text) <= PIECE_BYTES:  # a token: the usual write
                self._pending.append(text)
            else:
                self._pending.extend(text[i:i + PIECE_BYTES]
                                     for i in range(0, len(text), PIECE_BYTES))
            self._pending_len += len(text)
            self._parts.append(text)
            self._wake.set()
        await trio.lowlevel.checkpoint_if_cancelled()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write pieces as the agent writes, one per ``interval`` at most, until ``close``."""
        with self._scope:
            task_status.started()
            while self.error is None:
                await self._wake.wait()
                if (due := self._last + self.interval) > trio.current_time():
                    await trio.sleep_until(due)
                try:  # ``async with lock`` yields even when the lock is free: a round per piece
                    self.lock.acquire_nowait()
                except trio.WouldBlock:
                    await self.lock.acquire()
                try:
                    self._wake = trio.Event()
                    if self._pending:
                        try:
                            await self._piece()
                        except JournalWedged:
                            raise
                        except Exception:
                            return  # kept in ``error``: the run's next write or event raises it
                    if self._pending:
                        self._wake.set()  # more than one piece's worth: the next interval
                finally:
                    self.lock.release()

    async def flush(self) -> None:
        """Write everything pending now. Call with ``lock`` held. Raises the stream's error."""
        while self._pending and self.error is None:
            await self._piece()
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        """Stop the writing task and write what is pending. The lock is taken first, so the
        task is never cancelled in the middle of a piece."""
        async with self.lock:
            self._scope.cancel()
            await self.flush()

    async def _piece(self) -> None:
        """Store the next piece. The state moves only once the journal has it: ``emit`` raises
        only before the write (cancelled while waiting its turn) or for a write that failed,
        so a piece that raised is still pending, with the same offset."""
        parts: list[str] = []
        size = 0
        for chunk in self._pending:  # chunks of at most PIECE_BYTES code points
            n = len(chunk) if chunk.isascii() else len(chunk.encode())
            if size + n > PIECE_BYTES:
                break
            parts.append(chunk)
            size += n
        taken = len(parts)
        # A first chunk alone over the limit is cut, never inside a code point.
        piece = "".join(parts) if taken else (
            self._pending[0].encode()[:PIECE_BYTES].decode("utf-8", "ignore"))
        self._last = trio.current_time()  # the interval runs from piece to piece, not from stores
        try:
            await self._emit({"offset": self.offset, "text": piece})
        except JournalWedged:
            self.error = JournalUnavailable("the store stopped answering")
            self._room.set()
            raise  # not caught by ``run``: the thread actor restarts (see thread.py)
        except Exception as exc:
            self.error = exc  # nothing more may follow a piece that was not stored
            self._room.set()
            raise
        self.offset += len(piece)
        self._pending_len -= len(piece)
        if taken:
            del self._pending[:taken]  # writes made while it was stored are after these
        else:
            self._pending[0] = self._pending[0][len(piece):]
        self._room.set()
