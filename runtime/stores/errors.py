"""Errors of the stores that an operator sees: one line each, naming the store and the problem."""

from __future__ import annotations


class StoreError(Exception):
    """A store that cannot be used at start (unreachable, broken, newer schema, bad URL). Its
    message is one line naming the store and the problem, fit for an operator's terminal."""
