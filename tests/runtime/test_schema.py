"""A released migration is never edited: version 1's DDL, generated from ``threadline.stores.schema``
for each dialect, is the text threadline 0.1 wrote (SQLite keeps that text in ``sqlite_master``;
a store made by an edited migration would differ from one made before)."""

from threadline.stores import postgres, sqlite
from threadline.stores.schema import MIGRATIONS

SQLITE_V1 = [
    "CREATE TABLE threads (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
    "last_seq INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
    "PRIMARY KEY (user_id, thread_id)) WITHOUT ROWID",
    "CREATE INDEX threads_by_update ON threads (user_id, updated_at)",
    "CREATE TABLE events (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
    "seq INTEGER NOT NULL, event TEXT NOT NULL, run_id TEXT, ts REAL NOT NULL, "
    "data TEXT NOT NULL, PRIMARY KEY (user_id, thread_id, seq)) WITHOUT ROWID",
    "CREATE TABLE client_ids (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
    "client_msg_id TEXT NOT NULL, message_id TEXT NOT NULL, run_id TEXT NOT NULL, "
    "seq INTEGER NOT NULL, PRIMARY KEY (user_id, thread_id, client_msg_id)) WITHOUT ROWID",
    "CREATE TABLE open_runs (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
    "run_id TEXT NOT NULL, started INTEGER NOT NULL, opened_seq BIGINT NOT NULL, "
    "PRIMARY KEY (user_id, thread_id, run_id)) WITHOUT ROWID",
]

POSTGRES_V1 = [
    "CREATE TABLE threads (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
    "last_seq BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
    "updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (user_id, thread_id))",
    "CREATE INDEX threads_by_update ON threads (user_id, updated_at)",
    "CREATE TABLE events (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
    "seq BIGINT NOT NULL, event TEXT NOT NULL, run_id TEXT, "
    "ts DOUBLE PRECISION NOT NULL, data JSONB NOT NULL, "
    "PRIMARY KEY (user_id, thread_id, seq))",
    "CREATE TABLE client_ids (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
    "client_msg_id TEXT NOT NULL, message_id TEXT NOT NULL, run_id TEXT NOT NULL, "
    "seq BIGINT NOT NULL, PRIMARY KEY (user_id, thread_id, client_msg_id))",
    "CREATE TABLE open_runs (user_id TEXT NOT NULL, thread_id TEXT NOT NULL, "
    "run_id TEXT NOT NULL, started INTEGER NOT NULL, opened_seq BIGINT NOT NULL, "
    "PRIMARY KEY (user_id, thread_id, run_id))",
]


def test_version_1_is_the_text_it_always_was_in_sqlite():
    assert MIGRATIONS[0].version == 1
    assert MIGRATIONS[0].statements(sqlite.DIALECT) == SQLITE_V1


def test_version_1_is_the_text_it_always_was_in_postgresql():
    assert MIGRATIONS[0].statements(postgres.DIALECT) == POSTGRES_V1
