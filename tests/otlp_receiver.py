"""A real OTLP/HTTP trace receiver for the tests and the tracing bench: trio, h11, loopback.

    async with open_otlp_receiver() as receiver:   # then OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=
        ...                                         # receiver.endpoint
        assert "send" in receiver.names()

``python -m tests.otlp_receiver [--keep]`` runs one in a process of its own (the bench's) and
prints ``ready: PORT``; ``GET /stats`` answers its counts as JSON.

Invariants:

- 127.0.0.1, a free port, real HTTP/1.1 through h11 (keep-alive, as the SDK's exporter uses
  it). ``POST /v1/traces`` with ``Content-Type: application/x-protobuf`` (gzip or not, as
  ``Content-Encoding`` says) is parsed as an ``ExportTraceServiceRequest``: each span is kept in
  ``receiver.spans`` in arrival order (unless ``keep=False``: counted only) and the answer is
  200 with an empty ``ExportTraceServiceResponse``. Another content type: 415; a body that is
  not one: 400; another path: 404. Nothing refused is kept.
- Bounded: bodies up to ``MAX_BODY`` bytes (larger: 413 and the connection closes),
  ``MAX_REQUESTS`` per connection, ``IDLE_TIMEOUT`` s for a request to arrive; leaving
  ``open_otlp_receiver`` closes every connection.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, AsyncIterator, Callable

import attrs
import h11
import trio
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

PATH = b"/v1/traces"
MAX_BODY = 32 << 20
MAX_REQUESTS = 10_000
IDLE_TIMEOUT = 60.0
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@attrs.frozen
class ReceivedSpan:
    """One span as it arrived: ids in lower-case hex (``parent_span_id`` None for a root)."""
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    events: tuple[str, ...]
    resource: dict[str, Any]


def _value(v: Any) -> Any:
    """An ``AnyValue`` as Python: arrays as tuples, key-value lists as dicts."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def spans_of(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(ReceivedSpan(
                    s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex() or None,
                    KINDS.get(s.kind, str(s.kind)), _attributes(s.attributes), s.status.code,
                    tuple(e.name for e in s.events), resource))
    return out


class OTLPReceiver:
    """The running receiver: ``endpoint``, ``spans``, ``requests``, ``span_count``."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.port = 0
        self.spans: list[ReceivedSpan] = []
        self.requests = 0     # exports accepted
        self.span_count = 0   # spans in them
        self.refused = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def names(self) -> list[str]:
        return [s.name for s in self.spans]

    async def wait_for(self, condition: Callable[[list[ReceivedSpan]], bool],
                       timeout: float = 15.0) -> list[ReceivedSpan]:
        """Until ``condition(spans)`` holds (polled; ``trio.TooSlowError`` after ``timeout``)."""
        with trio.fail_after(timeout):
            while not condition(self.spans):
                await trio.sleep(0.02)
        return self.spans

    def _answer(self, method: bytes, target: bytes, headers: dict[bytes, bytes],
                body: bytes) -> tuple[int, str, bytes]:
        if method == b"GET" and target == b"/stats":
            return 200, "application/json", json.dumps(
                {"requests": self.requests, "spans": self.span_count,
                 "refused": self.refused}).encode()
        if (method, target) != (b"POST", PATH):
            return 404, "text/plain", b"not found"
        if headers.get(b"content-type", b"").split(b";")[0].strip() != b"application/x-protobuf":
            self.refused += 1
            return 415, "text/plain", b"application/x-protobuf only"
        try:
            if headers.get(b"content-encoding", b"").strip().lower() == b"gzip":
                body = gzip.decompress(body)
            spans = spans_of(ExportTraceServiceRequest.FromString(body))
        except (DecodeError, OSError, EOFError):
            self.refused += 1
            return 400, "text/plain", b"not an ExportTraceServiceRequest"
        self.requests += 1
        self.span_count += len(spans)
        if self.keep:
            self.spans.extend(spans)
        return 200, "application/x-protobuf", ExportTraceServiceResponse().SerializeToString()

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        async with stream:
            try:
                for _ in range(MAX_REQUESTS):
                    with trio.move_on_after(IDLE_TIMEOUT):
                        received = await _receive(stream, conn)
                    if received is None:
                        return
                    if isinstance(received, int):  # too large
                        await _send(stream, conn, received, "text/plain", b"too large")
                        return
                    status, kind, payload = self._answer(*received)
                    await _send(stream, conn, status, kind, payload)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
                return


async def _receive(stream: trio.SocketStream, conn: h11.Connection,
                   ) -> tuple[bytes, bytes, dict[bytes, bytes], bytes] | int | None:
    """One request: method, target, headers (names lower-case), body; 413 for a body over
    ``MAX_BODY``; None when the client left."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data and conn.their_state is h11.IDLE:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return 413
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head.method, head.target, {k.lower(): v for k, v in head.headers}, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _send(stream: trio.SocketStream, conn: h11.Connection, status: int, kind: str,
                payload: bytes) -> None:
    headers = [("content-type", kind), ("content-length", str(len(payload)))]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers))
                          + conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))


@asynccontextmanager
async def open_otlp_receiver(keep: bool = True) -> AsyncIterator[OTLPReceiver]:
    receiver = OTLPReceiver(keep)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, receiver.serve_connection, 0,
                                                host="127.0.0.1"))
        receiver.port = listeners[0].socket.getsockname()[1]
        try:
            yield receiver
        finally:
            nursery.cancel_scope.cancel()


async def _serve_forever(keep: bool) -> None:
    async with open_otlp_receiver(keep) as receiver:
        print(f"ready: {receiver.port}", flush=True)
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.otlp_receiver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the spans (else counted)")
    args = parser.parse_args(argv)
    try:
        trio.run(_serve_forever, args.keep)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
