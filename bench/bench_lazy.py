"""Memory of embedding a wide cohort from disk: the expression matrix is never held whole.

    python bench/bench_lazy.py [--cells 1000000] [--genes 500]

1. Writes (once, to ``bench/out/lazy/``) a simulated cohort of ``--cells`` cells whose X has
   ``--genes`` genes: the simulator's 30 marker genes plus noise genes, dense float32.
2. Trains an expression-mode run (``--features expr``) on one slide of it.
3. Runs ``python -m cellniche_core embed RUN COHORT --out OUT`` in its own process and
   prints its wall time and peak resident memory next to the size of X; then, for
   comparison, the same embedding with the cohort read whole into memory first.
4. With ``--fit``: a default ``python -m cellniche_core fit COHORT --features expr`` of the
   whole cohort (UMAP included), its wall time, stage times and peak resident memory.
   ``fit`` of one .h5ad leaves X on disk as ``embed`` does, and copies it into the run. Then
   the run loaded as the dashboard loads it (X left on disk) and its niches' marker scores
   computed, against the same with X read whole.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def wide_cohort(path: Path, n_cells: int, n_genes: int) -> Path:
    import anndata as ad
    import numpy as np

    from cellniche_core.io import write_h5ad_atomic
    from cellniche_core.simulate import simulate_cohort

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    n_patients = max(2, n_cells // 50_000)
    base = simulate_cohort(n_patients=n_patients, cells_per_slide=n_cells // n_patients, slides_per_patient=1,
                           seed=0)
    rng = np.random.default_rng(0)
    X = np.empty((base.n_obs, n_genes), dtype=np.float32)
    X[:, :base.n_vars] = np.asarray(base.X, dtype=np.float32)
    for lo in range(0, base.n_obs, 100_000):  # noise genes, a block at a time
        hi = min(base.n_obs, lo + 100_000)
        X[lo:hi, base.n_vars:] = rng.poisson(1.0, (hi - lo, n_genes - base.n_vars))
    names = list(map(str, base.var_names)) + [f"noise{i}" for i in range(n_genes - base.n_vars)]
    wide = ad.AnnData(X=X, obs=base.obs, obsm={"spatial": base.obsm["spatial"]})
    wide.var_names = names
    write_h5ad_atomic(wide, path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=1_000_000)
    p.add_argument("--genes", type=int, default=500)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "lazy")
    p.add_argument("--fit", action="store_true", help="also time a default expression fit of the whole cohort")
    args = p.parse_args()
    import anndata as ad

    from cellniche_core.io import write_h5ad

    cohort = wide_cohort(args.out / f"wide_{args.cells}x{args.genes}.h5ad", args.cells, args.genes)
    backed = ad.read_h5ad(cohort, backed="r")
    n_cells, n_genes = backed.shape
    one_slide = args.out / "one_slide.h5ad"
    if not one_slide.exists():
        first = backed.obs["sample"].astype(str).iloc[0]
        write_h5ad(backed[(backed.obs["sample"].astype(str) == first).to_numpy()].to_memory(), one_slide)
    backed.file.close()
    # ours first, then what the caller set (e.g. packages installed outside the venv)
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    env = dict(os.environ, PYTHONPATH=path)
    run = args.out / "runs" / "expr"
    if not (run / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "cellniche_core", "fit", str(one_slide), "--out", str(run),
                        "--features", "expr", "--n-niches", "6", "--no-umap", "--steps", "300", "--quiet",
                        "--overwrite"], check=True, env=env)
    out = args.out / "embedded.h5ad"
    wall, peak = measured([sys.executable, "-m", "cellniche_core", "embed", str(run), str(cohort), "--out", str(out),
                           "--overwrite", "--quiet"], env)
    x_gb = n_cells * n_genes * 4 / 1e9
    print(f"{n_cells:,} cells x {n_genes} genes (X {x_gb:.1f} GB dense float32 on disk): embedded from disk in "
          f"{wall:.1f} s, peak RSS {peak:.2f} GB")
    eager = ("import sys, anndata as ad; from cellniche_core.io import load_run; "
             "from cellniche_core.cellniche import CellNiche; run = load_run(sys.argv[1]); "
             "m = CellNiche.from_state(run.model_config, run.state_dict); del run; "
             "a = ad.read_h5ad(sys.argv[2]); m.embed(a)")
    wall, peak = measured([sys.executable, "-c", eager, str(run), str(cohort)], env)
    print(f"the same with the cohort read whole into memory: {wall:.1f} s, peak RSS {peak:.2f} GB")
    if args.fit:
        fit_whole(cohort, args.out / "runs" / "whole", env, x_gb)
    return 0


def measured(command: list[str], env: dict) -> tuple[float, float]:
    """Run ``command`` in its own process: its wall time (s) and its own peak RSS (GB), which
    GNU time reports (kB) on the last line of stderr."""
    t = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", *command], check=True, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, int(res.stderr.strip().splitlines()[-1]) / 1e6


def fit_whole(cohort: Path, run: Path, env: dict, x_gb: float) -> None:
    """A default expression fit of the whole cohort in its own process: wall time, stages, peak RSS."""
    import json

    wall, peak = measured([sys.executable, "-m", "cellniche_core", "fit", str(cohort), "--out", str(run),
                           "--features", "expr", "--overwrite", "--quiet"], env)
    timings = json.loads((run / "manifest.json").read_text())["timings_s"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "total")
    print(f"default fit of the whole cohort (--features expr, X {x_gb:.1f} GB left on disk): {wall:.1f} s, "
          f"peak RSS {peak:.2f} GB; stages (s): {stages}")
    # what the dashboard does first with such a run: load it, then its niches' markers
    view = "\n".join(["import sys", "from cellniche_core.io import load_run",
                      "from cellniche_core.niches import marker_scores",
                      "run = load_run(sys.argv[1], with_weights=False, expression=sys.argv[2] == '1')",
                      "with run.expression() as X:", "    marker_scores(run.adata, niche_key=run.keys.niche, X=X)"])
    for whole, how in ((False, "X left on disk, as the dashboard loads it"), (True, "X read whole")):
        wall, peak = measured([sys.executable, "-c", view, str(run), "1" if whole else "0"], env)
        print(f"the run loaded and its markers computed ({how}): {wall:.1f} s, peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    sys.exit(main())
