"""The peers' usage reports without sockets: the ``Usage`` message, its refusals, and a report
cut into frames under the budget that, counted frame by frame, count the whole report."""

from __future__ import annotations

import struct

import msgpack
import pytest

from threadline import open_runtime
from threadline.actors.errors import LimitReached
from threadline.cluster.usage import USAGE_FRAME, UsageBook, usage_frames
from threadline.cluster.wire import FrameDecoder, Usage, WireError, encode
from threadline.transport.limits import Limits
from threadline.transport.quotas import UserQuotas, UserUsage


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def test_a_usage_report_round_trips():
    message = Usage({"ada@example.org": UserUsage(3, 12, ("main", "t-2")),
                     "bob": UserUsage(), "ünï": UserUsage(0, 1, ())})
    assert FrameDecoder().feed(encode(message)) == [message]
    assert FrameDecoder().feed(encode(Usage({}))) == [Usage({})]


@pytest.mark.parametrize("users", [
    [],                                   # not a map
    {"ada": [1, 2]},                      # a value short of a field
    {"ada": [1, 2, ["t"], 4]},            # one too many
    {"ada": [-1, 0, []]},                 # a negative count
    {"ada": [0, -3, []]},
    {"ada": [True, 0, []]},               # a bool is not a count
    {"ada": [1.5, 0, []]},
    {"ada": [1, 0, "main"]},              # threads not a list
    {"ada": [1, 0, [7]]},                 # a thread id not a string
    {"": [1, 0, []]},                     # no user id
    {b"ada": [1, 0, []]},                 # bytes, not a string
    {"ada": None},
], ids=repr)
def test_a_malformed_usage_report_is_refused(users):
    with pytest.raises(WireError):
        FrameDecoder().feed(frame(["usage", users]))


def test_a_usage_report_has_one_field():
    for bad in (["usage"], ["usage", {}, "node-b"]):
        with pytest.raises(WireError):
            FrameDecoder().feed(frame(bad))


def decoded(frames: list[bytes], budget: int) -> list[Usage]:
    messages = []
    for one in frames:
        assert len(one) - 4 <= budget
        [message] = FrameDecoder().feed(one)
        messages.append(message)
    return messages


def test_a_big_report_is_cut_into_frames_under_the_budget_that_add_up_to_it():
    report = {f"user-{i:05d}@example.org": UserUsage(i % 7, i % 3, tuple(
        f"thread-{i}-{j}" for j in range(i % 4))) for i in range(3000)}
    report["hog"] = UserUsage(2, 40, tuple(f"t-{j:04d}" for j in range(2000)))  # one user, many
    for budget in (4096, USAGE_FRAME):
        messages = decoded(usage_frames(report, budget), budget)
        assert len(messages) > 1
        seen: dict[str, list[UserUsage]] = {}
        for message in messages:
            for user_id, usage in message.users.items():
                seen.setdefault(user_id, []).append(usage)
        assert seen.keys() == report.keys()
        for user_id, parts in seen.items():
            want = report[user_id]
            assert {p.connections for p in parts} == {want.connections}  # in every part
            assert sum(p.sends for p in parts) == want.sends  # once
            assert tuple(t for p in parts for t in p.threads) == want.threads
        if budget == 4096:
            assert len(seen["hog"]) > 1  # her threads over several frames
    assert len(usage_frames({"ada": UserUsage(1, 0, ())})) == 1
    assert usage_frames({}) == []


async def test_a_report_cut_into_frames_counts_as_the_whole_report(autojump_clock):
    """Two nodes' ``UserQuotas``: counting B's report frame by frame (as the peer server
    does) refuses what counting it whole refuses."""
    limits = Limits(user_connections=3, user_threads=300)
    async with open_runtime() as rt:
        a, b = UserQuotas(limits), UserQuotas(limits)
        ada = rt.user("ada")
        on_b = b.open(ada)
        b.open(ada)
        for i in range(250):
            await on_b.admit_thread(f"thread-with-a-long-enough-name-{i:04d}")
        on_a = a.open(ada)
        await on_a.admit_thread("a-0")  # a loaded her (empty) list before b's threads
        frames = usage_frames(b.take_report(), budget=2048)
        assert len(frames) > 1
        book = UsageBook(a)
        link = object()
        for message in decoded(frames, 2048):
            book.observe(link, "b", message.users)
        assert book.received == len(frames)
        with pytest.raises(LimitReached, match="connections per user"):
            a.open(ada)  # 2 on b + 1 here
        for i in range(49):
            await on_a.admit_thread(f"a-{i + 1}")  # 250 + 50: the limit
        with pytest.raises(LimitReached, match="300 threads per user"):
            await on_a.admit_thread("one-more")
        book.forget(object())  # another link ending forgets nothing
        assert a.slots_elsewhere("ada") == 2
        book.forget(link)  # the link it came on ending forgets b
        assert a.slots_elsewhere("ada") == 0
        a.open(ada)
