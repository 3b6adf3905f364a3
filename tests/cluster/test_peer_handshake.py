"""The server's side of the peer link's handshake, spoken by hand over loopback: what a
connection that has not proved the secret gets (a warning and a close; small frames; one of a
few slots)."""

import logging
import os

import pytest
import trio

from tests.cluster.test_peers import LOGGER, SECRET, Owner, serving, wait_for
from threadline.cluster import peer_server
from threadline.cluster.peer_server import PeerServer
from threadline.cluster.wire import (HANDSHAKE_FRAME, NONCE_BYTES, Call, Challenge, FrameDecoder,
                                     Hello, Info, Proof, encode)


# -- the server's side of the handshake, spoken by hand -------------------------------------------

async def call_first(stream: trio.SocketStream) -> None:
    await stream.send_all(encode(Call(1, "ada", "t-1", Info())))


async def hello(stream: trio.abc.Stream, name: str) -> Challenge:
    """Say hello as ``name``; the server's challenge (the server is node "owner")."""
    await stream.send_all(encode(Hello(name, os.urandom(NONCE_BYTES))))
    decoder, messages = FrameDecoder(), []
    with trio.fail_after(10):
        for _ in range(100):
            messages += decoder.feed(await stream.receive_some(65536))
            if messages:
                break
    assert type(messages[0]) is Challenge and messages[0].node_id == "owner"
    return messages[0]


async def wrong_proof(stream: trio.SocketStream) -> None:
    await hello(stream, "forger")
    await stream.send_all(encode(Proof(os.urandom(32))))


@pytest.mark.parametrize("speak, timeout, warning", [
    (call_first, 5.0, "it sent a Call, not a hello"),
    (wrong_proof, 5.0, "node 'forger' gave no proof or a wrong one"),
    (None, 0.2, "no handshake within 0.2 s"),
], ids=["call-first", "wrong-proof", "silent"])
async def test_a_peer_without_a_good_handshake_is_closed_with_a_warning(caplog, speak, timeout,
                                                                         warning):
    caplog.set_level(logging.WARNING, LOGGER)
    async with serving(Owner(), handshake_timeout=timeout) as served:
        async with await trio.open_tcp_stream(*served.address) as stream:
            if speak is not None:
                await speak(stream)
            with trio.fail_after(10):  # the server closes it: an end, or a reset
                try:
                    assert await stream.receive_some(65536) == b""
                except trio.BrokenResourceError:
                    pass
        await wait_for(lambda: caplog.records, "a warning")
    [record] = caplog.records
    text = record.getMessage()
    assert record.levelno == logging.WARNING and warning in text and "from 127.0.0.1:" in text


async def test_a_stranger_gets_small_frames_and_few_slots_before_the_handshake():
    server = PeerServer("owner", SECRET, Owner().handle, handshake_timeout=5)
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(server.serve, await trio.open_tcp_listeners(
            0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        # A frame announced larger than a handshake needs: closed at once, before its body.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all((HANDSHAKE_FRAME + 1).to_bytes(4, "big"))
        with trio.fail_after(5):
            assert await stream.receive_some(10) == b""
        # Past MAX_HANDSHAKING connections still in their handshake, the next is closed.
        idle = [await trio.open_tcp_stream("127.0.0.1", port)
                for _ in range(peer_server.MAX_HANDSHAKING)]
        await trio.sleep(0.2)
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await extra.receive_some(10) == b""
        for s in [stream, extra, *idle]:
            await s.aclose()
        nursery.cancel_scope.cancel()
