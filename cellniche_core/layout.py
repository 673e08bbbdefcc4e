"""2-D UMAP of the niche embedding (umap-learn), fitted on a subsample for large cohorts."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

#: UMAP is fitted on at most this many cells; the others are placed among their neighbours
UMAP_FIT_CELLS = 10_000
#: optimisation epochs (umap-learn uses 500 below 10k cells; 200 already converges for display)
UMAP_EPOCHS = 200


def compute_umap(emb: np.ndarray, *, seed: int = 0, max_fit_cells: int = UMAP_FIT_CELLS) -> np.ndarray:
    """(n, 2) float32 UMAP coordinates of ``emb`` (cosine metric).

    umap-learn fits a random subsample of ``max_fit_cells`` cells; every other cell is put
    at the mean position of its 5 nearest fitted cells in embedding space, which costs a
    nearest-neighbour query instead of a UMAP fit (fitting grows superlinearly with n).
    """
    import umap  # imported here: its first import compiles numba code (~20 s)

    emb = np.asarray(emb, dtype=np.float32)
    n = len(emb)
    if n < 5:
        return np.zeros((n, 2), dtype=np.float32)
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, size=min(n, max_fit_cells), replace=False))
    reducer = umap.UMAP(n_neighbors=min(15, len(fit_idx) - 1), metric="cosine", random_state=seed,
                        n_jobs=1, min_dist=0.3, n_epochs=UMAP_EPOCHS)
    # umap-learn's numba/threadpool set-up can leave torch on every core afterwards, which
    # makes later small-tensor training steps spin on a busy machine: restore the setting
    threads = torch.get_num_threads()
    try:
        fitted = reducer.fit_transform(emb[fit_idx]).astype(np.float32)
    finally:
        torch.set_num_threads(threads)
    if len(fit_idx) == n:
        return fitted
    out = np.empty((n, 2), dtype=np.float32)
    out[fit_idx] = fitted
    rest = np.setdiff1d(np.arange(n), fit_idx)
    _, nbr = NearestNeighbors(n_neighbors=5).fit(emb[fit_idx]).kneighbors(emb[rest])
    out[rest] = fitted[nbr].mean(1)
    return out
