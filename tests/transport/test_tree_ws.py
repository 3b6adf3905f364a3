"""The conversation tree over real WebSockets on loopback (PROTOCOL.md 1.1, "The conversation
tree"), on the memory store and on SQLite: an edit (a ``send`` with the ``parent`` of an
earlier message) makes a sibling; ``regenerate`` runs the agent again for a message (its
``accepted.seq`` is the ``answer_requested``'s, the new run's ``agent_started`` names the
message, the echo agent answers the original text); ``not_found`` for a message or a parent
that is not the thread's, the connection kept; idempotent retries of both; every strategy of a
regenerate while the thread's run waits; the default parent under queued sends; and ``join``
with ``since`` replaying every branch in seq order."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.servers import serving, token
from threadline.stores import open_journal
from threadline.transport.client import (BadFrame, Busy, NotFound, NotJoined, open_client)

ADA, BOB = token("ada"), token("bob")
TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


@pytest.fixture(params=["memory", "sqlite"])
async def tree_server(request, tmp_path):
    url = "memory" if request.param == "memory" else f"sqlite:///{tmp_path}/tree.db"
    async with open_journal(url) as journal, serving(journal=journal) as server:
        yield server


def plain(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without the ``ref`` its request got."""
    return {k: v for k, v in answer.items() if k != "ref"}


async def until(client, done, timeout: float = 20) -> list[dict[str, Any]]:
    """Event frames up to and including the first for which ``done(frame)``; at most 200."""
    seen: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        for _ in range(200):
            seen.append(await client.next_event(timeout=timeout))
            if done(seen[-1]):
                return seen
    raise AssertionError(f"not done after {seen}")


async def run_of(client, run_id: str) -> list[dict[str, Any]]:
    """Events up to and including the terminal event of ``run_id``."""
    return await until(client, lambda f: f["event"] in TERMINAL and f["run_id"] == run_id)


async def nothing_more(client, wait: float = 0.3) -> None:
    with pytest.raises(trio.TooSlowError):
        await client.next_event(timeout=wait)


def of_run(frames: list[dict[str, Any]], run_id: str) -> list[tuple[str, Any]]:
    return [(f["event"], f["data"]) for f in frames if f["run_id"] == run_id]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_an_edit_is_a_sibling_and_the_old_branch_stays(tree_server, encoding):
    with trio.fail_after(60):
        async with open_client(tree_server.url, ADA, encoding=encoding) as c:
            await c.join("main")
            hello = await c.send("main", "hello")
            seen = await run_of(c, hello["run_id"])
            assert (seen[0]["event"], seen[0]["seq"]) == ("user_message", hello["seq"])
            assert seen[0]["data"]["parent"] is None  # the first message is a root
            assert seen[0]["data"]["message_id"] == hello["message_id"]
            assert of_run(seen, hello["run_id"])[1] == (
                "agent_started", {"message_id": hello["message_id"]})
            asked = await c.send("main", "how are you")
            seen = await run_of(c, asked["run_id"])
            assert seen[0]["data"]["parent"] == hello["run_id"]  # the newest run

            edit = await c.send("main", "how old are you", parent=hello["run_id"])
            seen = await run_of(c, edit["run_id"])
            assert seen[0]["event"] == "user_message" and seen[0]["run_id"] == edit["run_id"]
            assert {k: seen[0]["data"][k] for k in ("message_id", "text", "parent")} == {
                "message_id": edit["message_id"], "text": "how old are you",
                "parent": hello["run_id"]}  # the edited message's parent: a sibling of it
            assert edit["message_id"] != asked["message_id"]
            assert of_run(seen, edit["run_id"])[1] == (
                "agent_started", {"message_id": edit["message_id"]})
            assert seen[-1]["data"] == {"text": "how old are you"}

            after = await c.send("main", "and then?")  # follows the edit, the newest run
            seen = await run_of(c, after["run_id"])
            assert seen[0]["data"]["parent"] == edit["run_id"]
            root = await c.send("main", "start over", parent=None)
            seen = await run_of(c, root["run_id"])
            assert seen[0]["data"]["parent"] is None
            assert [f["seq"] for f in seen][-1] == root["seq"] + len(seen) - 1


async def test_regenerate_answers_the_same_message_again(tree_server):
    with trio.fail_after(60):
        async with open_client(tree_server.url, ADA) as c, \
                open_client(tree_server.url, ADA) as tab:
            await c.join("main")
            hello = await c.send("main", "hello ✓")
            first = await run_of(c, hello["run_id"])
            await tab.join("main", since=first[-1]["seq"])  # another tab sees it too

            regen = await c.regenerate("main", hello["message_id"], client_msg_id="again-1")
            assert plain(regen)["type"] == "accepted" and regen["thread_id"] == "main"
            assert regen["message_id"] == hello["message_id"]
            assert regen["run_id"] != hello["run_id"]
            seen = await run_of(c, regen["run_id"])
            assert seen == await run_of(tab, regen["run_id"])
            assert (seen[0]["event"], seen[0]["seq"], seen[0]["run_id"]) == (
                "answer_requested", regen["seq"], regen["run_id"])
            assert seen[0]["data"] == {"message_id": hello["message_id"],
                                       "client_msg_id": "again-1"}
            assert seen[0]["seq"] == first[-1]["seq"] + 1
            assert "user_message" not in [f["event"] for f in seen]  # no new message
            assert of_run(seen, regen["run_id"])[1] == (
                "agent_started", {"message_id": hello["message_id"]})
            assert seen[-1]["event"] == "agent_completed"
            assert seen[-1]["data"] == {"text": "hello ✓"}  # the original text, answered again

            more = await c.send("main", "more")  # the newest run is the regenerated one
            seen = await run_of(c, more["run_id"])
            assert seen[0]["data"]["parent"] == regen["run_id"]


async def test_what_is_not_the_threads_is_not_found_and_the_connection_stays(tree_server):
    with trio.fail_after(60):
        async with open_client(tree_server.url, ADA) as c, \
                open_client(tree_server.url, BOB) as bob:
            await c.join("main")
            await c.join("other")
            mine = await c.send("main", "hello")
            await run_of(c, mine["run_id"])
            elsewhere = await c.send("other", "elsewhere")
            await run_of(c, elsewhere["run_id"])
            await bob.join("main")
            bobs = await bob.send("main", "bob's")
            await run_of(bob, bobs["run_id"])

            attempts = [
                lambda: c.regenerate("main", "msg_nope"),
                lambda: c.regenerate("main", mine["run_id"]),  # a run id is no message id
                lambda: c.regenerate("main", elsewhere["message_id"]),  # another thread's
                lambda: c.regenerate("main", bobs["message_id"]),  # another user's message
                lambda: c.send("main", "x", parent="run_nope"),
                lambda: c.send("main", "x", parent=mine["message_id"]),  # no run id
                lambda: c.send("main", "x", parent=elsewhere["run_id"]),  # another thread's
                lambda: c.send("main", "x", parent=bobs["run_id"]),  # another user's run
                lambda: bob.regenerate("main", mine["message_id"]),  # bob's own "main"
                lambda: bob.send("main", "x", parent=mine["run_id"]),
            ]
            for attempt in attempts:
                with pytest.raises(NotFound) as info:
                    await attempt()
                assert info.value.code == "not_found"
            await c.ping()  # the connections stay
            await bob.ping()
            await nothing_more(c)  # nothing was stored
            await nothing_more(bob)

            with pytest.raises(BadFrame):  # a parent that cannot be a run id at all
                await c.request({"type": "send", "thread_id": "main", "text": "x",
                                 "parent": 5})
            with pytest.raises(BadFrame):
                await c.request({"type": "regenerate", "thread_id": "main", "message_id": ""})
            async with open_client(tree_server.url, ADA) as stranger:
                with pytest.raises(NotJoined):
                    await stranger.regenerate("main", mine["message_id"])
            # and the thread still works as before
            again = await c.regenerate("main", mine["message_id"])
            assert (await run_of(c, again["run_id"]))[-1]["data"] == {"text": "hello"}


async def test_retries_with_a_client_msg_id_answer_the_same_and_run_once(tree_server):
    with trio.fail_after(60):
        async with open_client(tree_server.url, ADA) as c:
            await c.join("main")
            first = await c.send("main", "hello", client_msg_id="m-1")
            assert plain(await c.send("main", "hello", client_msg_id="m-1")) == plain(first)
            await run_of(c, first["run_id"])

            regen = await c.regenerate("main", first["message_id"], client_msg_id="r-1")
            retry = await c.regenerate("main", first["message_id"], client_msg_id="r-1")
            assert plain(retry) == plain(regen)
            seen = await run_of(c, regen["run_id"])
            assert [f["event"] for f in seen].count("answer_requested") == 1
            assert plain(await c.regenerate("main", first["message_id"],
                                            client_msg_id="r-1")) == plain(regen)
            # a client_msg_id names one request of the thread, whichever kind it was
            assert plain(await c.regenerate("main", first["message_id"],
                                            client_msg_id="m-1")) == plain(first)
            assert plain(await c.send("main", "other", client_msg_id="r-1")) == plain(regen)

            edit = await c.send("main", "hi", client_msg_id="e-1", parent=None)
            assert plain(await c.send("main", "hi", client_msg_id="e-1",
                                      parent=None)) == plain(edit)
            seen = await run_of(c, edit["run_id"])
            assert [f["event"] for f in seen].count("user_message") == 1
            await nothing_more(c)  # no second run of any of them
            info = await tree_server.runtime.thread("ada", "main").info()
            assert info.last_seq == seen[-1]["seq"]


async def waiting_run(c, text: str = "/confirm 6*7") -> tuple[dict[str, Any], str]:
    """``text`` sent to the joined ``main``; its accepted and the call id its run waits on."""
    acc = await c.send("main", text)
    asked = (await until(c, lambda f: f["event"] == "approval_requested"))[-1]
    assert asked["run_id"] == acc["run_id"]
    return acc, asked["data"]["call_id"]


async def test_regenerate_with_enqueue_waits_for_the_active_run(tree_server):
    with trio.fail_after(60):
        async with open_client(tree_server.url, ADA) as c:
            await c.join("main")
            active, call_id = await waiting_run(c)
            regen = await c.regenerate("main", active["message_id"], strategy="enqueue")
            [asked] = await until(c, lambda f: f["event"] == "answer_requested")
            assert (asked["seq"], asked["run_id"]) == (regen["seq"], regen["run_id"])
            await nothing_more(c)  # it waits its turn: no agent_started yet
            await c.decide("main", active["run_id"], call_id, True)
            seen = await until(c, lambda f: f["event"] == "approval_requested")
            assert of_run(seen, active["run_id"])[-1] == ("agent_completed", {"text": "42"})
            assert of_run(seen, regen["run_id"])[0] == (
                "agent_started", {"message_id": active["message_id"]})
            later = seen[-1]
            assert later["run_id"] == regen["run_id"]  # the same /confirm, answered again
            await c.decide("main", regen["run_id"], later["data"]["call_id"], True)
            seen = await run_of(c, regen["run_id"])
            assert seen[-1]["data"] == {"text": "42"}


async def test_regenerate_with_interrupt_cancels_the_active_run(tree_server):
    with trio.fail_after(60):
        async with open_client(tree_server.url, ADA) as c:
            await c.join("main")
            active, _ = await waiting_run(c)
            regen = await c.regenerate("main", active["message_id"], strategy="interrupt")
            seen = await until(c, lambda f: f["event"] == "approval_requested")
            assert [f for f in seen if f["event"] == "answer_requested"][0]["seq"] == regen["seq"]
            assert of_run(seen, active["run_id"])[-1] == (
                "agent_cancelled", {"reason": "interrupt"})
            assert of_run(seen, regen["run_id"])[1] == (
                "agent_started", {"message_id": active["message_id"]})
            assert seen[-1]["run_id"] == regen["run_id"]
            await c.cancel("main", regen["run_id"])
            assert (await run_of(c, regen["run_id"]))[-1]["data"] == {"reason": "cancel"}


async def test_regenerate_with_reject_is_busy_and_stores_nothing(tree_server):
    with trio.fail_after(60):
        async with open_client(tree_server.url, ADA) as c:
            await c.join("main")
            active, call_id = await waiting_run(c)
            with pytest.raises(Busy) as info:
                await c.regenerate("main", active["message_id"], strategy="reject")
            assert info.value.code == "busy"
            with pytest.raises(Busy):  # an edit with reject too
                await c.send("main", "x", strategy="reject", parent=None)
            await nothing_more(c)
            await c.decide("main", active["run_id"], call_id, True)
            seen = await run_of(c, active["run_id"])
            assert seen[-1]["data"] == {"text": "42"}
            assert {f["run_id"] for f in seen} == {active["run_id"]}


async def test_the_default_parent_follows_every_accepted_queued_behind_a_run(tree_server):
    with trio.fail_after(60):
        async with open_client(tree_server.url, ADA) as c:
            await c.join("main")
            active, call_id = await waiting_run(c)
            m0 = await c.send("main", "m0")
            m1 = await c.send("main", "m1")
            regen = await c.regenerate("main", m0["message_id"])  # queued too
            m2 = await c.send("main", "m2")
            asked = await until(c, lambda f: f["seq"] == m2["seq"])
            messages = {f["run_id"]: f["data"]["parent"] for f in asked
                        if f["event"] == "user_message"}
            assert messages == {m0["run_id"]: active["run_id"], m1["run_id"]: m0["run_id"],
                                m2["run_id"]: regen["run_id"]}
            assert [f["event"] for f in asked] == [
                "user_message", "user_message", "answer_requested", "user_message"]
            await c.decide("main", active["run_id"], call_id, True)
            seen = await run_of(c, m2["run_id"])
            ends = [(f["run_id"], f["data"]) for f in seen if f["event"] in TERMINAL]
            assert ends == [(active["run_id"], {"text": "42"}), (m0["run_id"], {"text": "m0"}),
                            (m1["run_id"], {"text": "m1"}), (regen["run_id"], {"text": "m0"}),
                            (m2["run_id"], {"text": "m2"})]
            starts = {f["run_id"]: f["data"]["message_id"] for f in seen
                      if f["event"] == "agent_started"}
            assert starts == {m0["run_id"]: m0["message_id"], m1["run_id"]: m1["message_id"],
                              regen["run_id"]: m0["message_id"],
                              m2["run_id"]: m2["message_id"]}


async def test_join_with_since_replays_every_branch_in_seq_order(tree_server):
    with trio.fail_after(60):
        async with open_client(tree_server.url, ADA) as c:
            await c.join("main")
            live: list[dict[str, Any]] = []
            hello = await c.send("main", "hello")
            live += await run_of(c, hello["run_id"])
            steps = [c.send("main", "world"), c.send("main", "earth", parent=hello["run_id"]),
                     c.regenerate("main", hello["message_id"]), c.send("main", "new", parent=None)]
            runs = [hello]
            for step in steps:
                runs.append(await step)
                live += await run_of(c, runs[-1]["run_id"])
            assert [f["seq"] for f in live] == list(range(1, len(live) + 1))
            parents = {f["run_id"]: f["data"]["parent"] for f in live
                       if f["event"] == "user_message"}
            assert parents == {hello["run_id"]: None, runs[1]["run_id"]: hello["run_id"],
                               runs[2]["run_id"]: hello["run_id"], runs[4]["run_id"]: None}

            for since in (0, 3, live[len(live) // 2]["seq"], live[-1]["seq"]):
                async with open_client(tree_server.url, ADA) as late:
                    joined = await late.join("main", since=since)
                    assert joined["last_seq"] == live[-1]["seq"]
                    replayed = [await late.next_event(timeout=10)
                                for _ in range(len(live) - since)]
                    assert replayed == live[since:]
                    await nothing_more(late, 0.2)


async def test_threads_carry_the_title_of_the_first_message(tree_server):
    with trio.fail_after(60):
        async with open_client(tree_server.url, ADA) as c:
            await c.join("empty")
            await c.join("main")
            long = "ü" * 79 + "🙂" + "tail beyond eighty code points"
            first = await c.send("main", long)
            await run_of(c, first["run_id"])
            edit = await c.send("main", "an edit", parent=None)
            await run_of(c, edit["run_id"])
            titles = {t["thread_id"]: t["title"] for t in await c.threads()}
            assert titles == {"main": "ü" * 79 + "🙂", "empty": None}
