"""Tokens in the SQL stores (``threadline.actors.usage``; schema migration 6): the writer's
operation that counts a report, and the reads of a user's totals, in SQL both databases accept.

Invariants:

- A report is counted once, in one transaction of the store's one writer: the run's node
  (``turns``: its sums, for a run resumed after a restart and for the turns a client reads)
  and the user's two period rows (``token_usage``: the UTC day's and the month's) together.
  The period rows are upserts that add (``ON CONFLICT ... DO UPDATE``), so two nodes of a
  cluster reporting for one user at once both count: PostgreSQL locks the row for the second.
- Reading a user's totals is two primary-key look-ups, whatever the user did before.
- A thread's deletion takes its nodes, and their sums, with it; the user's totals stay (what
  was spent stays spent, or deleting a thread would refill a budget). ``delete-user`` erases
  them (``erase_user``).
"""

from __future__ import annotations

from typing import Any

import attrs

from threadline.actors.usage import Usage


@attrs.frozen(slots=True)
class UsageOp:
    """A write to a user's tokens: ``kind`` ``record`` (``run_id``, ``periods``, ``usage``
    of the thread ``thread_id``) or ``erase_user``."""

    user_id: str
    thread_id: str = ""
    kind: str = "record"
    run_id: str = ""
    periods: tuple[str, ...] = ()
    usage: Usage = Usage()


def apply(cur: Any, op: UsageOp) -> None:
    """Apply ``op`` in the caller's transaction."""
    if op.kind == "erase_user":
        cur.execute("DELETE FROM token_usage WHERE user_id = %s", (op.user_id,))
        return
    u = op.usage
    cur.execute("UPDATE turns SET input_tokens = COALESCE(input_tokens, 0) + %s, "
                "output_tokens = COALESCE(output_tokens, 0) + %s, "
                "cached_input_tokens = COALESCE(cached_input_tokens, 0) + %s, "
                "model = COALESCE(%s, model) "
                "WHERE user_id = %s AND thread_id = %s AND run_id = %s",
                (u.input_tokens, u.output_tokens, u.cached_input_tokens, u.model, op.user_id,
                 op.thread_id, op.run_id))
    cur.executemany(
        "INSERT INTO token_usage (user_id, period, input_tokens, output_tokens, "
        "cached_input_tokens) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (user_id, period) DO "
        "UPDATE SET input_tokens = token_usage.input_tokens + excluded.input_tokens, "
        "output_tokens = token_usage.output_tokens + excluded.output_tokens, "
        "cached_input_tokens = token_usage.cached_input_tokens + excluded.cached_input_tokens",
        [(op.user_id, period, u.input_tokens, u.output_tokens, u.cached_input_tokens)
         for period in op.periods])


def totals(cur: Any, user_id: str, day: str, month: str) -> tuple[Usage, Usage]:
    """The user's totals for the periods ``day`` and ``month`` (zero where none)."""
    cur.execute("SELECT period, input_tokens, output_tokens, cached_input_tokens FROM "
                "token_usage WHERE user_id = %s AND period IN (%s, %s)", (user_id, day, month))
    found = {period: Usage(i, o, c) for period, i, o, c in cur.fetchall()}
    return found.get(day, Usage()), found.get(month, Usage())


USAGE_OF_NODE = "input_tokens, output_tokens, cached_input_tokens, model"


def node_usage(row: Any) -> Usage | None:
    """A node's sums from its ``USAGE_OF_NODE`` columns; None when it reported nothing."""
    i, o, c, model = row
    return None if i is None else Usage(i, o or 0, c or 0, model)
