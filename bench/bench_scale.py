"""Cost growth of a whole run with the cohort size: wall time per stage and peak memory.

    python bench/bench_scale.py                                   # 10k, 100k, 1M cells on CPU
    python bench/bench_scale.py --sizes 1000000 10000000 --device cuda   # on a GPU machine

For each size, a simulated cohort is written once to ``bench/out/scale/`` (cohorts up to
``--simulate-max`` cells are simulated directly; larger ones repeat slides of the largest
simulated cohort under new slide and patient ids, so the 10M-cell cohort does not take an
hour to simulate), then ``python -m cellniche_core fit`` runs on it in its own process, as
a user would run it. The stage times come from the run's manifest; the peak resident
memory is the child process's. Prints a Markdown table; ARI compares the called niches
with the planted ones, at the number of niches the run chose and at the planted number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("read", "graph", "train", "embed", "niches", "umap", "mixing")
CELLS_PER_SLIDE = 50_000


def cohort_file(out: Path, n_cells: int, simulate_max: int) -> Path:
    """A simulated cohort of about ``n_cells`` cells on disk (made once)."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from cellniche_core.io import write_h5ad_atomic
    from cellniche_core.simulate import simulate_cohort

    path = out / f"cohort_{n_cells}.h5ad"
    if path.exists():
        return path
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if n_cells <= simulate_max:
        n_patients = max(1, min(20, n_cells // CELLS_PER_SLIDE))  # up to 50k cells: one slide
        adata = simulate_cohort(n_patients=n_patients, cells_per_slide=n_cells // n_patients,
                                slides_per_patient=1, seed=0)
    else:
        base = ad.read_h5ad(cohort_file(out, simulate_max, simulate_max))
        copies = int(np.ceil(n_cells / base.n_obs))
        parts = []
        for c in range(copies):
            part = base.copy()
            for key in ("sample", "patient"):
                part.obs[key] = pd.Categorical([f"{v}-{c}" for v in part.obs[key].astype(str)])
            part.obs_names = [f"{name}-{c}" for name in part.obs_names]
            parts.append(part)
        adata = ad.concat(parts, merge="same")
        adata.uns = base.uns
    write_h5ad_atomic(adata, path)
    print(f"cohort of {adata.n_obs:,} cells ({adata.obs['sample'].nunique()} slides) made in "
          f"{time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return path


def run_fit(cohort: Path, run_dir: Path, device: str, threads: int, extra: list[str]) -> dict:
    """Run the command line on ``cohort``; return the manifest plus the child's peak RSS."""
    # ours first, then what the caller set (e.g. packages installed outside the venv)
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "cellniche_core", "fit", str(cohort), "--out", str(run_dir), "--overwrite",
           "--device", device, "--quiet", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["wall_s"] = wall
    # ru_maxrss of children is the largest child so far: valid when sizes grow
    manifest["peak_rss_gb"] = max(peak, before) / 1e6
    return manifest


def ari_at_planted_k(run_dir: Path) -> float | None:
    """ARI of k-means at the planted number of niches on the run's embedding."""
    import anndata as ad

    from cellniche_core.metrics import agreement
    from cellniche_core.niches import call_niches

    adata = ad.read_h5ad(run_dir / "cohort.h5ad", backed="r")
    if "true_niche" not in adata.obs:
        return None
    truth = adata.obs["true_niche"]
    labels, _ = call_niches(adata.obsm["X_cellniche"], truth.nunique(), seed=0)
    return agreement(truth, labels)["ari"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--threads", type=int, default=2, help="torch / BLAS threads (default: %(default)s)")
    p.add_argument("--simulate-max", type=int, default=1_000_000,
                   help="largest cohort simulated directly; larger ones repeat its slides")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "scale")
    p.add_argument("--keep-runs", action="store_true", help="keep the run folders (e.g. to open them in the dashboard)")
    p.add_argument("fit_args", nargs="*", help="extra arguments for 'fit' after --")
    args = p.parse_args()
    rows = []
    for size in sorted(args.sizes):
        cohort = cohort_file(args.out, size, args.simulate_max)
        run_dir = args.out / "runs" / f"scale_{size}"
        m = run_fit(cohort, run_dir, args.device, args.threads, args.fit_args)
        ari = (m.get("metrics", {}).get("vs_true_niche") or {}).get("ari")
        ari_k = ari_at_planted_k(run_dir)
        row = {"cells": m["n_cells"], "slides": m["n_samples"], **{s: m["timings_s"].get(s) for s in STAGES},
               "other": m["wall_s"] - m["timings_s"]["total"], "total": m["wall_s"], "rss": m["peak_rss_gb"],
               "steps": m["training"]["steps"],
               "k": m["n_niches"], "ari": ari, "ari_k": ari_k, "device": m["device"], "name": m.get("device_name")}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if not args.keep_runs:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(f"device: {rows[0]['device']} ({rows[0]['name']}); {args.threads} threads; times in seconds; "
          "total = the whole command, start-up included")
    print("| cells | slides | read | graph | train (steps) | embed | niches (k) | UMAP | mixing score | "
          "start-up, write | total | peak RSS | ARI (auto k) | ARI (planted k) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = {s: (f"{r[s]:.1f}" if r[s] is not None else "-") for s in STAGES}
        ari = " | ".join(f"{r[key]:.2f}" if r[key] is not None else "-" for key in ("ari", "ari_k"))
        print(f"| {r['cells']:,} | {r['slides']} | {t['read']} | {t['graph']} | {t['train']} ({r['steps']}) | "
              f"{t['embed']} | {t['niches']} ({r['k']}) | {t['umap']} | {t['mixing']} | {r['other']:.1f} | "
              f"{r['total']:.1f} | "
              f"{r['rss']:.2f} GB | {ari} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
