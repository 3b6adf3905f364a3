"""Tokens and budgets on the chat page (PROTOCOL.md 1.1, "Usage and budgets") in headless
Chromium, against ``threadline serve --demo --limit user_tokens_per_day=20`` (the echo agent's
``/usage`` answers ``ok`` and reports 6 input and 2 output tokens of the model ``echo``): each
finished answer shows its tokens; the third ``/usage`` crosses the budget (8 + 8 + 8 > 20) and
the next send is refused ``budget_exceeded``: the page says the budget is spent and when it
refills, in the reader's local time (the browser set to Asia/Kolkata, UTC+5:30, with no summer
time: the refill at 00:00 UTC shows 05:30), and the text typed stays in its box; a reload shows
the tokens of the answers restored from the history; ``client.usage()`` reads GET /v1/usage;
a run queued before the budget was spent and started after it ends ``agent_failed``
``budget_exceeded`` and says so. Screenshots: ``usage-*.png`` in ``artifacts/``."""

from __future__ import annotations

import datetime

import pytest
from selenium.webdriver.common.by import By

from tests.browser.conftest import screenshot, serve_page
from tests.browser.test_chat_page import open_page, send, wait
from tests.servers import token

BUDGET = 20
LINE = "8 tokens · 6 in · 2 out · echo"  # "/usage": 6 in, 2 out, none cached, model "echo"
DONE = ("completed", "failed", "cancelled")

SHOWN = """return [...document.querySelectorAll('#messages [data-run]')].map((n) => ({
  status: n.dataset.status,
  user: n.querySelector('.user')?.textContent ?? null,
  answer: n.querySelector('.answer').textContent,
  usage: n.querySelector('.usage')?.textContent ?? null,
  outcome: n.querySelector('.outcome')?.textContent ?? null,
}));"""

NOTICE = """const note = document.querySelector('#notice .budget-note');
if (!note) return null;
const time = note.querySelector('time');
return {alert: note.closest('[role="alert"]')?.id ?? null, code: note.dataset.code,
        text: note.querySelector('.text').textContent, datetime: time?.dateTime ?? null,
        local: time?.textContent ?? null, visible: note.getClientRects().length > 0};"""

# The page's own client module, in the page (the same origin), asked for GET /v1/usage.
CLIENT_USAGE = """const [token, done] = arguments;
import('/v1/client.js').then(async ({connect}) => {
  const client = connect({token, onerror: () => {}});
  try { done(await client.usage()); } catch (e) { done({error: e.code, message: e.message}); }
  finally { client.close(); }
});"""


@pytest.fixture(scope="module")
def budget_page():
    """A server of its own with a budget of 20 tokens per user per day, behind a relay."""
    yield from serve_page("--limit", f"user_tokens_per_day={BUDGET}")


def shown(driver) -> list[dict]:
    return driver.execute_script(SHOWN)


def notice(driver) -> dict | None:
    return driver.execute_script(NOTICE)


def in_kolkata(driver) -> None:
    """The browser's time zone set to Asia/Kolkata (UTC+5:30 all year), its language en-US."""
    driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Kolkata"})
    driver.execute_cdp_cmd("Emulation.setLocaleOverride", {"locale": "en-US"})


def answered(driver, count: int, what: str) -> list[dict]:
    """Wait until ``count`` turns are shown, every run ended; the turns then."""
    return wait(driver, lambda d: (t := shown(d)) and len(t) == count
                and all(x["status"] in DONE for x in t) and t, what)


def usage_turn(text: str = "/usage") -> dict:
    return {"status": "completed", "user": text, "answer": "ok", "usage": LINE, "outcome": None}


def test_each_answer_shows_its_tokens_and_a_send_over_the_budget_says_when_it_refills(
        budget_page, browser):
    in_kolkata(browser)
    user_token = token("bea")
    open_page(browser, budget_page.url(user_token))
    assert browser.execute_script("return Intl.DateTimeFormat().resolvedOptions().timeZone") \
        in ("Asia/Kolkata", "Asia/Calcutta")  # ICU's canonical name is the old one
    for sent in range(1, 4):  # 8, 16, then 24 tokens: the third crosses the budget
        send(browser, "/usage")
        assert answered(browser, sent, f"answer {sent}") == [usage_turn()] * sent
    assert notice(browser) is None

    box = browser.find_element(By.ID, "text")
    box.send_keys("/usage, once more")
    browser.find_element(By.ID, "send").click()
    note = wait(browser, notice, "the budget notice")
    screenshot(browser, "usage-budget-spent")
    assert note["alert"] == "notice" and note["code"] == "budget_exceeded" and note["visible"]
    assert box.get_attribute("value") == "/usage, once more"  # the typed text is kept
    assert browser.find_element(By.ID, "error").text == ""  # the notice, not the error line
    assert len(shown(browser)) == 3  # nothing was stored

    # The refill: the end of the server's current UTC day, read from its message.
    refills = datetime.datetime.fromisoformat(note["datetime"].replace("Z", "+00:00"))
    now, minute = datetime.datetime.now(datetime.timezone.utc), datetime.timedelta(minutes=1)
    assert refills.tzinfo is not None and refills.time() == datetime.time(0, 0)
    assert now - minute < refills <= now + datetime.timedelta(days=1) + minute
    # ... shown in the reader's time: 05:30 the same day in Kolkata.
    local = " ".join(note["local"].replace("\u202f", " ").split())
    assert f"{refills:%b} {refills.day}, {refills.year}" in local, local
    assert "05:30 AM" in local and "GMT+5:30" in local, local
    assert note["text"] == (f"Your token budget for this day ({BUDGET} tokens) is spent. "
                            f"It refills on {note['local']} (your time). "
                            "Nothing was sent: your message is still in the box.")
    assert not any(iso in note["text"] for iso in (note["datetime"], "T00:00"))

    # client.usage(): GET /v1/usage, with the page's own client
    browser.set_script_timeout(20)
    report = browser.execute_async_script(CLIENT_USAGE, user_token)
    assert report["type"] == "usage"
    assert report["day"] == {"input_tokens": 18, "output_tokens": 6, "budget": BUDGET}
    assert report["month"] == {"input_tokens": 18, "output_tokens": 6, "budget": None}

    browser.refresh()  # the answers restored from the history, with their tokens
    open_page(browser, browser.current_url)
    assert answered(browser, 3, "the history") == [usage_turn()] * 3
    screenshot(browser, "usage-after-reload")
    assert notice(browser) is None


def test_a_run_that_starts_after_the_budget_is_spent_says_it_was_stopped(budget_page, browser):
    """Four ``/usage`` wait behind a calculator call waiting for approval, each accepted while
    nothing is spent; approved, they run one after the other: 8, 16, 24 tokens, and the fourth
    is stopped before its model call (``agent_failed`` ``budget_exceeded``, no tokens)."""
    open_page(browser, budget_page.url(token("cal")))
    send(browser, "/confirm 6*7")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .approval button.approve"),
         "the approval asked")
    for _ in range(4):
        send(browser, "/usage")
    assert [t["status"] for t in shown(browser)] == ["running"] + ["queued"] * 4
    browser.find_element(By.CSS_SELECTOR, "#messages .approval button.approve").click()
    turns = answered(browser, 5, "every run ended")
    screenshot(browser, "usage-stopped-by-budget")
    assert turns[0] == {"status": "completed", "user": "/confirm 6*7", "answer": "42",
                        "usage": None, "outcome": None}  # no usage reported: no tokens line
    assert turns[1:4] == [usage_turn()] * 3
    assert turns[4] == {"status": "failed", "user": "/usage", "answer": "", "usage": None,
                        "outcome": "Stopped: the token budget is spent"}
