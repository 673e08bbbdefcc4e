"""The neighbour vote of label transfer: nearest reference cells, label shares.

:mod:`cellniche_core.transfer` asks up to three sets of neighbours for each query cell, the
nearest reference cells in embedding space, in input space and in the reference's
discriminant space of its inputs (:func:`discriminant_shares`), and each set votes here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .features import neighbourhood_profiles
from .layout import nearest_cosine

__all__ = ["discriminant_shares", "label_shares", "nearest", "spatial_mean", "subsample_by_label", "vote",
           "winner"]

#: query rows projected into the discriminant space and voted on at a time
_PROJECT_ROWS = 65_536
#: discriminant dimensions up to which a KD-tree finds the neighbours on a CPU
_KD_TREE_DIMS = 16


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


def discriminant_shares(ref_x: Sequence[np.ndarray], ref_codes: np.ndarray, query_x: Sequence[np.ndarray],
                        n_labels: int, k: int, *, device: str | torch.device = "cpu") -> np.ndarray | None:
    """Label shares (m, n_labels) of the ``k`` reference rows nearest to each query row in
    the reference's discriminant space; None when fewer than two labels can be told apart.

    ``ref_x`` and ``query_x``: column blocks of the same inputs, read side by side (e.g. the
    surroundings at 1-2 hops and at 3), so that a large query is never copied into one
    array. The space is that of a linear discriminant analysis of the reference rows by
    their labels (``ref_codes``, all >= 0): the directions along which the labels' means
    differ, each measured against the spread within a label. A reference of several slides
    has each label's cells on each slide, so what differs from one slide to the next (depth,
    section thickness) is part of that spread, and weighs less than in the inputs
    themselves, whose largest directions it may be. Distances are Euclidean, in at most
    ``n_labels - 1`` dimensions: found with a KD-tree on a CPU (up to
    :data:`_KD_TREE_DIMS`), by blocked matrix products otherwise.
    """
    import warnings

    from scipy.spatial import cKDTree
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from .novelty import nearest_euclidean

    ref_codes = np.asarray(ref_codes)
    n_codes = len(np.unique(ref_codes))
    if n_codes < 2 or len(ref_codes) <= n_codes:
        return None
    with warnings.catch_warnings():  # inputs that sum to one (cell-type shares) are collinear: expected
        warnings.simplefilter("ignore", UserWarning)
        lda = LinearDiscriminantAnalysis(solver="svd").fit(np.hstack([np.asarray(b, np.float64) for b in ref_x]),
                                                           ref_codes)
    dims = lda.transform(lda.xbar_[None, :]).shape[1]  # transform's own cut of scalings_
    centre, scalings = lda.xbar_.astype(np.float32), lda.scalings_[:, :dims].astype(np.float32)

    def project(blocks, lo: int, hi: int) -> np.ndarray:  # rows lo:hi of the blocks side by side
        return (np.hstack([np.asarray(b[lo:hi], dtype=np.float32) for b in blocks]) - centre) @ scalings

    index = project(ref_x, 0, len(ref_codes))
    k = int(min(k, len(index)))
    tree = cKDTree(index) if torch.device(device).type == "cpu" and dims <= _KD_TREE_DIMS else None
    n = len(query_x[0])
    shares = np.empty((n, n_labels))
    for lo in range(0, n, _PROJECT_ROWS):
        points = project(query_x, lo, lo + _PROJECT_ROWS)
        if tree is not None:
            dist, rows = tree.query(points, k=k, workers=-1)
            dist, rows = dist.reshape(len(points), k), rows.reshape(len(points), k)
        else:
            dist, rows = nearest_euclidean(points, index, k, device=device, return_index=k)
        shares[lo:lo + _PROJECT_ROWS] = label_shares(dist, ref_codes[rows], n_labels)
    return shares
