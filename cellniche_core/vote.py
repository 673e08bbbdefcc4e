"""The neighbour vote of label transfer: nearest reference cells, label shares.

:func:`cellniche_core.transfer.transfer_labels` asks up to three sets of neighbours for
each query cell, and each set votes here, its ``2 x n_neighbors`` voters counted alike:

- the nearest reference cells by cosine distance on the L2-normalised embeddings;
- the nearest in the neighbourhood-averaged inputs (``profiles``, the cells the input
  rule of :mod:`.novelty` measures). The encoder is trained on the reference alone and
  embeds a new slide's cells slightly off; the inputs are what it learnt from: the two
  sets of neighbours err in different places;
- given those inputs one hop wider too and a reference of several patients or slides,
  the nearest in the reference's discriminant space of both (:func:`discriminant_shares`:
  the directions that tell its labels apart, against the spread within each label, which
  then holds what differs between its slides; on one slide they fit that slide: a DLPFC
  section, one half to the other, 0.703 to 0.653).

A label's share is the mean of its shares in the spaces. Thirty voters in each space,
counted alike, did better on held-out real tissue than the 15 nearest weighted by
closeness (README).

The vote is then cast again with each slide's shift taken off (:func:`aligned_shares`): in
every space, each reference slide is moved onto the others and each query slide onto the
reference by the mean, over the labels both hold with ``2 x n_neighbors`` cells, of the
difference of the label's means (the query's labels from the first vote, its unknown
cells left out). Measured label by label, a slide that holds the same labels in other
proportions is not moved by them. Held out on real tissue (reference seeds 0-2): DLPFC,
two sections to two others, 0.852-0.858 to 0.858-0.866; one section, half to half,
0.703-0.707 to 0.746-0.762; STARmap V1, half to half, 0.778-0.793 to 0.797-0.803 (README).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .features import neighbourhood_profiles
from .layout import nearest_cosine

__all__ = ["align_slides", "aligned_shares", "discriminant_shares", "discriminant_space", "label_means", "label_shares",
           "matched_shift", "nearest", "slide_codes", "spatial_mean", "subsample_by_label", "vote", "winner"]

#: query rows projected into the discriminant space and voted on at a time
_PROJECT_ROWS = 65_536
#: discriminant dimensions up to which a KD-tree finds the neighbours on a CPU
_KD_TREE_DIMS = 16


def nearest(points: torch.Tensor, index: torch.Tensor, k: int, *,
            groups: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest index rows of every point by cosine distance (rows taken to unit length).

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


def discriminant_space(ref_x: Sequence[np.ndarray], ref_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Centre (f,) and projection (f, d) float32 of a linear discriminant analysis of the
    reference rows (column blocks ``ref_x`` side by side) by their labels, d <= labels - 1;
    None when fewer than two labels can be told apart. Moving every row by the same vector
    leaves the projection as it is."""
    import warnings

    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    ref_codes = np.asarray(ref_codes)
    n_codes = len(np.unique(ref_codes))
    if n_codes < 2 or len(ref_codes) <= n_codes:
        return None
    with warnings.catch_warnings():  # inputs that sum to one (cell-type shares) are collinear: expected
        warnings.simplefilter("ignore", UserWarning)
        lda = LinearDiscriminantAnalysis(solver="svd").fit(np.hstack([np.asarray(b, np.float64) for b in ref_x]),
                                                           ref_codes)
    dims = lda.transform(lda.xbar_[None, :]).shape[1]  # transform's own cut of scalings_
    return lda.xbar_.astype(np.float32), lda.scalings_[:, :dims].astype(np.float32)


def discriminant_shares(ref_x: Sequence[np.ndarray], ref_codes: np.ndarray, query_x: Sequence[np.ndarray],
                        n_labels: int, k: int, *, device: str | torch.device = "cpu",
                        space: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray | None:
    """Label shares (m, n_labels) of the ``k`` reference rows nearest to each query row in
    the reference's discriminant space (``space``: :func:`discriminant_space`, fitted on
    ``ref_x`` when not given); None when fewer than two labels can be told apart.

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
    from scipy.spatial import cKDTree

    from .novelty import nearest_euclidean

    ref_codes = np.asarray(ref_codes)
    if space is None:
        space = discriminant_space(ref_x, ref_codes)
    if space is None:
        return None
    centre, scalings = space
    dims = scalings.shape[1]

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


# ----------------------------------------------------------------------- slide shift


def slide_codes(adata, key: str) -> np.ndarray:
    """Integer slide of each cell of ``adata``: the codes of ``obs[key]``, zeros when it is absent."""
    import pandas as pd

    return pd.factorize(adata.obs[key])[0] if key in adata.obs else np.zeros(adata.n_obs, dtype=np.int64)


def label_means(x: np.ndarray, codes: np.ndarray, n_labels: int, min_cells: int) -> np.ndarray:
    """Mean row of each label's rows, (n_labels, f) float64; NaN for a label with fewer
    than ``min_cells`` rows (code -1: no label). ``x`` is read once, not copied."""
    import scipy.sparse as sp

    rows = np.flatnonzero(np.asarray(codes) >= 0)
    onehot = sp.csr_matrix((np.ones(len(rows)), (codes[rows], rows)), shape=(n_labels, len(codes)))
    counts = np.bincount(codes[rows], minlength=n_labels)
    means = np.asarray(onehot @ x, dtype=np.float64) / np.maximum(counts, 1)[:, None]
    means[counts < min_cells] = np.nan
    return means


def matched_shift(means: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Mean of ``means - centre`` over the labels both hold, (f,): a slide's shift from the
    reference, measured label by label so that a slide with other proportions of the same
    labels is not shifted by them; zeros when no label is held by both."""
    diff = means - centre
    both = np.isfinite(diff).all(1)
    return diff[both].mean(0) if both.any() else np.zeros(means.shape[1])


def align_slides(blocks: Sequence[np.ndarray], codes: np.ndarray, slides: np.ndarray, n_labels: int,
                 min_cells: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Reference column blocks with each slide's :func:`matched_shift` taken off, float32,
    and the label means of the aligned blocks (the centre a query slide is measured from)."""
    aligned, centres = [], []
    for block in blocks:
        block = np.array(block, dtype=np.float32)
        centre = label_means(block, codes, n_labels, min_cells)
        if len(np.unique(slides)) > 1:
            for s in np.unique(slides):
                on = slides == s
                block[on] -= matched_shift(label_means(block[on], codes[on], n_labels, min_cells), centre)
            centre = label_means(block, codes, n_labels, min_cells)
        aligned.append(block)
        centres.append(centre)
    return aligned, centres


def aligned_shares(spaces: Sequence[tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]], codes: np.ndarray,
                   ref_slides: np.ndarray, first: np.ndarray, query_slides: np.ndarray, n_labels: int, k: int, *,
                   min_cells: int, device: str | torch.device = "cpu") -> np.ndarray:
    """The vote again, each query slide's shift from the reference taken off: label shares (m, n_labels).

    ``spaces``: ``(kind, reference blocks, query blocks)``, kind ``"cosine"`` (one block,
    the embedding: nearest by cosine), ``"euclidean"`` (one block: by Euclidean distance)
    or ``"discriminant"`` (:func:`discriminant_shares`). ``first``: each query cell's label
    code from the first vote (-1: unknown), which tells which query cells to compare with
    which reference label. Each reference slide is aligned to the others, then each query
    slide to the reference, by :func:`matched_shift` of labels with ``min_cells`` cells on
    both sides; the reference, not the query, is moved, so a large query is never copied.
    A space's shares are those of its ``k`` nearest reference rows; the spaces count alike.
    """
    k = int(min(k, len(codes)))
    fitted = [(kind, *align_slides(ref, codes, ref_slides, n_labels, min_cells), query)
              for kind, ref, query in spaces]
    lda = {i: discriminant_space(f[1], codes) for i, f in enumerate(fitted) if f[0] == "discriminant"}
    shares = np.zeros((len(first), n_labels))
    names = np.unique(query_slides)
    for s in names:
        on = slice(None) if len(names) == 1 else np.flatnonzero(query_slides == s)
        parts = []
        for i, (kind, ref, centres, query) in enumerate(fitted):
            q = [np.asarray(b[on]) for b in query]
            moved = [r + matched_shift(label_means(b, first[on], n_labels, min_cells), c).astype(np.float32)
                     for r, c, b in zip(ref, centres, q)]
            if kind == "discriminant":
                part = None if lda[i] is None else discriminant_shares(moved, codes, q, n_labels, k, device=device,
                                                                       space=lda[i])
            elif kind == "cosine":
                # nearest_cosine takes rows to unit length a chunk at a time: the query is not copied here
                dist, rows = nearest(torch.as_tensor(q[0], device=device), torch.as_tensor(moved[0], device=device), k)
                part = label_shares(dist, codes[rows], n_labels)
            else:
                from .novelty import nearest_euclidean

                dist, rows = nearest_euclidean(q[0], moved[0], k, device=device, return_index=k)
                part = label_shares(dist, codes[rows], n_labels)
            if part is not None:  # None: a discriminant space of one label
                parts.append(part)
        shares[on] = sum(parts) / len(parts)
    return shares
