"""Niche recovery on the demo cohort: ARI against the planted niches, per training seed.

    python bench/bench_accuracy.py [--seeds 0 1 2] [--cohort-seed 0]

Trains the default model on ``simulate_cohort(seed=--cohort-seed)`` (the demo cohort) once
per training seed, embeds every cell and calls niches at the planted k and with ``auto``.
For each it prints the ARI of the clustering the library chose and, for comparison, of
plain KMeans at the same k; and the same two for each cell's raw cell-type composition
over 1-4 graph hops (the baseline the embedding has to beat).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cohort-seed", type=int, default=0)
    args = p.parse_args()

    import numpy as np
    import scipy.sparse as sp

    from cellniche_core.cellniche import CellNiche, spatial_graph
    from cellniche_core.keys import Keys
    from cellniche_core.metrics import agreement
    from cellniche_core.niches import _kmeans, call_niches
    from cellniche_core.simulate import simulate_cohort
    from cellniche_core.train import TrainConfig

    adata = simulate_cohort(seed=args.cohort_seed)
    truth = adata.obs[Keys.TRUE_NICHE].astype(str).to_numpy()
    k = len(set(truth))
    print(f"demo cohort: {adata.n_obs:,} cells, {adata.obs[Keys.SAMPLE].nunique()} slides, {k} planted niches")

    model = CellNiche()
    graph = spatial_graph(adata, model.graph, model.keys)
    types = adata.obs[Keys.CELL_TYPE].astype("category")
    onehot = sp.csr_matrix((np.ones(adata.n_obs), (np.arange(adata.n_obs), types.cat.codes)),
                           shape=(adata.n_obs, len(types.cat.categories)))
    adj = sp.csr_matrix((np.ones(len(graph.indices)), graph.indices, graph.indptr), shape=(adata.n_obs,) * 2)
    adj = adj + sp.identity(adata.n_obs, format="csr")
    reach, baseline = sp.identity(adata.n_obs, format="csr"), []
    for hops in range(1, 5):
        reach = ((reach @ adj) > 0).astype(np.float64)
        comp = np.asarray((reach @ onehot).todense())
        comp /= comp.sum(1, keepdims=True)
        plain = agreement(truth, _kmeans(comp, k, 0).predict(comp))["ari"]
        chosen = agreement(truth, call_niches(comp, k, seed=0)[0])["ari"]
        baseline.append(f"{chosen:.3f} ({plain:.3f})")
    print("raw composition baseline at the planted k, 1-4 hops, the library's clustering (plain KMeans): "
          + " / ".join(baseline))

    print("| seed | planted k: ARI (method) | planted k: plain KMeans ARI | auto: k (ARI, method) |")
    print("|---|---|---|---|")
    for seed in args.seeds:
        a = adata.copy()
        CellNiche(config=TrainConfig(seed=seed)).fit(a, device="cpu").embed(a, device="cpu")
        emb = a.obsm[Keys.EMBEDDING]
        labels, info = call_niches(emb, k, seed=seed)
        plain = _kmeans(emb, k, seed).predict(emb)
        auto, auto_info = call_niches(emb, "auto", seed=seed)
        print(f"| {seed} | {agreement(truth, labels)['ari']:.3f} ({info['clustering']['method']}) | "
              f"{agreement(truth, plain)['ari']:.3f} | {auto_info['n_niches']} "
              f"({agreement(truth, auto)['ari']:.3f}, {auto_info['clustering']['method']}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
