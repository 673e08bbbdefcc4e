"""The neighbour vote of label transfer: nearest reference cells, label shares.

:mod:`cellniche_core.transfer` asks two sets of neighbours for each query cell, the
nearest reference cells in embedding space and in input space, and each set votes here.
"""

from __future__ import annotations

import numpy as np
import torch

from .features import neighbourhood_profiles
from .layout import nearest_cosine

__all__ = ["label_shares", "nearest", "spatial_mean", "subsample_by_label", "vote", "winner"]


def nearest(points: torch.Tensor, index: torch.Tensor, k: int, *,
            groups: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest index rows of every point by cosine distance (rows are unit vectors).

    ``groups = (point_groups, index_groups)``: an index row in the point's own group is
    never its neighbour. Returns distances (m, k) float32, ascending, and index rows (m, k).
    """
    nbr, sim = nearest_cosine(index, points, k=k, device=points.device, similarity=True,
                              groups=None if groups is None else tuple(g.cpu().numpy() for g in groups))
    return np.clip(1.0 - sim, 0.0, None), nbr


def spatial_mean(values: np.ndarray, graph: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``values`` (n,) averaged over each cell and its neighbours in ``graph`` (CSR ``(indptr, indices)``)."""
    if graph is None:
        return values
    indptr, indices = (np.asarray(a) for a in graph)
    if len(indptr) != len(values) + 1:
        raise ValueError(f"query_graph has {len(indptr) - 1} nodes, the query {len(values)} cells")
    return neighbourhood_profiles(values[:, None], indptr, indices, (1,))[:, 0]


def label_shares(dist: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Each label's share of the vote, (m, n_labels), rows summing to 1.

    ``dist`` (m, k) and ``labels`` (m, k): each point's neighbours. Every neighbour at a
    finite distance counts alike (one excluded by a group mask, at an infinite distance,
    does not). Weighting the closest more (from 1 down to 1/e for the k-th) was tried: the
    closest cell is one noisy measurement, and on a small reference (STARmap V1, 530 cells)
    that cost 0.03-0.05 of accuracy on known labels; on DLPFC it changed nothing.
    """
    w = np.isfinite(dist).astype(np.float64)
    scores = np.zeros((len(dist), n_labels))
    np.add.at(scores, (np.repeat(np.arange(len(dist)), dist.shape[1]), labels.ravel()), w.ravel())
    return scores / np.maximum(scores.sum(1, keepdims=True), 1e-12)


def winner(shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Winning label code (m,) and its share (m,) of :func:`label_shares`."""
    best = shares.argmax(1)
    return best, shares[np.arange(len(shares)), best]


def vote(dist: np.ndarray, labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour vote: winning label code (m,) and its share (m,)."""
    return winner(label_shares(dist, labels, n_labels))


def subsample_by_label(codes: np.ndarray, max_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted rows of labelled cells: all of them, or at most ``max_cells`` drawn per label.

    Every label first keeps ``min(size, max_cells // (4 * n_labels))`` cells, so that a
    rare label survives; the rest of the budget is shared in proportion to the labels'
    remaining cells, which keeps the vote's priors close to the reference's.
    """
    labelled = np.flatnonzero(codes >= 0)
    if len(labelled) <= max_cells:
        return labelled
    sizes = np.bincount(codes[labelled])
    floor = np.minimum(sizes, max_cells // (4 * len(sizes)))
    left = sizes - floor
    quota = floor + np.floor(left / max(left.sum(), 1) * (max_cells - floor.sum())).astype(int)
    keep = [rng.choice(np.flatnonzero(codes == c), size=q, replace=False)
            for c, q in enumerate(quota) if q > 0]
    return np.sort(np.concatenate(keep))
