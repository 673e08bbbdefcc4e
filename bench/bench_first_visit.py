"""First visit on a fresh clone: how long until a visitor sees the title and the progress bar,
and until the demo run is built and a page shows it.

    python bench/bench_first_visit.py [--repo .] [--keep]

Clones the repository (committed files only) into a temporary folder, links this
checkout's ``.venv`` into it (the install is not timed), starts the dashboard there with
no run, opens two tabs in headless Chromium (Debian's ``/usr/bin/chromium``) and prints:
seconds until each tab shows the title and the progress bar, until the demo run is on
disk, and until the first tab shows the Cohort overview. The clone has no numba cache, so
the build includes compiling the sampler, as on a user's first launch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from browser_support import CHROMIUM, CHROMIUM_ARGS, PROGRESS, free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(ROOT), help="repository to clone (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the clone")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="cellniche-first-visit-"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", args.repo, str(clone)], check=True)
    (clone / ".venv").symlink_to(Path(args.repo).resolve() / ".venv")
    port = free_port()
    log = open(work / "server.log", "wb")
    t_start = time.perf_counter()
    server = subprocess.Popen([str(clone / ".venv" / "bin" / "python"), "-m", "streamlit", "run", "app.py",
                               "--server.port", str(port), "--server.address", "127.0.0.1"],
                              cwd=clone, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        print(f"server answers after {time.perf_counter() - t_start:.1f} s")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            tabs = []
            t0 = time.perf_counter()
            for path in ("/", "/maps"):
                tab = browser.new_page(viewport={"width": 1300, "height": 900})
                opened = time.perf_counter()
                tab.goto(url + path, wait_until="commit")
                tabs.append((path, tab, opened))
            for path, tab, opened in tabs:
                tab.wait_for_selector(PROGRESS, timeout=60_000)
                tab.wait_for_selector('h1:has-text("CellNiche Explorer")', timeout=60_000)
                print(f"tab {path}: title and progress bar after {time.perf_counter() - opened:.2f} s")
            run = clone / "data" / "runs" / "demo" / "manifest.json"
            while not run.exists():
                time.sleep(0.5)
            print(f"demo run written after {time.perf_counter() - t0:.1f} s")
            tabs[0][1].wait_for_selector('h1:has-text("Cohort overview")', timeout=120_000)
            print(f"first tab shows the Cohort overview after {time.perf_counter() - t0:.1f} s")
            browser.close()
        timings = __import__("json").loads(run.read_text()).get("timings_s", {})
        print("build stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        log.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
