"""The answer a run writes while it writes it (``run.write``), as ``agent_delta`` events.

PROTOCOL.md, "Events": an ``agent_delta`` is ``{offset, text}``, where ``offset`` is the length in
Unicode code points of the answer before the piece. ``AnswerStream`` turns an agent's writes,
however small and however many, into such pieces.

Invariants:

- The pieces, laid end to end at their offsets, are exactly what was written, in order: every
  piece starts where the previous one ended (``offset`` counts code points, as ``len`` of a
  Python string does), and nothing written is left out once ``close`` has returned.
- At most one piece per ``interval`` seconds (50 ms by default) while the agent writes; the
  first one after a pause goes out at once (in the scheduling round after the write, so that
  the tokens an agent writes together go out together). A piece holds at most ``PIECE_BYTES``
  of UTF-8 and never splits a code point. The pacing is the program's one ``Pacer``: no task
  and no timer per stream.
- Nothing written is ever behind another event of its run: ``flush_nowait`` (called before
  every other event of the run is queued, the terminal one included, and on cancellation)
  queues everything pending first. Queuing is synchronous and gives the seq, so a piece queued
  first is stored and delivered first, even within ``interval`` of the previous one.
- Nothing waits for durability: a piece is queued straight to the thread's ``Sequencer``,
  stamped with the run's id, and the stream hears the outcome later. ``write`` waits only
  while more than ``MAX_PENDING`` code points are unwritten or on their way to the store: that
  bounds the memory one run can hold, and slows an agent that writes faster than the store
  keeps up (past ``WEDGED_AFTER`` seconds in which not one piece was stored the store is
  wedged: ``JournalWedged``, and the thread restarts).
- A write that cannot be stored (``Unstorable``: a NUL, a lone surrogate) raises at ``write``
  and is not kept. A piece the journal fails to store stops the stream: the next ``write`` or
  ``flush_nowait`` raises that error, and the run ends ``agent_failed`` (or, for an outage, is
  closed by its thread once the store is back). So does ``stop``: the run's writer stops its
  stream when another event of the run failed (``run_writer.py``), and the next piece fails.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from .errors import JournalWedged, Unstorable
from .journal import unstorable_reason
from .messages import AGENT_DELTA
from .pacer import Pacer, current_pacer
from .sequencer import Sequencer

PIECE_BYTES = 4096         # PROTOCOL.md: each agent_delta at most 4 KiB of text in UTF-8
MAX_PENDING = 64 * 1024    # code points written and not yet stored, per run
DEFAULT_INTERVAL = 0.05    # PROTOCOL.md: at most one agent_delta per run every 50 ms
WEDGED_AFTER = 60.0        # seconds a writer waits for room before the store counts as wedged


class AnswerStream:
    """One run's streamed answer (see the module header)."""

    __slots__ = ("interval", "offset", "error", "_sequencer", "_run_id", "_stop", "_pending",
                 "_unstored", "_stored_pieces", "_parts", "_last", "_paced", "_closed", "_room",
                 "_pacer")

    def __init__(self, sequencer: Sequencer, run_id: str, *, interval: float = DEFAULT_INTERVAL,
                 pacer: Pacer | None = None) -> None:
        self.interval = interval
        self.offset = 0          # code points queued as pieces
        self.error: BaseException | None = None
        self._sequencer = sequencer
        self._run_id = run_id
        self._stop: BaseException | None = None  # ``stop``: the next piece fails with it
        self._pending: list[str] = []
        self._unstored = 0           # code points written and not yet stored (pending too)
        self._stored_pieces = 0      # progress, for telling a slow store from a wedged one
        self._parts: list[str] = []  # everything written: the answer, for agent_completed
        self._last = -math.inf       # trio time of the last piece
        self._paced = False          # a call of ``_due`` is in the pacer
        self._closed = False
        self._room = trio.Event()
        self._pacer = pacer or current_pacer()

    @property
    def text(self) -> str:
        """Everything written so far."""
        return "".join(self._parts)

    def continue_from(self, text: str) -> None:
        """The answer so far is ``text``, stored already as pieces (a parked run resumed): the
        next piece starts at its end. Before any write."""
        self.offset = len(text)
        self._parts = [text] if text else []

    async def write(self, text: str) -> None:
        """Append ``text`` to the answer. A cancellation point, but it yields only while too
        much is unwritten (see the header): an agent writes each token, and a scheduling round
        per token would cost more than the rest of the write. Raises ``Unstorable``, or the
        error that stopped the stream."""
        if self.error is not None:
            raise self.error
        if (reason := unstorable_reason(text)) is not None:
            raise Unstorable(f"the answer {reason}")
        if self._unstored >= MAX_PENDING:
            await self._wait_for_room()
        if text:
            # In chunks of at most a piece's code points: a piece is then made from a few
            # chunks, never by re-reading one long write (quadratic in its length).
            if len(text) <= PIECE_BYTES:  # a token: the usual write
                self._pending.append(text)
            else:
                self._pending.extend(text[i:i + PIECE_BYTES]
                                     for i in range(0, len(text), PIECE_BYTES))
            self._unstored += len(text)
            self._parts.append(text)
            if not self._paced:
                self._paced = True
                self._pacer.call_at(max(trio.current_time(), self._last + self.interval),
                                    self._due)
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _wait_for_room(self) -> None:
        while self._unstored >= MAX_PENDING and self.error is None:
            stored = self._stored_pieces
            if self._room.is_set():  # one event for every waiting writer
                self._room = trio.Event()
            with trio.move_on_after(WEDGED_AFTER):
                await self._room.wait()
            if self._stored_pieces == stored and self.error is None:
                raise JournalWedged(f"no piece of the answer stored within {WEDGED_AFTER:g} s")
        if self.error is not None:
            raise self.error

    def _due(self) -> None:
        """The pacer's call: queue one piece, if it is time (a flush may have been since)."""
        self._paced = False
        if self._closed or self.error is not None or not self._pending:
            return
        due = self._last + self.interval
        if due > trio.current_time():
            self._paced = True
            self._pacer.call_at(due, self._due)
            return
        try:
            self._piece()
        except Exception:
            return  # kept in ``error``: the run's next write or event raises it
        if self._pending:  # more than a piece's worth: the next one an interval later
            self._paced = True
            self._pacer.call_at(self._last + self.interval, self._due)

    def flush_nowait(self) -> None:
        """Queue everything pending now. Raises the stream's error."""
        while self._pending and self.error is None:
            self._piece()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Queue what is pending; nothing is written after. Raises the stream's error."""
        self._closed = True
        self.flush_nowait()

    def stop(self, error: BaseException) -> None:
        """Queue no more pieces: the next one fails with ``error`` (another event of the run
        was not stored, and a piece would follow it)."""
        if self._stop is None:
            self._stop = error

    def abandon(self) -> None:
        """Write nothing more, not even what is pending (the run is torn down by a wedged
        store: its thread restarts, and recovery closes the run)."""
        self._closed = True
        self._pending.clear()

    def _piece(self) -> None:
        """Queue the next piece. Raises (and keeps in ``error``) if it cannot be queued."""
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
        self._last = trio.current_time()  # the interval runs from piece to piece
        try:
            if self._stop is not None:
                raise self._stop
            self._sequencer.submit(AGENT_DELTA, self._run_id,
                                   {"offset": self.offset, "text": piece}, _Piece(self, len(piece)))
        except Exception as exc:
            self._failed(exc)
            raise
        self.offset += len(piece)
        if taken:
            del self._pending[:taken]
        else:
            self._pending[0] = self._pending[0][len(piece):]

    def _stored(self, size: int) -> None:
        self._unstored -= size
        self._stored_pieces += 1
        self._room.set()

    def _failed(self, error: BaseException) -> None:
        if self.error is None:  # the first failure: nothing more may follow it
            self.error = error
        self._room.set()


class _Piece:
    """The outcome of one queued piece (``Done``)."""

    __slots__ = ("stream", "size")

    def __init__(self, stream: AnswerStream, size: int) -> None:
        self.stream = stream
        self.size = size

    def set(self, _: Any) -> None:
        self.stream._stored(self.size)

    def fail(self, error: BaseException) -> None:
        self.stream._failed(error)
