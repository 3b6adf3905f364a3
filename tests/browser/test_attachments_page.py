"""Attachments on the chat page (PROTOCOL.md 1.1, "Attachments") in headless Chromium, against
``threadline serve --demo`` (the echo agent appends ``[NAME, SIZE bytes, CONTENT_TYPE]`` for each
attachment): files chosen with the file input upload at once and wait in the composer as chips;
a send takes their ids; the conversation shows an image as a thumbnail (an object URL of the
bytes fetched with the token) and another file as a chip that downloads it; another tab of the
user sees the message with its attachments; a refused file (an HTML file named ``.png``, which
Chromium declares ``image/png``: 415) is reported with its name and the server's message and not
sent; a file dropped on the conversation is attached; a chip removed is not sent; names are
text, never HTML; the object URLs of thumbnails no longer shown are revoked. Screenshots:
``attachments-*.png`` in ``artifacts/``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.browser.conftest import screenshot, serve_page
from tests.browser.test_chat_page import open_page, send, wait
from tests.helpers import png
from tests.servers import token

DONE = ("completed", "failed", "cancelled")
FILE_LIMIT = 64 * 1024    # the small server's limits: a file ...
USER_LIMIT = 100 * 1024   # ... and a user's stored bytes

SHOWN = """return [...document.querySelectorAll('#messages [data-run]')].map((n) => ({
  status: n.dataset.status,
  user: n.querySelector('.user')?.textContent ?? null,
  answer: n.querySelector('.answer').textContent,
  images: [...n.querySelectorAll('.attachments .thumb')].map((a) => {
    const img = a.querySelector('img');
    return {id: a.dataset.attachment, alt: img?.alt ?? null, src: img?.src ?? '',
            width: img && img.complete ? img.naturalWidth : 0, failed: a.dataset.state === 'failed'};
  }),
  files: [...n.querySelectorAll('.attachments .file')].map((b) => ({
    id: b.dataset.attachment, name: b.querySelector('.name').textContent,
    size: b.querySelector('.size').textContent})),
}));"""

PENDING = """return [...document.querySelectorAll('#pending .chip')].map((c) => ({
  name: c.querySelector('.name').textContent, size: c.querySelector('.size').textContent,
  status: c.dataset.status}));"""

REFUSED = """return [...document.querySelectorAll('#attach-errors .attach-error')].map((n) => ({
  name: n.dataset.name, code: n.dataset.code, text: n.querySelector('.text').textContent}));"""




def shown(driver) -> list[dict]:
    return driver.execute_script(SHOWN)


def pending(driver) -> list[dict]:
    return driver.execute_script(PENDING)


def refused(driver) -> list[dict]:
    return driver.execute_script(REFUSED)


def attach(driver, *paths: Path) -> None:
    """Choose ``paths`` with the page's (hidden) file input, as the Attach button's dialog does."""
    driver.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in paths))


def ready(driver, names: list[str], what: str) -> list[dict]:
    """Wait until the composer's chips are ``names``, every upload done."""
    return wait(driver, lambda d: (p := pending(d)) and [c["name"] for c in p] == names
                and all(c["status"] == "ready" for c in p) and p, what)


def answered(driver, count: int, what: str, images: int = 0) -> list[dict]:
    """Wait until ``count`` turns are shown, the last one's run ended and its ``images``
    thumbnails loaded; the turns then."""
    def check(d):
        turns = shown(d)
        if len(turns) != count or turns[-1]["status"] not in DONE:
            return False
        loaded = [i for i in turns[-1]["images"] if i["width"] > 0]
        return len(loaded) == images and turns
    return wait(driver, check, what)


def upload_refusal(page, user: str, name: str, body: bytes, content_type: str) -> tuple[int, dict]:
    """The server's own answer to an upload (straight to it, past the relay)."""
    request = urllib.request.Request(
        f"{page.direct}/v1/attachments?{urllib.parse.urlencode({'name': name})}", method="POST",
        data=body, headers={"Authorization": f"Bearer {token(user)}", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refusal:
        return refusal.code, json.loads(refusal.read())


def test_a_png_and_a_text_file_are_sent_shown_downloaded_and_seen_in_another_tab(
        page, browser, open_browser, tmp_path):
    image, notes = png(3, 2), b"first line\nsecond <b>line</b>\n"
    (tmp_path / "dot.png").write_bytes(image)
    (tmp_path / "notes.txt").write_bytes(notes)
    other = open_browser()  # another tab of the same user, joined before the message
    open_page(other, page.url(token("pia")))
    open_page(browser, page.url(token("pia")))

    attach(browser, tmp_path / "dot.png", tmp_path / "notes.txt")
    chips = ready(browser, ["dot.png", "notes.txt"], "both files uploaded")
    assert chips == [{"name": "dot.png", "size": f"{len(image)} B", "status": "ready"},
                     {"name": "notes.txt", "size": f"{len(notes)} B", "status": "ready"}]
    screenshot(browser, "attachments-composer")
    send(browser, "what is this?")
    (turn,) = answered(browser, 1, "the answer and the thumbnail", images=1)
    screenshot(browser, "attachments-sent")
    assert turn["status"] == "completed" and turn["user"] == "what is this?"
    assert turn["answer"].startswith("what is this?")
    assert f"[dot.png, {len(image)} bytes, image/png]" in turn["answer"]
    assert f"[notes.txt, {len(notes)} bytes, text/plain]" in turn["answer"]
    (thumb,) = turn["images"]
    assert thumb["alt"] == "dot.png" and thumb["width"] == 3 and thumb["src"].startswith("blob:")
    (chip,) = turn["files"]
    assert chip["name"] == "notes.txt" and chip["size"] == f"{len(notes)} B"
    assert pending(browser) == [] and refused(browser) == []
    assert not browser.find_elements(By.CSS_SELECTOR, "#messages b")  # a name, not markup

    # the file chip downloads the file, under its name, with its bytes
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(downloads)})
    browser.find_element(By.CSS_SELECTOR, "#messages .attachments .file").click()
    saved = downloads / "notes.txt"
    deadline = time.monotonic() + 15
    while not (saved.exists() and saved.read_bytes() == notes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert saved.read_bytes() == notes

    # the other tab: the message came live, with its thumbnail and its chip
    (seen,) = answered(other, 1, "the other tab's copy", images=1)
    screenshot(other, "attachments-other-tab")
    assert seen["answer"] == turn["answer"]
    assert [(i["id"], i["width"]) for i in seen["images"]] == [(thumb["id"], 3)]
    assert seen["files"] == turn["files"]
    other.refresh()  # and from the stored history
    open_page(other, other.current_url)
    (replayed,) = answered(other, 1, "the other tab reloaded", images=1)
    assert replayed["files"] == turn["files"]


def test_a_refused_file_is_reported_with_the_servers_message_and_not_sent(page, browser,
                                                                           tmp_path):
    disguised = b"<!doctype html><title>x</title><script>document.title = 'pwned'</script>"
    (tmp_path / "evil.png").write_bytes(disguised)  # Chromium declares it image/png
    (tmp_path / "good.png").write_bytes(png(4, 4))
    status, body = upload_refusal(page, "rae", "evil.png", disguised, "image/png")
    assert status == 415 and body["code"] == "unsupported_type"

    open_page(browser, page.url(token("rae")))
    attach(browser, tmp_path / "evil.png", tmp_path / "good.png")
    (note,) = wait(browser, refused, "the refusal reported")
    assert note == {"name": "evil.png", "code": "unsupported_type",
                    "text": f"evil.png was not attached: {body['message']}"}
    assert ready(browser, ["good.png"], "the good file alone in the composer")
    assert browser.find_element(By.ID, "attach-errors").is_displayed()
    screenshot(browser, "attachments-refused")
    send(browser, "one of two")
    (turn,) = answered(browser, 1, "the answer", images=1)
    assert "[good.png," in turn["answer"] and "evil.png" not in turn["answer"]
    assert [i["alt"] for i in turn["images"]] == ["good.png"] and turn["files"] == []
    assert refused(browser) == []  # the note goes with the next message sent
    assert browser.title != "pwned"


def test_a_dropped_file_is_attached_a_removed_one_is_not_sent_and_names_are_text(
        page, browser, tmp_path):
    odd = "<b>bold & <i>it.txt"  # a name that would be markup, were it parsed
    (tmp_path / odd).write_bytes(b"odd")
    (tmp_path / "keep-out.txt").write_bytes(b"not this one")
    open_page(browser, page.url(token("dru")))
    browser.execute_script("""
      const transfer = new DataTransfer();
      transfer.items.add(new File(['dropped bytes'], 'dropped.csv', {type: 'text/csv'}));
      const target = document.getElementById('messages');
      for (const type of ['dragenter', 'dragover', 'drop']) {
        target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer}));
      }""")
    ready(browser, ["dropped.csv"], "the dropped file uploaded")
    assert not browser.find_elements(By.CSS_SELECTOR, "section.dropping")
    attach(browser, tmp_path / "keep-out.txt", tmp_path / odd)
    ready(browser, ["dropped.csv", "keep-out.txt", odd], "three files uploaded")
    browser.find_element(By.CSS_SELECTOR, "#pending .chip:nth-child(2) .remove").click()
    ready(browser, ["dropped.csv", odd], "the removed one gone")
    send(browser, "")  # attachments alone make a message
    (turn,) = answered(browser, 1, "the answer")
    assert [f["name"] for f in turn["files"]] == ["dropped.csv", odd]
    assert "[dropped.csv, 13 bytes, text/csv]" in turn["answer"]
    assert f"[{odd}, 3 bytes, text/plain]" in turn["answer"]
    assert "keep-out" not in turn["answer"]
    assert not browser.find_elements(By.CSS_SELECTOR, "#messages b, #messages i, #pending b")


def test_thumbnails_no_longer_shown_are_revoked_and_an_edit_keeps_the_attachments(
        page, browser, tmp_path):
    (tmp_path / "pic.png").write_bytes(png(5, 3))
    open_page(browser, page.url(token("rho")))
    browser.execute_script("""
      window.revoked = [];
      const revoke = URL.revokeObjectURL.bind(URL);
      URL.revokeObjectURL = (url) => { revoked.push(url); revoke(url); };""")
    attach(browser, tmp_path / "pic.png")
    ready(browser, ["pic.png"], "the picture uploaded")
    send(browser, "a picture")
    (turn,) = answered(browser, 1, "the answer", images=1)
    (thumb,) = turn["images"]

    browser.find_element(By.CSS_SELECTOR, "#messages .edit").click()
    box = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .editor textarea"),
               "the editor")[0]
    box.send_keys(", edited")
    browser.find_element(By.CSS_SELECTOR, "#messages .editor .save").click()
    (edited,) = wait(browser, lambda d: (t := shown(d)) and t[0]["user"] == "a picture, edited"
                     and t[0]["status"] in DONE and t[0]["images"]
                     and t[0]["images"][0]["width"] == 5 and t, "the edit, with the picture")
    assert edited["images"][0]["id"] == thumb["id"]
    assert "[pic.png," in edited["answer"]
    assert thumb["src"] not in browser.execute_script("return revoked")  # still shown

    browser.find_element(By.ID, "new-thread").click()
    wait(browser, lambda d: shown(d) == [], "a new, empty thread")
    assert thumb["src"] in browser.execute_script("return revoked")


def throttle(driver, upload_bytes_per_s: float) -> None:
    """Chromium's own network emulation: uploads at ``upload_bytes_per_s`` (-1: as fast as
    the machine goes)."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": upload_bytes_per_s})


PROGRESS = """const chip = document.querySelector('#pending .chip');
return chip && {status: chip.dataset.status, value: chip.querySelector('progress').value,
                max: chip.querySelector('progress').max,
                percent: chip.querySelector('.percent').textContent};"""


def test_a_slow_upload_shows_its_progress_can_be_removed_and_a_send_waits_for_it(
        page, browser, tmp_path):
    size = 600 * 1024
    slow = tmp_path / "slow.txt"
    slow.write_bytes(b"s" * size)
    open_page(browser, page.url(token("sol")))
    throttle(browser, 200 * 1024)  # about three seconds for the file
    try:
        attach(browser, slow)
        going = wait(browser, lambda d: (p := d.execute_script(PROGRESS)) and p["status"] == "uploading"
                     and 0 < p["value"] < size and p, "the upload's progress shown")
        assert going["max"] == size and going["percent"].endswith("%")
        screenshot(browser, "attachments-progress")
        browser.find_element(By.CSS_SELECTOR, "#pending .chip .remove").click()  # aborts it
        assert pending(browser) == []
        time.sleep(0.3)
        assert refused(browser) == []  # removed, not refused

        attach(browser, slow)
        wait(browser, lambda d: (p := d.execute_script(PROGRESS)) and p["status"] == "uploading",
             "uploading again")
        browser.find_element(By.ID, "text").send_keys("sent while uploading")
        browser.find_element(By.ID, "send").click()
        wait(browser, lambda d: d.find_element(By.ID, "send").text == "Uploading…",
             "the send waiting for the upload")
        assert shown(browser) == []
        (turn,) = wait(browser, lambda d: (t := shown(d)) and t[-1]["status"] in DONE and t,
                       "the message, once the upload was done", timeout=30)
    finally:
        throttle(browser, -1)
    assert turn["user"] == "sent while uploading"
    assert [f["name"] for f in turn["files"]] == ["slow.txt"]
    assert f"[slow.txt, {size} bytes, text/plain]" in turn["answer"]
    assert browser.find_element(By.ID, "send").text == "Send" and pending(browser) == []


@pytest.fixture(scope="module")
def small_page():
    """A server of its own with small attachment limits, behind a relay as ``page`` is."""
    yield from serve_page("--limit", f"attachment_bytes={FILE_LIMIT}",
                          "--limit", f"user_attachment_bytes={USER_LIMIT}")


@pytest.mark.parametrize("size", [FILE_LIMIT + 1, 5 * 1024 * 1024], ids=["just-over", "5MiB"])
def test_a_file_over_the_limit_is_reported_with_the_servers_message(small_page, browser,
                                                                     tmp_path, size):
    """413 too_large, answered at the request's head, before its body is read: the browser
    must still read the answer (not a connection reset) for the page to say why."""
    big = tmp_path / f"big-{size}.txt"
    big.write_bytes(b"x" * size)
    status, body = upload_refusal(small_page, "tia", big.name, big.read_bytes(), "text/plain")
    assert status == 413 and body["code"] == "too_large"
    open_page(browser, small_page.url(token("tia")))
    attach(browser, big)
    (note,) = wait(browser, refused, "the refusal reported")
    screenshot(browser, f"attachments-too-large-{size}")
    assert note == {"name": big.name, "code": "too_large",
                    "text": f"{big.name} was not attached: {body['message']}"}
    assert pending(browser) == []


def test_the_users_quota_reached_is_reported_with_the_servers_message(small_page, browser,
                                                                      tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_bytes(b"1" * (USER_LIMIT // 2 + 1))
    second.write_bytes(b"2" * (USER_LIMIT // 2 + 1))
    open_page(browser, small_page.url(token("uma")))
    attach(browser, first)
    ready(browser, ["first.txt"], "the first file stored")
    attach(browser, second)
    (note,) = wait(browser, refused, "the refusal reported")
    assert note["name"] == "second.txt" and note["code"] == "limit_reached"
    assert note["text"].startswith("second.txt was not attached: ") and len(note["text"]) > 30
    assert [c["name"] for c in pending(browser)] == ["first.txt"]
