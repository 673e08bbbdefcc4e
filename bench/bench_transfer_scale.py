"""Cost of label transfer with the query's size: wall time per query and peak memory.

    python bench/bench_transfer_scale.py                          # queries of 10k and 100k cells
    python bench/bench_transfer_scale.py --sizes 1000000 --device cuda

The reference is a run trained on the demo cohort without patient P6 (~20k cells, niches at
the planted k). Each query is a simulated cohort of about N cells from another seed, in
slides of up to 50,000 cells, annotated with :func:`cellniche_core.transfer.annotate_query`
in its own process (so the peak resident memory is the query's). Prints a Markdown table:
seconds for the whole transfer (embedding, graph, input profiles, both neighbour searches,
calibration, unknown rule), the cells per second, the peak RSS and the share called unknown.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CELLS_PER_SLIDE = 50_000


def reference_run(out: Path, device: str) -> Path:
    """The demo cohort without P6, trained once and written as a run folder."""
    run_dir = out / "reference"
    if (run_dir / "manifest.json").exists():
        return run_dir
    from cellniche_core.io import write_run
    from cellniche_core.keys import Keys
    from cellniche_core.pipeline import RunOptions, analyse_cohort
    from cellniche_core.simulate import simulate_cohort

    cohort = simulate_cohort()
    reference = cohort[cohort.obs[Keys.PATIENT].astype(str) != "P6"].copy()
    options = RunOptions(n_niches=int(reference.obs[Keys.TRUE_NICHE].nunique()), umap=False, device=device)
    model, manifest = analyse_cohort(reference, options)
    write_run(run_dir, adata=reference, state_dict=model.state_dict(), model_config=model.model_config(),
              manifest=manifest, overwrite=True)
    return run_dir


def query_file(out: Path, n_cells: int) -> Path:
    """A simulated query cohort of about ``n_cells`` cells on disk (made once)."""
    from cellniche_core.io import write_h5ad
    from cellniche_core.keys import Keys
    from cellniche_core.simulate import simulate_cohort

    path = out / f"query_{n_cells}.h5ad"
    if not path.exists():
        per_slide = min(CELLS_PER_SLIDE, n_cells)
        slides = max(1, round(n_cells / per_slide))
        query = simulate_cohort(n_patients=slides, cells_per_slide=per_slide, slides_per_patient=1, seed=1)
        del query.obs[Keys.TRUE_NICHE]
        write_h5ad(query, path)
    return path


def child(run_dir: str, query_path: str, device: str) -> None:
    """Annotate one query in this process and print one JSON line."""
    import anndata as ad
    import torch

    from cellniche_core.io import load_run
    from cellniche_core.transfer import annotate_query

    torch.set_num_threads(int(os.environ.get("CELLNICHE_THREADS", torch.get_num_threads())))
    run = load_run(run_dir)
    query = ad.read_h5ad(query_path)
    t = time.perf_counter()
    report = annotate_query(run, query, device=device)
    seconds = time.perf_counter() - t
    print(json.dumps({"cells": int(query.n_obs), "seconds": seconds, "unknown": report["unknown_fraction"]}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000],
                        help="query sizes, ascending (the peak RSS is the largest child's so far)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads of each transfer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "transfer_scale")
    parser.add_argument("--child", nargs=3, metavar=("RUN", "QUERY", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = reference_run(args.out, args.device)
    env = dict(os.environ)
    if args.threads:
        env.update(CELLNICHE_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    print("| query cells | transfer, s | cells per s | peak RSS, GB | unknown |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        path = query_file(args.out, n)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        done = subprocess.run([sys.executable, __file__, "--child", str(run_dir), str(path), args.device],
                              capture_output=True, text=True, env=env)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rss = max(peak, before) / 2**20  # kB -> GB (Linux)
        print(f"| {r['cells']:,} | {r['seconds']:.1f} | {r['cells'] / r['seconds']:,.0f} | {rss:.2f} | "
              f"{r['unknown']:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
