"""``threadline serve --otel``, as an operator runs it: configured by the standard ``OTEL_*``
variables only, its spans reach a real OTLP/HTTP receiver on loopback, a client's
``traceparent`` on ``send`` is the trace they belong to, and the spans of the last run are
exported when the server stops (SIGTERM). Without the flag nothing is exported."""

from __future__ import annotations

import signal

import trio

from tests.otlp_receiver import open_otlp_receiver
from tests.servers import ServeProcess, token, until_run_ends
from threadline.transport.client import open_client

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"


async def calc(url: str) -> None:
    async with open_client(url, token("ada")) as client:
        await client.join("main")
        accepted = await client.request({"type": "send", "thread_id": "main",
                                         "text": "/calc 6*7", "traceparent": TRACEPARENT})
        await until_run_ends(client, accepted["run_id"])


async def test_serve_with_otel_exports_the_runs_spans_over_otlp_http(tmp_path):
    async with open_otlp_receiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
               "OTEL_SERVICE_NAME": "threadline-test"}
        server = ServeProcess("--otel", "--store", f"sqlite:///{tmp_path}/t.db", env=env)
        try:
            await calc(await server.ready())
            server.signal(signal.SIGTERM)  # the batch processor's spans go at shutdown
            assert await server.wait() == 0
        finally:
            server.kill()
        spans = await receiver.wait_for(lambda s: {"send", "invoke_agent echo_agent",
                                                   "execute_tool calculator"} <= {x.name for x in s})
    by_name = {s.name: s for s in spans}
    assert by_name["send"].trace_id == TRACE  # the client's trace, continued
    assert by_name["send"].resource["service.name"] == "threadline-test"
    assert by_name["invoke_agent echo_agent"].parent_span_id == by_name["send"].span_id
    assert by_name["execute_tool calculator"].parent_span_id == \
        by_name["invoke_agent echo_agent"].span_id


async def test_serve_without_otel_exports_nothing(tmp_path):
    async with open_otlp_receiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}
        server = ServeProcess("--store", f"sqlite:///{tmp_path}/t.db", env=env)
        try:
            await calc(await server.ready())
            server.signal(signal.SIGTERM)
            assert await server.wait() == 0
        finally:
            server.kill()
        await trio.sleep(0.2)
        assert receiver.requests == 0 and receiver.spans == []
