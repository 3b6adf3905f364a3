"""The chat page as people use it (issue 25), in headless Chromium against ``threadline serve
--demo`` (the echo agent answers with the message's text, so Markdown sent comes back as a
Markdown answer):

- at 1280x800, 390x844 and 360x740 nothing widens the page (a long word, a long URL, a code
  line and a wide table scroll in their own box), and the Send button is inside the viewport
  and not covered; a Markdown message and its answer are rendered as elements (a highlighted
  code block with its copy button top right, a table) at every width;
- under 720 px the threads are a drawer behind the menu button: opened by click or keyboard,
  closed by Escape, by choosing a thread, or by a click beside it;
- dark mode (``prefers-color-scheme: dark``, emulated through CDP) darkens the page;
- the token given as ``?token=`` leaves the address bar at once, and a reload still connects;
- a message sent while the connection is down is shown at once as waiting ("sending…"), and
  sent once it is back: shown once, stored once; also one whose connection dropped before its
  answer, and one kept across a reload (and sent again after one: still stored once);
- threads show their titles and when they were last updated; one is deleted after a
  confirmation (kept when the dialog is cancelled or dismissed with Escape), and is gone from
  ``GET /v1/threads``;
- messages and answers show their time; the end of an answer is announced once in the
  ``aria-live`` region, not each piece; Enter sends, Shift+Enter is a new line.

Screenshots: ``layout-*.png`` in ``artifacts/``; with ``THREADLINE_DOCS_SCREENSHOTS=1``, also
``docs/images/page-wide.png`` and ``docs/images/page-narrow.png`` (the README's). Every wait is bounded and polls a condition.
"""

from __future__ import annotations

import os
import json
import shutil
import time
from pathlib import Path

from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.browser.conftest import screenshot
from tests.browser.test_chat_page import api, last_done, open_page, send, state, turns, wait
from tests.servers import token

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"

MARKDOWN = """Here is **the plan**, with `inline code` and a [link](https://example.com/docs):

```python
def greet(name: str) -> str:
    # a line long enough to scroll inside its block rather than widen the page, at any width
    return f"hello {name}, " + ", ".join(str(n) for n in range(100)) + " and so on and so forth, and on, and on, and on, and on, and on, and on"
```

| step | what | who | when | a column with a long heading |
|------|------|-----|------|------------------------------|
| 1 | write the tests | ada | Monday | nothing_breaks_this_long_cell_text_0123456789 |
| 2 | make them pass | bob | Tuesday | ok |

A long word: Pneumonoultramicroscopicsilicovolcanoconiosis_and_0123456789_and_0123456789_and_0123456789
and a long URL: https://example.com/a/very/long/path/that/is/one/word/0123456789/0123456789/0123456789"""

LAYOUT = """const doc = document.documentElement, conversation = document.getElementById('conversation');
const send = document.getElementById('send').getBoundingClientRect();
const x = send.left + send.width / 2, y = send.top + send.height / 2;
return {scrollWidth: doc.scrollWidth, bodyScrollWidth: document.body.scrollWidth,
        innerWidth: innerWidth, innerHeight: innerHeight,
        conversationOverflow: conversation.scrollWidth - conversation.clientWidth,
        send: {left: send.left, right: send.right, top: send.top, bottom: send.bottom},
        sendOnTop: document.getElementById('send').contains(document.elementFromPoint(x, y))};"""

RENDERED = """const out = {};
const last = document.querySelector('#messages [data-run]:last-child');
for (const [name, root] of [['answer', last?.querySelector('.answer')], ['user', last?.querySelector('.user')]]) {
  const block = root?.querySelector('.md-code'), pre = block?.querySelector('pre');
  const copy = block?.querySelector('button.copy'), table = root?.querySelector('.md-table table');
  const box = block?.getBoundingClientRect(), button = copy?.getBoundingClientRect();
  out[name] = root && {
    markdown: root.classList.contains('markdown'),
    strong: root.querySelector('p strong')?.textContent ?? null,
    link: root.querySelector('a[href]') && {href: root.querySelector('a[href]').href,
                                            target: root.querySelector('a[href]').target},
    code: pre?.querySelector('code')?.textContent.split('\\n')[0] ?? null,
    highlighted: block?.querySelectorAll('code [class^="hljs-"]').length ?? 0,
    copy: copy?.textContent ?? null,
    copyTopRight: !!(box && button && box.right - button.right < 24 && button.top - box.top < 24
                     && button.left > box.left + box.width / 2),
    codeScrolls: pre ? pre.scrollWidth > pre.clientWidth : null,
    codeInside: pre ? pre.getBoundingClientRect().right <= root.getBoundingClientRect().right + 1 : null,
    headers: table ? [...table.querySelectorAll('th')].map((th) => th.textContent) : [],
    rows: table ? table.querySelectorAll('tbody tr').length : 0,
  };
}
return out;"""


def viewport(driver, width: int, height: int) -> None:
    """The page's viewport set to ``width`` x ``height`` CSS pixels (the window stays); under
    720 px as a phone's (``mobile``: the page's viewport meta decides its layout width, so
    the page must be loaded)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 720})
    wait(driver, lambda d: d.execute_script("return innerWidth") == width, f"{width} px wide")


def fits(driver, what: str, send_on_top: bool = True) -> dict:
    """The page does not overflow sideways, the conversation neither, and the Send button is
    inside the viewport and on top (not covered: ``send_on_top``; the open drawer's scrim
    covers it)."""
    layout = driver.execute_script(LAYOUT)
    assert layout["scrollWidth"] <= layout["innerWidth"], (what, layout)
    assert layout["bodyScrollWidth"] <= layout["innerWidth"], (what, layout)
    assert layout["conversationOverflow"] <= 0, (what, layout)
    send_box = layout["send"]
    assert 0 <= send_box["left"] and send_box["right"] <= layout["innerWidth"], (what, layout)
    assert 0 <= send_box["top"] and send_box["bottom"] <= layout["innerHeight"], (what, layout)
    assert layout["sendOnTop"] == send_on_top, (what, layout)
    return layout


def type_and_send(driver, text: str) -> None:
    """``text`` (Markdown with new lines) put in the box as it is, then Send clicked."""
    count = len(turns(driver))
    driver.execute_script("document.getElementById('text').value = arguments[0]", text)
    driver.find_element(By.ID, "send").click()
    wait(driver, lambda d: len(turns(d)) == count + 1, "the message shown")


def http(page, method: str, path: str, user: str, body: dict | None = None) -> dict:
    """A request of the HTTP API straight to the server (past the relay): its JSON body."""
    return api(page, method, path, user, body)[1]


def stored_messages(page, user: str, thread: str) -> list[str]:
    """The texts of the thread's stored user_message events, in order."""
    events = http(page, "GET", f"/v1/threads/{thread}/events?limit=1000", user)["events"]
    return [e["data"]["text"] for e in events if e["event"] == "user_message"]


def stored_threads(page, user: str) -> dict[str, str | None]:
    return {t["thread_id"]: t["title"] for t in http(page, "GET", "/v1/threads", user)["threads"]}


def current_thread(driver) -> str:
    return driver.execute_script(
        "return document.querySelector('#threads button.open[aria-current=\"true\"]')?.dataset.thread ?? null")


def keep_for_docs(driver, name: str) -> None:
    """A screenshot of the viewport, in artifacts/; also as docs/images/``name`` (the README's)
    when ``THREADLINE_DOCS_SCREENSHOTS=1``, so that a test run leaves the repository as it was
    and the README's pictures change when someone means them to."""
    taken = screenshot(driver, f"layout-{name.removesuffix('.png')}")
    if os.environ.get("THREADLINE_DOCS_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(taken, DOCS_IMAGES / name)


def rendered(driver, what: str) -> dict:
    """The Markdown message and its answer, once the answer is done and both are elements."""
    return wait(driver, lambda d: (r := d.execute_script(RENDERED)) and r["answer"]
                and r["answer"]["code"] and r["answer"]["rows"] and r["user"]["code"] and r, what)


def check_rendered(got: dict, width: int) -> None:
    for name in ("user", "answer"):
        shown = got[name]
        assert shown["markdown"] and shown["strong"] == "the plan", (name, width, shown)
        assert shown["link"] == {"href": "https://example.com/docs", "target": "_blank"}, shown
        assert shown["code"] == "def greet(name: str) -> str:", (name, width, shown)
        assert shown["highlighted"] > 0 and shown["copy"] == "Copy", (name, width, shown)
        assert shown["copyTopRight"], (name, width, shown)
        assert shown["codeScrolls"] and shown["codeInside"], (name, width, shown)  # not wider
        assert shown["headers"] == ["step", "what", "who", "when", "a column with a long heading"]
        assert shown["rows"] == 2


def test_a_markdown_answer_fits_wide_and_narrow_screens(page, open_browser):
    driver = open_browser()
    viewport(driver, 1280, 800)
    user = "mia"
    for thread, text in (("trip", "Plan a week in Lisbon in May"), ("shopping", "Groceries for the week")):
        http(page, "POST", f"/v1/threads/{thread}/messages", user, {"text": text})
    open_page(driver, page.url(token(user)))
    driver.find_element(By.ID, "new-thread").click()
    wait(driver, lambda d: turns(d) == [], "a new thread")
    send(driver, "A greeting in Python, and the plan as a table")  # the thread's title
    last_done(driver)
    type_and_send(driver, MARKDOWN)
    assert last_done(driver)["status"] == "completed"
    check_rendered(rendered(driver, "the Markdown rendered"), 1280)
    wait(driver, lambda d: [r["name"] for r in thread_rows(d)] == [
        "A greeting in Python, and the plan as a table", "Groceries for the week",
        "Plan a week in Lisbon in May"], "the threads listed by their titles, newest first")
    assert driver.find_element(By.ID, "thread-title").text == "A greeting in Python, and the plan as a table"
    assert driver.find_element(By.ID, "sidebar").is_displayed()
    assert not driver.find_element(By.ID, "menu").is_displayed()  # no drawer when wide
    fits(driver, "1280")
    keep_for_docs(driver, "page-wide.png")  # scrolled to the end: the answer

    for width, height in ((390, 844), (360, 740)):
        viewport(driver, width, height)
        wait(driver, lambda d: not d.find_element(By.ID, "sidebar").is_displayed(), "the drawer shut")
        assert driver.find_element(By.ID, "menu").is_displayed()
        check_rendered(rendered(driver, f"the Markdown at {width}"), width)
        fits(driver, f"{width}")
        if width == 390:
            driver.execute_script(  # the answer from its top: its text, code block and table
                "document.querySelector('#messages .answer').scrollIntoView({block: 'start'})")
            keep_for_docs(driver, "page-narrow.png")
        else:
            screenshot(driver, f"layout-{width}")

    # a wide table and a long code line in a message typed at 360: still nothing overflows
    type_and_send(driver, "| " + " | ".join(f"column {n}" for n in range(12)) + " |\n|"
                  + "---|" * 12 + "\n| " + " | ".join(str(n) for n in range(12)) + " |")
    last_done(driver)
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages .answer .md-table")) == 2,
         "the second table")
    fits(driver, "360, a wide table")


def test_under_720_px_the_threads_are_a_drawer(page, open_browser):
    driver = open_browser()
    user = "dan"
    for thread, text in (("first", "The first thread"), ("second", "The second thread")):
        http(page, "POST", f"/v1/threads/{thread}/messages", user, {"text": text})
    open_page(driver, page.url(token(user)))
    viewport(driver, 390, 844)  # a phone's (the page's own viewport meta applies)
    wait(driver, lambda d: current_thread(d) == "second", "the newest thread shown")
    sidebar, menu = driver.find_element(By.ID, "sidebar"), driver.find_element(By.ID, "menu")
    drawer_in_view = ("const r = document.getElementById('sidebar').getBoundingClientRect();"
                      "return r.left >= 0 && r.right <= innerWidth")

    def opened(how) -> None:
        how()
        wait(driver, lambda d: sidebar.is_displayed() and d.execute_script(drawer_in_view), "open")
        assert menu.get_attribute("aria-expanded") == "true"
        assert driver.execute_script("return document.getElementById('sidebar')"
                                     ".contains(document.activeElement)")  # focus in the drawer

    def closed(what: str) -> None:
        wait(driver, lambda d: not sidebar.is_displayed(), what)
        assert menu.get_attribute("aria-expanded") == "false"
        fits(driver, what)

    wait(driver, lambda d: not sidebar.is_displayed(), "the drawer shut at 390 px")
    fits(driver, "closed")
    opened(lambda: menu.send_keys(Keys.ENTER))  # by keyboard
    screenshot(driver, "layout-drawer")
    fits(driver, "the drawer open", send_on_top=False)
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    closed("closed by Escape")
    assert driver.switch_to.active_element == menu  # focus back on the menu button

    opened(menu.click)
    driver.find_element(By.CSS_SELECTOR, '#threads button.open[data-thread="first"]').click()
    closed("closed by choosing a thread")
    wait(driver, lambda d: current_thread(d) == "first" and turns(d)
         and turns(d)[0]["user"] == "The first thread", "the thread chosen shown")
    assert driver.find_element(By.ID, "thread-title").text == "The first thread"

    opened(menu.click)
    width, height = driver.execute_script("return [innerWidth, innerHeight]")
    actions = ActionBuilder(driver)  # a click beside the drawer, on the dimmed conversation
    actions.pointer_action.move_to_location(width - 12, height // 2).click()
    actions.perform()
    closed("closed by a click beside it")
    assert current_thread(driver) == "first"


def background(driver) -> tuple[int, ...]:
    color = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    return tuple(int(float(c)) for c in color[color.index("(") + 1:-1].split(",")[:3])


def luminance(rgb: tuple[int, ...]) -> float:
    return (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255


def test_dark_mode_follows_the_color_scheme(page, open_browser):
    driver = open_browser()
    viewport(driver, 1280, 800)
    open_page(driver, page.url(token("nox")))
    type_and_send(driver, MARKDOWN)
    last_done(driver)
    rendered(driver, "the Markdown rendered")
    assert luminance(background(driver)) > 0.9  # light by default
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    wait(driver, lambda d: luminance(background(d)) < 0.15, "a dark background")
    colors = driver.execute_script("""const c = (s, p) => getComputedStyle(document.querySelector(s))[p];
      return {ink: c('body', 'color'), answer: c('#messages .answer', 'backgroundColor'),
              code: c('#messages .answer .md-code', 'backgroundColor'),
              text: c('#text', 'backgroundColor')};""")
    for name in ("answer", "code", "text"):
        rgb = tuple(int(float(c)) for c in colors[name][colors[name].index("(") + 1:-1].split(",")[:3])
        assert luminance(rgb) < 0.2, (name, colors)
    ink = tuple(int(c) for c in colors["ink"][4:-1].split(","))
    assert luminance(ink) > 0.8, colors
    fits(driver, "dark")
    screenshot(driver, "layout-dark-wide")
    viewport(driver, 390, 844)
    fits(driver, "dark, narrow")
    screenshot(driver, "layout-dark-narrow")


def test_the_token_leaves_the_address_bar_and_a_reload_still_connects(page, open_browser):
    driver = open_browser()
    user_token = token("tia")
    open_page(driver, page.url(user_token))
    assert "token" not in driver.current_url and user_token not in driver.current_url
    assert driver.execute_script("return location.search") == ""
    send(driver, "still here after a reload")
    last_done(driver)
    driver.refresh()
    wait(driver, lambda d: state(d) == "open", "connected again, with no token in the address")
    assert "token" not in driver.current_url
    wait(driver, lambda d: [t["user"] for t in turns(d)] == ["still here after a reload"], "history")


def outbox(driver) -> list[dict]:
    return driver.execute_script("""return [...document.querySelectorAll('#outbox .outbox-item')].map((n) => ({
      id: n.dataset.clientMsgId, text: n.querySelector('.bubble').textContent,
      status: n.querySelector('.sending').textContent,
      opacity: Number(getComputedStyle(n).opacity),
      visible: n.getBoundingClientRect().height > 0}));""")


def test_a_message_sent_while_disconnected_waits_and_is_sent_once(page, open_browser):
    driver = open_browser()
    user = "pam"
    open_page(driver, page.url(token(user)))
    send(driver, "before the cut")
    last_done(driver)
    page.relay.refusing = True
    try:
        page.relay.cut()
        wait(driver, lambda d: state(d) == "reconnecting", "the page away")
        box = driver.find_element(By.ID, "text")
        box.send_keys("typed while **offline**", Keys.ENTER)  # Enter sends
        (waiting,) = wait(driver, outbox, "shown at once, waiting")
        assert waiting["text"] == "typed while offline" and waiting["status"].startswith("sending")
        assert waiting["visible"] and waiting["opacity"] < 1  # greyed
        assert box.get_attribute("value") == ""
        assert len(turns(driver)) == 1  # not a message of the conversation yet
        screenshot(driver, "layout-waiting-to-send")
        assert stored_messages(page, user, "main") == ["before the cut"]
    finally:
        page.relay.refusing = False
    wait(driver, lambda d: [t["user"] for t in turns(d)] == ["before the cut", "typed while offline"]
         and outbox(d) == [], "sent once the connection is back, and shown as the message")
    assert last_done(driver)["answer"] == "typed while offline"
    assert stored_messages(page, user, "main") == ["before the cut", "typed while **offline**"]
    assert driver.execute_script("return sessionStorage.getItem('threadline.outbox:pam')") is None


# Test-only, in the browser (the page is not changed): while 'test.block-sockets' is set in
# localStorage, a WebSocket to /v1/ws goes to a path that refuses it (the page loads; only its
# connection stays down, also across a reload); while 'test.swallow-sends' is, a `send` frame
# written is dropped (the request waits for an answer that never comes).
TEST_SOCKETS = """(() => {
  const Real = window.WebSocket, write = Real.prototype.send;
  Real.prototype.send = function (data) {
    if (localStorage.getItem('test.swallow-sends') && String(data).startsWith('{"type":"send"')) return;
    return write.call(this, data);
  };
  window.WebSocket = function (url, protocols) {
    if (localStorage.getItem('test.block-sockets')) url = String(url).replace('/v1/ws', '/v1/blocked');
    return new Real(url, protocols);
  };
  window.WebSocket.prototype = Real.prototype;
  Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
})();"""


def test_a_message_lost_on_its_way_is_shown_waiting_and_sent_once(page, open_browser):
    """Written, then the connection drops before its answer: it shows as waiting at once and
    the composer takes the next message (also waiting); once the connection is back, the
    client writes both again and each is stored once."""
    driver = open_browser()
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TEST_SOCKETS})
    user = "lou"
    open_page(driver, page.url(token(user)))
    send(driver, "first, answered")
    last_done(driver)
    driver.execute_script("localStorage.setItem('test.swallow-sends', '1')")
    box = driver.find_element(By.ID, "text")
    box.send_keys("written, never answered", Keys.ENTER)
    wait(driver, lambda d: not d.find_element(By.ID, "send").is_enabled(), "the send awaiting its answer")
    assert outbox(driver) == []  # connected: not a waiting message (yet)
    page.relay.refusing = True
    try:
        page.relay.cut()
        wait(driver, lambda d: [w["text"] for w in outbox(d)] == ["written, never answered"]
             and d.find_element(By.ID, "send").is_enabled(), "moved to the waiting messages")
        driver.execute_script("localStorage.removeItem('test.swallow-sends')")
        box.send_keys("and one more", Keys.ENTER)
        wait(driver, lambda d: [w["text"] for w in outbox(d)] == ["written, never answered", "and one more"],
             "the next one waiting too")
        assert stored_messages(page, user, "main") == ["first, answered"]
    finally:
        page.relay.refusing = False
    expected = ["first, answered", "written, never answered", "and one more"]
    wait(driver, lambda d: [t["user"] for t in turns(d)] == expected and outbox(d) == [],
         "both sent once the connection is back")
    assert stored_messages(page, user, "main") == expected


def test_a_waiting_message_is_kept_across_a_reload_and_sent_once(page, open_browser):
    driver = open_browser()
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TEST_SOCKETS})
    user = "rui"
    open_page(driver, page.url(token(user)))
    driver.find_element(By.ID, "new-thread").click()
    thread = wait(driver, lambda d: (t := d.execute_script(
        "return document.getElementById('thread-title').textContent")).startswith("chat-") and t,
        "a new thread")
    driver.execute_script("localStorage.setItem('test.block-sockets', '1')")
    page.relay.cut()
    wait(driver, lambda d: state(d) == "reconnecting", "the page away")
    send_box = driver.find_element(By.ID, "text")
    send_box.send_keys("line one", Keys.SHIFT, Keys.ENTER, Keys.NULL, "line two")  # a new line
    assert send_box.get_attribute("value") == "line one\nline two" and outbox(driver) == []
    send_box.send_keys(Keys.ENTER)
    (before,) = wait(driver, outbox, "waiting")
    kept = driver.execute_script(f"return sessionStorage.getItem('threadline.outbox:{user}')")
    assert json.loads(kept)[0]["id"] == before["id"]

    driver.refresh()  # the page loads; its connection stays down
    (after,) = wait(driver, outbox, "still waiting after the reload")
    assert after["id"] == before["id"] and after["text"] == "line one\nline two"
    assert after["status"].startswith("sending") and state(driver) != "open"
    assert "token" not in driver.current_url
    screenshot(driver, "layout-waiting-after-reload")
    assert stored_messages(page, user, thread) == []  # nothing sent yet

    driver.execute_script("localStorage.removeItem('test.block-sockets')")
    wait(driver, lambda d: [t["user"] for t in turns(d)] == ["line one\nline two"] and outbox(d) == [],
         "sent once connected, then shown as the message", timeout=40)
    wait(driver, lambda d: current_thread(d) == thread, "the thread listed as the one shown")
    assert stored_messages(page, user, thread) == ["line one\nline two"]

    # The same message again (as if the page had been reloaded before its answer came): the
    # same client_msg_id, so the server answers the first `accepted` and stores nothing.
    driver.execute_script(f"sessionStorage.setItem('threadline.outbox:{user}', arguments[0])", kept)
    driver.refresh()
    wait(driver, lambda d: state(d) == "open" and outbox(d) == []
         and d.execute_script(f"return sessionStorage.getItem('threadline.outbox:{user}')") is None
         and len(turns(d)) == 1, "the copy settled")
    assert stored_messages(page, user, thread) == ["line one\nline two"]
    assert [t["user"] for t in turns(driver)] == ["line one\nline two"]


def thread_rows(driver) -> list[dict]:
    return driver.execute_script("""return [...document.querySelectorAll('#threads li')].map((li) => ({
      id: li.querySelector('button.open').dataset.thread,
      name: li.querySelector('.name').textContent,
      updated: li.querySelector('time.updated')?.dateTime ?? null,
      deletable: li.querySelector('button.delete') !== null}));""")


def test_threads_show_their_titles_and_one_is_deleted_after_a_confirmation(page, open_browser):
    driver = open_browser()
    user = "tom"
    titles = {"lisbon": "Plan a week in Lisbon in May", "soup": "A soup for a cold evening",
              "taxes": "Which forms are due in April?"}
    for thread, text in titles.items():
        http(page, "POST", f"/v1/threads/{thread}/messages", user, {"text": text})
    open_page(driver, page.url(token(user)))
    rows = wait(driver, lambda d: len(r := thread_rows(d)) == 3 and r, "the threads listed")
    assert [r["id"] for r in rows] == ["taxes", "soup", "lisbon"]  # newest first
    assert {r["id"]: r["name"] for r in rows} == titles
    now = time.time()
    for row in rows:
        updated = time.mktime(time.strptime(row["updated"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert abs(updated - now) < 120 and row["deletable"], row
    assert current_thread(driver) == "taxes"
    assert driver.find_element(By.ID, "thread-title").text == titles["taxes"]

    dialog = driver.find_element(By.ID, "confirm-delete")

    def ask_to_delete(thread: str) -> None:
        driver.find_element(By.CSS_SELECTOR, f'#threads li:has([data-thread="{thread}"]) .delete').click()
        wait(driver, lambda d: dialog.is_displayed(), "the confirmation")
        assert titles[thread] in dialog.text

    ask_to_delete("soup")
    screenshot(driver, "layout-delete-confirmation")
    assert driver.switch_to.active_element.text == "Keep it"  # the safe choice has the focus
    driver.find_element(By.CSS_SELECTOR, '#confirm-delete button[value="keep"]').click()
    wait(driver, lambda d: not dialog.is_displayed(), "kept")
    ask_to_delete("soup")
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait(driver, lambda d: not dialog.is_displayed(), "dismissed with Escape")
    assert set(stored_threads(page, user)) == set(titles)
    assert [r["id"] for r in thread_rows(driver)] == ["taxes", "soup", "lisbon"]

    ask_to_delete("soup")
    driver.find_element(By.ID, "confirm-delete-button").click()
    wait(driver, lambda d: [r["id"] for r in thread_rows(d)] == ["taxes", "lisbon"], "soup gone")
    assert set(stored_threads(page, user)) == {"taxes", "lisbon"}
    assert current_thread(driver) == "taxes"

    ask_to_delete("taxes")  # the thread shown: the newest other one is shown instead
    driver.find_element(By.ID, "confirm-delete-button").click()
    wait(driver, lambda d: current_thread(d) == "lisbon" and [r["id"] for r in thread_rows(d)] == ["lisbon"],
         "the thread shown deleted, the other one shown")
    wait(driver, lambda d: [t["user"] for t in turns(d)] == [titles["lisbon"]], "its messages")
    assert set(stored_threads(page, user)) == {"lisbon"}
    assert driver.find_element(By.ID, "error").text == ""


def test_times_are_shown_and_the_end_of_an_answer_is_announced_once(page, open_browser):
    driver = open_browser()
    open_page(driver, page.url(token("ray")))
    driver.execute_script("""
      window.announced = [];
      new MutationObserver(() => announced.push(document.getElementById('announce').textContent))
        .observe(document.getElementById('announce'), {childList: true, characterData: true, subtree: true});""")
    send(driver, "/stream 300")
    done = last_done(driver)
    assert done["status"] == "completed"
    live = driver.find_element(By.ID, "announce")
    assert live.get_attribute("aria-live") == "polite"
    assert [t.strip() for t in driver.execute_script("return announced")] == ["The answer is complete."]
    assert driver.find_element(By.ID, "messages").get_attribute("aria-live") is None  # not each piece

    stamps = driver.execute_script("""const n = document.querySelector('#messages [data-run]');
      return [...n.querySelectorAll('.msg-tools time.stamp, .answer-tools time.stamp')]
        .map((t) => ({iso: t.dateTime, text: t.textContent, tools: t.parentElement.className}));""")
    assert [s["tools"] for s in stamps] == ["msg-tools", "answer-tools"], stamps
    now = time.time()
    for stamp in stamps:
        seconds = time.mktime(time.strptime(stamp["iso"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert abs(seconds - now) < 120 and stamp["text"].strip(), stamp

    # keyboard: Tab from the message box reaches Send, with a visible focus ring
    box = driver.find_element(By.ID, "text")
    box.click()
    box.send_keys(Keys.TAB)
    focused = driver.switch_to.active_element
    assert focused.get_attribute("id") == "send"
    assert driver.execute_script("return getComputedStyle(document.activeElement).outlineStyle") == "solid"
