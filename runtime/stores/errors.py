"""Errors of the stores that an operator sees: one line each, naming the store and the problem."""

from __future__ import annotations


class StoreError(Exception):
    """A store that cannot be used at start (unreachable, broken, newer schema, bad URL). Its
    message is one line naming the store and the problem, fit for an operator's terminal."""


def first_line(what: BaseException | str) -> str:
    """The first non-empty line of an error's message (drivers add DETAIL, HINT and CONTEXT
    lines, and libpq a tab-indented hint), stripped: log lines and ``StoreError`` are one
    line each."""
    for line in str(what).splitlines():
        if line.strip():
            return line.strip()
    return ""
