"""A server given its per-user quotas at construction (as a cluster node's server is) counts in
them: what they hold from elsewhere counts against its users; quotas made with other limits
than the server's are refused."""

from __future__ import annotations

import pytest
import trio

from tests.servers import SECRET, token
from threadline import open_runtime
from threadline.server import open_server
from threadline.transport.client import open_client
from threadline.transport.limits import Limits
from threadline.transport.quotas import UserQuotas, UserUsage


async def test_a_server_counts_in_the_quotas_it_is_given():
    limits = Limits(ping_interval=None, user_connections=2)
    quotas = UserQuotas(limits)
    quotas.observe("another-node", {"ada": UserUsage(1)})
    async with open_runtime() as rt, \
            open_server(rt, port=0, secret=SECRET, limits=limits, quotas=quotas) as server:
        assert server.server.quotas is quotas
        async with open_client(server.url, token("ada")) as one:
            await one.ping()  # one here, one elsewhere: both slots
            async with open_client(server.url, token("ada")) as two:
                with trio.fail_after(10):
                    frame = await two.next_unsolicited()
                assert frame["code"] == "limit_reached", frame
            quotas.forget_node("another-node")
            async with open_client(server.url, token("ada")) as three:
                await three.ping()


async def test_quotas_made_with_other_limits_are_refused():
    async with open_runtime() as rt:
        with pytest.raises(ValueError, match="other limits"):
            async with open_server(rt, port=0, secret=SECRET, limits=Limits(),
                                   quotas=UserQuotas(Limits(user_connections=2))):
                pass
