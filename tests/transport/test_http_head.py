"""HEAD is GET without the body wherever GET is served (the HTTP API's reads, /v1/auth/check,
/healthz, /metrics, the static files, the page), and a 405 lists HEAD wherever it lists GET;
over real loopback sockets, read byte for byte (an h11 client would hide a body sent by
mistake)."""

from __future__ import annotations

import pytest

from tests.servers import http, serving, token
from tests.transport.test_http_api import until_terminal
from tests.transport.wire import raw_http

ADA = token("ada")


def parsed(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and every byte after the head."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields, body


async def ask(port: int, method: str, path: str, tok: str | None = None) -> tuple[
        int, dict[str, str], bytes]:
    auth = f"Authorization: Bearer {tok}\r\n" if tok else ""
    return parsed(await raw_http(port, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                       f"{auth}\r\n".encode()))


async def test_head_is_get_without_the_body_on_every_get_route():
    async with serving(demo=True) as server:
        _, _, acc = await http(server, "POST", "/v1/threads/main/messages", tok=ADA,
                               body={"text": "hello"})
        await until_terminal(server, ADA, "main", acc["run_id"])  # nothing changes after
        for path, tok in [("/healthz", None), ("/v1/client.js", None),
                          ("/v1/client.d.ts", None), ("/", None),
                          (f"/v1/auth/check?token={ADA}", None), ("/v1/auth/check", "bad"),
                          ("/v1/threads", ADA), ("/v1/threads/main", ADA),
                          ("/v1/threads/main/events?limit=3", ADA), ("/v1/threads/none", ADA),
                          ("/v1/nowhere", ADA)]:
            got = await ask(server.port, "GET", path, tok)
            status, fields, body = await ask(server.port, "HEAD", path, tok)
            assert (status, fields) == got[:2], path
            assert body == b"" and int(fields["content-length"]) == len(got[2]) > 0, path


async def test_head_of_metrics_here_and_on_the_metrics_address():
    async with serving(metrics_address=("127.0.0.1", 0)) as server:
        for path in ("/metrics", "/healthz"):
            status, fields, body = await ask(server.metrics_port, "HEAD", path)
            assert (status, body) == (200, b"") and int(fields["content-length"]) > 0
        status, fields, _ = await ask(server.metrics_port, "POST", "/metrics")
        assert (status, fields["allow"]) == (405, "GET, HEAD")
    async with serving() as server:
        status, fields, body = await ask(server.port, "HEAD", "/metrics")
        assert (status, body) == (200, b"") and int(fields["content-length"]) > 0


@pytest.mark.parametrize("method, path, allow", [
    ("POST", "/healthz", "GET, HEAD"),
    ("DELETE", "/v1/client.js", "GET, HEAD"),
    ("PUT", "/v1/threads/main", "GET, HEAD, DELETE, OPTIONS"),
    ("POST", "/v1/threads", "GET, HEAD, OPTIONS"),
    ("POST", "/v1/auth/check", "GET, HEAD, OPTIONS"),
    ("HEAD", "/v1/threads/main/messages", "POST, OPTIONS"),
    ("HEAD", "/v1/ws", "GET"),  # only a GET upgrade is a WebSocket
])
async def test_a_405_lists_head_wherever_get_is_allowed(server, method, path, allow):
    status, fields, body = await ask(server.port, method, path, ADA)
    assert (status, fields["allow"]) == (405, allow)
    assert (body == b"") == (method == "HEAD")
