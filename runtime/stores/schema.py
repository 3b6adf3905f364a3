"""The SQL stores' schema, written once: its tables and indexes as data, a migration a version,
and the ``Dialect`` that says how one database spells it. Migrating is ``Backend.migrate``
(``sql.py``); the dialects are in ``sqlite.py`` and ``postgres.py``.

Invariants:

- What a store holds on disk is what this file and a dialect make of it, and nothing else
  writes DDL. A released migration is never edited (a store already made by it would differ
  from a new one); a change to the schema is a new migration, with the next version number.
- The DDL text is generated the same, byte for byte, for as long as a migration lives: SQLite
  keeps the text of each ``CREATE`` in its ``sqlite_master`` as it was given.
- ``VERSION``, the last migration's number, is what a store's own record of its version
  (``Dialect.get_version``) says once migrated; a store whose record says more was made by a
  newer threadline and is refused.
- Only the dialect differs between the databases: the SQL type of each column ``Type``, what
  follows a ``CREATE TABLE``, where the version is kept, what is read at start, how a read
  counts the bytes of an event's data, and how a migration reads a field of it.
- A migration that adds what existing rows must have too fills it in (``Fill``), in the same
  transaction: a store is never at a version whose tables say less than its events.
"""

from __future__ import annotations

import enum
from typing import Mapping

import attrs

__all__ = ["AddColumn", "Column", "Dialect", "Fill", "Index", "MIGRATIONS", "Migration", "Table",
           "Type", "VERSION", "created"]


class Type(enum.Enum):
    """What a column holds; ``Dialect.types`` names its SQL type."""

    TEXT = enum.auto()
    INTEGER = enum.auto()
    BIGINT = enum.auto()
    SEQ = enum.auto()     # a sequence number: 64 bits
    REAL = enum.auto()    # a double
    JSON = enum.auto()    # a JSON object, written as text (``sql.dumps``)
    BYTES = enum.auto()   # bytes (an attachment's chunk)


@attrs.frozen
class Dialect:
    """How one database spells the schema and keeps its version. A statement is run as it is
    (``set_version`` after ``.format(version=N)``), never with parameters."""

    types: Mapping[Type, str]          # every ``Type``
    table_options: str                 # after the closing parenthesis of a ``CREATE TABLE``
    before_migrating: tuple[str, ...]  # first in the migrating transaction
    get_version: str                   # one row, one column: the version (NULL: 0)
    set_version: tuple[str, ...]       # after each migration's statements
    probes: tuple[str, ...]            # last in the migrating transaction, rows fetched
    data_bytes: str                    # SQL for the bytes of an ``events`` row's ``data`` as
                                       # a read fetches it (``read``'s ``max_bytes``)
    data_field: str                    # SQL for the text of the top-level field ``{field}``
                                       # of an ``events`` row's ``data`` aliased ``{row}``


@attrs.frozen
class Column:
    name: str
    type: Type
    null: bool = False

    def ddl(self, dialect: Dialect) -> str:
        return f"{self.name} {dialect.types[self.type]}{'' if self.null else ' NOT NULL'}"


@attrs.frozen
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # the primary key
    small_rows: bool = True  # False: rows of many KiB, no ``table_options`` (SQLite keeps
                             # such rows beside a rowid, not inside its key's b-tree)

    def ddl(self, dialect: Dialect) -> str:
        columns = ", ".join(column.ddl(dialect) for column in self.columns)
        return (f"CREATE TABLE {self.name} ({columns}, PRIMARY KEY ({', '.join(self.key)}))"
                f"{dialect.table_options if self.small_rows else ''}")


@attrs.frozen
class Index:
    name: str
    table: str
    columns: tuple[str, ...]

    def ddl(self, dialect: Dialect) -> str:
        return f"CREATE INDEX {self.name} ON {self.table} ({', '.join(self.columns)})"


@attrs.frozen
class AddColumn:
    """A column added to a table that exists (its rows get NULL: ``null`` must be true)."""

    table: str
    column: Column

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column.name}"

    def ddl(self, dialect: Dialect) -> str:
        return f"ALTER TABLE {self.table} ADD COLUMN {self.column.ddl(dialect)}"


@attrs.frozen
class Fill:
    """A statement that fills in what a migration adds for the rows already stored; its
    ``{data:ROW.FIELD}`` marks are the dialect's ``data_field`` of that row's field."""

    sql: str

    @property
    def name(self) -> str:
        return ""  # never created, never dropped

    def ddl(self, dialect: Dialect) -> str:
        out = self.sql
        while (start := out.find("{data:")) >= 0:
            end = out.index("}", start)
            row, field = out[start + 6:end].split(".")
            out = out[:start] + dialect.data_field.format(row=row, field=field) + out[end + 1:]
        return out


Item = Table | Index | AddColumn | Fill


@attrs.frozen
class Migration:
    """Version ``version``: creates ``creates``, in that order, then drops the indexes named
    in ``drops`` (each replaced by one it creates)."""

    version: int
    creates: tuple[Item, ...]
    drops: tuple[str, ...] = ()

    def statements(self, dialect: Dialect) -> list[str]:
        return ([item.ddl(dialect) for item in self.creates]
                + [f"DROP INDEX {name}" for name in self.drops])


def _texts(*names: str) -> tuple[Column, ...]:
    """``TEXT NOT NULL`` columns."""
    return tuple(Column(name, Type.TEXT) for name in names)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, (
        Table("threads", (
            *_texts("user_id", "thread_id"), Column("last_seq", Type.SEQ),
            Column("created_at", Type.REAL), Column("updated_at", Type.REAL),
        ), key=("user_id", "thread_id")),
        Index("threads_by_update", "threads", ("user_id", "updated_at")),
        Table("events", (
            *_texts("user_id", "thread_id"), Column("seq", Type.SEQ),
            Column("event", Type.TEXT), Column("run_id", Type.TEXT, null=True),
            Column("ts", Type.REAL), Column("data", Type.JSON),
        ), key=("user_id", "thread_id", "seq")),
        Table("client_ids", (
            *_texts("user_id", "thread_id", "client_msg_id", "message_id", "run_id"),
            Column("seq", Type.SEQ),
        ), key=("user_id", "thread_id", "client_msg_id")),
        # BIGINT, not SEQ: so version 1 wrote it for SQLite too (where both are 64 bits).
        Table("open_runs", (
            *_texts("user_id", "thread_id", "run_id"), Column("started", Type.INTEGER),
            Column("opened_seq", Type.BIGINT),
        ), key=("user_id", "thread_id", "run_id")),
    )),
    # Cluster mode (``threadline.cluster``; PostgreSQL only, the tables stay empty elsewhere):
    # one lease row per shard, one row per node, and settings such as the peers' secret.
    Migration(2, (
        Table("shard_leases", (
            Column("shard", Type.INTEGER), Column("owner", Type.TEXT, null=True),
            Column("epoch", Type.BIGINT), Column("expires_at", Type.REAL),
        ), key=("shard",)),
        Table("cluster_nodes", (
            *_texts("node_id", "peer_address"), Column("http_url", Type.TEXT, null=True),
            Column("started_at", Type.REAL), Column("heartbeat_at", Type.REAL),
        ), key=("node_id",)),
        Table("cluster_settings", _texts("name", "value"), key=("name",)),
    )),
    # A page of a user's thread list is a keyset seek on (updated_at, thread_id), both
    # descending (``sql.threads_page``): with thread_id in the index, a page reads only its own
    # rows, ties on updated_at included (PostgreSQL could not order the ties of the old index
    # without reading them all). The old index is a prefix of the new one: dropped, so an
    # append still updates one index of ``threads``, not two.
    Migration(3, (
        Index("threads_by_user_update", "threads", ("user_id", "updated_at", "thread_id")),
    ), drops=("threads_by_update",)),
    # The conversation tree (PROTOCOL.md 1.1; ``threadline.actors.tree``): one row per run,
    # written with the event that asks for it and kept with its start and end, so that a
    # branch is a walk of parents by primary key and each run's events a range of seqs. A
    # root's ``parent`` is '' (never a run id), so that one equality finds any message's
    # siblings through ``turns_by_parent``. A thread's ``title`` (its first message's first 80
    # code points) is kept in its row, so a page of the thread list reads no events. Existing
    # threads become single branches: each message follows the run of the message before it.
    Migration(4, (
        AddColumn("threads", Column("title", Type.TEXT, null=True)),
        Table("turns", (
            *_texts("user_id", "thread_id", "run_id", "message_id", "parent"),
            Column("message_seq", Type.SEQ), Column("seq", Type.SEQ),
            Column("started_seq", Type.SEQ, null=True), Column("ended_seq", Type.SEQ, null=True),
        ), key=("user_id", "thread_id", "run_id")),
        Index("turns_by_seq", "turns", ("user_id", "thread_id", "seq")),
        Index("turns_by_message", "turns", ("user_id", "thread_id", "message_id", "seq")),
        Index("turns_by_parent", "turns",
              ("user_id", "thread_id", "parent", "message_seq", "seq")),
        Fill(
            "INSERT INTO turns (user_id, thread_id, run_id, message_id, parent, message_seq, "
            "seq, started_seq, ended_seq) "
            "SELECT m.user_id, m.thread_id, m.run_id, COALESCE({data:m.message_id}, ''), "
            "COALESCE(LAG(m.run_id) OVER (PARTITION BY m.user_id, m.thread_id ORDER BY m.seq), "
            "''), m.seq, m.seq, s.seq, e.seq FROM events m "
            "LEFT JOIN (SELECT user_id, thread_id, run_id, MIN(seq) AS seq FROM events "
            "WHERE event = 'agent_started' GROUP BY user_id, thread_id, run_id) s "
            "ON s.user_id = m.user_id AND s.thread_id = m.thread_id AND s.run_id = m.run_id "
            "LEFT JOIN (SELECT user_id, thread_id, run_id, MIN(seq) AS seq FROM events "
            "WHERE event IN ('agent_completed', 'agent_failed', 'agent_cancelled') "
            "GROUP BY user_id, thread_id, run_id) e "
            "ON e.user_id = m.user_id AND e.thread_id = m.thread_id AND e.run_id = m.run_id "
            "WHERE m.event = 'user_message' AND m.run_id IS NOT NULL"),
        Fill(
            "UPDATE threads SET title = (SELECT substr({data:f.text}, 1, 80) FROM events f "
            "WHERE f.user_id = threads.user_id AND f.thread_id = threads.thread_id AND "
            "f.event = 'user_message' ORDER BY f.seq LIMIT 1)"),
    )),
    # Attachments (PROTOCOL.md 1.1; ``threadline.actors.attachments``): a record per file, its
    # bytes in chunks of 256 KiB beside it (an upload and a download each hold one chunk at a
    # time; a deletion is rows, in the transaction of its thread's), and each user's bytes in
    # one row, updated in the transaction of each chunk, so that the quota holds across
    # connections and nodes. ``thread_id`` is set by the first message that names the file
    # (NULL: never sent: the sweeper finds those by age); ``finished`` is 0 while it uploads.
    Migration(5, (
        Table("attachments", (
            *_texts("user_id", "attachment_id", "name", "content_type", "sha256"),
            Column("size", Type.BIGINT), Column("created_at", Type.REAL),
            Column("thread_id", Type.TEXT, null=True), Column("finished", Type.INTEGER),
        ), key=("user_id", "attachment_id")),
        Index("attachments_by_thread", "attachments", ("user_id", "thread_id")),
        Index("attachments_by_age", "attachments", ("created_at",)),
        Table("attachment_chunks", (
            *_texts("user_id", "attachment_id"), Column("n", Type.INTEGER),
            Column("data", Type.BYTES),
        ), key=("user_id", "attachment_id", "n"), small_rows=False),
        Table("attachment_usage", (
            Column("user_id", Type.TEXT), Column("bytes", Type.BIGINT),
        ), key=("user_id",)),
    )),
    # Tokens (PROTOCOL.md 1.1, "Usage and budgets"; ``threadline.actors.usage``): what each
    # run reported, summed in its node (NULL: nothing reported), and each user's totals per
    # UTC day (``d2026-12-07``) and month (``m2026-12``) in a row each, so that a budget check
    # is two key look-ups (``tokens.py``). Nothing to fill in: no run reported before.
    Migration(6, (
        AddColumn("turns", Column("input_tokens", Type.BIGINT, null=True)),
        AddColumn("turns", Column("output_tokens", Type.BIGINT, null=True)),
        AddColumn("turns", Column("cached_input_tokens", Type.BIGINT, null=True)),
        AddColumn("turns", Column("model", Type.TEXT, null=True)),
        Table("token_usage", (
            *_texts("user_id", "period"), Column("input_tokens", Type.BIGINT),
            Column("output_tokens", Type.BIGINT), Column("cached_input_tokens", Type.BIGINT),
        ), key=("user_id", "period")),
    )),
)

VERSION = MIGRATIONS[-1].version


def created() -> list[Table | Index]:
    """Every table and index the migrations leave in a store, in the order they create them."""
    dropped = {name for migration in MIGRATIONS for name in migration.drops}
    return [item for migration in MIGRATIONS for item in migration.creates
            if isinstance(item, (Table, Index)) and item.name not in dropped]
