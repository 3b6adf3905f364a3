"""``GET /metrics`` over a real socket: both exposition formats parse, the figures move with a
real conversation, and a scrape costs the same however many actors and connections there are."""

from __future__ import annotations

import gc
import sys
from typing import Any, Callable

import pytest
import trio
import trio.testing
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from threadline.actors.memory_journal import MemoryJournal
from threadline.stores import open_journal
from tests.servers import http_get, serving, token
from threadline.transport.client import open_client
from threadline.transport.limits import Limits
from threadline.transport.metrics import OPENMETRICS, PROMETHEUS_TEXT, wants_openmetrics

OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"
# What Prometheus 3 sends by default.
PROMETHEUS_3_ACCEPT = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                       "application/openmetrics-text;version=0.0.1;q=0.5,"
                       "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
                       "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server, accept: str | None = None) -> tuple[Samples, list[Any]]:
    """The page parsed by prometheus_client's parser of the format it came in."""
    status, headers, body = await http_get(server, "/metrics",
                                           {"Accept": accept} if accept else None)
    assert status == 200
    if accept is not None and wants_openmetrics(accept):
        assert headers["content-type"] == OPENMETRICS
        assert body.endswith(b"# EOF\n")
        families = list(parse_openmetrics(body.decode()))
    else:
        assert headers["content-type"] == PROMETHEUS_TEXT
        families = list(parse_prometheus(body.decode()))
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in families for s in family.samples}
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def converse(client, thread: str, texts: list[str]) -> None:
    await client.join(thread)
    for text in texts:
        acc = await client.send(thread, text)
        while True:
            event = await client.next_event()
            if event["event"] == "agent_completed" and event["run_id"] == acc["run_id"]:
                break


@pytest.mark.parametrize("accept", [None, OPENMETRICS_ACCEPT, PROMETHEUS_3_ACCEPT])
async def test_the_page_parses_and_moves_with_a_conversation(server, accept):
    async with open_client(server.url, token("ada")) as client:
        await converse(client, "main", ["hi", "/calc 6*7"])
        samples, families = await scrape(server, accept)
    # 1 connection: joined, 2 sends; out: joined, 2 accepted, 4 + 6 events.
    assert value(samples, "threadline_connections_open") == 1
    assert value(samples, "threadline_connections_accepted_total") == 1
    assert value(samples, "threadline_frames_received_total") == 3
    assert value(samples, "threadline_frames_sent_total") == 13
    assert value(samples, "threadline_received_bytes_total") > 0
    assert value(samples, "threadline_events_stored_total") == 10
    assert value(samples, "threadline_runs_started_total") == 2
    assert value(samples, "threadline_runs_active") == 0
    assert value(samples, "threadline_runs_ended_total", event="agent_completed") == 2
    assert value(samples, "threadline_send_accepted_seconds_count") == 2
    assert value(samples, "threadline_send_accepted_seconds_bucket", le="+Inf") == 2
    assert value(samples, "threadline_actors_live") == 1
    assert value(samples, "threadline_actor_activations_total") == 1
    assert value(samples, "process_resident_memory_bytes") > 0
    names = [f.name for f in families]
    assert len(names) == len(set(names))  # one family per name
    for family in families:
        if family.name.startswith("threadline_"):
            assert family.documentation.endswith("]."), family.name  # the unit, in brackets
            if family.type == "gauge":
                assert not family.name.endswith(("_total", "_sum", "_count", "_bucket",
                                                 "_created", "_info")), family.name

    for _ in range(100):  # the server counts the close once its session has ended
        samples, _ = await scrape(server, accept)
        if value(samples, "threadline_connections_open") == 0:
            break
        await trio.sleep(0.05)
    assert value(samples, "threadline_connections_open") == 0
    assert value(samples, "threadline_connections_closed_total", code="1000") == 1


@pytest.mark.parametrize("accept, openmetrics", [
    (None, False),
    ("", False),
    ("text/plain", False),
    ("text/plain;version=1.0.0;escaping=allow-utf-8", False),
    ("application/openmetrics-text", True),
    ("Application/OpenMetrics-Text; version=0.0.1", True),
    (OPENMETRICS_ACCEPT, True),
    (PROMETHEUS_3_ACCEPT, True),
    ("application/openmetrics-text; version=1.0.0; q=0", False),
    ("application/openmetrics-text; version=2.0.0", False),
    ("application/openmetrics-text; version=garbage", False),  # prometheus_client raises here
    ("application/openmetrics-text; q=x; version", False),
    (";;,,=;=", False),
])
def test_content_negotiation(accept, openmetrics):
    assert wants_openmetrics(accept) is openmetrics


async def test_refusals_and_bad_frames_are_counted():
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with serving(limits=Limits(rate=5, burst=5, ping_interval=None)) as server:
        assert (await http_get(server, "/v1/ws", upgrade))[0] == 401  # no token
        assert (await http_get(server, "/nowhere"))[0] == 404
        async with open_client(server.url, token("ada")) as client:
            await client.send_raw(b"{not json", binary=False)
            for _ in range(30):  # 5 frames/s: all 30 pass only if sending them takes 5 s
                await client.send_frame({"type": "ping"})
            answers = [await client.next_unsolicited() for _ in range(31)]  # all were read
            assert answers[0]["code"] == "bad_frame"
            samples, _ = await scrape(server, OPENMETRICS_ACCEPT)
    assert value(samples, "threadline_handshakes_refused_total", status="401") == 1
    assert value(samples, "threadline_handshakes_refused_total", status="404") == 1
    assert value(samples, "threadline_auth_failures_total", reason="missing token") == 1
    assert value(samples, "threadline_bad_frames_total") == 1
    assert value(samples, "threadline_rate_limited_frames_total") >= 1
    assert value(samples, "threadline_frames_received_total") == 31


async def test_a_malformed_accept_header_gets_the_text_format(server):
    for accept in ["application/openmetrics-text; version=garbage", "text/plain; version=x.y",
                   ";;,,=;="]:
        status, headers, body = await http_get(server, "/metrics", {"Accept": accept})
        assert status == 200 and headers["content-type"] == PROMETHEUS_TEXT
        list(parse_prometheus(body.decode()))
    assert (await http_get(server, "/healthz"))[0] == 200  # the server is still up


async def test_a_durable_store_shows_its_commits(tmp_path):
    async with open_journal(f"sqlite:///{tmp_path}/t.db") as journal:
        async with serving(journal=journal) as server:
            async with open_client(server.url, token("ada")) as client:
                await converse(client, "main", ["hi"])
            samples, _ = await scrape(server, OPENMETRICS_ACCEPT)
            snapshot = server.runtime.statistics()  # nothing writes now: the same figures
    batches, operations = snapshot.store.transactions, snapshot.store.operations
    assert (snapshot.runs_started, snapshot.runs_active, snapshot.actors_live) == (1, 0, 1)
    assert dict(snapshot.runs_ended) == {"agent_completed": 1}
    assert value(samples, "threadline_events_stored_total") == snapshot.events_stored >= 4
    assert value(samples, "threadline_store_transactions_total") == batches >= 1
    assert value(samples, "threadline_store_operations_total") == operations >= 4
    assert value(samples, "threadline_store_commit_seconds_count") == batches
    assert value(samples, "threadline_store_batch_operations_count") == batches
    assert value(samples, "threadline_store_batch_operations_sum") == operations
    assert value(samples, "threadline_store_outages_total") == 0
    assert value(samples, "threadline_store_rejected_total") == 0
    assert value(samples, "threadline_run_duration_seconds_count") == 1


async def test_the_memory_store_shows_no_store_figures(server):
    samples, _ = await scrape(server)
    assert not [name for name, _ in samples if name.startswith("threadline_store_")]


def calls_made_by(render: Callable[[], object]) -> int:
    """How many Python and C functions ``render`` called: a cost that does not depend on the
    machine's speed (a walk over N actors makes at least N calls)."""
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    # A collection in the middle would run finalizers (trio's async generator hooks, say):
    # calls that are not the scrape's.
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    sys.setprofile(profile)
    try:
        render()
    finally:
        sys.setprofile(None)
        if enabled:
            gc.enable()
    return calls


async def test_a_scrape_costs_the_same_with_5000_actors_and_more_connections(server):
    metrics, rt = server.server.metrics, server.runtime
    async with open_client(server.url, token("ada")) as client:
        await converse(client, "main", ["hi"])
        before = {}
        for accept in (None, OPENMETRICS_ACCEPT):
            metrics.render(accept)  # warm: imports and caches of a first call
            before[accept] = calls_made_by(lambda: metrics.render(accept))
            assert calls_made_by(lambda: metrics.render(accept)) == before[accept]  # repeatable
        for i in range(5000):
            await rt.user("bulk").thread(f"t{i}").info()  # activates the actor
        assert len(rt.gateway.directory) == 5001
        async with open_client(server.url, token("bob")) as other, \
                open_client(server.url, token("cy")) as third:
            await other.join("main")
            await third.join("main")
            for accept in (None, OPENMETRICS_ACCEPT):
                assert calls_made_by(lambda: metrics.render(accept)) == before[accept], accept


async def test_mailbox_messages_count_what_waits_in_the_mailboxes():
    class SlowStart(MemoryJournal):
        """A real memory journal whose threads load only once ``gate`` opens."""

        def __init__(self) -> None:
            super().__init__()
            self.gate = trio.Event()

        async def ensure_thread(self, key, now):
            await self.gate.wait()
            return await super().ensure_thread(key, now)

    journal = SlowStart()
    async with serving(journal=journal) as server:
        thread = server.runtime.thread("ada", "main")
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(thread.info)  # queued: the actor is still loading
            await trio.testing.wait_all_tasks_blocked()
            samples, _ = await scrape(server)
            assert value(samples, "threadline_mailbox_messages") == 3
            journal.gate.set()
        samples, _ = await scrape(server)
        assert value(samples, "threadline_mailbox_messages") == 0
        assert server.runtime.statistics().mailbox_messages == 0
