"""The baseline: a bare WebSocket echo server on the same engine as threadline's (the websockets
Sans-I/O protocol driven by trio streams, through the same connection adapter), with nothing
else: no auth, no actors, no journal. ``python -m bench.echo_server --port 0`` prints
``ready: PORT``."""

from __future__ import annotations

import argparse
import sys

import trio
from websockets.frames import Frame
from websockets.server import ServerProtocol

from threadline.tuning import tune_gc
from threadline.transport.connection import WebSocketConnection
from websockets.http11 import Request


async def echo(stream: trio.SocketStream) -> None:
    conn = WebSocketConnection(stream, ServerProtocol(subprotocols=["threadline.v1.json"]))
    try:
        while not conn.eof:
            for event in await conn.receive():
                if isinstance(event, Request):
                    conn.protocol.send_response(conn.protocol.accept(event))
                elif isinstance(event, Frame):
                    message = conn.assemble(event)
                    if message is not None:
                        payload = message[1]  # text arrives decoded (UTF-8 checked), as ours
                        conn.write(payload.encode() if isinstance(payload, str) else payload,
                                   binary=message[0])
            await conn.flush()
            if not conn.open and conn.protocol.state.name != "CONNECTING":
                break
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await conn.aclose()


async def main(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print(f"ready: {listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(echo, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    tune_gc()
    try:
        trio.run(main, parser.parse_args().port)
    except KeyboardInterrupt:
        sys.exit(0)
