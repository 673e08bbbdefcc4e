"""Serving the dashboard for real-browser tests (Debian's chromium, the playwright client).

``serve(runs_dir)`` starts ``streamlit run app.py`` on a free loopback port in its own
process group (so a demo build it starts is stopped with it) and yields its URL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROGRESS = '[data-testid="stProgress"]'
ERROR = '[data-testid="stException"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_browser():
    """The playwright entry point; skips the test without chromium or playwright."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed (pip install playwright)")
    return sync_playwright


@contextlib.contextmanager
def serve(runs_dir: Path, *, log_path: Path):
    """The dashboard on a free loopback port with ``runs_dir`` as its runs folder; yields its URL."""
    port = free_port()
    env = dict(os.environ, CELLNICHE_RUNS_DIR=str(runs_dir), OMP_NUM_THREADS="2")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("the dashboard did not start:\n" + log_path.read_text(errors="replace"))
                time.sleep(0.2)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)  # the server and a demo build it started
            server.wait()


def wait_until_idle(page, timeout_ms: int = 90_000) -> None:
    """Until the script has finished (Streamlit's "running" widget is gone)."""
    page.wait_for_timeout(500)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)


def no_error(page) -> bool:
    return not page.query_selector_all(ERROR)
