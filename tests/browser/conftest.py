"""Browser tests: Playwright's sync API driving the machine's own Chromium against pytest-django's live server.

No browser is downloaded: Chromium is the Debian package at /usr/bin/chromium (SUANLI_CHROMIUM to point
elsewhere); scripts/test installs it with apt when it is missing and it can. Without it, or without the
`playwright` package, every test here is skipped with the reason; under CI=true they fail instead, so CI never
passes without them (tests/containers.py's `unavailable`). A page a flow needs that is missing is a failure.

Playwright's sync API runs an asyncio loop in the test thread, where Django then refuses ORM calls as
"async-unsafe". The test thread only sets up data between browser steps, never while a page is loading, and the
live server answers from its own thread, so the check is lifted for these tests only (DJANGO_ALLOW_ASYNC_UNSAFE,
set per test and removed after it).

Screenshots of the main pages land in var/screenshots/ (git-ignored; SUANLI_SCREENSHOTS to change it); the
folder is printed at the end of the run.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client

from tests.containers import unavailable

CHROMIUM = os.environ.get("SUANLI_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("SUANLI_SCREENSHOTS", settings.BASE_DIR / "var" / "screenshots"))
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
_taken: list[Path] = []


def _why_no_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SUANLI_CHROMIUM)"
    return None


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless Chromium for one test (a fresh Playwright each time, so no event loop outlives the test)."""
    reason = _why_no_browser()
    if reason:
        unavailable(f"no browser for the browser tests: {reason}")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # root: no user namespaces
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield chromium
        finally:
            chromium.close()
            # Connections this test's thread opened while Playwright's loop ran are its own (Django keeps them
            # per async context); hand them back now, or the test database cannot be dropped at the end.
            connections.close_all()


@pytest.fixture
def open_as(browser: Any, live_server: Any) -> Iterator[Any]:
    """open_as(user, locale="en-GB", viewport=DESKTOP) -> a page whose browser carries `user`'s session (None:
    anonymous), with the live server as base URL. Failing requests, page errors and Content-Security-Policy
    violations fail the test."""
    contexts: list[Any] = []

    def open_page(user: Any = None, *, locale: str = "en-GB", viewport: dict | None = None) -> Any:
        context = browser.new_context(base_url=live_server.url, locale=locale, viewport=viewport or DESKTOP)
        contexts.append(context)
        if user is not None:
            client = Client()
            client.force_login(user)
            cookie = client.cookies[settings.SESSION_COOKIE_NAME]
            context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": live_server.url}])
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # What the Content-Security-Policy refused (an inline script, style or handler; eval; another origin):
        # Chromium says so on the console, and the flows' page-error checks count it as an error.
        page.on("console", lambda message: _note_csp_violation(errors, message.text))
        page.errors = errors
        return page

    yield open_page
    for context in contexts:
        context.close()


def _note_csp_violation(errors: list[str], text: str) -> None:
    if "Content Security Policy" in text:
        errors.append(text)


def screenshot(page: Any, name: str) -> Path:
    """Save the whole page as var/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"
    page.screenshot(path=str(path), full_page=True)
    _taken.append(path)
    return path


def fits_the_screen(page: Any) -> bool:
    """Whether the page needs no sideways scrolling (wide tables scroll inside their own box)."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _taken:
        terminalreporter.write_line(f"browser tests: {len(_taken)} screenshots in {SCREENSHOTS}")
