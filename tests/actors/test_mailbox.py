import pytest
import trio
import trio.testing

from threadline.actors.errors import ActorStopped, AskTimeout, MailboxFull
from threadline.actors.mailbox import Mailbox
from threadline.actors.reply import Reply
from threadline.actors.messages import GetInfo


async def test_tell_never_blocks_and_raises_when_full():
    box = Mailbox(2)
    box.tell(1)
    box.tell(2)
    with pytest.raises(MailboxFull):
        box.tell(3)
    assert box.statistics().depth == 2 and box.statistics().capacity == 2
    assert [box.receive_channel.receive_nowait(), box.receive_channel.receive_nowait()] == [1, 2]


async def test_send_waits_for_space():
    box = Mailbox(1)
    box.tell("a")
    sent = trio.Event()

    async def sender():
        await box.send("b")
        sent.set()

    async with trio.open_nursery() as n:
        n.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set() and box.statistics().senders_waiting == 1
        assert await box.receive() == "a"
        await sent.wait()
    assert await box.receive() == "b"


async def test_ask_gets_the_reply():
    box = Mailbox(10)

    async def actor():
        req = await box.receive()
        req[1].set(req[0] * 2)

    async with trio.open_nursery() as n:
        n.start_soon(actor)
        assert await box.ask(lambda reply: (21, reply)) == 42


async def test_ask_reraises_the_actors_failure():
    box = Mailbox(10)

    async def actor():
        (_, reply) = await box.receive()
        reply.fail(KeyError("nope"))

    async with trio.open_nursery() as n:
        n.start_soon(actor)
        with pytest.raises(KeyError):
            await box.ask(lambda reply: ("x", reply))


async def test_ask_times_out(autojump_clock):
    box = Mailbox(10)
    start = trio.current_time()
    with pytest.raises(AskTimeout):
        await box.ask(lambda reply: ("nobody answers", reply), timeout=3)
    assert trio.current_time() - start == pytest.approx(3)


async def test_ask_timeout_covers_waiting_for_space(autojump_clock):
    box = Mailbox(1)
    box.tell("filler")
    with pytest.raises(AskTimeout):
        await box.ask(lambda reply: ("x", reply), timeout=1)


async def test_late_reply_after_timeout_is_dropped(autojump_clock):
    box = Mailbox(10)
    with pytest.raises(AskTimeout):
        await box.ask(lambda reply: reply, timeout=1)
    late: Reply = box.receive_channel.receive_nowait()
    late.set("too late")  # must not reschedule a task that is no longer waiting
    await trio.sleep(1)


async def test_closed_mailbox_refuses_and_hands_back_what_was_queued():
    box = Mailbox(10)
    async with trio.open_nursery() as n:
        results = []

        async def asker():
            try:
                await box.ask(GetInfo)
            except ActorStopped as exc:
                results.append(exc)

        n.start_soon(asker)
        await trio.testing.wait_all_tasks_blocked()
        (unread,) = box.close()  # the owner answers what it will never handle
        assert isinstance(unread, GetInfo)
        unread.reply.fail(ActorStopped("passivated"))
    assert len(results) == 1 and "passivated" in str(results[0])
    assert box.statistics().closed
    with pytest.raises(ActorStopped):
        box.tell("x")
    with pytest.raises(ActorStopped):
        await box.send("x")


async def test_close_send_lets_the_owner_drain():
    box = Mailbox(10)
    box.tell(1)
    box.close_send()
    with pytest.raises(ActorStopped):
        box.tell(2)
    assert await box.receive() == 1
    with pytest.raises(ActorStopped):
        await box.receive()



async def test_an_uncancellable_wait_outlasts_its_cancel_and_the_cancel_comes_after() -> None:
    """``Reply.wait_uncancellable``: cancelled while it waits, it still gets the answer (as a
    shielded wait does), and the cancellation is delivered at its next checkpoint."""
    reply: Reply[str] = Reply()
    got: list[str] = []
    scope = trio.CancelScope()

    async def waiter() -> None:
        with scope:
            got.append(await reply.wait_uncancellable())
            await trio.lowlevel.checkpoint()
            got.append("not cancelled")
        got.append("cancel delivered" if scope.cancelled_caught else "no cancel")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.sleep(0.01)
        assert got == []  # still waiting, cancelled
        reply.set("stored")
    assert got == ["stored", "cancel delivered"]
