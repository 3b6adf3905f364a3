"""Paging cursors carry a MAC over (user, position): a forged, altered or another user's cursor
is refused (400 / ``bad_frame``), over HTTP and over the WebSocket. Pages of a user's threads
are keyset pages read from the store; pages of the HTTP history are bounded in bytes by the
store's read. Real servers, real SQLite stores, loopback sockets."""

from __future__ import annotations

import base64
import json

import pytest
import trio
from trio_websocket import open_websocket_url

from threadline import open_runtime
from threadline.actors.messages import Event, ThreadKey
from threadline.stores import open_journal
from threadline.transport import paging
from threadline.transport.auth import Authenticator
from threadline.transport.messages import BadFrame
from threadline.transport.paging import (PROCESS_KEY, CursorKey, read_events_page,
                                         read_threads_page)
from tests.servers import SECRET, http, serving, token


def old_style(updated_at: float, thread_id: str) -> str:
    """A well-formed cursor without a MAC, as this server gave before cursors had one."""
    raw = json.dumps([updated_at, thread_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- the key and the MAC ------------------------------------------------------------------------

def test_a_cursor_opens_only_for_its_user_and_its_key():
    key = CursorKey.of(Authenticator(secret=SECRET))
    cursor = key.seal("ada", (12.5, "main"))
    assert key.open("ada", cursor) == (12.5, "main")
    with pytest.raises(BadFrame):
        key.open("bob", cursor)  # made for another user
    other = CursorKey.of(Authenticator(secret="another secret, as long as the other one"))
    with pytest.raises(BadFrame):
        other.open("ada", cursor)
    body, _, mac = cursor.partition(".")
    forged = base64.urlsafe_b64encode(b'[99.0,"main"]').decode().rstrip("=")
    for bad in (f"{forged}.{mac}", body, f"{body}.", old_style(12.5, "main"), f"{body}.{mac}x",
                f"{body}.{'A' * 22}", "é." + mac, "", "." * 600):
        with pytest.raises(BadFrame):
            key.open("ada", bad)


def test_the_key_comes_from_the_token_secret_and_survives_a_restart():
    # Two Authenticators with one secret: two processes, or two nodes of a cluster.
    first, second = CursorKey.of(Authenticator(secret=SECRET)), CursorKey.of(
        Authenticator(secret=SECRET))
    assert first == second and first != PROCESS_KEY
    assert second.open("ada", first.seal("ada", (1.0, "t"))) == (1.0, "t")
    assert first.key != SECRET.encode()  # derived with a label, never the secret itself


# -- over HTTP and the WebSocket, through the server's own calls --------------------------------

async def make_threads(server, user: str, names: list[str]) -> None:
    for name in names:
        status, _, _ = await http(server, "POST", f"/v1/threads/{name}/messages",
                                  tok=token(user), body={"text": name})
        assert status == 200


async def test_http_refuses_forged_and_other_users_cursors():
    async with serving() as server:
        await make_threads(server, "ada", ["a1", "a2", "a3"])
        await make_threads(server, "bob", ["b1", "b2"])
        _, _, page = await http(server, "GET", "/v1/threads?limit=1", tok=token("ada"))
        ada_cursor = page["next_cursor"]
        _, _, page = await http(server, "GET", "/v1/threads?limit=1", tok=token("bob"))
        bob_cursor = page["next_cursor"]
        assert ada_cursor and bob_cursor
        for tok, cursor in ((token("ada"), bob_cursor), (token("bob"), ada_cursor),
                            (token("ada"), old_style(1e12, "zzz"))):
            status, _, answer = await http(server, "GET", f"/v1/threads?before={cursor}",
                                           tok=tok)
            assert (status, answer["code"]) == (400, "bad_frame")
        status, _, page = await http(server, "GET", f"/v1/threads?limit=5&before={ada_cursor}",
                                     tok=token("ada"))
        assert status == 200 and len(page["threads"]) == 2


async def test_a_walk_with_limit_1_lists_every_thread_once():
    async with serving() as server:
        names = [f"t{n}" for n in range(7)]
        await make_threads(server, "ada", names)
        seen, cursor = [], None
        for _ in range(len(names) + 1):  # bounded: one thread a page
            query = "limit=1" + (f"&before={cursor}" if cursor else "")
            status, _, page = await http(server, "GET", f"/v1/threads?{query}", tok=token("ada"))
            assert status == 200
            seen += [t["thread_id"] for t in page["threads"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == names and len(seen) == len(names)


async def test_the_websocket_refuses_a_forged_cursor():
    async with serving() as server:
        await make_threads(server, "ada", ["a1", "a2"])
        await make_threads(server, "bob", ["b1", "b2"])
        _, _, page = await http(server, "GET", "/v1/threads?limit=1", tok=token("bob"))
        with trio.fail_after(10):
            async with open_websocket_url(f"{server.url}?token={token('ada')}") as ws:
                for ref, cursor in (("f", old_style(1e12, "zzz")), ("o", page["next_cursor"])):
                    await ws.send_message(json.dumps({"type": "threads", "ref": ref,
                                                      "cursor": cursor}))
                    answer = json.loads(await ws.get_message())
                    assert (answer["type"], answer["code"], answer["ref"]) == \
                        ("error", "bad_frame", ref)
                await ws.send_message(json.dumps({"type": "threads", "ref": "ok", "limit": 1}))
                answer = json.loads(await ws.get_message())
                assert answer["type"] == "threads" and answer["next_cursor"]


# -- the store's pages -------------------------------------------------------------------------

async def test_read_threads_page_walks_a_store_by_keyset(tmp_path):
    key = CursorKey.of(Authenticator(secret=SECRET))
    async with open_journal(f"sqlite:///{tmp_path}/pages.db") as journal:
        for n in range(9):
            await journal.ensure_thread(ThreadKey("ada", f"t{n}"), float(n // 3))  # ties
        await journal.ensure_thread(ThreadKey("bob", "b"), 100.0)
        async with open_runtime(journal=journal) as rt:
            user = rt.gateway.user("ada")
            first, cursor = await read_threads_page(user, 4, None, key)
            assert [t["thread_id"] for t in first] == ["t8", "t7", "t6", "t5"]
            assert await journal.delete_thread(ThreadKey("ada", "t5"))  # the cursor's own
            assert await journal.delete_thread(ThreadKey("ada", "t3"))
            second, cursor2 = await read_threads_page(user, 4, cursor, key)
            assert [t["thread_id"] for t in second] == ["t4", "t2", "t1", "t0"]
            assert cursor2 is None
            with pytest.raises(BadFrame):  # bob cannot use it
                await read_threads_page(rt.gateway.user("bob"), 4, cursor, key)
            with pytest.raises(BadFrame):  # nor another key
                await read_threads_page(user, 4, cursor)


async def test_an_http_history_page_holds_a_bounded_number_of_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(paging, "PAGE_BYTES", 250_000)
    key = ThreadKey("ada", "big")
    async with open_journal(f"sqlite:///{tmp_path}/big.db") as journal:
        await journal.ensure_thread(key, 1.0)
        await journal.append([Event(key, seq, "agent_thinking", "r", 1.0, {"text": "x" * 100_000})
                              for seq in range(1, 8)])
        async with open_runtime(journal=journal) as rt:
            thread = rt.gateway.user("ada").thread("big")
            seen, after = [], 0
            for _ in range(8):  # bounded: at least one event a page
                frames, next_after = await read_events_page(thread, after, 1000, 7)
                assert 1 <= len(frames) <= 2  # 2 of 100 KB fit in 250 KB, 3 do not
                seen += [f["seq"] for f in frames]
                if next_after is None:
                    break
                after = next_after
            assert seen == list(range(1, 8))
