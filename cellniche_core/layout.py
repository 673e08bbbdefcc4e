"""2-D UMAP of the niche embedding (umap-learn), fitted on a subsample for large cohorts."""

from __future__ import annotations

import warnings

import numpy as np
import torch

#: UMAP is fitted on at most this many cells; the others are placed among their neighbours
UMAP_FIT_CELLS = 10_000
#: optimisation epochs (umap-learn uses 500 below 10k cells; 200 already converges for display)
UMAP_EPOCHS = 200


_UMAP_CACHED = False


def _import_umap():
    """umap-learn, with its compiled functions cached on disk like our own kernels.

    umap-learn compiles ~100 numba functions without numba's on-disk cache, which cost
    ~8 s in every new process, more than fitting 5,000 cells. Turning the cache on (the
    same mechanism as ``@njit(cache=True)``) makes that a one-off per installation:
    later processes load the compiled code in ~0.3 s. A function numba cannot cache keeps
    compiling as before.
    """
    global _UMAP_CACHED
    import umap

    if not _UMAP_CACHED:
        _UMAP_CACHED = True
        from numba.core.registry import CPUDispatcher

        import umap.layouts
        import umap.spectral
        import umap.umap_
        import umap.utils

        for module in (umap.umap_, umap.layouts, umap.utils, umap.spectral):
            for value in vars(module).values():
                if isinstance(value, CPUDispatcher):
                    try:
                        value.enable_caching()
                    except Exception:  # noqa: BLE001 - an uncachable function just compiles
                        pass
    return umap


def compute_umap(emb: np.ndarray, *, seed: int = 0, max_fit_cells: int = UMAP_FIT_CELLS,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """(n, 2) float32 UMAP coordinates of ``emb`` (cosine metric).

    umap-learn fits a random subsample of ``max_fit_cells`` cells; every other cell is put
    at the mean position of its 5 nearest fitted cells in embedding space (cosine), which
    costs a nearest-neighbour search on ``device`` instead of a UMAP fit (fitting grows
    superlinearly with n).
    """
    umap = _import_umap()  # imported here: ~2 s, only needed by runs that map their cells

    emb = np.asarray(emb, dtype=np.float32)
    n = len(emb)
    if n < 5:
        return np.zeros((n, 2), dtype=np.float32)
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, size=min(n, max_fit_cells), replace=False))
    fit = emb[fit_idx]
    k = min(15, len(fit_idx) - 1)
    # The fitted cells' exact cosine neighbours, by the same matrix product as below, given
    # to umap-learn: it then skips its approximate search (NN-descent), whose numba code
    # took ~20 s to compile in every new process (the fit itself takes ~4 s).
    knn, dist = fitted_neighbours(fit, k, device=device)
    reducer = umap.UMAP(n_neighbors=k, metric="cosine", random_state=seed, n_jobs=1, min_dist=0.3,
                        n_epochs=UMAP_EPOCHS, precomputed_knn=(knn, dist, None))
    # umap-learn's numba/threadpool set-up can leave torch on every core afterwards, which
    # makes later small-tensor training steps spin on a busy machine: restore the setting
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():  # we place new cells ourselves, never by umap's transform
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
            fitted = reducer.fit_transform(fit).astype(np.float32)
    finally:
        torch.set_num_threads(threads)
    if len(fit_idx) == n:
        return fitted
    out = np.empty((n, 2), dtype=np.float32)
    out[fit_idx] = fitted
    rest = np.setdiff1d(np.arange(n), fit_idx)
    out[rest] = fitted[nearest_cosine(emb[fit_idx], emb[rest], k=5, device=device)].mean(1)
    return out


def fitted_neighbours(emb: np.ndarray, k: int, *, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine distances) of each row's ``k`` nearest rows of ``emb``, itself
    included, in umap-learn's ``precomputed_knn`` form (both (n, k), nearest first).

    A cell's distance to itself (and to an identical cell) is set to exactly 0: computed
    in float32 it can come out at ~1e-7, and umap-learn would then take that, instead of
    the nearest other cell, as the cell's local distance scale.
    """
    knn, sim = nearest_cosine(emb, emb, k=k, device=device, similarity=True)
    dist = np.clip(1.0 - sim, 0.0, 2.0)
    dist[(knn == np.arange(len(emb))[:, None]) | (dist < 1e-6)] = 0.0
    return knn, dist


def nearest_cosine(reference: np.ndarray, query: np.ndarray, *, k: int, device: str | torch.device = "cpu",
                   chunk_bytes: int | None = None, similarity: bool = False,
                   groups: tuple[np.ndarray, np.ndarray] | None = None):
    """(len(query), k) indices of the ``k`` most cosine-similar ``reference`` rows of each
    query, most similar first; with ``similarity``, also their (len(query), k) float32
    cosine similarities. ``reference`` and ``query`` are arrays or tensors.

    ``groups = (query_groups, reference_groups)``: a reference row in the query's own group
    is never its neighbour (similarity ``-inf`` where nothing else is left).

    Blocked matrix products and top-k on ``device``: exact, and on a GPU far faster than a
    tree search, which does not help in 32 dimensions anyway. Queries go in chunks of at
    least 256 and the reference in blocks, so that each similarity block stays near
    ``chunk_bytes``; each block's top-k are merged with the best so far. By default blocks
    are 8 MB on a CPU, where a block that stays in the processor's caches makes the search
    ~3x faster than 256 MB (top-k reads it from cache, not from memory), and 256 MB on a
    GPU, where larger blocks keep it busy. ``k`` is capped at ``len(reference)``.
    """
    k = min(k, len(reference))
    out = np.empty((len(query), k), dtype=np.int64)
    sims = np.empty((len(query), k), dtype=np.float32)
    if k == 0 or len(query) == 0:
        return (out, sims) if similarity else out
    device = torch.device(device)
    if chunk_bytes is None:
        chunk_bytes = (256 if device.type == "cuda" else 8) * 2**20
    n_ref = max(1, len(reference))
    chunk_size = max(256, chunk_bytes // (4 * n_ref))  # queries per chunk
    block = max(k, chunk_bytes // (4 * chunk_size))  # reference rows per block
    ref = unit_rows(reference, device)
    if groups is not None:
        q_groups, ref_groups = (torch.as_tensor(np.asarray(g), device=device) for g in groups)
    for lo in range(0, len(query), chunk_size):
        q = unit_rows(query[lo:lo + chunk_size], device)
        best = best_at = None
        for start in range(0, len(reference), block):
            sim = q @ ref[start:start + block].T
            if groups is not None:
                same = q_groups[lo:lo + chunk_size, None] == ref_groups[None, start:start + block]
                sim.masked_fill_(same, -np.inf)
            top = sim.topk(min(k, sim.shape[1]), dim=1)
            at = top.indices + start
            if best is None:
                best, best_at = top.values, at
            else:  # the k best of the best so far and this block's
                merged = torch.cat([best, top.values], dim=1).topk(k, dim=1)
                best, best_at = merged.values, torch.cat([best_at, at], dim=1).gather(1, merged.indices)
        out[lo:lo + chunk_size] = best_at.cpu().numpy()
        sims[lo:lo + chunk_size] = best.cpu().numpy()
    return (out, sims) if similarity else out


def unit_rows(x, device: torch.device) -> torch.Tensor:
    """Rows of an array or tensor as float32 unit vectors on ``device``."""
    return torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32, device=device), dim=1)
