"""Tool approval on the chat page (PROTOCOL.md 1.1) in headless Chromium, against ``threadline
serve --demo`` (the echo agent's ``/confirm EXPR`` asks approval for its calculator call): a
pending approval shows the tool, its arguments and Approve / Deny in every tab of the thread; a
decision in one tab shows in the other (its ``approval_decided``) with the answer; a denial's
reason is the answer; a reload shows a pending approval with its buttons (the replay rebuilds
it) and a decided one with its outcome; a tab that decides after another did (it was away) is
told gently, not shown an error. Screenshots: ``approval-*.png`` in ``artifacts/``."""

from __future__ import annotations

from selenium.webdriver.common.by import By

from tests.browser.conftest import screenshot
from tests.browser.test_chat_page import last_done, open_page, send, state, turns, wait
from tests.servers import token

APPROVALS = """return [...document.querySelectorAll('#messages .approval')].map((n) => ({
  call: n.dataset.call,
  status: n.dataset.status,
  ask: n.querySelector('.ask').textContent,
  args: n.querySelector('.args').textContent,
  buttons: [...n.querySelectorAll('button')].map((b) => [b.textContent, !b.disabled]),
  reasonField: n.querySelector('.reason') !== null,
  verdict: n.querySelector('.verdict')?.textContent ?? null,
  note: n.querySelector('.note')?.textContent ?? null,
}));"""

ARGS = '{ "expression": "6*7" }'
PENDING = {"status": "pending", "ask": "calculator asks for your approval", "args": ARGS,
           "buttons": [["Approve", True], ["Deny", True]], "reasonField": True,
           "verdict": None, "note": None}


def approvals(driver) -> list[dict]:
    return driver.execute_script(APPROVALS)


def pending(driver, what: str, args: str = ARGS) -> dict:
    """The page's only approval, once it shows pending with both buttons enabled."""
    def shown(d):
        found = approvals(d)
        return (len(found) == 1 and found[0]["status"] == "pending"
                and found[0]["buttons"] == PENDING["buttons"] and found[0])
    found = wait(driver, shown, what)
    assert {k: v for k, v in found.items() if k != "call"} == {**PENDING, "args": args}
    return found


def click(driver, call: str, label: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f'.approval[data-call="{call}"]')
    next(b for b in box.find_elements(By.TAG_NAME, "button") if b.text == label).click()


def decided(driver, status: str, what: str) -> dict:
    return wait(driver, lambda d: (a := approvals(d)) and a[-1]["status"] == status and a[-1],
                what)


def error_banner(driver) -> str:
    return driver.find_element(By.ID, "error").text


def test_an_approval_decided_in_one_tab_shows_decided_in_the_other_with_the_answer(
        page, open_browser):
    one, two = open_browser(), open_browser()
    open_page(one, page.url(token("ivy")))
    open_page(two, page.url(token("ivy")))
    send(one, "/confirm 6*7")
    asked = pending(one, "the approval in the tab that sent")
    assert pending(two, "the approval in the other tab")["call"] == asked["call"]
    assert turns(one)[-1]["status"] == "running" and turns(one)[-1]["answer"] == ""
    assert one.find_element(By.ID, "cancel").is_enabled()  # a waiting run is the active run
    screenshot(one, "approval-pending")

    click(two, asked["call"], "Approve")
    for tab in (one, two):
        done = last_done(tab)
        assert done["status"] == "completed" and done["answer"] == "42"
        assert done["tools"] == ['calculator({"expression":"6*7"}) → 42']
        shown = decided(tab, "approved", "the approval decided")
        assert shown["verdict"] == "✓ Approved." and shown["buttons"] == []
        assert shown["note"] is None and error_banner(tab) == ""
    screenshot(one, "approval-decided-in-another-tab")


def test_a_denial_with_a_reason_is_the_answer(page, browser):
    open_page(browser, page.url(token("jo")))
    send(browser, "/confirm 6*7")
    asked = pending(browser, "the approval")
    box = browser.find_element(By.CSS_SELECTOR, f'.approval[data-call="{asked["call"]}"]')
    box.find_element(By.CSS_SELECTOR, ".reason").send_keys("too risky")
    click(browser, asked["call"], "Deny")
    done = last_done(browser)
    assert done["status"] == "completed" and done["answer"] == "denied: too risky"
    assert done["tools"] == ['calculator({"expression":"6*7"}) → error: denied: too risky']
    shown = decided(browser, "denied", "the approval denied")
    assert shown["verdict"] == "✗ Denied: too risky. calculator did not run."
    assert error_banner(browser) == ""
    screenshot(browser, "approval-denied")


def test_a_reload_shows_a_pending_approval_with_its_buttons_and_a_decided_one_with_its_outcome(
        page, browser):
    open_page(browser, page.url(token("kim")))
    send(browser, "/confirm 2+3")
    asked = pending(browser, "the approval", '{ "expression": "2+3" }')
    browser.refresh()  # a new page: joins from 0, and the replay rebuilds the approval
    open_page(browser, browser.current_url)
    again = pending(browser, "the approval after the reload", '{ "expression": "2+3" }')
    assert again["call"] == asked["call"]
    screenshot(browser, "approval-pending-after-reload")
    click(browser, again["call"], "Approve")
    assert last_done(browser)["answer"] == "5"
    browser.refresh()
    open_page(browser, browser.current_url)
    wait(browser, lambda d: (t := turns(d)) and t[-1]["answer"] == "5", "the history")
    shown = decided(browser, "approved", "the decided approval after a reload")
    assert shown["verdict"] == "✓ Approved." and shown["buttons"] == []
    assert not browser.find_element(By.ID, "cancel").is_enabled()


def test_a_tab_that_decides_after_another_did_is_told_gently(page, open_browser):
    """The second tab is away (the relay refuses it) while the first approves; its Approve,
    clicked on what it still shows, is written once it is back, after its join; the server
    answers unknown_call. The page shows it decided, with a note, and no error."""
    first, second = open_browser(), open_browser()
    open_page(first, f"{page.direct}/?token={token('lu')}")  # past the relay
    open_page(second, page.url(token("lu")))
    send(first, "/confirm 6*7")
    asked = pending(first, "the approval in the first tab")
    pending(second, "the approval in the second tab")
    page.relay.refusing = True
    try:
        page.relay.cut()
        wait(second, lambda d: state(d) == "reconnecting", "the second tab away")
        click(first, asked["call"], "Approve")
        assert last_done(first)["answer"] == "42"
        click(second, asked["call"], "Approve")  # it still shows the call waiting
        sending = wait(second, lambda d: (a := approvals(d)) and a[0]["buttons"][0][0] == "Sending…"
                       and a[0], "the decision waiting for the connection")
        assert sending["buttons"] == [["Sending…", False], ["Deny", False]]
    finally:
        page.relay.refusing = False
    shown = wait(second, lambda d: (a := approvals(d)) and a[0]["status"] == "approved"
                 and a[0]["note"] and a[0], "the second tab told", timeout=40)
    assert "already settled elsewhere" in shown["note"]
    assert last_done(second)["answer"] == "42"
    assert error_banner(second) == "" and state(second) == "open"
    screenshot(second, "approval-decided-elsewhere")


def test_arguments_that_would_reorder_or_hide_text_are_shown_as_escapes(page, browser):
    """From a red-team pass: a right-to-left override in a tool's arguments made the box read
    other digits than the call has; what a person approves now reads as it is."""
    open_page(browser, page.url(token("rtl")))
    send(browser, "/confirm \u202e0001*2\u200b")
    asked = pending(browser, "the approval", args='{ "expression": "\\u202e0001*2\\u200b" }')
    box = browser.find_element(By.CSS_SELECTOR, f'.approval[data-call="{asked["call"]}"]')
    text = box.find_element(By.CSS_SELECTOR, ".args").text
    assert "\u202e" not in text and "\u200b" not in text
    screenshot(browser, "approval-escaped-arguments")
