"""The app in a real browser, for every browser test: `bacpipes ui` served on a free loopback port, and
Debian's Chromium driven by Playwright (no browser download). Logging in is the first thing every operator
job does, so it is here too."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

from bacpipes.cli.servers import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def serve_ui(config: Path, log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """`bacpipes ui --config F` as a user starts it; yields its URL once Streamlit says it is healthy."""
    port = free_port()
    with log_path.open("w") as log:
        app = subprocess.Popen([sys.executable, "-m", "bacpipes.cli", "ui", "--config", str(config),
                                "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    assert app.poll() is None and time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.3)
            yield url
        finally:
            app.terminate()
            app.wait(20)


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def logged_in(browser: Browser, url: str, name: str, password: str, width: int = 1400,
              height: int = 1000) -> Page:
    """A new page at `url`, logged in through the sidebar's form."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.get_by_role("textbox", name="User").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Logged in as")).to_be_visible(timeout=20_000)
    return page


def settled(page: Page, timeout_ms: int = 30_000) -> None:
    """Until Streamlit's run of the page has ended: a run redraws the page, and what is clicked while it
    draws can be replaced under the click (an open selectbox list closes, and its option is gone)."""
    expect(page.get_by_test_id("stApp")).to_have_attribute("data-test-script-state", "notRunning",
                                                           timeout=timeout_ms)
