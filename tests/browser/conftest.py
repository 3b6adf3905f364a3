"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by selenium, against
``threadline serve --demo`` behind a relay the tests can cut.

Each browser context is its own Chromium with a fresh profile (``--user-data-dir``), so two
contexts share no storage. Without Chromium these tests skip, except in CI (``CI`` set, as
``.ci/run`` is run), where that is a failure: ``tests/run.sh`` installs it. Screenshots go to
``tests/browser/artifacts/`` (named in the summary at the end of the run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest
import trio

from tests.browser.relay import Relay
from tests.servers import ServeProcess

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

if CHROMIUM is None or CHROMEDRIVER is None:
    if os.environ.get("CI"):
        raise RuntimeError("chromium or chromedriver is missing in CI: tests/run.sh installs "
                           "the Debian packages chromium and chromium-driver")
    pytest.skip("chromium and chromium-driver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (after the skip: the test extra has selenium)
from selenium.webdriver.chrome.service import Service  # noqa: E402

# As root in a container: no sandbox; and no traffic of Chromium's own (updates, sync, Google
# look-ups), which a closed network refuses.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic", "--no-first-run",
                  "--window-size=1200,800")


class Page:
    """The chat page's address behind the relay: ``url(token)``; ``direct``: the server's own
    address (HTTP past the relay, also while it refuses)."""

    def __init__(self, relay: Relay, server_port: int) -> None:
        self.relay = relay
        self.base = f"http://127.0.0.1:{relay.port}"
        self.direct = f"http://127.0.0.1:{server_port}"

    def url(self, token: str) -> str:
        return f"{self.base}/?token={token}"


def serve_page(*flags: str) -> Iterator[Page]:
    """A ``threadline serve --demo`` of its own on the memory store, with ``flags``, behind a
    relay: the page a module's tests open."""
    server = ServeProcess("--demo", "--store", "memory", "--log", "warning",  # stderr: a pipe
                          *flags)                                             # nobody reads
    try:
        url = trio.run(server.ready)
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        relay = Relay(port)
        try:
            yield Page(relay, port)
        finally:
            relay.close()
    finally:
        server.kill()


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    yield from serve_page()


@pytest.fixture(scope="module")
def open_browser() -> Iterator[Callable[[], webdriver.Chrome]]:
    """A factory of browser contexts: each a Chromium with a fresh profile; all quit at the end."""
    drivers: list[webdriver.Chrome] = []
    profiles: list[str] = []

    def open_one() -> webdriver.Chrome:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        profiles.append(tempfile.mkdtemp(prefix="threadline-chromium-"))
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profiles[-1]}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        driver.set_page_load_timeout(30)
        drivers.append(driver)
        return driver

    try:
        yield open_one
    finally:
        for driver in drivers:
            driver.quit()
        for profile in profiles:
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(open_browser) -> webdriver.Chrome:
    return open_browser()


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot {path}"
    return path


def pytest_terminal_summary(terminalreporter) -> None:
    if ARTIFACTS.is_dir() and any(ARTIFACTS.iterdir()):
        terminalreporter.write_line(f"browser screenshots: {ARTIFACTS}")
