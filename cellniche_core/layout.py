"""2-D UMAP of the niche embedding (umap-learn), fitted on a subsample for large cohorts."""

from __future__ import annotations

import numpy as np
import torch

#: UMAP is fitted on at most this many cells; the others are placed among their neighbours
UMAP_FIT_CELLS = 10_000
#: optimisation epochs (umap-learn uses 500 below 10k cells; 200 already converges for display)
UMAP_EPOCHS = 200


def compute_umap(emb: np.ndarray, *, seed: int = 0, max_fit_cells: int = UMAP_FIT_CELLS,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """(n, 2) float32 UMAP coordinates of ``emb`` (cosine metric).

    umap-learn fits a random subsample of ``max_fit_cells`` cells; every other cell is put
    at the mean position of its 5 nearest fitted cells in embedding space (cosine), which
    costs a nearest-neighbour search on ``device`` instead of a UMAP fit (fitting grows
    superlinearly with n).
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
    out[rest] = fitted[nearest_cosine(emb[fit_idx], emb[rest], k=5, device=device)].mean(1)
    return out


def nearest_cosine(reference: np.ndarray, query: np.ndarray, *, k: int, device: str | torch.device = "cpu",
                   chunk_bytes: int = 256 * 2**20) -> np.ndarray:
    """(len(query), k) indices of the ``k`` most cosine-similar ``reference`` rows of each query.

    A chunked matrix product and top-k on ``device``: exact, and on a GPU far faster than
    a tree search, which does not help in 32 dimensions anyway. Queries go in chunks whose
    similarity block stays near ``chunk_bytes``. ``k`` is capped at ``len(reference)``.
    """
    k = min(k, len(reference))
    chunk_size = max(1, chunk_bytes // (4 * max(1, len(reference))))
    device = torch.device(device)
    ref = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(reference, np.float32)).to(device), dim=1)
    out = np.empty((len(query), k), dtype=np.int64)
    for lo in range(0, len(query), chunk_size):
        q = torch.from_numpy(np.ascontiguousarray(query[lo:lo + chunk_size], np.float32)).to(device)
        sim = torch.nn.functional.normalize(q, dim=1) @ ref.T
        out[lo:lo + chunk_size] = sim.topk(k, dim=1).indices.cpu().numpy()
    return out
