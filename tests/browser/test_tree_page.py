"""The conversation tree on the chat page (PROTOCOL.md 1.1, "The conversation tree") in headless
Chromium, against ``threadline serve --demo`` (the echo agent answers with the message's text):
an edit makes a sibling ("< 2 / 2 >") and the old branch stays reachable with "<"; regenerate
adds an answer ("2 / 2") and "<" shows the first one again; switching at a fork changes what is
shown below it, and the composer continues the branch shown; a reload shows the branch chosen
(a fresh browser, the newest); a second tab of the same browser sees the first's edit and
regenerate live. Screenshots: ``tree-*.png`` in ``artifacts/``."""

from __future__ import annotations

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.browser.conftest import screenshot
from tests.browser.test_chat_page import last_done, numbers, open_page, send, wait
from tests.servers import token

TREE = """return [...document.querySelectorAll('#messages [data-run]')].map((n) => ({
  run: n.dataset.run,
  status: n.dataset.status,
  user: n.querySelector('.user')?.textContent ?? null,
  answer: n.querySelector('.answer').textContent,
  versions: n.querySelector('.msg-nav .count')?.textContent ?? null,
  answers: n.querySelector('.answer-nav .count')?.textContent ?? null,
}));"""

DONE = ("completed", "failed", "cancelled")


def shown(driver) -> list[dict]:
    """The turns of the branch shown, each with its message's and its answer's "k / n"."""
    return driver.execute_script(TREE)


def brief(turns: list[dict]) -> list[tuple]:
    """(message, "k / n" of the message or None, answer, "k / n" of the answer or None)."""
    return [(t["user"], t["versions"], t["answer"], t["answers"]) for t in turns]


def settled(driver, expected: list[tuple], what: str, timeout: float = 30) -> list[dict]:
    """Wait until the branch shown is ``expected`` (as ``brief``) with every run ended; the
    turns shown then (one reading of the page)."""
    return wait(driver, lambda d: (t := shown(d)) and brief(t) == expected
                and all(x["status"] in DONE for x in t) and t, what, timeout)


def click(driver, turn: int, selector: str) -> None:
    """Click ``selector`` in the ``turn``-th turn shown (again if a render replaced it)."""
    def clicked(d):
        try:
            nodes = d.find_elements(By.CSS_SELECTOR, "#messages [data-run]")
            if turn >= len(nodes):
                return False
            buttons = nodes[turn].find_elements(By.CSS_SELECTOR, selector)
            if not buttons or not buttons[0].is_enabled():
                return False
            buttons[0].click()
            return True
        except StaleElementReferenceException:
            return False
    wait(driver, clicked, f"{selector} clicked in turn {turn}")


def edit(driver, turn: int, text: str) -> None:
    """Edit the message of the ``turn``-th turn: its editor holds its text; send ``text``."""
    before = shown(driver)[turn]["user"]
    click(driver, turn, ".edit")
    box = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .editor textarea"),
               "the editor")[0]
    assert box.get_attribute("value") == before
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "#messages .editor .save").click()


def test_an_edit_makes_a_sibling_and_the_old_branch_stays_reachable(page, browser):
    open_page(browser, page.url(token("eve")))
    send(browser, "first")
    last_done(browser)
    send(browser, "second")
    last_done(browser)
    send(browser, "third")
    old = settled(browser, [("first", None, "first", None), ("second", None, "second", None),
                            ("third", None, "third", None)], "three turns")
    assert not browser.find_elements(By.CSS_SELECTOR, "#messages .nav")  # no fork yet

    edit(browser, 1, "second, <b>edited</b>")
    edited = settled(browser, [("first", None, "first", None),
                               ("second, <b>edited</b>", "2 / 2", "second, <b>edited</b>", None)],
                     "the edit shown, a sibling of the second message, its branch alone")
    assert edited[0]["run"] == old[0]["run"] and edited[1]["run"] != old[1]["run"]
    assert not browser.find_elements(By.CSS_SELECTOR, "#messages .user b")  # text, never HTML
    screenshot(browser, "tree-edited")

    click(browser, 1, ".msg-nav .prev")  # "<": the old branch, whole
    back = settled(browser, [("first", None, "first", None), ("second", "1 / 2", "second", None),
                             ("third", None, "third", None)], "the old branch again")
    assert [t["run"] for t in back] == [t["run"] for t in old]
    assert not browser.find_element(By.CSS_SELECTOR, "#messages .msg-nav .prev").is_enabled()
    click(browser, 1, ".msg-nav .next")
    settled(browser, [("first", None, "first", None),
                      ("second, <b>edited</b>", "2 / 2", "second, <b>edited</b>", None)],
            "the edit again with >")

    # an edit of the first message: a second root, and the whole conversation under the first
    edit(browser, 0, "first, again")
    settled(browser, [("first, again", "2 / 2", "first, again", None)], "a second root")
    click(browser, 0, ".msg-nav .prev")
    settled(browser, [("first", "1 / 2", "first", None),
                      ("second, <b>edited</b>", "2 / 2", "second, <b>edited</b>", None)],
            "the first root with the branch last shown under it")


def test_regenerate_adds_an_answer_and_the_first_stays_reachable(page, browser):
    """The first answer is cut short (cancelled) so the two answers differ; the follow-up
    under the first answer is shown only with it."""
    open_page(browser, page.url(token("reg")))
    send(browser, "/stream 1000")
    wait(browser, lambda d: shown(d)[-1]["answer"].startswith("1 2 3"), "the answer begun")
    browser.find_element(By.ID, "cancel").click()
    first = last_done(browser)
    assert first["status"] == "cancelled"
    partial = first["answer"]
    assert numbers(1000).startswith(partial) and partial != numbers(1000)
    send(browser, "after the first answer")
    settled(browser, [("/stream 1000", None, partial, None),
                      ("after the first answer", None, "after the first answer", None)],
            "the follow-up")
    runs = [t["run"] for t in shown(browser)]

    # a shorter stream would do, but the message is what is answered again: the same 1000
    click(browser, 0, ".regenerate")
    again = wait(browser, lambda d: (t := shown(d)) and len(t) == 1 and t[0]["answers"] == "2 / 2"
                 and t[0]["run"] not in runs and t[0], "the second answer, alone on its branch")
    assert again["user"] == "/stream 1000" and again["versions"] is None
    settled(browser, [("/stream 1000", None, numbers(1000), "2 / 2")], "the second answer whole",
            timeout=40)
    screenshot(browser, "tree-regenerated")

    click(browser, 0, ".answer-nav .prev")
    back = settled(browser, [("/stream 1000", None, partial, "1 / 2"),
                             ("after the first answer", None, "after the first answer", None)],
                   "the first answer and what followed it")
    assert [t["run"] for t in back] == runs
    assert "cancelled (cancel)" in browser.find_element(By.ID, "messages").text

    # the composer continues the branch shown, not the newest
    send(browser, "more on the first")
    settled(browser, [("/stream 1000", None, partial, "1 / 2"),
                      ("after the first answer", None, "after the first answer", None),
                      ("more on the first", None, "more on the first", None)],
            "a message sent on the branch shown")
    click(browser, 0, ".answer-nav .next")
    settled(browser, [("/stream 1000", None, numbers(1000), "2 / 2")], "the second answer's branch")


def test_a_reload_shows_the_branch_chosen_and_a_fresh_browser_the_newest(page, browser,
                                                                         open_browser):
    url = page.url(token("rel"))
    open_page(browser, url)
    for text in ("alpha", "beta", "gamma"):
        send(browser, text)
        last_done(browser)
    edit(browser, 1, "beta 2")
    settled(browser, [("alpha", None, "alpha", None), ("beta 2", "2 / 2", "beta 2", None)],
            "the edit")
    send(browser, "delta")  # under the edit
    newest = settled(browser, [("alpha", None, "alpha", None), ("beta 2", "2 / 2", "beta 2", None),
                               ("delta", None, "delta", None)], "delta under the edit")
    click(browser, 0, ".regenerate")
    settled(browser, [("alpha", None, "alpha", "2 / 2")], "alpha answered again")
    click(browser, 0, ".answer-nav .prev")
    click(browser, 1, ".msg-nav .prev")
    chosen = [("alpha", None, "alpha", "1 / 2"), ("beta", "1 / 2", "beta", None),
              ("gamma", None, "gamma", None)]
    before = settled(browser, chosen, "the old branch chosen")

    browser.refresh()
    open_page(browser, browser.current_url)
    after = settled(browser, chosen, "the branch chosen, after the reload")
    assert [t["run"] for t in after] == [t["run"] for t in before]
    screenshot(browser, "tree-after-reload")

    other = open_browser()  # its own profile: nothing chosen there, so the newest run's branch
    open_page(other, url)
    fresh = settled(other, [("alpha", None, "alpha", "2 / 2")], "the newest branch")
    assert fresh[0]["run"] not in {t["run"] for t in before}
    click(other, 0, ".answer-nav .prev")  # the first answer: below it, toward its newest run
    below = settled(other, [("alpha", None, "alpha", "1 / 2"), ("beta 2", "2 / 2", "beta 2", None),
                            ("delta", None, "delta", None)], "the first answer's newest branch")
    assert [t["run"] for t in below] == [t["run"] for t in newest]


def test_a_second_tab_sees_the_edit_and_the_regenerate_of_the_first_live(page, browser):
    """Two tabs of one browser (one profile: one localStorage). The second tab follows the
    first's edit live; moved back to the old branch, it is switched live to the branch of the
    first tab's regenerate (a new answer shows its branch, whichever tab asked for it)."""
    url = page.url(token("tab"))
    open_page(browser, url)
    first_tab = browser.current_window_handle
    send(browser, "hello")
    last_done(browser)
    send(browser, "how are you")
    last_done(browser)
    browser.switch_to.new_window("tab")
    second_tab = browser.current_window_handle
    try:
        open_page(browser, url)
        settled(browser, [("hello", None, "hello", None),
                          ("how are you", None, "how are you", None)],
                "the history in the second tab")
        browser.switch_to.window(first_tab)
        edit(browser, 1, "how is it going")
        edited = [("hello", None, "hello", None),
                  ("how is it going", "2 / 2", "how is it going", None)]
        settled(browser, edited, "the edit in the first tab")
        browser.switch_to.window(second_tab)
        settled(browser, edited, "the edit, live, in the second tab")
        screenshot(browser, "tree-second-tab-edit")
        click(browser, 1, ".msg-nav .prev")  # each tab moves on its own
        settled(browser, [("hello", None, "hello", None),
                          ("how are you", "1 / 2", "how are you", None)],
                "the old branch in the second tab")

        browser.switch_to.window(first_tab)
        assert brief(shown(browser)) == edited
        click(browser, 1, ".regenerate")
        regenerated = [("hello", None, "hello", None),
                       ("how is it going", "2 / 2", "how is it going", "2 / 2")]
        mine = settled(browser, regenerated, "the regenerate in the first tab")
        browser.switch_to.window(second_tab)
        seen = settled(browser, regenerated, "the regenerate, live, in the second tab")
        assert [t["run"] for t in seen] == [t["run"] for t in mine]
        screenshot(browser, "tree-second-tab-regenerate")
    finally:
        browser.switch_to.window(second_tab)
        browser.close()
        browser.switch_to.window(first_tab)
