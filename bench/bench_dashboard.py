"""Time from navigation to a painted niche map of a 100k-cell slide, in headless Chromium.

    python bench/bench_dashboard.py [--cells 100000] [--steps 20] [--repeats 4]
    python bench/bench_dashboard.py --run /path/to/runs/big_run     # an existing run, e.g. 1M cells

1. Builds (once, kept in ``bench/out/dashboard``) a run on one simulated slide of exactly
   ``--cells`` cells, trained for ``--steps`` steps without UMAP: the map only needs
   coordinates and niches, so a short training is enough.
2. Starts the dashboard on a free loopback port with ``CELLNICHE_RUNS_DIR`` pointing there.
3. For each point budget (by default 50k = the page's default, and 100k = every cell), opens
   ``/maps?run=…&slides=…&points=…`` in a fresh browser page and measures the time from
   ``page.goto`` to the first screenshot of the map element that shows at least 4 distinct
   saturated colours. The first visit is "cold" (the server loads the run and samples the
   points); later visits are "warm" (cached on the server, as for any second user). The
   time to the page title (Streamlit booting in the browser and running the script) and to
   the map's canvas are printed too.

With ``--run``, an existing run is opened instead and its largest slide is mapped; the
time to a painted UMAP on the Embedding page is measured too.

Prints one line per visit and a median per budget. Needs Debian's ``chromium`` and the
``playwright`` Python package (never ``playwright install``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_NAME = "bench100k"
MIN_COLORS = 4


def build_run(out: Path, *, cells: int, steps: int) -> Path:
    """A run on one simulated slide of exactly ``cells`` cells (reused when present)."""
    import numpy as np

    from cellniche_core.pipeline import RunOptions, fit_run
    from cellniche_core.simulate import simulate_cohort
    from cellniche_core.train import TrainConfig

    run_dir = out / "runs" / RUN_NAME
    if (run_dir / "manifest.json").is_file():
        return run_dir
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    per_slide = cells
    while True:  # slide sizes vary by ±15 %: grow until there are enough cells, then sample
        adata = simulate_cohort(n_patients=1, cells_per_slide=per_slide, slides_per_patient=1, seed=0)
        if adata.n_obs >= cells:
            break
        per_slide = int(per_slide * cells / adata.n_obs * 1.02) + 1
    keep = np.sort(np.random.default_rng(0).choice(adata.n_obs, cells, replace=False))
    cohort = out / "cohort.h5ad"
    adata[keep].copy().write_h5ad(cohort)
    print(f"simulated {cells:,} cells in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    options = RunOptions(n_niches=6, train=TrainConfig(n_steps=steps, seed=0), device="cpu", umap=False)
    fit_run([cohort], run_dir, options)
    print(f"trained ({steps} steps), embedded and clustered in {time.perf_counter() - t:.0f} s", flush=True)
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs_dir: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, CELLNICHE_RUNS_DIR=str(runs_dir), OMP_NUM_THREADS="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the dashboard did not start within 60 s")


def time_to_painted_map(browser, url: str, *, timeout_s: float = 180.0,
                        selector: str = '[data-testid="stDeckGlJsonChart"] canvas') -> dict[str, float]:
    """Seconds from navigation to: the page title, the map's canvas, a painted map.

    "Painted" is the first screenshot of the map element with at least ``MIN_COLORS``
    distinct saturated colours; ``colors`` is that count.
    """
    from explorer.imagecheck import count_saturated_colors

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        t0 = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.wait_for_selector("h1", state="attached", timeout=timeout_s * 1000)
        marks = {"title": time.perf_counter() - t0}
        chart = page.wait_for_selector(selector, state="attached", timeout=timeout_s * 1000)
        marks["canvas"] = time.perf_counter() - t0
        while time.perf_counter() - t0 < timeout_s:
            n = count_saturated_colors(chart.screenshot())
            if n >= MIN_COLORS:
                marks["painted"] = time.perf_counter() - t0
                marks["colors"] = n
                return marks
            page.wait_for_timeout(50)
        raise TimeoutError(f"map not painted within {timeout_s} s")
    finally:
        page.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=20, help="training steps of the benchmark run")
    parser.add_argument("--repeats", type=int, default=4, help="visits per point budget (first is cold)")
    parser.add_argument("--budgets", default="50000,100000",
                        help="comma-separated points-per-map budgets to time (the map page offers "
                             "10000, 25000, 50000, 100000)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "dashboard")
    parser.add_argument("--run", type=Path, help="time an existing run folder (its largest slide) instead")
    args = parser.parse_args(argv)

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("playwright is not installed (pip install playwright)", file=sys.stderr)
        return 2
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found (apt-get install chromium)", file=sys.stderr)
        return 2

    import anndata as ad

    run_dir = args.run.resolve() if args.run else build_run(args.out, cells=args.cells, steps=args.steps)
    run_name = run_dir.name
    obs = ad.read_h5ad(run_dir / "cohort.h5ad", backed="r").obs
    sizes = obs["sample"].astype(str).value_counts()
    slide, slide_cells = str(sizes.index[0]), int(sizes.iloc[0])
    print(f"run {run_name}: {len(obs):,} cells; largest slide {slide}: {slide_cells:,} cells", flush=True)
    print(f"load average before the visits: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    port = free_port()
    server = start_server(run_dir.parent, port)
    results: dict[int, list[float]] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            for budget in [int(b) for b in args.budgets.split(",")]:
                url = f"http://127.0.0.1:{port}/maps?run={run_name}&slides={slide}&points={budget}"
                for i in range(args.repeats):
                    marks = time_to_painted_map(browser, url)
                    kind = "cold" if i == 0 else "warm"
                    print(f"{slide_cells:,}-cell slide, {budget:,} points drawn, {kind}: "
                          f"{marks['painted']:.2f} s to a painted map ({marks['colors']} colours; "
                          f"title at {marks['title']:.2f} s, canvas at {marks['canvas']:.2f} s)", flush=True)
                    results.setdefault(budget, []).append(marks["painted"])
            if args.run:
                url = f"http://127.0.0.1:{port}/embedding?run={run_name}"
                for i in range(2):
                    marks = time_to_painted_map(browser, url, selector=".js-plotly-plot .gl-container canvas")
                    print(f"UMAP of {len(obs):,} cells, {'cold' if i == 0 else 'warm'}: {marks['painted']:.2f} s "
                          f"to a painted plot ({marks['colors']} colours)", flush=True)
            browser.close()
    finally:
        server.kill()
        server.wait()
    for budget, times in results.items():
        warm = times[1:] or times
        print(f"navigation -> painted map, {min(budget, slide_cells):,} of {slide_cells:,} cells drawn: "
              f"cold {times[0]:.2f} s, warm median {statistics.median(warm):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
