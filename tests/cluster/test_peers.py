"""The node-to-node link over real loopback sockets: a PeerServer and PeerClients."""

import logging
import random
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable

import pytest
import trio
import trio.testing

from threadline.actors.errors import (ActorCrashed, ActorStopped, AskTimeout, Busy,
                                      JournalUnavailable, LimitReached, MailboxFull, RateLimited,
                                      UnknownRun, Unstorable)
from threadline.actors.messages import (Accepted, CancelRun, DeleteThread, GetInfo, PostMessage,
                                        ThreadInfo, ThreadKey)
from threadline.actors.reply import Reply
from threadline.cluster.peer_server import PeerServer
from threadline.cluster.peers import MAX_IN_FLIGHT, open_peer_clients
from threadline.cluster.wire import NotOwner, PeerError, PeerLost, PeerUnreachable

SECRET = b"cluster-secret-" + b"k" * 32
KEY = ThreadKey("ada", "t-1")
ERRORS = {kind.__name__: kind for kind in (
    Busy, UnknownRun, JournalUnavailable, Unstorable, ActorCrashed, NotOwner, ActorStopped,
    AskTimeout, MailboxFull, LimitReached, RateLimited, ValueError)}
LOGGER = "threadline.cluster.peers"


class Owner:
    """The owner's local ask: builds the request with ``make``; a post's text says what to do."""

    def __init__(self) -> None:
        self.entered, self.release, self.finished = 0, trio.Event(), []

    async def handle(self, key, make):
        msg = make(Reply())
        if type(msg) is GetInfo:
            return ThreadInfo(key, 7, 1.5, 2.5)
        if type(msg) is DeleteThread:
            return None
        if type(msg) is CancelRun:
            return msg.run_id or "r-active"
        assert type(msg) is PostMessage
        verb, _, arg = msg.text.partition(":")
        if verb == "raise":
            raise ERRORS[arg](f"{arg} on {key.thread_id}")
        if verb == "bug":
            raise RuntimeError("the user's text: hunter2")
        if verb == "block":
            self.entered += 1
            await self.release.wait()
        if verb == "sleep":
            await trio.sleep(float(arg))
            self.finished.append(msg.text)
        return Accepted(key, f"m-{msg.text}", f"r-{msg.client_msg_id}", 1)


class Served(trio.abc.Listener):
    """Counts the connections accepted; ``stop`` is back once the server's are all closed."""

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner, self.accepted = inner, 0
        self.address = inner.socket.getsockname()[:2]
        self.scope, self.stopped = trio.CancelScope(), trio.Event()

    async def accept(self):
        stream = await self.inner.accept()
        self.accepted += 1
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


@asynccontextmanager
async def serving(owner: Owner, *, port: int = 0, **options) -> AsyncIterator[Served]:
    server = PeerServer("owner", SECRET, owner.handle, **options)
    [listener] = await trio.open_tcp_listeners(port, host="127.0.0.1")
    served = Served(listener)

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        try:
            with served.scope:
                await server.serve([served], task_status=task_status)
        finally:
            served.stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        yield served
        await served.stop()


def post(text: str, client_msg_id: str | None = None) -> PostMessage:
    return PostMessage(text, client_msg_id, "enqueue", Reply())


async def wait_for(predicate, what: str) -> None:
    """Until ``predicate()``, checked at most 200 times over at most 10 s."""
    with trio.fail_after(10):
        for _ in range(200):
            if predicate():
                return
            await trio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def fails(kind: type[Exception], call: Awaitable[object]) -> None:
    with pytest.raises(kind):
        await call


async def test_each_request_round_trips():
    owner = Owner()
    async with serving(owner) as served, open_peer_clients("asker", SECRET) as clients:
        at = served.address
        assert await clients.call(at, KEY, post("hi", "c-1")) == Accepted(KEY, "m-hi", "r-c-1", 1)
        assert await clients.call(at, KEY, GetInfo(Reply())) == ThreadInfo(KEY, 7, 1.5, 2.5)
        assert await clients.call(at, KEY, CancelRun("r-9", Reply())) == "r-9"
        assert await clients.call(at, KEY, CancelRun(None, Reply())) == "r-active"
        assert await clients.call(at, KEY, DeleteThread(Reply())) is None
        assert (clients.calls, clients.failures, clients.seconds.count) == (5, 0, 5)
        assert served.accepted == 1


@pytest.mark.parametrize("name", list(ERRORS))
async def test_each_mapped_error_is_raised_again_with_its_message(name):
    async with serving(Owner()) as served, open_peer_clients("asker", SECRET) as clients:
        with pytest.raises(ERRORS[name]) as info:
            await clients.call(served.address, KEY, post(f"raise:{name}"))
        assert type(info.value) is ERRORS[name] and str(info.value) == f"{name} on t-1"
        # an answer, even a failure, is not a failure of the link
        assert (clients.failures, clients.seconds.count) == (0, 1)
        assert await clients.call(served.address, KEY, CancelRun("r-1", Reply())) == "r-1"


async def test_a_bug_on_the_owner_is_a_peer_error_without_its_text(caplog):
    caplog.set_level(logging.ERROR, LOGGER)
    async with serving(Owner()) as served, open_peer_clients("asker", SECRET) as clients:
        with pytest.raises(PeerError) as info:
            await clients.call(served.address, KEY, post("bug"))
        assert "hunter2" not in str(info.value)
        assert await clients.call(served.address, KEY, CancelRun("r-1", Reply())) == "r-1"
    assert [r.exc_info[0] for r in caplog.records if r.name == LOGGER] == [RuntimeError]


async def test_200_concurrent_calls_answered_out_of_order_each_get_their_own():
    owner, rng = Owner(), random.Random(7)
    sleeps = [rng.uniform(0, 0.05) for _ in range(200)]
    answers: dict[int, object] = {}
    async with serving(owner) as served, open_peer_clients("asker", SECRET) as clients:
        async def one(i: int) -> None:
            answers[i] = await clients.call(served.address, ThreadKey("ada", f"t-{i}"),
                                            post(f"sleep:{sleeps[i]}", f"c-{i}"))

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
        assert served.accepted == 1  # one connection, opened once, for them all
    assert answers == {i: Accepted(ThreadKey("ada", f"t-{i}"), f"m-sleep:{sleeps[i]}",
                                   f"r-c-{i}", 1) for i in range(200)}
    assert sorted(owner.finished) == sorted(f"sleep:{s}" for s in sleeps)
    assert owner.finished != [f"sleep:{s}" for s in sleeps]  # not answered in the order sent
    assert (clients.calls, clients.failures, clients.seconds.count) == (200, 0, 200)


async def test_a_wrong_secret_is_unreachable_and_the_server_warns(caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    async with serving(Owner()) as served, open_peer_clients("intruder", b"w" * 47) as clients:
        with pytest.raises(PeerUnreachable, match="another secret"):
            await clients.call(served.address, KEY, post("hi"))
        assert (clients.calls, clients.failures, clients.seconds.count) == (1, 1, 0)
        await wait_for(lambda: any(r.name == LOGGER for r in caplog.records), "a warning")
    [record] = [r for r in caplog.records if r.name == LOGGER]
    text = record.getMessage()
    assert record.levelno == logging.WARNING and "from 127.0.0.1:" in text and "'intruder'" in text
    assert "www" not in text and "kkk" not in text  # nothing of either secret


async def test_a_peer_that_never_answers_the_hello_is_unreachable_after_the_timeout():
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")  # never accepts
    async with listener, open_peer_clients("asker", SECRET, connect_timeout=0.2) as clients:
        with pytest.raises(PeerUnreachable, match="no link within 0.2 s"):
            await clients.call(listener.socket.getsockname()[:2], KEY, post("hi"))


async def test_a_server_closed_with_a_call_in_flight_loses_it():
    owner = Owner()
    async with serving(owner) as served, open_peer_clients("asker", SECRET) as clients:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails, PeerLost, clients.call(served.address, KEY, post("block")))
            await wait_for(lambda: owner.entered == 1, "the call running on the owner")
            await served.stop()
        assert (clients.failures, clients.seconds.count) == (1, 0)


async def test_a_cancelled_caller_leaves_nothing_behind():
    owner = Owner()
    async with serving(owner) as served, open_peer_clients("asker", SECRET) as clients:
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(clients.call, served.address, KEY, post("block", "late"))
                await wait_for(lambda: owner.entered == 1, "the call running on the owner")
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        [connection] = clients._connections.values()
        assert connection.waiting == {}  # its id is forgotten at once
        owner.release.set()  # its answer now comes, to nobody
        answer = await clients.call(served.address, KEY, post("fresh", "c-2"))
        assert answer == Accepted(KEY, "m-fresh", "r-c-2", 1)
        assert connection.waiting == {}
        assert served.accepted == 1
        assert (clients.calls, clients.failures, clients.seconds.count) == (2, 0, 1)


async def test_the_client_reconnects_after_the_server_restarts_on_the_same_port():
    async with open_peer_clients("asker", SECRET) as clients:
        async with serving(Owner()) as first:
            assert await clients.call(first.address, KEY, CancelRun("r-1", Reply())) == "r-1"
            await first.stop()
            await trio.testing.wait_all_tasks_blocked()  # the client has read the end
        with pytest.raises(PeerUnreachable):  # nothing listening: never sent
            await clients.call(first.address, KEY, CancelRun("r-2", Reply()))
        async with serving(Owner(), port=first.address[1]) as second:
            assert await clients.call(second.address, KEY, CancelRun("r-3", Reply())) == "r-3"
            assert second.accepted == 1
        assert (clients.calls, clients.failures) == (3, 1)


async def test_a_server_reads_no_more_than_its_bound_of_calls_at_once():
    owner, count = Owner(), MAX_IN_FLIGHT + 6
    async with serving(owner) as served, open_peer_clients("asker", SECRET) as clients:
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(clients.call, served.address, KEY, post("block", f"c-{i}"))
            await wait_for(lambda: owner.entered == MAX_IN_FLIGHT, "the bound reached")
            await trio.testing.wait_all_tasks_blocked()
            assert owner.entered == MAX_IN_FLIGHT
            owner.release.set()
        assert owner.entered == count and clients.seconds.count == count


async def test_closing_the_clients_loses_waiting_calls_and_refuses_new_ones():
    owner = Owner()
    async with serving(owner) as served, open_peer_clients("asker", SECRET) as clients:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails, PeerLost, clients.call(served.address, KEY, post("block")))
            await wait_for(lambda: owner.entered == 1, "the call running on the owner")
            await clients.aclose()
        with pytest.raises(PeerUnreachable):
            await clients.call(served.address, KEY, post("hi"))
