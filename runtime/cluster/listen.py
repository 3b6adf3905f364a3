"""The node's ``LISTEN`` connection: PostgreSQL notifications, handed to trio.

psycopg's async API is asyncio-only, so one worker thread holds a connection of its own in
autocommit, ``LISTEN``s on the channels, and waits on ``Connection.notifies`` in slices of
``SLICE`` seconds (so that it sees when to stop). Each notification is handed to trio's thread
with ``TrioToken.run_sync_soon``: the callbacks run there, never in the worker thread.

Invariants: a connection lost is made again with a backoff (0.1 s doubling to 5 s), and
``on_listening`` is called each time the ``LISTEN``s are in place, the first time included:
notifications sent while there was no connection are lost, and the caller makes up for them
(reads everything it follows again). Leaving ``listen`` stops the thread within ``SLICE``.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import psycopg
import trio

log = logging.getLogger("threadline.cluster")

SLICE = 0.5  # seconds the worker waits for notifications before it looks whether to stop


async def listen(dsn: str, channels: tuple[str, ...], on_notify: Callable[[str, str], None],
                 on_listening: Callable[[], None], name: str = "threadline") -> None:
    """Run until cancelled: ``on_notify(channel, payload)`` for each notification."""
    token = trio.lowlevel.current_trio_token()
    stop = threading.Event()

    def hand(fn: Callable[..., None], *args: str) -> bool:
        try:
            token.run_sync_soon(fn, *args)
            return True
        except trio.RunFinishedError:
            return False

    def work() -> None:
        delay = 0.1
        while not stop.is_set():
            conn = None
            try:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5,
                                       application_name=name)
                for channel in channels:
                    conn.execute(f"LISTEN {channel}")
                if not hand(on_listening):
                    return
                delay = 0.1
                while not stop.is_set():
                    for note in conn.notifies(timeout=SLICE):
                        if not hand(on_notify, note.channel, note.payload):
                            return
            except psycopg.Error as exc:
                log.warning("the LISTEN connection failed (%s); again in %.1f s",
                            type(exc).__name__, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None:
                    conn.close()

    try:
        await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    finally:
        stop.set()
