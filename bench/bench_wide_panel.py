"""Memory of fitting a wide expression panel: thousands of genes, counts stored sparse.

    python bench/bench_wide_panel.py [--genes 10000] [--seeds 0 1 2] [--planted]

Writes (once, to ``bench/out/wide_panel/``) a simulated cohort of four slides (~49k cells)
whose X holds the simulator's 30 marker genes and noise genes up to ``--genes``, each noise
gene counted in 5 % of cells (sparse CSR counts). Then, per seed, runs a default
``python -m cellniche_core fit COHORT --features expr`` in its own process and prints its
wall time, peak resident memory, the number of genes the PCA was fitted on (all of them,
or the most variable that fit ``features.FIT_BYTES``), how many of the 30 markers are
among them, the number of niches chosen and the ARI against the planted niches; with
``--planted`` also the ARI of a fit at the planted number of niches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def panel_cohort(path: Path, n_genes: int) -> Path:
    """The simulated wide cohort on disk (made once)."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from cellniche_core.io import write_h5ad_atomic
    from cellniche_core.simulate import simulate_cohort

    if path.exists():
        return path
    base = simulate_cohort(n_patients=4, cells_per_slide=12_500, slides_per_patient=1, seed=0)
    rng = np.random.default_rng(0)
    extra = n_genes - base.n_vars
    noise = sp.random(base.n_obs, extra, density=0.05, format="csr", random_state=0, dtype=np.float32)
    noise.data = rng.poisson(1.0, noise.nnz).astype(np.float32) + 1
    X = sp.hstack([sp.csr_matrix(np.asarray(base.X, dtype=np.float32)), noise], format="csr")
    cohort = ad.AnnData(X=X, obs=base.obs, obsm={"spatial": base.obsm["spatial"]})
    cohort.var_names = list(map(str, base.var_names)) + [f"noise{i}" for i in range(extra)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_h5ad_atomic(cohort, path)
    return path


def fit_once(cohort: Path, run: Path, seed: int, env: dict, extra: list[str]) -> dict:
    """One default fit in its own process: wall time, peak RSS, the PCA's genes, niches, ARI."""
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    from bench_lazy import measured

    wall, peak = measured([sys.executable, "-m", "cellniche_core", "fit", str(cohort), "--out", str(run),
                           "--features", "expr", "--seed", str(seed), "--overwrite", "--quiet", *extra], env)
    spec = json.loads((run / "model.json").read_text())["features"]
    genes = spec.get("pca_genes") or list(range(len(spec["genes"])))
    cells = ad.read_h5ad(run / "cohort.h5ad", backed="r")
    ari = adjusted_rand_score(cells.obs["true_niche"].astype(str), cells.obs["niche"].astype(str))
    n_niches = cells.obs["niche"].nunique()
    cells.file.close()
    return {"wall": wall, "peak": peak, "pca_genes": len(genes), "markers": sum(g < 30 for g in genes),
            "n_niches": n_niches, "ari": ari}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genes", type=int, default=10_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--planted", action="store_true", help="also fit at the planted number of niches (6)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "wide_panel")
    args = p.parse_args()
    cohort = panel_cohort(args.out / f"panel_{args.genes}.h5ad", args.genes)
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    env = dict(os.environ, PYTHONPATH=path)
    print(f"{cohort.name}: default fit --features expr, 2 threads unless OMP_NUM_THREADS says otherwise")
    print("| seed | k | wall (s) | peak RSS (GB) | genes in the PCA | markers among them | niches | ARI |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for k, extra in (("auto", []), *((("6", ["--n-niches", "6", "--no-umap"]),) if args.planted else ())):
            r = fit_once(cohort, args.out / "runs" / f"seed{seed}_{k}", seed, env, extra)
            print(f"| {seed} | {k} | {r['wall']:.1f} | {r['peak']:.2f} | {r['pca_genes']:,} | {r['markers']} of 30 "
                  f"| {r['n_niches']} | {r['ari']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
