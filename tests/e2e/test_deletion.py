"""Deletion on the durable stores: nothing comes back after a restart, another user's thread of
the same id is untouched, the id starts again from seq 1; the CLI's delete-user; the --demo
address."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import until_terminal
from tests.servers import ROOT, SECRET, ServeProcess, http, token
from threadline import open_runtime, open_server
from threadline.stores import open_journal


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    return request.getfixturevalue("pg_dsn")


async def converse(rt, user, thread_id, text="hello", client_msg_id=None):
    thread = rt.thread(user, thread_id)
    async with thread.open_subscription() as sub:
        accepted = await thread.send(text, client_msg_id=client_msg_id)
        await until_terminal(sub, accepted.run_id)
    return accepted


async def test_deletion_is_durable_across_a_restart(store_url):
    async with open_journal(store_url) as journal, open_runtime(journal=journal) as rt:
        await converse(rt, "ada", "main", client_msg_id="c1")
        await converse(rt, "ada", "other")
        await converse(rt, "bob", "main")
        async with open_server(rt, port=0, secret=SECRET) as server:  # deleted over HTTP
            status, _, _ = await http(server, "DELETE", "/v1/threads/other", tok=token("ada"))
            assert status == 200
        await rt.thread("ada", "main").delete()
    async with open_journal(store_url) as journal, open_runtime(journal=journal) as rt:
        assert await rt.user("ada").threads() == []
        assert await journal.find_message(rt.thread("ada", "main").key, "c1") is None
        bob = await rt.user("bob").threads()
        assert [(i.key.thread_id, i.last_seq > 0) for i in bob] == [("main", True)]
        again = await converse(rt, "ada", "main", "again", client_msg_id="c1")
        assert again.seq == 1
        assert await rt.delete_user("bob") == 1
    async with open_journal(store_url) as journal:
        assert await journal.threads("bob") == []
        assert [i.key.thread_id for i in await journal.threads("ada")] == ["main"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "threadline", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


async def test_the_delete_user_command(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    async with open_journal(url) as journal, open_runtime(journal=journal) as rt:
        await converse(rt, "ada", "a")
        await converse(rt, "ada", "b")
        await converse(rt, "bob", "a")
    out = cli("delete-user", "ada", "--store", url)
    assert (out.returncode, out.stdout.strip()) == (0, "deleted 2 threads of user ada"), out.stderr
    async with open_journal(url) as journal:
        assert await journal.threads("ada") == []
        assert len(await journal.threads("bob")) == 1
    for missing in (f"{tmp_path}/no/such/dir/x.db", f"{tmp_path}/typo.db"):
        bad = cli("delete-user", "ada", "--store", f"sqlite:///{missing}")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        assert bad.stderr.startswith(f"threadline delete-user: no SQLite store at {missing}")
    assert not (tmp_path / "typo.db").exists()  # a typo makes no empty store


@pytest.mark.parametrize("secret", [None, SECRET])
async def test_serve_demo_prints_the_page_to_open(tmp_path, secret):
    server = ServeProcess("--demo", "--store", "memory", secret=secret, cwd=tmp_path)
    try:
        if secret is None:
            ready, _, _, opened = await server.lines(4)
        else:
            ready, opened = await server.lines(2)
        assert ready.startswith("ready: ws://127.0.0.1:")
        port = ready.rsplit(":", 1)[1].split("/")[0]
        prefix = f"open:     http://127.0.0.1:{port}/"
        assert opened.startswith(prefix)
        assert opened == prefix if secret else opened.startswith(prefix + "?token=")
    finally:
        server.kill()


async def test_joined_tells_a_thread_created_again_from_the_one_deleted(store_url):
    """``joined.created_at`` (PROTOCOL.md's decisions) differs between a thread and the one
    created again under its id, even when the new one is longer than the old: what a client
    needs to drop its copy, and what ``since`` alone cannot tell."""
    from threadline.transport.client import open_client

    async with open_journal(store_url) as journal, open_runtime(journal=journal) as rt, \
            open_server(rt, port=0, secret=SECRET) as server:
        async with open_client(server.url, token("ada")) as client:
            first = await client.join("main")
            await converse(rt, "ada", "main")
            again = await client.join("main", since=first["last_seq"])
            assert again["created_at"] == first["created_at"]  # the same thread
        await rt.thread("ada", "main").delete()
        for _ in range(3):
            await converse(rt, "ada", "main")  # longer than before
        async with open_client(server.url, token("ada")) as client:
            renewed = await client.join("main", since=4)
        assert renewed["last_seq"] > 4 and renewed["created_at"] > first["created_at"]
