"""How far a query cell's surroundings are from everything the reference has seen, in input space.

Why not only in embedding space
    The embedding is trained on reference cells alone and is L2-normalised: inputs unlike
    any it was trained on are not pushed away from the reference, they are folded onto the
    nearest niche it knows. On DLPFC (reference without white matter) the unseen white
    matter spots land *closer* to reference spots than spots of the known layers do. Their
    inputs are plainly new: a neighbourhood profile of white matter sits about 2.5 times
    farther from the reference origin than profiles of the cortical layers. So the unknown
    rule also measures the distance of each cell's neighbourhood-averaged encoder inputs
    (the mean over the cell and its neighbours at 1 and 2 hops, :data:`INPUT_HOPS`,
    side by side; Euclidean: the magnitude counts) to its nearest reference cells.

Both distance rules of :mod:`.transfer` share the calibration's choices kept here: which
groups are held out (:func:`calibration_groups`) and which reference cells may calibrate
(:func:`shared_cells`).

Calibration (reference only)
    Reference cells are measured against the reference cells of *other* groups (patients,
    slides or spatial blocks, as for the embedding rule). A held-out cell thus sees a
    smaller reference than a query cell does (with two slides, half of it), which makes its
    nearest neighbours farther; the query's ``k`` is scaled by the inverse of the mean share
    of the reference a held-out cell sees, so that both distances are measured at the same
    density (the mean distance to the ``k`` nearest of ``n`` cells equals that to the
    ``k n' / n`` nearest of ``n'`` cells drawn from the same population).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

__all__ = ["INPUT_HOPS", "VOTE_HOPS", "calibration_groups", "edge_quantile", "finest_scale_far", "grow_regions",
           "input_profiles", "input_rule", "model_input_profiles", "nearest_euclidean", "next_hop", "outside_own_group",
           "profile_distances", "shared_cells", "spatial_blocks"]

#: a micro-cluster with more than this share of its cells in one group is group-specific
OWN_GROUP_MAX = 0.9
#: the scales (graph hops) at which a query cell's surroundings are compared with the
#: reference's, in the input vote and the input distance of label transfer: local, to place
#: a cell in its own layer or compartment (~17 and ~53 cells of the default 15-NN graph, as 1-3
#: hops of the 10-NN graph before it). Training compares wider ones for its positives
#: (``TrainConfig.profile_hops``); with 1-6 hops of the 10-NN graph here, STARmap's transfer fell
#: from 0.786 to 0.750 and called 10.3 % of known cells unknown; with 1-3 of the 15-NN graph,
#: DLPFC's fell from 0.841 to 0.832 (1.8 % of known spots unknown against 0.9 %), seed 0.
INPUT_HOPS = (1, 2)
#: the scales of the discriminant vote of label transfer (:func:`~cellniche_core.vote.discriminant_shares`):
#: :data:`INPUT_HOPS` and the next hop (:func:`next_hop`)
VOTE_HOPS = (*INPUT_HOPS, INPUT_HOPS[-1] + 1)
#: a new region's edge cells are far when they exceed the quantile whose tail is this many
#: times the threshold's (0.95 for the default 0.99): see :func:`grow_regions`
EDGE_TAIL = 5
#: query rows x reference rows per distance block (float32): 8 MB on a CPU, where a block
#: that stays in the caches is faster, 256 MB on a GPU (as :func:`~cellniche_core.layout.nearest_cosine`)
_BLOCK = {"cpu": 2 * 2**20, "cuda": 64 * 2**20}


def input_profiles(x: np.ndarray, indptr: np.ndarray, indices: np.ndarray, hops=(1,)) -> np.ndarray:
    """Means of the input rows over each cell's 1..max(hops) hop surroundings, (n, f * len(hops)).

    As :func:`cellniche_core.features.neighbourhood_profiles`, but each scale is kept at its
    own magnitude (not L2-normalised), since how strong a signal is tells new from known.
    """
    from .features import neighbourhood_profiles

    return neighbourhood_profiles(x, indptr, indices, hops, normalise=False)  # one smoothing pass per hop


def nearest_euclidean(points: np.ndarray, index: np.ndarray, k: int, *, groups=None,
                      device: str | torch.device = "cpu", return_index: int = 0):
    """Euclidean distances (m, k), ascending, of each point to its ``k`` nearest index rows;
    with ``return_index = j > 0``, also the rows of the ``j`` nearest, (m, min(j, k)) int32
    (only those are kept, so that a large query does not hold (m, k) indices).

    ``groups = (point_groups, index_groups)``: index rows of the point's own group are
    skipped. Chunked matrix products on ``device``; ``k`` is capped at the index size.
    """
    ref = torch.as_tensor(np.ascontiguousarray(index, dtype=np.float32), device=device)
    pts = torch.as_tensor(np.ascontiguousarray(points, dtype=np.float32), device=device)
    k = int(min(k, len(ref)))
    out = np.empty((len(pts), k), dtype=np.float32)
    keep = int(min(max(return_index, 0), k))
    at = np.empty((len(pts), keep), dtype=np.int32)
    if groups is not None:
        pg, rg = (torch.as_tensor(np.asarray(g), device=device) for g in groups)
    ref_sq = (ref * ref).sum(1)
    step = max(1, _BLOCK.get(ref.device.type, _BLOCK["cpu"]) // max(1, len(ref)))
    for lo in range(0, len(pts), step):
        p = pts[lo:lo + step]
        d2 = (p * p).sum(1, keepdim=True) + ref_sq[None, :] - 2.0 * p @ ref.T
        if groups is not None:
            d2.masked_fill_(pg[lo:lo + step, None] == rg[None, :], float("inf"))
        top = d2.topk(k, dim=1, largest=False)
        out[lo:lo + step] = top.values.clamp_min(0).sqrt().cpu().numpy()
        at[lo:lo + step] = top.indices[:, :keep].cpu().numpy()
    return (out, at) if return_index else out


def profile_distances(ref_profiles: np.ndarray, ref_groups: np.ndarray, calibration: np.ndarray,
                      query_profiles: np.ndarray, *, k: int,
                      device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray, int, tuple]:
    """Held-out distances of the ``calibration`` reference rows and density-matched query distances.

    Returns the calibration cells' mean distance to their ``k`` nearest reference cells of
    other groups, the query cells' mean distance to their ``k_query`` nearest reference
    cells, ``k_query = round(k / share)`` with ``share`` the mean share of the reference
    outside a calibration cell's own group (see the module docstring), and the query
    cells' ``k`` nearest reference rows with their distances ``(dist, rows)``, (m, k) each
    (k capped at the number of reference rows).
    """
    sizes = np.bincount(ref_groups)
    share = float(np.mean(1.0 - sizes[ref_groups[calibration]] / len(ref_groups)))
    k_query = int(min(len(ref_profiles), round(k / max(share, 1e-9))))
    held = nearest_euclidean(ref_profiles[calibration], ref_profiles, k,
                             groups=(ref_groups[calibration], ref_groups), device=device)
    held = np.where(np.isfinite(held), held, np.nan)
    query, rows = nearest_euclidean(query_profiles, ref_profiles, k_query, device=device, return_index=k)
    return np.nanmean(held, axis=1), query.mean(1), k_query, (query[:, :rows.shape[1]].copy(), rows)


def edge_quantile(quantile: float) -> float:
    """The lower quantile up to which a far region grows: ``EDGE_TAIL`` times the tail, at least the median."""
    return max(0.5, 1.0 - EDGE_TAIL * (1.0 - quantile))


def grow_regions(far: np.ndarray, edge: np.ndarray, graph: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``far`` plus every ``edge`` cell joined to a far cell through ``edge`` cells of ``graph``.

    Hysteresis, as an edge detector follows a strong edge through weaker pixels: a new
    region's cells near known tissue have their surroundings averaged with it, so their
    distance falls short of the threshold while staying above the bulk of known cells
    (``edge``: above a lower threshold, see :func:`finest_scale_far` for the rest of the
    test). They are called far only when connected to the region; an isolated cell above
    the lower threshold is not. ``graph`` is CSR ``(indptr, indices)``.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    far, edge = np.asarray(far, dtype=bool), np.asarray(edge, dtype=bool)
    if not far.any() or not (edge & ~far).any():
        return far.copy()
    candidates = np.flatnonzero(far | edge)
    indptr, indices = (np.asarray(a) for a in graph)
    n = len(far)
    adjacency = csr_matrix((np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(n, n))
    _, component = connected_components(adjacency[candidates][:, candidates], directed=False)
    reached = np.zeros(component.max() + 1, dtype=bool)
    reached[component[far[candidates]]] = True
    grown = far.copy()
    grown[candidates[reached[component]]] = True
    return grown


def finest_scale_far(ref_profiles: np.ndarray, ref_groups: np.ndarray, calibration: np.ndarray,
                     query_profiles: np.ndarray, *, scales: int, quantile: float, k: int,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """Query cells whose finest scale alone is beyond the held-out ``quantile``, (m,) bool.

    The profiles' columns are ``scales`` blocks of equal width, finest first (one per
    profile hop). Across a new region's border the coarse scales of both sides mix the
    two, while the finest tells on which side a cell lies: a region grows into its own
    edge cells, not into the known tissue beside it (DLPFC, white matter left out of the
    reference, while the embedding's distance also decided: 2.3 % of the known spots
    called unknown with the coarse test alone, 1.7-2.1 % with both, for 71-74 % of the
    white matter against 62-67 % without growth).
    """
    width = ref_profiles.shape[1]
    if scales < 1 or width % scales or query_profiles.shape[1] != width:
        raise ValueError(f"profiles of {width} and {query_profiles.shape[1]} columns cannot be cut "
                         f"into {scales} scales of equal width")
    fine = width // scales
    held, query, _, _ = profile_distances(ref_profiles[:, :fine], ref_groups, calibration,
                                          query_profiles[:, :fine], k=k, device=device)
    return query > float(np.nanquantile(held, quantile))


def input_rule(ref_profiles: np.ndarray, ref_groups: np.ndarray, calibration: np.ndarray,
               query_profiles: np.ndarray, *, k: int, quantile: float, graph=None, scales: int = 1,
               device: str | torch.device = "cpu") -> tuple[np.ndarray, tuple, dict]:
    """The input rule of label transfer: which query cells are far from the reference's inputs.

    A cell is far when its distance (:func:`profile_distances`, averaged over the cell and
    its neighbours in ``graph`` when given) exceeds the ``quantile`` of the ``calibration``
    reference rows held out by group; with ``graph``, far regions grow into their edge
    (:func:`grow_regions`, :func:`finest_scale_far`). Returns the far cells (m,) bool, the
    query's ``k`` nearest reference rows ``(dist, rows)`` for the vote, and the figures the
    transfer reports (thresholds, neighbours, median held-out distance).
    """
    from .vote import spatial_mean

    held, query, k_query, nearest_k = profile_distances(ref_profiles, ref_groups, calibration, query_profiles,
                                                        k=k, device=device)
    threshold = float(np.nanquantile(held, quantile))
    query = spatial_mean(query, graph)
    far, edge_threshold = query > threshold, None
    if graph is not None:
        edge_threshold = float(np.nanquantile(held, edge_quantile(quantile)))
        edge = query > edge_threshold  # of these, the cells whose finest scale is far too
        if edge.any():
            edge[edge] = finest_scale_far(ref_profiles, ref_groups, calibration, query_profiles[edge], scales=scales,
                                          quantile=edge_quantile(quantile), k=k, device=device)
        far = grow_regions(far, edge, graph)
    figures = {"input_threshold": threshold, "input_neighbors": k_query, "input_edge_threshold": edge_threshold,
               "input_median_distance": float(np.nanmedian(held))}
    return far, nearest_k, figures


def spatial_blocks(coords: np.ndarray, slides: np.ndarray | None = None, *, n_blocks: int = 8,
                   seed: int = 0) -> np.ndarray:
    """Integer block of each cell: each slide cut into ``n_blocks`` compact pieces (KMeans on x, y).

    A single slide has no second slide to hold out; a block of it, compared with the rest,
    stands in for a new section: its cells' own surroundings are not in the rest, as a
    query cell's are not in the reference.
    """
    from sklearn.cluster import KMeans

    coords = np.asarray(coords, dtype=np.float64)[:, :2]
    slides = np.zeros(len(coords), dtype=np.int64) if slides is None else np.asarray(slides)
    blocks = np.empty(len(coords), dtype=np.int64)
    start = 0
    for s in np.unique(slides):
        rows = np.flatnonzero(slides == s)
        n = int(min(n_blocks, len(rows)))
        part = (KMeans(n_clusters=n, n_init=1, random_state=seed).fit_predict(coords[rows]) if n > 1
                else np.zeros(len(rows), dtype=np.int64))
        blocks[rows] = start + part
        start += n
    return blocks


def model_input_profiles(model, adata, *, graph=None, x=None, X=None) -> np.ndarray:
    """:func:`input_profiles` of ``adata`` with a trained model's inputs and graph, at
    :data:`INPUT_HOPS`. ``graph``: the spatial graph of ``adata`` if already built with the
    model's settings; ``x``: the model's inputs of ``adata`` if already made; ``X``: its
    expression matrix when not ``adata.X`` (e.g. a run's, left on disk)."""
    from .cellniche import spatial_graph
    from .features import make_features

    if x is None:
        x, _ = make_features(adata, model.spec, cell_type_key=model.keys.cell_type_key, X=X)
    graph = spatial_graph(adata, model.graph, model.keys) if graph is None else graph
    return input_profiles(x, graph.indptr, graph.indices, INPUT_HOPS)


def next_hop(profiles: np.ndarray, indptr: np.ndarray, indices: np.ndarray, scales: int) -> np.ndarray:
    """The surroundings one hop past the coarsest of ``profiles`` ((n, f x scales), finest
    first, as :func:`input_profiles` gives), (n, f): one more smoothing step of its last block."""
    f = profiles.shape[1] // scales
    return input_profiles(profiles[:, -f:], indptr, indices, (1,))


def calibration_groups(reference, keys, spatial_key: str, *, seed: int = 0) -> tuple[np.ndarray, str]:
    """Group codes that calibration holds out, and what they are: the first ``obs`` column
    of ``keys`` with two groups or more, else :func:`spatial_blocks` of
    ``obsm[spatial_key]``, else single cells."""
    for key in keys:
        if key and key in reference.obs and reference.obs[key].nunique() > 1:
            return pd.Categorical(reference.obs[key].astype(str)).codes.astype(np.int64), key
    if spatial_key in reference.obsm:
        return spatial_blocks(np.asarray(reference.obsm[spatial_key]), seed=seed), "spatial block"
    return np.arange(reference.n_obs, dtype=np.int64), "cell"


def outside_own_group(groups: np.ndarray, members: np.ndarray) -> np.ndarray:
    """For each cell, how many cells of its ``members`` class lie outside its own group."""
    table = pd.crosstab(groups, members)
    outside = table.sum(0).to_numpy()[None, :] - table.to_numpy()
    return outside[pd.Index(table.index).get_indexer(groups), pd.Index(table.columns).get_indexer(members)]


def shared_cells(x: np.ndarray, codes: np.ndarray, groups: np.ndarray, n_labels: int, *, k: int,
                 seed: int) -> np.ndarray:
    """Cells that may calibrate: their label and their local population recur in other groups.

    ``x`` (n, d): the representation whose micro-clusters are the local populations.
    A label needs ``k`` cells outside the cell's group. A population is a micro-cluster
    (KMeans, ``5 x n_labels`` clusters, 20-100): it needs ``k`` cells and at least
    ``1 - OWN_GROUP_MAX`` of its cells outside the group, so that a patient-specific
    population hidden inside a broader label (a niche that clustering merged into
    another) does not pass for in-distribution.
    """
    from sklearn.cluster import KMeans

    ok = outside_own_group(groups, codes) >= k
    n_micro = int(min(np.clip(5 * n_labels, 20, 100), len(codes) // (2 * k)))
    if n_micro >= 2 and len(np.unique(groups)) < len(groups):
        micro = KMeans(n_clusters=n_micro, n_init=1, random_state=seed).fit_predict(x)
        size = np.bincount(micro, minlength=n_micro)[micro]
        outside = outside_own_group(groups, micro)
        ok &= outside >= np.maximum(k, (1.0 - OWN_GROUP_MAX) * size)
    return np.flatnonzero(ok)
