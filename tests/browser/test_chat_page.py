"""The chat page (``threadline serve --demo``, ``/``) in headless Chromium: it sends a message and
shows the answer as it streams, tool calls and thinking included; its cancel button ends the
active run; a connection cut in the middle of an answer ends with exactly the whole answer; a
thread deleted and created again while the page was away shows only the new thread; two
users in two browser contexts never see each other's threads; a refused token is reported with
the server's reason; and what Chromium does with the subprotocols it offers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import screenshot
from tests.servers import token

TURNS = """return [...document.querySelectorAll('#messages [data-run]')].map((n) => ({
  status: n.dataset.status,
  user: n.querySelector('.user')?.textContent ?? null,
  thinking: [...n.querySelectorAll('.thinking')].map((t) => t.textContent),
  tools: [...n.querySelectorAll('.tool')].map((t) => t.textContent),
  answer: n.querySelector('.answer').textContent,
}));"""


def wait(driver, condition, what: str, timeout: float = 30):
    """Poll ``condition(driver)`` every 50 ms until it is truthy (at most ``timeout`` s)."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message=what)


def turns(driver) -> list[dict]:
    return driver.execute_script(TURNS)


def thread_list(driver) -> list[str]:
    """The ids in the thread list, read in one go (the page rebuilds the list as it changes)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#threads [data-thread]')].map((e) => e.dataset.thread)")


def state(driver) -> str:
    return driver.find_element(By.ID, "state").get_attribute("data-state")


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: state(d) == "open", "the page connected")


def send(driver, text: str) -> None:
    count = len(turns(driver))
    box = driver.find_element(By.ID, "text")
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()
    wait(driver, lambda d: len(turns(d)) == count + 1, f"{text!r} shown")


def last_done(driver) -> dict:
    return wait(driver, lambda d: (t := turns(d)[-1])["status"] in ("completed", "failed",
                                                                       "cancelled") and t,
                "the run's end")


def numbers(n: int) -> str:
    return " ".join(map(str, range(1, n + 1)))


def test_the_page_sends_a_message_and_shows_the_answer_as_it_streams(page, browser):
    open_page(browser, page.url(token("ada")))
    send(browser, "/calc 6*7")
    calc = last_done(browser)
    assert calc == {"status": "completed", "user": "/calc 6*7", "thinking": ["calculating"],
                    "tools": ['calculator({"expression":"6*7"}) → 42'], "answer": "42"}
    send(browser, "/stream 400")  # two seconds of answer
    partial = wait(browser, lambda d: (t := turns(d)[-1])["status"] == "running"
                   and " 60 " in t["answer"] and t["answer"], "a part of the answer")
    screenshot(browser, "streaming")
    assert partial != numbers(400) and numbers(400).startswith(partial)
    assert browser.find_element(By.ID, "cancel").is_enabled()  # a run is active
    assert last_done(browser)["answer"] == numbers(400)
    assert not browser.find_element(By.ID, "cancel").is_enabled()
    assert wait(browser, thread_list, "the thread list") == ["main"]


def test_the_cancel_button_ends_the_active_run(page, browser):
    open_page(browser, page.url(token("dee")))
    send(browser, "/stream 5000")
    wait(browser, lambda d: turns(d)[-1]["answer"].startswith("1 2 3"), "the answer begun")
    browser.find_element(By.ID, "cancel").click()
    done = last_done(browser)
    assert done["status"] == "cancelled" and numbers(5000).startswith(done["answer"])
    assert "cancelled (cancel)" in browser.find_element(By.ID, "messages").text
    assert not browser.find_element(By.ID, "cancel").is_enabled()


def test_a_connection_cut_in_the_middle_of_an_answer_ends_with_exactly_the_whole_answer(
        page, browser):
    open_page(browser, page.url(token("cy")))
    browser.execute_script("""
      window.seenStates = [];
      new MutationObserver(() => seenStates.push(document.getElementById('state').dataset.state))
        .observe(document.getElementById('state'), {attributes: true});""")
    send(browser, "/stream 500")
    wait(browser, lambda d: " 100 " in (t := turns(d)[-1])["answer"] and t["status"] == "running",
         "the answer's first hundred numbers")
    relayed = page.relay.accepted
    assert page.relay.cut() >= 1
    screenshot(browser, "cut-mid-answer")
    done = last_done(browser)
    screenshot(browser, "resumed")
    assert done["status"] == "completed"
    assert done["answer"] == numbers(500)  # no gap, no piece twice
    assert page.relay.accepted > relayed  # it came back through a new connection
    seen = browser.execute_script("return seenStates")
    assert "reconnecting" in seen and seen[-1] == "open"
    assert len(turns(browser)) == 1


def api(page, method: str, path: str, user: str, body: dict | None = None) -> tuple[int, Any]:
    """A request of the HTTP API straight to the server (past the relay): its status and its
    JSON body."""
    request = urllib.request.Request(
        f"{page.direct}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token(user)}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read() or b"{}")


def http(page, method: str, path: str, user: str, body: dict | None = None) -> int:
    """``api``'s status alone."""
    return api(page, method, path, user, body)[0]


def test_a_thread_replaced_while_the_page_was_away_shows_only_the_new_thread(page, browser):
    """Deleted and created again while the page cannot connect: the client's join with since
    is answered with a lower last_seq, it resets (onreset) and joins from 0; the page clears
    what it showed and shows the new thread's turns."""
    open_page(browser, page.url(token("rex")))
    send(browser, "old one")
    send(browser, "old two")
    wait(browser, lambda d: [t["answer"] for t in turns(d)] == ["old one", "old two"],
         "the old thread's answers")
    page.relay.refusing = True
    try:
        page.relay.cut()
        wait(browser, lambda d: state(d) == "reconnecting", "the page away")
        assert http(page, "DELETE", "/v1/threads/main", "rex") in (200, 204)
        assert http(page, "POST", "/v1/threads/main/messages", "rex", {"text": "new one"}) == 200
    finally:
        page.relay.refusing = False
    wait(browser, lambda d: turns(d) == [{"status": "completed", "user": "new one", "thinking":
                                          ["echoing"], "tools": [], "answer": "new one"}],
         "only the new thread shown")
    screenshot(browser, "replaced-thread")
    send(browser, "new two")
    assert last_done(browser)["answer"] == "new two"
    assert [t["user"] for t in turns(browser)] == ["new one", "new two"]


def test_two_users_in_two_browser_contexts_never_see_each_others_threads(page, open_browser):
    ann, ben = open_browser(), open_browser()
    open_page(ann, page.url(token("ann")))
    open_page(ben, page.url(token("ben")))
    send(ann, "ann's secret plan")   # both in their thread "main"
    send(ben, "ben's shopping list")
    assert last_done(ann)["answer"] == "ann's secret plan"
    assert last_done(ben)["answer"] == "ben's shopping list"
    ann.find_element(By.ID, "new-thread").click()
    wait(ann, lambda d: turns(d) == [], "a new, empty thread")
    send(ann, "ann again")
    assert last_done(ann)["answer"] == "ann again"

    wait(ann, lambda d: len(thread_list(d)) == 2, "ann's two threads listed")
    ben.refresh()  # joins "main" again from seq 0: the whole stored history
    open_page(ben, ben.current_url)
    wait(ben, lambda d: len(turns(d)) == 1, "ben's history")
    assert [t["user"] for t in turns(ben)] == ["ben's shopping list"]
    assert wait(ben, thread_list, "ben's threads listed") == ["main"]
    ann.execute_script("document.querySelector('#threads [data-thread=\"main\"]').click()")
    wait(ann, lambda d: [t["user"] for t in turns(d)] == ["ann's secret plan"], "ann's main")
    screenshot(ann, "user-ann")
    screenshot(ben, "user-ben")
    assert "ben" not in ann.find_element(By.TAG_NAME, "body").text
    assert "ann" not in ben.find_element(By.TAG_NAME, "body").text


def auth_check_message(page, bad_token: str) -> str:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{page.base}/v1/auth/check?token={bad_token}", timeout=10)
    assert refused.value.code == 401
    return json.loads(refused.value.read())["message"]


@pytest.mark.parametrize("bad_token", [token("ada", ttl=-60), "not-a-token"],
                         ids=["expired", "malformed"])
def test_a_refused_token_is_reported_in_the_page_with_the_servers_reason(page, browser,
                                                                        bad_token):
    browser.get(page.url(bad_token))
    error = wait(browser, lambda d: d.find_element(By.ID, "error").text, "an error shown")
    assert error == f"The server refused the token: {auth_check_message(page, bad_token)}"
    assert state(browser) == "closed"
    screenshot(browser, f"refused-token-{bad_token[:8]}")
    form = browser.find_element(By.ID, "token-form")
    assert form.is_displayed()
    browser.find_element(By.ID, "token-input").send_keys(token("ada"))
    form.find_element(By.TAG_NAME, "button").click()
    wait(browser, lambda d: state(d) == "open", "connected with a good token")
    assert browser.find_element(By.ID, "error").text == ""


OPEN_SOCKET = """
const [url, protocols, done] = arguments;
const ws = new WebSocket(url, protocols);
ws.onopen = () => ws.send(JSON.stringify({type: "ping", ref: 1}));
ws.onmessage = (m) => { done({opened: true, protocol: ws.protocol, reply: JSON.parse(m.data)}); ws.close(); };
ws.onclose = (e) => done({opened: false, code: e.code});
"""


@pytest.mark.parametrize("offered, protocol", [
    ([], ""), (["threadline.v1.json"], "threadline.v1.json"),
    (["x-unknown", "threadline.v1.json"], "threadline.v1.json"), (["x-unknown"], None)])
def test_the_subprotocols_chromium_offers(page, browser, offered, protocol):
    """Without an offer, or with ours among others, the connection speaks JSON. Offering only
    others fails in the browser (PROTOCOL.md): the standard requires the answer to name an
    offered subprotocol, and the server speaks none of them."""
    browser.get(f"{page.base}/v1/client.js")  # a page of the server's origin
    browser.set_script_timeout(20)
    url = f"ws://127.0.0.1:{page.relay.port}/v1/ws?token={token('ada')}"
    got = browser.execute_async_script(OPEN_SOCKET, url, offered)
    if protocol is None:
        assert got == {"opened": False, "code": 1006}
    else:
        assert got == {"opened": True, "protocol": protocol, "reply": {"type": "pong", "ref": 1}}
