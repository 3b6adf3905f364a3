"""Tool approval through a real ``threadline serve`` process (its default agent, echo, and a
SQLite store): a tab on the WebSocket (msgpack) watches while a service decides over HTTP;
approved, then denied, and each decision a second time ``unknown_call``."""

from __future__ import annotations

import signal

from tests.servers import port_of, until_event as until
from tests.servers import ServeProcess, http, token
from threadline.transport.client import open_client

ADA = token("ada")
TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")






async def test_a_tab_watches_while_a_service_decides_over_http(tmp_path):
    server = ServeProcess("--store", f"sqlite:///{tmp_path}/t.db")
    try:
        url = await server.ready()
        async with open_client(url, ADA, encoding="msgpack") as tab:
            await tab.join("main")
            for text, approved, answer in [("/confirm 6*7", True, "42"),
                                           ("/confirm 7*7", False, "denied: over budget")]:
                run_id = (await tab.send("main", text))["run_id"]
                asked = (await until(tab, "approval_requested"))[-1]["data"]
                path = f"/v1/threads/main/runs/{run_id}/approvals/{asked['call_id']}"
                body = {"approved": approved} if approved else {"approved": False,
                                                                "reason": "over budget"}
                status, _, ok = await http(port_of(url), "POST", path, tok=ADA, body=body)
                assert (status, ok["type"], ok["call_id"]) == (200, "ok", asked["call_id"])
                end = await until(tab, *TERMINAL)
                assert end[0]["event"] == "approval_decided"
                assert end[0]["data"]["approved"] is approved
                assert (end[-1]["event"], end[-1]["data"]) == ("agent_completed",
                                                               {"text": answer})
                status, _, error = await http(port_of(url), "POST", path, tok=ADA, body=body)
                assert (status, error["code"]) == (404, "unknown_call")
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
    finally:
        server.kill()
