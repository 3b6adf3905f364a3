"""A released migration is never edited: version 1's DDL, generated from ``threadline.stores.schema``
for each dialect, is the text threadline 0.1 wrote (SQLite keeps that text in ``sqlite_master``;
a store made by an edited migration would differ from one made before). A store of version 2
migrates to 3 (the index of keyset thread pages) and on with its rows, on both databases; version
4 (the conversation tree) is tested with a store the previous release made,
``tests/runtime/test_tree_migration.py``."""

from threadline.stores import postgres, sql, sqlite
from threadline.stores.schema import MIGRATIONS, VERSION, created

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


# -- migration 3: the keyset index of thread list pages ---------------------------------------

V3 = ["CREATE INDEX threads_by_user_update ON threads (user_id, updated_at, thread_id)",
      "DROP INDEX threads_by_update"]


def test_version_3_replaces_the_thread_list_index():
    assert VERSION >= 3 and MIGRATIONS[2].version == 3
    assert MIGRATIONS[2].statements(sqlite.DIALECT) == V3
    assert MIGRATIONS[2].statements(postgres.DIALECT) == V3
    names = [item.name for item in created()]
    assert "threads_by_user_update" in names and "threads_by_update" not in names


def migrate_to(backend: sql.Backend, cur, version: int) -> None:
    """Make the schema of an empty store as threadline made it at ``version``, in the
    caller's transaction (released migrations are never edited: their text is that
    release's)."""
    for statement in backend.dialect.before_migrating:
        cur.execute(statement)
    for migration in MIGRATIONS[:version]:
        for statement in migration.statements(backend.dialect):
            cur.execute(statement)
        for statement in backend.dialect.set_version:
            cur.execute(statement.format(version=migration.version))


def _make_version_2(backend: sql.Backend, conn) -> None:
    """A store as threadline wrote it at version 2, with threads of two users in it."""
    backend.begin(conn)
    cur = backend.cursor(conn)
    migrate_to(backend, cur, 2)
    cur.executemany("INSERT INTO threads (user_id, thread_id, last_seq, created_at, updated_at) "
                    "VALUES (%s, %s, 0, 1.0, %s)",
                    [("alice", f"t{n}", float(n % 3)) for n in range(7)] + [("bob", "b", 9.0)])
    backend.commit(conn)


def _migrated_pages(backend: sql.Backend, conn) -> list[str]:
    assert sql.prepare(backend) == VERSION
    cur = backend.cursor(conn)
    cur.execute(backend.dialect.get_version)
    assert cur.fetchone()[0] == VERSION
    first = sql.threads_page(cur, "alice", 3, None)
    rest = sql.threads_page(cur, "alice", 10, (first[2].updated_at, first[2].key.thread_id))
    return [i.key.thread_id for i in first[:3] + rest]


def test_a_version_2_sqlite_store_migrates_to_the_last_version(tmp_path):
    backend = sqlite.SQLiteBackend(str(tmp_path / "v2.db"))
    conn = backend.connect(writer=True)
    try:
        _make_version_2(backend, conn)
        assert _migrated_pages(backend, conn) == ["t5", "t2", "t4", "t1", "t6", "t3", "t0"]
        indexes = {row[0]: row[1] for row in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
        assert indexes["threads_by_user_update"] == V3[0] and "threads_by_update" not in indexes
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT thread_id FROM threads WHERE user_id = ? AND "
            "(updated_at, thread_id) < (?, ?) ORDER BY updated_at DESC, thread_id DESC LIMIT 3",
            ("alice", 1.0, "t4")).fetchall()
        detail = " ".join(row[-1] for row in plan)
        assert "threads_by_user_update" in detail and "TEMP B-TREE" not in detail
    finally:
        conn.close()
    assert sql.prepare(backend) == VERSION  # and again: nothing left to do


def test_a_version_2_postgresql_store_migrates_to_the_last_version(pg_dsn):
    backend = postgres.PostgresBackend(pg_dsn)
    conn = backend.connect(writer=True)
    try:
        _make_version_2(backend, conn)
        assert _migrated_pages(backend, conn) == ["t5", "t2", "t4", "t1", "t6", "t3", "t0"]
        conn.rollback()
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'threads'")
        assert {r[0] for r in rows} == {"threads_pkey", "threads_by_user_update"}
    finally:
        conn.close()
    assert sql.prepare(backend) == VERSION
