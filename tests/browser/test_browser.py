"""The running dashboard in headless Chromium: maps are painted, pages show no error.

Needs Debian's ``chromium`` and the ``playwright`` Python package (see browser_support.py);
skipped cleanly without them.
"""

import time

import pytest
from browser_support import dashboard_server

from explorer.imagecheck import count_saturated_colors

pytestmark = pytest.mark.browser

MAP = '[data-testid="stDeckGlJsonChart"] canvas'


@pytest.fixture(scope="module")
def app_url(sync_playwright, small_run, tmp_path_factory):
    """The dashboard served on a free loopback port, runs folder = the small run only."""
    runs = tmp_path_factory.mktemp("browser") / "runs"
    runs.mkdir()
    (runs / "small").symlink_to(small_run, target_is_directory=True)
    with dashboard_server(runs, runs.parent / "server.log", env={"OMP_NUM_THREADS": "2"}) as url:
        yield url


def wait_until_idle(page, timeout_ms=60_000):
    """Until the script has finished (Streamlit's "running" widget is gone)."""
    page.wait_for_timeout(500)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)


def painted_colors(element, *, at_least: int, timeout_s: float = 60.0) -> int:
    """Distinct saturated colours in screenshots of ``element``, once there are ``at_least``."""
    deadline = time.time() + timeout_s
    n = 0
    while time.time() < deadline:
        n = count_saturated_colors(element.screenshot())
        if n >= at_least:
            break
        time.sleep(0.2)
    return n


def test_deep_link_to_maps_paints_niche_colours(page, app_url, tmp_path):
    # the first visit of a fresh server is a deep link: it must still go through app.py
    page.goto(f"{app_url}/maps?slides=P1_s1&slides=P2_s1&color=niche")
    page.wait_for_selector(MAP, state="attached", timeout=90_000)
    wait_until_idle(page)
    maps = page.query_selector_all('[data-testid="stDeckGlJsonChart"]')
    assert len(maps) == 2
    colors = painted_colors(maps[0], at_least=4)
    page.screenshot(path=str(tmp_path / "maps.png"), full_page=True)
    assert colors >= 4, f"the map shows {colors} niche colours; screenshot in {tmp_path}"
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stSidebar"]').get_by_text("Run", exact=True).count() == 1
    assert "slides=P1_s1" in page.url and "page=maps" in page.url
    # hovering a cell shows its niche, cell type and slide
    box = page.query_selector_all(MAP)[0].bounding_box()
    tooltip = page.locator(".deck-tooltip")
    for step in range(12):  # the centre may fall between two dots: walk until one is hit
        page.mouse.move(box["x"] + box["width"] / 2 + 5 * step, box["y"] + box["height"] / 2 + 3 * step)
        page.wait_for_timeout(400)
        if tooltip.count() and tooltip.first.is_visible():
            break
    text = tooltip.first.inner_text()
    assert "cell type:" in text and "sample: P1_s1" in text


def test_pages_render_and_navigation_keeps_the_run(page, app_url):
    page.goto(app_url + "/")
    page.wait_for_selector(".js-plotly-plot", state="attached", timeout=90_000)
    wait_until_idle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    links = page.locator('[data-testid="stSidebarNav"] a')
    assert links.count() >= 4
    links.nth(1).click()  # Niche maps
    page.wait_for_selector(MAP, state="attached", timeout=60_000)
    wait_until_idle(page)
    page.wait_for_function("() => location.search.includes('run=small')", timeout=10_000)
    assert "/maps" in page.url and "page=maps" in page.url
    for path in ("/embedding", "/composition"):
        page.goto(app_url + path)
        page.wait_for_selector(".js-plotly-plot", state="attached", timeout=90_000)
        wait_until_idle(page, timeout_ms=120_000)
        assert page.locator('[data-testid="stException"]').count() == 0, path
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0, path
