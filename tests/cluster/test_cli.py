"""What an operator gets wrong when starting a cluster node is one line and exit status 2."""

from __future__ import annotations

import signal

import pytest
import trio

from tests.cluster.nodes import Node
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

    first = await Node(pg_dsn, "--node-id", "n1").ready()
    try:
        out = await trio.to_thread.run_sync(lambda: serve("--cluster", "--store", pg_dsn,
                                                          "--node-id", "n1"))
        refused(out, "node id n1 is in use by a live node")
        assert (await first.health())["cluster"]["node"] == "n1"  # untouched
    finally:
        first.kill()


async def test_a_server_without_cluster_on_a_live_cluster_store_is_refused(pg_dsn):

    node = await Node(pg_dsn).ready()
    try:
        out = await trio.to_thread.run_sync(lambda: serve("--store", pg_dsn))
        refused(out, f"cluster nodes use this store ({node.node_id}): start this server with "
                "--cluster too, or give it another store")
        out = await trio.to_thread.run_sync(lambda: cli("delete-user", "ada", "--store", pg_dsn))
        refused(out, "cluster nodes use this store (")
        assert "stop every node first, or delete the user's threads through" in out.stderr
    finally:
        node.kill()


async def test_a_node_with_another_secret_than_the_live_nodes_is_refused(pg_dsn):

    node = await Node(pg_dsn).ready()  # the tests' secret
    try:
        out = await trio.to_thread.run_sync(lambda: cli(
            "serve", "--port", "0", "--cluster", "--store", pg_dsn,
            env={"THREADLINE_SECRET": "another-secret-" + "x" * 32}))
        refused(out, "this node checks tokens with another secret (or key) than the cluster's "
                "live nodes")
        node.signal(signal.SIGTERM)  # it leaves the cluster: no live node is left
        assert await node.wait() == 0
    finally:
        node.kill()
    # With no live node left (and the old secret's fingerprint older than a TTL: set by a node
    # that started that long ago), a new secret is the cluster's from now on: a full restart.
    await trio.sleep(1.2)
    node = await Node(pg_dsn, "--lease-ttl", "1", env_secret="another-secret-" + "x" * 32).ready()
    node.kill()


async def test_a_node_killed_and_started_again_with_its_id_waits_its_old_heartbeat_out(pg_dsn):

    first = await Node(pg_dsn, "--node-id", "n1", "--lease-ttl", "3").ready()
    first.kill()  # kill -9: its row keeps a fresh heartbeat for a while
    again = await Node(pg_dsn, "--node-id", "n1", "--lease-ttl", "3").ready()
    try:
        assert (await again.health())["cluster"]["node"] == "n1"
    finally:
        again.kill()


async def test_of_two_nodes_started_together_with_different_secrets_one_is_refused(pg_dsn):
    # Neither is live yet when the other checks: the fingerprint the first one set, moments
    # ago, is what the second one must match.
    first = Node(pg_dsn, "--lease-ttl", "3", env_secret="first-secret-" + "x" * 32)
    second = Node(pg_dsn, "--lease-ttl", "3", env_secret="second-secret-" + "y" * 32)
    try:
        outcomes = []
        for node in (first, second):
            try:
                await node.ready()
                outcomes.append("ready")
            except AssertionError as exc:
                outcomes.append(str(exc))
        # Whichever checked first is the cluster's (either may: Python starts at its own pace).
        assert sorted(o == "ready" for o in outcomes) == [False, True], outcomes
        assert any("checks tokens with another secret" in o for o in outcomes), outcomes
    finally:
        first.kill()
        second.kill()


def test_a_peer_port_in_use_is_one_line_and_opens_no_store(pg_dsn):
    """From a red-team pass: the store was opened (and migrated) before the peer port was
    bound; the port comes first now, as serve's own."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = serve("--cluster", "--store", pg_dsn, "--peer-address", f"127.0.0.1:{port}")
    refused(out, f"cannot listen on 127.0.0.1:{port}: address already in use")
    assert "ready (schema version" not in out.stderr, out.stderr  # the journal never opened
