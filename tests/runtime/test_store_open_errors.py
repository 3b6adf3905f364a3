"""A broken store at start gives one clear line (issue 8, item 7): each case made for real and
opened with ``open_journal``, and once through ``threadline serve`` as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import psycopg
import pytest

from threadline.stores import open_journal
from tests.helpers import store_refusal
from tests.pg import free_port
from tests.servers import ROOT, SECRET


async def refusal(url: str) -> str:
    """The one-line message of the ``StoreError`` that opening ``url`` raises."""
    return str(await store_refusal(url))


async def make_store(path: Path) -> None:
    """A real store with some data in it."""
    async with open_journal(f"sqlite:///{path}") as journal:
        from threadline.actors.messages import Event, ThreadKey

        for i in range(50):
            key = ThreadKey(f"user{i}", "main")
            await journal.ensure_thread(key, 1.0)
            await journal.append([Event(key, 1, "agent_thinking", "r", 2.0, {"text": "x" * 300})])


NOT_SQLITE = "not a SQLite database (file is damaged or of another kind)"


async def test_random_bytes(tmp_path):
    path = tmp_path / "x.db"
    path.write_bytes(os.urandom(64 * 1024))
    assert await refusal(f"sqlite:///{path}") == f"SQLite {path}: {NOT_SQLITE}"


async def test_a_zeroed_file(tmp_path):
    path = tmp_path / "x.db"
    await make_store(path)
    path.write_bytes(b"\0" * path.stat().st_size)
    assert await refusal(f"sqlite:///{path}") == f"SQLite {path}: {NOT_SQLITE}"


async def test_zeroed_pages_after_the_header(tmp_path):
    """Page 1 (the header and the schema) intact, every table's pages zeroed: found by the
    probe at start, not by the first user."""
    path = tmp_path / "x.db"
    await make_store(path)
    data = path.read_bytes()
    page = int.from_bytes(data[16:18], "big")
    path.write_bytes(data[:page] + b"\0" * (len(data) - page))
    assert await refusal(f"sqlite:///{path}") == \
        f"SQLite {path}: the database is damaged (database disk image is malformed)"


@pytest.mark.parametrize("magic", [b"SQLite format 2\0", b"\x89PNG\r\n\x1a\n", b"PGDMP"])
async def test_a_file_of_another_kind(tmp_path, magic):
    path = tmp_path / "x.db"
    path.write_bytes(magic + b"\1" * 8192)
    assert await refusal(f"sqlite:///{path}") == f"SQLite {path}: {NOT_SQLITE}"


async def test_a_folder_given_as_the_file(tmp_path):
    assert await refusal(f"sqlite:///{tmp_path}") == f"SQLite {tmp_path}: is a folder, not a file"


async def test_a_missing_folder(tmp_path):
    path = tmp_path / "nope" / "x.db"
    assert await refusal(f"sqlite:///{path}") == \
        f"SQLite {path}: folder {tmp_path / 'nope'} does not exist"


async def test_a_relative_path_is_named_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("x.db").write_bytes(os.urandom(4096))
    assert await refusal("sqlite:///./x.db") == f"SQLite ./x.db: {NOT_SQLITE}"


def make_read_only(folder: Path) -> tuple[str, Callable[[], None]]:
    """Make ``folder`` and what it holds read-only for real, also for root (whom file modes do
    not stop): a read-only bind mount, else the immutable attribute (``chattr +i``, on file
    systems that have it), else, for anyone but root, file modes. How, and how to undo it."""
    def run(*cmd: str | Path) -> bool:
        return subprocess.run([str(c) for c in cmd], capture_output=True).returncode == 0

    if os.geteuid() != 0:
        for p in [*folder.iterdir(), folder]:
            p.chmod(0o555)
        return "file modes", lambda: [p.chmod(0o755) for p in [folder, *folder.iterdir()]]
    if shutil.which("mount") and run("mount", "--bind", folder, folder):
        if run("mount", "-o", "remount,bind,ro", folder):
            # Lazily if need be: a file left open must not leave the mount behind.
            return "a read-only bind mount", lambda: run("umount", folder) or run(
                "umount", "-l", folder)
        run("umount", folder)
    if shutil.which("chattr") and run("chattr", "+i", *folder.iterdir(), folder):
        return "chattr +i", lambda: run("chattr", "-i", folder, *folder.iterdir())
    pytest.skip("as root, with neither mount nor chattr +i working here, nothing makes a "
                "folder read-only")


async def test_a_read_only_location(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "x.db"
    await make_store(path)
    how, undo = make_read_only(folder)
    try:
        assert not os.access(folder, os.W_OK), how
        message = await refusal(f"sqlite:///{path}")
        assert message.startswith(f"SQLite {path}: read-only ("), (how, message)
        new = folder / "new.db"  # a store to create there
        message = await refusal(f"sqlite:///{new}")
        assert message == (f"SQLite {new}: read-only (cannot write to folder {folder}, where "
                           "SQLite keeps the file's -wal and -shm files)"), (how, message)
    finally:
        undo()
    assert os.access(folder, os.W_OK)


# -- PostgreSQL ----------------------------------------------------------------------------------


async def test_postgres_unreachable():
    port = free_port()  # nothing listens there: connection refused
    assert await refusal(f"postgresql://threadline@127.0.0.1:{port}/threadline") == \
        f"PostgreSQL 127.0.0.1:{port}/threadline: unreachable (connection refused)"


async def test_postgres_database_that_does_not_exist(pg_cluster):
    assert await refusal(f"postgresql://threadline@127.0.0.1:{pg_cluster.port}/nope") == \
        f"PostgreSQL 127.0.0.1:{pg_cluster.port}/nope: database nope does not exist"


async def test_postgres_wrong_password(pg_cluster):
    """The test cluster trusts everyone on loopback; one role of our own asks for a password
    (a pg_hba.conf line before the others, for that role only), put back afterwards."""
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pw_user")
        conn.execute("CREATE ROLE pw_user LOGIN PASSWORD 'the-right-one'")
    hba = pg_cluster.data / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("host all pw_user 127.0.0.1/32 scram-sha-256\n" + original)
    try:
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        url = f"postgresql://pw_user:wrong-secret@127.0.0.1:{pg_cluster.port}/postgres"
        message = await refusal(url)
        assert message.startswith(f"PostgreSQL 127.0.0.1:{pg_cluster.port}/postgres: login "
                                  "refused: wrong password"), message
        assert "wrong-secret" not in message
        message = await refusal(f"postgresql://pw_user@127.0.0.1:{pg_cluster.port}/postgres")
        assert message == (f"PostgreSQL 127.0.0.1:{pg_cluster.port}/postgres: login refused: "
                           "a password is needed and none was given")
    finally:
        hba.write_text(original)
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")


async def test_a_postgres_url_that_does_not_parse_keeps_its_password():
    message = await refusal("postgresql://u:hunter2@127.0.0.1:5432/db?nosuchoption=1")
    assert "hunter2" not in message


# -- the command ---------------------------------------------------------------------------------


def test_serve_on_a_broken_store_says_one_line_and_exits(tmp_path):
    """``threadline serve`` on a file of random bytes: it exits non-zero, and stderr is one
    line naming the file (the CLI prints any ``StoreError`` as it is). ``--log warning``: the
    start's INFO lines (the store's URL, the open files limit) are not what this is about."""
    path = tmp_path / "broken.db"
    path.write_bytes(os.urandom(16 * 1024))
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    out = subprocess.run(
        [sys.executable, "-m", "threadline", "serve", "--port", "0", "--log", "warning",
         "--store", f"sqlite:///{path}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**env, "THREADLINE_SECRET": SECRET})
    assert out.returncode != 0
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert str(path) in lines[0] and NOT_SQLITE in lines[0], lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""
