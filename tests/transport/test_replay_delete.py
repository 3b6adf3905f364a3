"""A thread deleted while another connection replays it ends that join with ``left`` {reason:
deleted}, and the connection stays open (PROTOCOL.md): never 1011.

The race: the store commits the delete, a replay page is read before the thread actor has told
its subscribers, and finds nothing. Real SQLite store, real sockets on loopback; small replay
pages (``REPLAY_PAGE``) make the replay long, so the delete lands in it; each try is bounded,
and so is their number. Without the fix, about one try in four closed with 1011.
"""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from threadline.actors import journal as journal_module
from threadline.actors.messages import Event, ThreadKey
from threadline.stores import open_journal
from tests.servers import http, serving, token

EVENTS = 1500
TRIES = 12


async def fill(journal, key: ThreadKey) -> None:
    await journal.ensure_thread(key, 1.0)
    for start in range(0, EVENTS, 500):
        await journal.append([Event(key, seq, "agent_thinking", "run_1", 1.0 + seq,
                                    {"text": f"step {seq} " + "x" * 200})
                              for seq in range(start + 1, min(EVENTS, start + 500) + 1)])


async def replay_and_delete(server, thread_id: str) -> tuple[list[int], dict, bool]:
    """Join with since=0, delete over HTTP once some events came; the seqs written before
    ``left``, the ``left`` frame, and whether a ping was still answered after it."""
    tok = token("ada")
    seqs: list[int] = []
    with trio.fail_after(30):
        async with open_websocket_url(f"{server.url}?token={tok}") as ws:
            await ws.send_message(json.dumps({"type": "join", "thread_id": thread_id,
                                              "since": 0, "ref": "j"}))
            deleted = trio.Event()

            async def delete() -> None:
                status, _, _ = await http(server, "DELETE", f"/v1/threads/{thread_id}", tok=tok)
                assert status == 200
                deleted.set()

            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        frame = json.loads(await ws.get_message())
                    except ConnectionClosed as exc:
                        pytest.fail(f"connection closed during the replay: {exc.reason}")
                    if frame["type"] == "event":
                        seqs.append(frame["seq"])
                        if len(seqs) == 30:
                            nursery.start_soon(delete)
                    elif frame["type"] == "left":
                        left = frame
                        break
                    else:
                        assert frame["type"] == "joined", frame
                await deleted.wait()
            await ws.send_message(json.dumps({"type": "ping", "ref": "p"}))
            pong = json.loads(await ws.get_message())
            return seqs, left, pong == {"type": "pong", "ref": "p"}


async def test_a_delete_during_a_replay_ends_that_join_with_left(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "REPLAY_PAGE", 5)  # a long replay: 300 pages
    async with open_journal(f"sqlite:///{tmp_path}/replay.db") as journal:
        async with serving(journal=journal) as server:
            cut_short = 0
            for attempt in range(TRIES):
                thread_id = f"t{attempt}"
                await fill(journal, ThreadKey("ada", thread_id))
                seqs, left, answered = await replay_and_delete(server, thread_id)
                assert left == {"type": "left", "thread_id": thread_id, "reason": "deleted"}
                assert answered  # the connection stayed open
                assert seqs == list(range(1, len(seqs) + 1))  # gapless up to the delete
                cut_short += len(seqs) < EVENTS
                assert await journal.thread_info(ThreadKey("ada", thread_id)) is None
            assert cut_short > 0  # the delete did land in replays
