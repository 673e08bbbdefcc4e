"""Fixtures of the browser tests: Debian's Chromium driven by Playwright.

Needs Debian's ``chromium`` and the ``playwright`` Python package (never
``playwright install``); the tests skip cleanly without them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="session")
def sync_playwright():
    """Playwright's ``sync_playwright``, or a skip when Chromium or the client is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed (pip install playwright)")
    return sync_playwright


@pytest.fixture(scope="module")
def browser(sync_playwright):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield page
    page.close()
