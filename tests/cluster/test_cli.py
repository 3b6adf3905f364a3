"""What an operator gets wrong when starting a cluster node is one line and exit status 2."""

from __future__ import annotations

import pytest
import trio

from tests.pg import free_port
from tests.runtime.test_cli_errors import cli, refused
from tests.servers import SECRET


def serve(*args: str, secret: bool = True):
    return cli("serve", "--port", "0", *args,
               env={"THREADLINE_SECRET": SECRET} if secret else {})


def test_a_cluster_needs_postgresql():
    out = serve("--cluster", "--store", "sqlite:///x.db")
    refused(out, "threadline: --cluster needs a PostgreSQL store (--store postgresql://...), "
            "not sqlite:///x.db")
    out = serve("--cluster", "--store", "memory")
    refused(out, "--cluster needs a PostgreSQL store")


@pytest.mark.parametrize("secret", [True, False])
def test_an_unreachable_database_is_one_line_without_the_password(secret):
    port = free_port()
    out = serve("--cluster", "--store", f"postgresql://u:hunter2hunter2@127.0.0.1:{port}/db",
                secret=secret)
    line = refused(out, f"127.0.0.1:{port}/db: unreachable (connection refused)")
    assert "hunter2" not in out.stderr and line


def test_peers_on_every_interface_need_an_advertised_address(pg_dsn):
    out = serve("--cluster", "--store", pg_dsn, "--peer-address", "0.0.0.0:0")
    refused(out, "--peer-address on every interface needs --peer-advertise HOST:PORT")


@pytest.mark.parametrize("flag, value, says", [
    ("--node-id", "no spaces", "--node-id: 'no spaces': 1-50 characters"),
    ("--lease-ttl", "0.5", "--lease-ttl: '0.5': a number of seconds >= 1"),
    ("--peer-address", "nowhere", "--peer-address: 'nowhere': HOST:PORT"),
])
def test_bad_cluster_flags_are_one_line(flag, value, says):
    out = serve("--cluster", "--store", "postgresql://x@127.0.0.1:1/db", flag, value)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, \
        out.stderr


async def test_a_node_id_a_live_node_has_is_refused(pg_dsn):
    from tests.cluster.nodes import Node

    first = await Node(pg_dsn, "--node-id", "n1").ready()
    try:
        out = await trio.to_thread.run_sync(lambda: serve("--cluster", "--store", pg_dsn,
                                                          "--node-id", "n1"))
        refused(out, "node id n1 is in use by a live node")
        assert (await first.health())["cluster"]["node"] == "n1"  # untouched
    finally:
        first.kill()
