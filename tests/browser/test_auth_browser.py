"""The password gate on a real server in headless Chromium: a deep link survives the sign-in.

What AppTest cannot show: a fresh server serving ``/maps?...`` (the legacy pages path,
sent back through ``app.py``), the sidebar really hidden, Enter submitting the form.
Needs Debian's ``chromium`` and the ``playwright`` package (see browser_support.py); skipped cleanly
without them.
"""

from __future__ import annotations

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, dashboard_server
from tiny_run import TINY, build_tiny_run

from explorer import auth

pytestmark = pytest.mark.browser

PASSWORD = "browser-test-password"


@pytest.fixture(scope="module")
def server(sync_playwright, tmp_path_factory):
    """The dashboard behind a password on a free loopback port: (url, slide names)."""
    import anndata as ad

    run = build_tiny_run(tmp_path_factory.mktemp("gate"))
    slides = sorted(ad.read_h5ad(run / "cohort.h5ad", backed="r").obs["sample"].unique())
    with dashboard_server(run.parent, run.parent.parent / "server.log",
                          env={auth.PASSWORD_ENV: auth.hash_password(PASSWORD)}) as url:
        yield url, slides


def test_deep_link_opens_its_view_after_the_password(server, sync_playwright):
    url, slides = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(f"{url}/maps?run={TINY}&slides={slides[-1]}&color=cell_type&niche=N2")
            password = page.locator('input[type="password"]')
            password.wait_for(timeout=60_000)
            assert page.locator('[data-testid="stSidebar"]').count() == 0
            assert page.locator('[data-testid="stSidebarNav"]').count() == 0
            assert "Niche maps" not in page.inner_text("body")
            assert f"run={TINY}" in page.url  # the link's parameters wait for the sign-in

            password.fill("not it")
            password.press("Enter")
            page.get_by_text("Wrong password.").wait_for(timeout=30_000)
            password.fill(PASSWORD)
            password.press("Enter")

            page.locator('h1:has-text("Niche maps")').wait_for(timeout=60_000)
            page.get_by_role("button", name="Sign out").wait_for(timeout=10_000)
            chosen = page.locator('[data-testid="stMultiSelect"]').get_by_text(slides[-1], exact=True)
            chosen.wait_for(timeout=30_000)  # the linked slide, not the default two
            assert all(s not in page.locator('[data-testid="stMultiSelect"]').inner_text()
                       for s in slides[:-1])
            for part in (f"run={TINY}", f"slides={slides[-1]}", "color=cell_type", "niche=N2"):
                assert part in page.url
        finally:
            browser.close()
