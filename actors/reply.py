"""``Reply``: the project's future, a one-shot slot for the answer to one request.

Used wherever one task waits for an answer another produces without blocking: ``ask`` on a
mailbox, the stores' writer (a caller waits until its batch is durable), the client (a request
waits for the frame with its ``ref``).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import trio.lowlevel as ll

T = TypeVar("T")


class Reply(Generic[T]):
    """A one-shot slot for the answer to one request.

    The actor calls ``set`` or ``fail`` exactly once; the asker awaits ``wait``. Both ``set`` and
    ``fail`` are synchronous and never block. A reply to an asker that already gave up (timeout or
    cancellation) is dropped. This is cheaper than a memory channel or a ``trio.Event`` per
    request, which matters: ``ask`` is the hot path of every request.
    """

    __slots__ = ("_task", "_outcome", "_done")

    def __init__(self) -> None:
        self._task: ll.Task | None = None
        self._outcome: Any = None
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def set(self, value: T) -> None:
        self._resolve(value, None)

    def fail(self, error: BaseException) -> None:
        self._resolve(None, error)

    def _resolve(self, value: Any, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._outcome = (value, error)
        task, self._task = self._task, None
        if task is not None:
            ll.reschedule(task)

    async def wait(self) -> T:
        """Await the answer. Cancellable; re-raises what the actor passed to ``fail``."""
        if not self._done:
            self._task = ll.current_task()

            def abort(_: Any) -> ll.Abort:
                self._task = None
                return ll.Abort.SUCCEEDED

            await ll.wait_task_rescheduled(abort)
        else:
            await ll.checkpoint()
        return self._result()

    async def wait_uncancellable(self) -> T:
        """Await the answer; a cancellation waits until it has come, and is delivered at the
        caller's next checkpoint. What ``with trio.CancelScope(shield=True): await wait()``
        does, without a cancel scope, whose entry and exit cost more than the wait itself on
        the path every stored event takes (``Sequencer.append``)."""
        if not self._done:
            self._task = ll.current_task()
            await ll.wait_task_rescheduled(_refuse_abort)
        else:
            await ll.cancel_shielded_checkpoint()
        return self._result()

    def _result(self) -> T:
        value, error = self._outcome
        if error is not None:
            raise error
        return value  # type: ignore[no-any-return]


def _refuse_abort(_: Any) -> ll.Abort:
    """A wait that cannot be given up: the reply reschedules the task when it comes."""
    return ll.Abort.FAILED
