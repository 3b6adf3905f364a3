"""The peer link over TLS with a throwaway CA, on loopback: mutual certificates, the HMAC
handshake inside, and each peer without a good certificate refused in one logged line."""

from __future__ import annotations

import logging
import ssl

import pytest
import trio

from tests.cluster.certs import CA
from tests.cluster.test_peer_handshake import hello
from tests.cluster.test_peers import KEY, LOGGER, SECRET, Owner, post, serving, wait_for
from threadline.actors.messages import Accepted, GetInfo, ThreadInfo
from threadline.actors.reply import Reply
from threadline.cluster.admission import ClusterRefusal
from threadline.cluster.peers import open_peer_clients
from threadline.cluster.tls import load_peer_tls
from threadline.cluster.wire import Call, Info, PeerUnreachable, encode


def contexts(files) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    tls = load_peer_tls(files.cert, files.key, files.ca, False, ["127.0.0.1"])
    assert tls is not None
    return tls.client, tls.server


@pytest.fixture
def ca(tmp_path) -> CA:
    return CA(tmp_path)


async def refused_warning(caplog) -> str:
    await wait_for(lambda: any(r.name == LOGGER for r in caplog.records), "a warning")
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert "\n" not in text and "peer link from 127.0.0.1:" in text and " refused: " in text
    return text


async def test_two_nodes_talk_over_mutual_tls(ca):
    _, server_tls = contexts(ca.issue("owner"))
    client_tls, _ = contexts(ca.issue("asker"))
    async with serving(Owner(), tls=server_tls) as served, \
            open_peer_clients("asker", SECRET, tls=client_tls) as clients:
        at = served.address
        assert await clients.call(at, KEY, post("hi", "c-1")) == Accepted(KEY, "m-hi", "r-c-1", 1)
        assert await clients.call(at, KEY, GetInfo(Reply())) == ThreadInfo(KEY, 7, 1.5, 2.5)
        [connection] = clients._connections.values()
        stream = connection.link.stream
        assert isinstance(stream, trio.SSLStream)
        assert stream.version() in ("TLSv1.2", "TLSv1.3")
        assert stream.getpeercert()["subject"] == ((("commonName", "owner"),),)
        assert served.accepted == 1


@pytest.mark.parametrize("kind", ["self-signed", "other-ca", "no-cert"])
async def test_a_client_without_a_good_certificate_is_refused_in_one_line(ca, tmp_path, caplog,
                                                                        kind):
    caplog.set_level(logging.WARNING, LOGGER)
    _, server_tls = contexts(ca.issue("owner"))
    if kind == "self-signed":
        client_tls, _ = contexts(ca.issue("asker", self_signed=True))
    elif kind == "other-ca":
        other = CA(tmp_path, "another CA")
        client_tls, _ = contexts(other.issue("asker", ca_file=ca))  # trusts ours, not trusted
    else:  # trusts the CA, presents nothing
        client_tls = ssl.create_default_context(cafile=ca.path)
    async with serving(Owner(), tls=server_tls) as served, \
            open_peer_clients("asker", SECRET, tls=client_tls) as clients:
        with pytest.raises(PeerUnreachable, match="TLS"):
            await clients.call(served.address, KEY, post("hi"))
        text = await refused_warning(caplog)
    assert "TLS: " in text
    assert {"self-signed": "certificate verify failed: self-signed certificate",
            "other-ca": "certificate verify failed: unable to get local issuer certificate",
            "no-cert": "peer did not return a certificate"}[kind] in text, text
    assert "'asker'" not in text  # refused before it could even say who it is


@pytest.mark.parametrize("kind", ["other-ca", "wrong-host"])
async def test_the_client_refuses_a_server_it_cannot_verify(ca, tmp_path, kind):
    if kind == "other-ca":
        _, server_tls = contexts(CA(tmp_path, "another CA").issue("owner"))
        says = "certificate verify failed"
    else:  # a certificate from our CA, for another address than the one we connect to
        _, server_tls = contexts(ca.issue("owner", hosts=("10.9.9.9", "node9.example")))
        says = "IP address mismatch"
    client_tls, _ = contexts(ca.issue("asker"))
    async with serving(Owner(), tls=server_tls) as served, \
            open_peer_clients("asker", SECRET, tls=client_tls) as clients:
        with pytest.raises(PeerUnreachable, match=says):
            await clients.call(served.address, KEY, post("hi"))


async def test_a_plaintext_peer_is_refused_by_a_tls_server(ca, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    _, server_tls = contexts(ca.issue("owner"))
    async with serving(Owner(), tls=server_tls) as served, \
            open_peer_clients("asker", SECRET) as clients:
        with pytest.raises(PeerUnreachable):
            await clients.call(served.address, KEY, post("hi"))
        assert "TLS: " in await refused_warning(caplog)


async def test_the_hmac_handshake_still_runs_inside_tls(ca, caplog):
    """A peer with a good certificate but the wrong secret, or no proof at all, is refused
    by the HMAC handshake, after TLS."""
    caplog.set_level(logging.WARNING, LOGGER)
    _, server_tls = contexts(ca.issue("owner"))
    client_tls, _ = contexts(ca.issue("asker"))
    async with serving(Owner(), tls=server_tls) as served:
        async with open_peer_clients("intruder", b"w" * 47, tls=client_tls) as clients:
            with pytest.raises(PeerUnreachable, match="another secret"):
                await clients.call(served.address, KEY, post("hi"))
            text = await refused_warning(caplog)
        assert "'intruder' gave no proof or a wrong one" in text and "TLS" not in text
        caplog.clear()
        # By hand, over TLS: the server's challenge comes only after a hello, and a call
        # before the proof is refused.
        raw = await trio.open_tcp_stream(*served.address)
        stream = trio.SSLStream(raw, client_tls, server_hostname="127.0.0.1")
        async with stream:
            await stream.do_handshake()
            await hello(stream, "by-hand")
            await stream.send_all(encode(Call(1, "ada", "t-1", Info())))
            with trio.fail_after(10):
                try:
                    assert await stream.receive_some(65536) == b""
                except trio.BrokenResourceError:
                    pass
        assert "'by-hand' gave no proof" in await refused_warning(caplog)


# -- the choice made at start -----------------------------------------------------------------

def test_plaintext_is_the_default_only_on_loopback(ca):
    assert load_peer_tls(None, None, None, False, ["127.0.0.1", "::1", "localhost"]) is None
    with pytest.raises(ClusterRefusal, match="the peer link on 0.0.0.0 is not loopback: give "
                       "--peer-cert, --peer-key and --peer-ca"):
        load_peer_tls(None, None, None, False, ["0.0.0.0", "10.0.0.5"])
    assert load_peer_tls(None, None, None, True, ["10.0.0.5"]) is None  # the operator's word
    files = ca.issue("n1")
    assert load_peer_tls(files.cert, files.key, files.ca, False, ["10.0.0.5"]) is not None


@pytest.mark.parametrize("change, says", [
    ({"cert": "missing.crt"}, "--peer-cert {d}/missing.crt: no such file or directory"),
    ({"ca": "missing-ca.crt"}, "--peer-ca {d}/missing-ca.crt: no such file or directory"),
    ({"key": None}, "TLS on the peer link needs --peer-cert, --peer-key and --peer-ca; "
                    "--peer-key missing"),
    ({"key": "other.key"}, "--peer-cert {d}/n1.crt with --peer-key {d}/other.key: not a PEM "
                           "certificate and its unencrypted key (key values mismatch)"),
    ({"ca": "n1.key"}, "--peer-ca {d}/n1.key: not a PEM certificate"),
    ({"plaintext": True}, "--peer-plaintext and --peer-cert/--peer-key/--peer-ca contradict"),
])
def test_bad_certificate_flags_are_one_line(ca, tmp_path, change, says):
    files = ca.issue("n1")
    ca.issue("other")
    given = {"cert": files.cert, "key": files.key, "ca": files.ca, "plaintext": False}
    for name, value in change.items():
        given[name] = value if value in (None, True) else str(tmp_path / value)
    with pytest.raises(ClusterRefusal) as info:
        load_peer_tls(given["cert"], given["key"], given["ca"], given["plaintext"],
                      ["127.0.0.1"])
    text = str(info.value)
    assert text.startswith(says.format(d=tmp_path)) and "\n" not in text, text
    assert "PRIVATE KEY" not in text


# -- real nodes ----------------------------------------------------------------------------------

def test_a_missing_certificate_file_is_a_refused_start_in_one_line(ca, tmp_path, pg_dsn):
    from tests.cluster.test_cli import serve
    from tests.runtime.test_cli_errors import refused

    files = ca.issue("n1")
    out = serve("--cluster", "--store", pg_dsn, "--peer-cert", str(tmp_path / "gone.crt"),
                "--peer-key", files.key, "--peer-ca", files.ca)
    refused(out, f"--peer-cert {tmp_path}/gone.crt: no such file or directory")
    out = serve("--cluster", "--store", pg_dsn, "--peer-advertise", "10.1.2.3:9100")
    refused(out, "the peer link on 10.1.2.3 is not loopback: give --peer-cert, --peer-key and "
            "--peer-ca (mutual TLS), or --peer-plaintext")


async def test_two_real_nodes_forward_over_mutual_tls(ca, pg_dsn):
    from tests.cluster.nodes import SCRIPTED, Node, balanced, threads_owned_by
    from tests.servers import token
    from threadline.transport.client import open_client

    nodes = []
    try:
        for name in ("n1", "n2"):
            nodes.append(await Node(pg_dsn, *SCRIPTED, "--lease-ttl", "3", "--node-id", name,
                                    *ca.issue(name).flags()).ready())
        a, b = nodes
        await balanced(nodes)
        (thread,) = threads_owned_by(pg_dsn, b, "ada", 1)
        async with open_client(a.url, token("ada")) as client:
            await client.join(thread)
            accepted = await client.send(thread, "sleep:0.05", client_msg_id="c-1")
            assert accepted["seq"] == 1
        assert await a.metric("threadline_cluster_forwarded_requests_total") >= 2
        for node in nodes:
            assert "(mutual TLS)" in node.logs()
            assert " refused" not in node.logs()
    finally:
        for node in nodes:
            node.kill()
