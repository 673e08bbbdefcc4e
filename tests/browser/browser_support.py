"""Shared pieces of the browser tests: where Debian's Chromium is, how it is started, and
the dashboard served by a real Streamlit server on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard_server(runs_dir: Path, log_path: Path, *, env: dict | None = None,
                     start_timeout_s: float = 60.0) -> Iterator[str]:
    """The dashboard on a free loopback port, runs folder ``runs_dir``; yields its URL and
    stops the server (by its own process group, which holds the server and a demo build it
    started) at the end."""
    port = free_port()
    full_env = {**os.environ, "CELLNICHE_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail("the dashboard did not start:\n" + log_path.read_text())
            time.sleep(0.3)
        yield url
    finally:
        # the server's process group: a demo build it started goes with it
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


#: Streamlit's progress bar
PROGRESS = '[data-testid="stProgress"]'


def wait_until_idle(page, timeout_ms: int = 90_000) -> None:
    """Until the script has finished (Streamlit's "running" widget is gone)."""
    page.wait_for_timeout(500)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)


def no_error(page) -> bool:
    """No exception box on the page."""
    return not page.query_selector_all('[data-testid="stException"]')
