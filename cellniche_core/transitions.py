"""Transition zones between niches: per-cell mixing, border cells and niche adjacency.

All functions read a spatial graph — the one a run was trained on (see
:meth:`cellniche_core.io.Run.graph`), or by default a k-NN graph built with
:class:`~cellniche_core.graph.GraphSettings` defaults — and the niche labels; they never
modify ``adata``. Cells without a niche label are left out (their edges too).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .graph import GraphSettings, SpatialGraph, build_graph
from .keys import Keys
from .labels import label_codes

__all__ = ["BORDER_THRESHOLD", "niche_adjacency", "summarise_adjacency", "summarise_transitions",
           "transition_scores"]

#: a cell is a border cell when at least this share of its graph neighbours lie in other niches
BORDER_THRESHOLD = 0.25
_LOG2_PSEUDO = 0.5  # edges added to observed and expected before their log2 ratio


def _csr(adata, graph, spatial_key: str, sample_key: str) -> tuple[np.ndarray, np.ndarray]:
    """CSR arrays of ``graph`` (a SpatialGraph or scipy sparse matrix), built if None."""
    if graph is None:
        coords = np.asarray(adata.obsm[spatial_key])[:, :2]
        samples = adata.obs[sample_key].astype(str).to_numpy() if sample_key in adata.obs else None
        graph = build_graph(coords, samples, GraphSettings())
    if isinstance(graph, SpatialGraph):
        indptr, indices = graph.indptr, graph.indices
    elif sp.issparse(graph):
        m = sp.csr_matrix(graph)
        m = ((m + m.T) > 0).tocsr()  # symmetric, unweighted
        m.setdiag(False)
        m.eliminate_zeros()
        indptr, indices = m.indptr.astype(np.int64), m.indices.astype(np.int64)
    else:
        raise TypeError(f"graph must be a SpatialGraph or a scipy sparse matrix, got {type(graph).__name__}")
    if len(indptr) - 1 != adata.n_obs:
        raise ValueError(f"the graph has {len(indptr) - 1} nodes but adata has {adata.n_obs} cells")
    return np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)


# --------------------------------------------------------------------------- per cell


def transition_scores(
    adata,
    graph=None,
    *,
    niche_key: str = Keys.NICHE,
    sample_key: str = Keys.SAMPLE,
    spatial_key: str = Keys.SPATIAL,
    border_threshold: float = BORDER_THRESHOLD,
) -> pd.DataFrame:
    """How mixed each cell's spatial neighbourhood is, and which cells sit on a border.

    Parameters
    ----------
    adata
        Annotated cohort; not modified.
    graph
        Spatial graph (:class:`~cellniche_core.graph.SpatialGraph` or a symmetric scipy
        sparse adjacency, n x n); None builds the default k-NN graph per slide.
    niche_key, sample_key, spatial_key
        Keys of the niche labels, slide ids and coordinates (the last two only to build
        a graph).
    border_threshold
        A cell is a border cell when at least this fraction of its labelled neighbours
        lie in other niches. The default 0.25 marks the row of cells touching a
        boundary on either side: next to a straight boundary, a cell of a 4-neighbour
        grid has 1/4 of its neighbours across, a cell of a 6-15-NN graph on a cell
        lattice about 0.4-0.5 (5th percentile 0.2-0.3), while cells one row further in
        have about 0.17-0.2. 0.5 would only mark cells jutting into another niche.

    Returns
    -------
    DataFrame
        Indexed by ``obs_names``: ``niche``; ``n_neighbors`` (labelled neighbours);
        ``mixing`` (entropy of the neighbours' niche labels divided by its maximum
        ``log(min(n_niches, n_neighbors))``: 0 when all neighbours share one niche, 1
        when they are spread evenly over as many niches as possible; NaN without
        neighbours); ``frac_other`` (fraction of neighbours in another niche than the
        cell's); ``border`` (bool, see ``border_threshold``); ``neighbour_niche`` (the
        most frequent other niche among the neighbours, NaN if none).
    """
    if not 0 < border_threshold <= 1:
        raise ValueError(f"border_threshold must be in (0, 1], got {border_threshold}")
    codes, names = label_codes(adata.obs[niche_key])
    indptr, indices = _csr(adata, graph, spatial_key, sample_key)
    n, k = adata.n_obs, len(names)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    nb = codes[indices]
    ok = nb >= 0
    # (n, K) neighbour counts; the COO -> CSR conversion sums duplicate (cell, niche) pairs
    counts = sp.coo_matrix((np.ones(int(ok.sum()), np.float32), (rows[ok], nb[ok])),
                           shape=(n, k)).tocsr()
    counts.sum_duplicates()
    cell_of = np.repeat(np.arange(n), np.diff(counts.indptr))
    c = counts.data.astype(np.float64)
    degree = np.bincount(cell_of, weights=c, minlength=n)
    plogp = np.bincount(cell_of, weights=c * np.log(c), minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = np.log(degree) - plogp / degree
        max_entropy = np.log(np.minimum(degree, k))
        mixing = np.where(max_entropy > 0, entropy / max_entropy, 0.0)
        mixing = np.clip(np.where(degree > 0, mixing, np.nan), 0.0, 1.0)
        own = np.zeros(n)
        same = counts.indices == codes[cell_of]
        np.add.at(own, cell_of[same], c[same])
        frac_other = np.where((degree > 0) & (codes >= 0), 1 - own / degree, np.nan)

    # most frequent other niche: drop own-niche entries, take the per-row maximum
    other = counts.copy()
    other.data[same] = 0
    other.eliminate_zeros()
    top = np.asarray(other.argmax(axis=1)).ravel()
    has_other = np.diff(other.indptr) > 0
    return pd.DataFrame({
        "niche": pd.Categorical.from_codes(codes, categories=names),
        "n_neighbors": degree.astype(np.int64),
        "mixing": mixing,
        "frac_other": frac_other,
        "border": np.nan_to_num(frac_other, nan=0.0) >= border_threshold,
        "neighbour_niche": pd.Categorical.from_codes(np.where(has_other, top, -1), categories=names),
    }, index=adata.obs_names.copy())


def summarise_transitions(scores: pd.DataFrame) -> pd.DataFrame:
    """Per niche: how much of it is transition zone, from :func:`transition_scores`.

    Returns
    -------
    DataFrame
        One row per niche: ``niche``, ``n_cells``, ``n_border``, ``border_fraction``,
        ``mean_mixing``, ``mean_frac_other`` and ``main_neighbour`` (the niche its border
        cells most often face).
    """
    labelled = scores[scores["niche"].notna()]
    grouped = labelled.groupby("niche", observed=False)
    table = pd.DataFrame({
        "n_cells": grouped.size(),
        "n_border": grouped["border"].sum().astype(np.int64),
        "mean_mixing": grouped["mixing"].mean(),
        "mean_frac_other": grouped["frac_other"].mean(),
    })
    table.insert(2, "border_fraction", table["n_border"] / table["n_cells"].clip(lower=1))
    border = labelled[labelled["border"] & labelled["neighbour_niche"].notna()]
    faces = pd.crosstab(border["niche"], border["neighbour_niche"])
    main = faces.idxmax(axis=1) if len(faces) else pd.Series(dtype=object)
    table["main_neighbour"] = main.reindex(table.index).astype(object)
    table.index = table.index.astype(str)
    return table.rename_axis("niche").reset_index()


# -------------------------------------------------------------------------- adjacency


def _falling_ratio(m: np.ndarray, n: np.ndarray, order: int) -> np.ndarray:
    """m (m-1) ... (m-order+1) / [n (n-1) ... (n-order+1)], 0 where m < order."""
    out = np.ones(np.broadcast(m, n).shape)
    for j in range(order):
        with np.errstate(divide="ignore", invalid="ignore"):
            out = out * np.where(n - j > 0, (m - j) / (n - j), 0.0)
    return np.where(m >= order, out, 0.0)


def niche_adjacency(
    adata,
    graph=None,
    *,
    niche_key: str = Keys.NICHE,
    sample_key: str = Keys.SAMPLE,
    patient_key: str = Keys.PATIENT,
    spatial_key: str = Keys.SPATIAL,
) -> pd.DataFrame:
    """Which niches border which, per slide, compared with chance.

    ``observed`` counts the spatial-graph edges (each undirected edge once) joining a
    cell of niche ``a`` to a cell of niche ``b`` within one slide (``a == b``: edges
    inside the niche). Chance is the same slide with its niche labels permuted at
    random among its cells: the graph and the niche sizes stay, only the arrangement
    goes. The mean and variance of the count under that permutation null are computed
    exactly (join-count statistics, Cliff & Ord 1981) rather than by sampling
    permutations: with ``E`` edges, ``S0 = 2E``, ``Q = sum_i d_i (d_i - 1)`` over cell
    degrees ``d_i``, ``D = S0^2 - 2 S0 - 4Q`` and ``x^(j) = x (x-1) ... (x-j+1)``::

        a != b:  mean = S0 n_a n_b / n^(2)
                 E[J^2] = S0 n_a n_b / n^(2) + Q n_a n_b (n_a + n_b - 2) / n^(3)
                          + D n_a^(2) n_b^(2) / n^(4)
        a == b:  mean = S0 n_a^(2) / (2 n^(2))
                 E[J^2] = [2 S0 n_a^(2) / n^(2) + 4 Q n_a^(3) / n^(3) + D n_a^(4) / n^(4)] / 4

    This is what infinitely many permutations would give, in O(edges) time. Edges
    between slides, and edges touching unlabelled cells, are ignored.

    Parameters
    ----------
    adata
        Annotated cohort; not modified.
    graph
        Spatial graph (see :func:`transition_scores`); None builds the default k-NN graph.
    niche_key, sample_key, patient_key, spatial_key
        ``obs`` / ``obsm`` keys.

    Returns
    -------
    DataFrame
        One row per slide and unordered niche pair (``niche_a <= niche_b`` in label
        order) where both niches have cells in the slide: ``sample``, ``patient``,
        ``niche_a``, ``niche_b``, ``n_cells_a``, ``n_cells_b``, ``observed``,
        ``expected``, ``expected_sd``, ``log2_ratio`` (log2 of (observed + 0.5) /
        (expected + 0.5)) and ``z_score`` ((observed - expected) / expected_sd; NaN when
        the count cannot vary). Aggregate over slides with :func:`summarise_adjacency`.

        Because neighbouring cells mostly share a niche, every pair of *different*
        niches meets less often than under the permutation null, and within-niche z-scores
        are large in any tissue. Which niches border which is better read from
        ``border_expected`` (NaN for ``a == b``): the slide's edges that cross a niche
        boundary, shared out among niche pairs in proportion to ``n_a n_b`` — what the
        boundary edges would join if niches met their neighbours at random — and
        ``border_log2_ratio`` = log2 of (observed + 0.5) / (border_expected + 0.5):
        positive when two niches share more boundary than their sizes predict.
    """
    codes, names = label_codes(adata.obs[niche_key])
    k = len(names)
    if sample_key in adata.obs:
        sample, samples = label_codes(adata.obs[sample_key])
    else:
        sample, samples = np.zeros(adata.n_obs, np.int64), ["all"]
    patient_of = _patient_of_sample(adata, sample, samples, patient_key)
    indptr, indices = _csr(adata, graph, spatial_key, sample_key)
    s = len(samples)

    src = np.repeat(np.arange(adata.n_obs), np.diff(indptr))
    keep = (src < indices) & (sample[src] == sample[indices]) & (codes[src] >= 0) & (codes[indices] >= 0)
    u, v = src[keep], indices[keep]
    lu, lv = codes[u], codes[v]
    lo, hi = np.minimum(lu, lv), np.maximum(lu, lv)
    es = sample[u]
    observed = np.bincount((es * k + lo) * k + hi, minlength=s * k * k).reshape(s, k, k)

    labelled = codes >= 0
    n_cells = np.bincount(sample[labelled] * k + codes[labelled], minlength=s * k).reshape(s, k)
    n = n_cells.sum(1).astype(float)
    degree = np.bincount(u, minlength=adata.n_obs) + np.bincount(v, minlength=adata.n_obs)
    s0 = 2.0 * np.bincount(es, minlength=s)
    q = np.bincount(sample, weights=degree * (degree - 1.0), minlength=s)
    d = s0 ** 2 - 2 * s0 - 4 * q

    na = n_cells[:, :, None].astype(float)
    nb = n_cells[:, None, :].astype(float)
    n3, s03, q3, d3 = (x[:, None, None] for x in (n, s0, q, d))
    # between niches (a != b)
    p2 = np.where(n3 >= 2, na * nb / np.maximum(n3 * (n3 - 1), 1), 0.0)
    p3 = np.where(n3 >= 3, na * nb * (na + nb - 2) / np.maximum(n3 * (n3 - 1) * (n3 - 2), 1), 0.0)
    ff4 = np.maximum(n3 * (n3 - 1) * (n3 - 2) * (n3 - 3), 1)
    p4 = np.where(n3 >= 4, na * (na - 1) * nb * (nb - 1) / ff4, 0.0)
    mean_ab = s03 * p2
    second_ab = s03 * p2 + q3 * p3 + d3 * p4
    # within a niche (a == b)
    n_diag = n_cells.astype(float)
    r2, r3, r4 = (_falling_ratio(n_diag, n[:, None], j) for j in (2, 3, 4))
    mean_aa = s0[:, None] * r2 / 2
    second_aa = (2 * s0[:, None] * r2 + 4 * q[:, None] * r3 + d[:, None] * r4) / 4

    mean = mean_ab.copy()
    second = second_ab.copy()
    diag = np.arange(k)
    mean[:, diag, diag] = mean_aa
    second[:, diag, diag] = second_aa
    var = np.maximum(second - mean ** 2, 0.0)

    # boundary edges of each slide shared out in proportion to n_a n_b over all pairs a < b
    crossing = observed.sum((1, 2)) - np.trace(observed, axis1=1, axis2=2)
    pair_weight = (n ** 2 - (n_cells.astype(float) ** 2).sum(1)) / 2
    border_expected = np.where(pair_weight[:, None, None] > 0,
                               crossing[:, None, None] * na * nb / np.maximum(pair_weight, 1)[:, None, None],
                               0.0)
    ia, ib = np.triu_indices(k)
    si = np.repeat(np.arange(s), len(ia))
    ai, bi = np.tile(ia, s), np.tile(ib, s)
    both = (n_cells[si, ai] > 0) & (n_cells[si, bi] > 0)
    si, ai, bi = si[both], ai[both], bi[both]
    obs = observed[si, ai, bi].astype(float)
    exp = mean[si, ai, bi]
    sd = np.sqrt(var[si, ai, bi])
    # relative tolerance: a variance that is only rounding error means "cannot vary"
    sd = np.where(sd > 1e-9 * np.maximum(exp, 1.0), sd, np.nan)
    border = np.where(ai != bi, border_expected[si, ai, bi], np.nan)
    names_arr = np.asarray(names, dtype=object)
    samples_arr = np.asarray(samples, dtype=object)
    return pd.DataFrame({
        "sample": samples_arr[si],
        "patient": np.asarray(patient_of, dtype=object)[si],
        "niche_a": pd.Categorical(names_arr[ai], categories=names),
        "niche_b": pd.Categorical(names_arr[bi], categories=names),
        "n_cells_a": n_cells[si, ai],
        "n_cells_b": n_cells[si, bi],
        "observed": obs.astype(np.int64),
        "expected": exp,
        "expected_sd": sd,
        "log2_ratio": np.log2((obs + _LOG2_PSEUDO) / (exp + _LOG2_PSEUDO)),
        "z_score": (obs - exp) / sd,
        "border_expected": border,
        "border_log2_ratio": np.log2((obs + _LOG2_PSEUDO) / (border + _LOG2_PSEUDO)),
    })


def _patient_of_sample(adata, sample: np.ndarray, samples: list[str], patient_key: str) -> list[str]:
    if patient_key not in adata.obs:
        return list(samples)
    patient = adata.obs[patient_key].astype(object).map(str, na_action="ignore").to_numpy()
    first = np.full(len(samples), -1)
    first[sample[::-1]] = np.arange(len(sample))[::-1]  # first cell of each slide
    return [patient[i] if i >= 0 else samples[j] for j, i in enumerate(first)]


def summarise_adjacency(table: pd.DataFrame) -> pd.DataFrame:
    """Cohort-level niche adjacency from the per-slide table of :func:`niche_adjacency`.

    Observed and expected edges add up over slides; since every slide is permuted
    independently, the variances add too, giving a cohort z-score.

    Returns
    -------
    DataFrame
        One row per niche pair: ``niche_a``, ``niche_b``, ``n_samples`` (slides holding
        both niches), ``n_samples_touching`` (slides where they share at least one edge),
        ``observed``, ``expected``, ``expected_sd``, ``log2_ratio``, ``z_score``,
        ``border_expected`` (summed over slides) and ``border_log2_ratio``.
    """
    var = table["expected_sd"].fillna(0.0) ** 2
    work = table.assign(_var=var, _touch=table["observed"] > 0)
    grouped = work.groupby(["niche_a", "niche_b"], observed=True, sort=True)
    out = pd.DataFrame({
        "n_samples": grouped.size(),
        "n_samples_touching": grouped["_touch"].sum().astype(np.int64),
        "observed": grouped["observed"].sum(),
        "expected": grouped["expected"].sum(),
        "expected_sd": np.sqrt(grouped["_var"].sum()),
        "border_expected": grouped["border_expected"].sum(min_count=1),
    })
    sd = out["expected_sd"].where(out["expected_sd"] > 1e-9 * out["expected"].clip(lower=1.0))
    out["expected_sd"] = sd
    out["log2_ratio"] = np.log2((out["observed"] + _LOG2_PSEUDO) / (out["expected"] + _LOG2_PSEUDO))
    out["z_score"] = (out["observed"] - out["expected"]) / sd
    border = out.pop("border_expected")
    out["border_expected"] = border
    out["border_log2_ratio"] = np.log2((out["observed"] + _LOG2_PSEUDO) / (border + _LOG2_PSEUDO))
    return out.reset_index()
