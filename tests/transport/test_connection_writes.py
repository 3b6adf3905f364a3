"""``WebSocketConnection.flush`` writes everything pending in as few ``send_all`` calls as it
can (the frames before a half-close joined), in order; a half-close stays where it was."""

from __future__ import annotations

import trio
import trio.testing
from websockets.frames import Close, Opcode
from websockets.protocol import Protocol, Side, State

from threadline.transport.connection import WebSocketConnection, _joined


def test_joined_keeps_the_order_and_the_half_close_markers() -> None:
    assert _joined([]) == []
    assert _joined([b"a"]) == [b"a"]
    assert _joined([b""]) == [b""]
    assert _joined([b"a", b"b", b"c"]) == [b"abc"]
    assert _joined([b"a", b"b", b"", b"c"]) == [b"ab", b"", b"c"]
    assert _joined([b"", b"a", b"b"]) == [b"", b"ab"]


async def test_a_flush_of_many_frames_is_one_write_and_the_peer_reads_them_all() -> None:
    sent: list[bytes] = []
    stream = trio.testing.MemorySendStream()

    async def record() -> None:
        sent.append(stream.get_data_nowait())

    stream.send_all_hook = record
    server = Protocol(Side.SERVER, state=State.OPEN)
    conn = WebSocketConnection(stream, server)  # type: ignore[arg-type]  # writes only
    for n in range(5):
        conn.write(f"frame {n}".encode(), binary=False)
    server.send_close(1000, "bye")
    await conn.flush()
    assert len(sent) == 1  # five frames and the close frame: one write
    client = Protocol(Side.CLIENT, state=State.OPEN)
    client.receive_data(sent[0])
    frames = client.events_received()
    assert [f.data for f in frames[:5]] == [f"frame {n}".encode() for n in range(5)]
    assert frames[5].opcode is Opcode.CLOSE
    assert Close.parse(frames[5].data).code == 1000


async def test_a_socket_that_takes_part_of_a_flush_gets_the_rest_when_the_peer_reads() -> None:
    """On a real loopback socket: a flush bigger than the socket's buffers writes what the
    socket takes at once, then waits for the peer to read; the peer gets every byte in order.
    Once the connection is closed, nothing is written to its old descriptor."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server_stream = await listeners[0].accept()
    server = Protocol(Side.SERVER, state=State.OPEN)
    conn = WebSocketConnection(server_stream, server)
    payloads = [bytes([65 + n % 26]) * 200_000 for n in range(40)]  # 8 MB: more than buffers
    for payload in payloads:
        conn.write(payload, binary=True)
    peer = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    got: list[bytes] = []
    flushed = trio.Event()

    async def flush() -> None:
        await conn.flush()
        flushed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush)
        await trio.sleep(0.05)
        assert not flushed.is_set()  # the flush waits: the peer has read nothing yet
        while len(got) < len(payloads):
            peer.receive_data(await client.receive_some(1 << 20))
            got.extend(f.data for f in peer.events_received())
    assert got == payloads
    await conn.aclose()
    assert conn._send_now(b"late") == 0  # closed: its descriptor is -1, never a reused one
    await client.aclose()
    for listener in listeners:
        await listener.aclose()


async def test_reads_on_a_real_socket_see_every_frame_then_the_end() -> None:
    """``receive`` on a loopback socket (one wait, one read each): a frame split across two
    writes comes whole, and the peer's close is seen as the end of the stream."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    conn = WebSocketConnection(await listeners[0].accept(), Protocol(Side.SERVER, state=State.OPEN))
    peer = Protocol(Side.CLIENT, state=State.OPEN)
    peer.send_text(b"hello" * 1000)
    data = b"".join(peer.data_to_send())
    frames: list[bytes] = []
    await client.send_all(data[:100])
    while not frames:
        frames += [f.data for f in await conn.receive()]  # type: ignore[union-attr]
        if not frames:
            await client.send_all(data[100:])
    assert frames == [b"hello" * 1000]
    await client.aclose()
    while not conn.eof:
        await conn.receive()
    await conn.aclose()
    for listener in listeners:
        await listener.aclose()


async def test_frames_read_with_the_handshake_answer_reach_the_client() -> None:
    """The server's 101 and its first frames in one write (a refusal and its close, sent at
    once): the client's handshake returns, and its next read has those frames, in order."""
    from websockets.server import ServerProtocol

    from threadline.transport.client_connect import handshake

    client_side, server_side = trio.testing.memory_stream_pair()
    server = ServerProtocol()

    async def serve() -> None:
        while True:
            server.receive_data(await server_side.receive_some())
            requests = server.events_received()
            if requests:
                break
        server.send_response(server.accept(requests[0]))
        server.send_text(b'{"type":"error","code":"limit_reached","message":"full"}')
        server.send_close(1008, "full")
        await server_side.send_all(b"".join(server.data_to_send()))  # one write

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        conn = await handshake(client_side, "ws://in-memory/v1/ws", None)
    with trio.fail_after(5):  # without them, the read would wait for more that never comes
        frames = await conn.receive()
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CLOSE]  # type: ignore[union-attr]
    assert not conn.open
