"""Usage reports over the real peer link on loopback: a proved peer's reports are counted under
the node id its handshake named and forgotten when its link ends; a stranger's are never read;
the reporter tells every live peer, sends nothing when there is nothing to tell, and forgets
the nodes that leave the live list."""

import logging

import pytest
import trio

from tests.cluster.test_peers import LOGGER, SECRET, Owner, serving, wait_for
from threadline import open_runtime
from threadline.cluster.peers import open_peer_clients
from threadline.cluster.shards import Peer, ShardTable
from threadline.cluster.usage import UsageBook, UsageReporter, usage_frames
from threadline.cluster.wire import PeerUnreachable, Usage, encode
from threadline.transport.limits import Limits
from threadline.transport.quotas import UserQuotas, UserUsage

LIMITS = Limits(user_connections=3)


async def test_a_proved_peers_report_counts_under_its_node_id_until_its_link_ends():
    quotas = UserQuotas(LIMITS)
    book = UsageBook(quotas)
    async with serving(Owner(), usage=book) as served:
        async with open_peer_clients("asker", SECRET) as clients:
            await clients.send_usage(served.address, usage_frames(
                {"ada": UserUsage(2, 0, ()), "bob": UserUsage(1, 0, ())}))
            await wait_for(lambda: book.received == 1, "the report counted")
            assert quotas.slots_elsewhere("ada") == 2 and quotas.slots_elsewhere("bob") == 1
            quotas.observe("asker", {"ada": UserUsage(0)})  # under the node its hello named
            assert quotas.slots_elsewhere("ada") == 0 and quotas.slots_elsewhere("bob") == 1
        # The clients closed: the link ended, and what it reported with it.
        await wait_for(lambda: quotas.slots_elsewhere("bob") == 0, "the node forgotten")


async def test_a_stranger_cannot_report(caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    quotas = UserQuotas(LIMITS)
    book = UsageBook(quotas)
    async with serving(Owner(), usage=book) as served:
        async with open_peer_clients("intruder", b"w" * 47) as clients:  # another secret
            with pytest.raises(PeerUnreachable, match="another secret"):
                await clients.send_usage(served.address, usage_frames({"ada": UserUsage(3)}))
        async with await trio.open_tcp_stream(*served.address) as stream:
            await stream.send_all(encode(Usage({"ada": UserUsage(3)})))  # before any hello
            with trio.fail_after(10):
                try:
                    assert await stream.receive_some(65536) == b""
                except trio.BrokenResourceError:
                    pass
        await wait_for(lambda: any("it sent a Usage, not a hello" in r.getMessage()
                                   for r in caplog.records), "a warning")
    assert book.received == 0 and quotas.slots_elsewhere("ada") == 0


async def test_the_reporter_tells_live_peers_and_forgets_those_that_left():
    async with open_runtime() as rt:
        here, there = UserQuotas(LIMITS), UserQuotas(LIMITS)
        book_here, book_there = UsageBook(here), UsageBook(there)
        async with serving(Owner(), usage=book_there) as served, \
                open_peer_clients("asker", SECRET) as clients:
            table = ShardTable("asker")
            table.seen({}, {"owner": Peer("owner", served.address)})
            reporter = UsageReporter(here, table, clients, book_here)
            await reporter.report()
            assert reporter.sent == 0  # nobody uses anything: nothing sent
            slots = [here.open(rt.user("ada")), here.open(rt.user("ada"))]
            await reporter.report()
            await wait_for(lambda: there.slots_elsewhere("ada") == 2, "the report counted")
            assert reporter.sent == book_there.received == 1
            for slot in slots:
                here.release(slot)
            await reporter.report()  # ada's last slot here closed: told once
            await wait_for(lambda: there.slots_elsewhere("ada") == 0, "the release counted")
            await reporter.report()
            assert reporter.sent == 2
            # What "owner" reported here counts until it leaves the live list.
            book_here.observe(object(), "owner", {"ada": UserUsage(2)})
            await reporter.report()
            assert here.slots_elsewhere("ada") == 2
            table.seen({}, {})
            await reporter.report()
            assert here.slots_elsewhere("ada") == 0
