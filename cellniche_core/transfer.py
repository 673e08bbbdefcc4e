"""Reference → query label transfer with a per-cell confidence and an ``unknown`` call.

A trained run is the reference atlas; a new slide is the query. The query is embedded by
the reference's frozen encoder (:func:`annotate_query`), then every query cell takes the
label its nearest reference cells vote for (:func:`transfer_labels`).

The vote (:mod:`.vote`)
    The ``2 x n_neighbors`` nearest reference cells vote, each alike, in up to three
    spaces: the embedding, the neighbourhood-averaged inputs (``profiles``) and, given a
    reference of several patients or slides, its discriminant space of those inputs one hop
    wider too (``wider_profiles``). A label's share is the mean of its shares in the spaces;
    the vote is then cast again with each slide's shift taken off (``align``).
    ``confidence`` is the winner's share.

The unknown rule
    A query cell is ``unknown`` when it is *far* (or, when asked for, *ambiguous*):

    - far: its distance ``D`` (mean distance to its ``n_neighbors`` embedding neighbours) exceeds
      the ``quantile`` (default 0.99) of the same distance measured on reference cells
      *held out by patient*: each calibration cell is compared only with reference cells
      of other patients (``calibration_keys``). A new patient's slide is, by construction,
      absent from the reference, and so are its own cells' nearest twins on the same
      slide; holding out whole patients reproduces that and includes the patient-to-
      patient shift in the calibration. Thresholds are per label (the label the held-out
      cell's own embedding vote gave; a query cell is held to the threshold of the label
      its embedding vote gives, whatever the input vote adds), since niches differ in
      spread; a label with fewer than ``_MIN_LABEL_CELLS`` calibration cells falls back to
      the threshold of all labels.
      Patient-specific populations are left out of the calibration: seen from the other
      patients their cells are themselves novel, and would teach the rule that far is
      normal. A reference cell calibrates only when its label has ``n_neighbors`` cells
      in other patients and so does its micro-cluster (KMeans on the reference
      embeddings, 5 per label, 20-100), which must also have at least 10 % of its cells
      there: a one-patient population that niche calling merged into a broader label is
      caught by the latter.
    - far from the inputs (:mod:`.novelty`; when ``profiles`` are given, as
      :func:`annotate_query` does, this rule *replaces* the embedding's): the encoder
      folds inputs it never saw onto the nearest niche it knows, so the cell's
      neighbourhood-averaged inputs are compared with the reference's (mean Euclidean
      distance to ``2 x n_neighbors`` cells), with a threshold at the same ``quantile``
      of the held-out reference cells whose label and input micro-cluster recur in other
      groups. The embedding's distance is then still measured and reported, not used:
      held out on real tissue and on the demo it caught no cell of an unseen region that
      the input rule missed, only known cells (README): the encoder sees the surroundings
      the profiles hold, and its calibration cells were trained on.
    - both distances are read over the cell's surroundings when the query's spatial graph
      is given (``query_graph``, as :func:`annotate_query` does): each is averaged over
      the cell and its neighbours before the thresholds. What is new in a slide is a
      region (a tissue compartment the reference lacks), and a region is many adjacent
      cells; one cell's distance is noisy (a cell at a boundary, a mis-measured cell) and
      alone it would call scattered known cells unknown. On held-out data this lowered
      the share of known labels called unknown (STARmap V1, one slide split in two: 12 %
      to 9 %) while calling more of the unseen region unknown (80 % to 83 %). A single
      novel cell among known ones is diluted by its neighbours and may keep a label, and
      a region's edge blurs by about one cell either way. A new region's edge cells, whose
      inputs are averaged with the known tissue beside them, are far when above a lower
      threshold (the quantile with 5 times the tail: 0.95), at the coarse scales and at the
      finest alone (the side of the border a cell is on), and joined to far cells through
      such cells (:func:`~cellniche_core.novelty.grow_regions`; input rule only).
    - ambiguous, only when asked for: ``confidence < min_confidence`` (default 0: off).
      ``unknown`` says that a cell is unlike anything in the reference; a cell whose
      voters split between labels it knows keeps its plurality label, and its low
      confidence says so. Held out on real tissue and on the demo, a majority rule (0.5)
      called no cell of the unseen region unknown that the distance rule had not, and
      known cells unknown, about half of them labelled right (README).

    So about ``1 - quantile`` of a new patient resembling the reference patients is called
    unknown. Without two patients (or slides) the calibration holds out spatial blocks of
    each slide (``"spatial block"``), and without coordinates single cells (``"cell"``).

Scale: the reference index is at most ``max_reference_cells`` cells (default 50,000,
drawn per label, with a floor for rare labels); neighbours are found by chunked matrix
products on the chosen torch device (a KD-tree in the discriminant space on a CPU).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from .cellniche import CellNiche, spatial_graph
from .features import FeatureSpec, describe_alignment, make_features, value_kind
from .io import CohortError, check_output, load_run, read_cohort, to_plain, validate_cohort, write_h5ad_atomic
from .keys import INPUT_UNS_KEY, TRANSFER_UNS_KEY, UNKNOWN, Keys
from .labels import is_label_column, label_text
from .layout import unit_rows
from .novelty import (INPUT_HOPS, calibration_groups, edge_quantile, input_rule, model_input_profiles, next_hop,
                      shared_cells)
from .train import resolve_device
from .vote import (aligned_shares, discriminant_shares, label_shares, nearest, slide_codes, spatial_mean,
                   subsample_by_label, vote, winner)

__all__ = ["TRANSFER_UNS_KEY", "annotate_query", "describe_alignment", "read_query", "transfer_file",
           "transfer_labels"]


#: a label needs this many calibration cells for a threshold of its own
_MIN_LABEL_CELLS = 100
_SHOW = 8


# ----------------------------------------------------------------------- reference


def _reference_labels(reference: ad.AnnData, label_key: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1: not usable) and label names of ``reference.obs[label_key]``."""
    obs = reference.obs
    usable = [c for c in obs.columns if is_label_column(obs[c])]
    if label_key not in obs:
        raise CohortError(f"reference: obs[{label_key!r}] is missing; categorical obs columns that "
                          f"can be transferred: {usable}")
    if not is_label_column(obs[label_key]):
        raise CohortError(f"reference: obs[{label_key!r}] is numeric ({obs[label_key].dtype}); only "
                          f"categorical columns can be transferred: {usable}")
    values = label_text(obs[label_key])
    column = obs[label_key]
    order = (map(str, column.cat.categories) if isinstance(column.dtype, pd.CategoricalDtype)
             else sorted(values.dropna().unique()))
    present = set(values.dropna())
    # an earlier transfer's "unknown" is not a niche of the reference: it does not vote
    names = [n for n in order if n in present and n != UNKNOWN]
    codes = pd.Categorical(values, categories=names).codes.astype(np.int64)
    if not names:
        raise CohortError(f"reference: obs[{label_key!r}] has no label to transfer (all NaN or {UNKNOWN!r})")
    return codes, names


def _calibrate(emb: torch.Tensor, codes: np.ndarray, groups: np.ndarray, n_labels: int, *, k: int,
               quantile: float, n_cells: int, seed: int) -> dict:
    """Distance thresholds of the unknown rule from held-out reference cells (see module doc)."""
    eligible = shared_cells(emb.cpu().numpy(), codes, groups, n_labels, k=k, seed=seed)
    if len(eligible) == 0:
        raise CohortError("reference: no label is found in two patients (or slides) with at least "
                          f"n_neighbors={k} cells each, so the unknown rule cannot be calibrated")
    rng = np.random.default_rng(seed)
    cal = np.sort(rng.choice(eligible, size=min(n_cells, len(eligible)), replace=False))
    dev = emb.device
    dist, nbr = nearest(emb[cal], emb, min(2 * k, len(codes)), groups=(torch.from_numpy(groups[cal]).to(dev),
                                                                     torch.from_numpy(groups).to(dev)))
    score = dist[:, :k].mean(1)
    voted, _ = vote(dist, codes[nbr], n_labels)  # as a query cell's embedding vote
    overall = float(np.quantile(score, quantile))
    per_label = np.full(n_labels, overall)
    n_per_label = np.bincount(voted, minlength=n_labels)
    for c in np.flatnonzero(n_per_label >= _MIN_LABEL_CELLS):
        per_label[c] = np.quantile(score[voted == c], quantile)
    return {"median_distance": float(np.median(score)), "threshold": overall, "per_label": per_label,
            "n_per_label": n_per_label, "n_cells": len(cal), "n_eligible": len(eligible), "n_index": len(codes),
            "own_label_agreement": float(np.mean(voted == codes[cal])), "rows": cal}


# ----------------------------------------------------------------------- transfer


def transfer_labels(
    reference: ad.AnnData,
    query: ad.AnnData,
    *,
    label_key: str = Keys.NICHE,
    use_rep: str = Keys.EMBEDDING,
    n_neighbors: int = 15,
    quantile: float = 0.99,
    min_confidence: float = 0.0,
    calibration_keys: Sequence[str] = (Keys.PATIENT, Keys.SAMPLE),
    spatial_key: str = Keys.SPATIAL,
    profiles: tuple[np.ndarray, np.ndarray] | None = None,
    query_graph: tuple[np.ndarray, np.ndarray] | None = None,
    profile_scales: int = 1,
    wider_profiles: tuple[np.ndarray, np.ndarray] | None = None,
    slide_key: str = Keys.SAMPLE,
    align: bool = True,
    max_reference_cells: int = 50_000,
    calibration_cells: int = 10_000,
    key_added: str = Keys.TRANSFERRED,
    confidence_key: str = Keys.CONFIDENCE,
    distance_key: str = Keys.TRANSFER_DISTANCE,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Transfer a categorical obs column of ``reference`` to ``query`` by a neighbour vote.

    Both carry embeddings from one encoder in ``obsm[use_rep]``. Vote, unknown: module doc.

    Parameters
    ----------
    reference
        Annotated cells; reads ``obsm[use_rep]``, ``obs[label_key]`` and, for the
        calibration, ``obs[calibration_keys]``. Not modified.
    query
        Cells to annotate; reads ``obsm[use_rep]``.
    label_key
        Categorical ``obs`` column of the reference to transfer (a niche or an expert
        annotation). NaN, ``"unknown"`` and cells whose label reads "NA", "nan", empty and the like
        (:data:`~cellniche_core.labels.NO_LABEL`) do not vote.
    n_neighbors
        Reference cells whose mean distance is the embedding's distance rule; twice as
        many vote for each query cell in embedding space and, with ``profiles``, in input space.
    quantile
        Share of held-out reference cells (per label) that the distance rule accepts.
    min_confidence
        A winning share below this is ambiguous, hence unknown (default 0: no cell is).
    calibration_keys
        ``obs`` columns whose groups calibration holds out: the first present with two
        groups or more (patients, else slides; else single cells).
    spatial_key
        ``obsm`` coordinates of the reference, cut into spatial blocks for the calibration
        when no ``calibration_keys`` column has two groups.
    profiles
        ``(reference, query)`` neighbourhood-averaged inputs, (n, f) each
        (:func:`~cellniche_core.novelty.model_input_profiles`): adds the input distance rule
        and the vote of the cells nearest in input space.
    query_graph
        ``(indptr, indices)``, the query's spatial graph as CSR: both distances are
        averaged over each cell and its neighbours before the thresholds (module doc).
    profile_scales
        Scales (column blocks of equal width, finest first) in ``profiles``: a far region
        grows into the edge cells whose finest scale is far too (module doc).
    wider_profiles
        ``(reference, query)``: the same inputs' surroundings one hop or more wider, (n, f')
        each; the nearest in the discriminant space of both vote, given several groups (module doc).
    slide_key, align
        ``obs`` column of the slides of both (absent: one slide); with ``align``, the vote is
        cast again with each slide's shift taken off (module doc).
    max_reference_cells
        Cap on the reference cells indexed (drawn per label, see module doc).
    calibration_cells
        Held-out reference cells measured for the thresholds.
    seed
        Seed of the reference subsample and the calibration draw.
    device
        Torch device of the neighbour search.

    Returns
    -------
    dict
        ``n_cells``, ``counts`` (label → cells, ``unknown`` included), ``n_unknown``,
        ``n_far`` (by the input rule, ``n_far_input``, with ``profiles``; else by the
        embedding's, ``n_far_embedding``, which is reported either way), ``n_ambiguous``,
        ``unknown_fraction``, ``mean_confidence`` and ``calibration`` (thresholds per
        label, median held-out distance, held-out groups; ``input_threshold``,
        ``input_neighbors`` and ``input_median_distance`` with ``profiles``).

    Writes
    ------
    ``query.obs[key_added]``
        Categorical: the reference's labels plus ``"unknown"`` (last).
    ``query.obs[confidence_key]``
        float32 in [0, 1]: the winner's weight share (also for unknown cells).
    ``query.obs[distance_key]``
        float32: mean cosine distance to the ``n_neighbors`` nearest reference cells in
        the embedding (averaged over the cell's surroundings with ``query_graph``).
    ``query.uns["cellniche_transfer"]``
        Parameters, thresholds and the returned counts.
    """
    for name, adata in (("reference", reference), ("query", query)):
        if use_rep not in adata.obsm:
            raise CohortError(f"{name}: obsm[{use_rep!r}] is missing (found: {list(adata.obsm.keys())}); "
                              "embed it with the reference model first")
    ref_emb, q_emb = np.asarray(reference.obsm[use_rep]), np.asarray(query.obsm[use_rep])
    if ref_emb.shape[1] != q_emb.shape[1]:
        raise CohortError(f"query: obsm[{use_rep!r}] has {q_emb.shape[1]} dimensions, the reference "
                          f"{ref_emb.shape[1]}: they do not come from the same encoder")
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be positive, got {n_neighbors}")
    if wider_profiles is not None and profiles is None:
        raise ValueError("wider_profiles are read beside profiles: give both")
    for given, what in ((profiles, "profiles"), (wider_profiles, "wider_profiles")):
        if given is not None and [len(p) for p in given] != [reference.n_obs, query.n_obs]:
            raise ValueError(f"{what} need one row per reference and query cell, got {[len(p) for p in given]}")

    rng = np.random.default_rng(seed)
    dev = resolve_device(device)
    codes, names = _reference_labels(reference, label_key)
    rows = subsample_by_label(codes, max_reference_cells, rng)
    groups, held_out_by = calibration_groups(reference, calibration_keys, spatial_key, seed=seed)
    k = int(min(n_neighbors, len(rows) - 1))
    if k < 1:
        raise CohortError(f"reference: only {len(rows)} labelled cell(s) in obs[{label_key!r}]")

    index = unit_rows(ref_emb[rows], dev)
    try:
        cal = _calibrate(index, codes[rows], groups[rows], len(names), k=k, quantile=quantile,
                         n_cells=calibration_cells, seed=seed)
    except CohortError:
        if held_out_by != "spatial block":  # no block shares a label with the rest: hold out cells
            raise
        groups, held_out_by = np.arange(reference.n_obs, dtype=np.int64), "cell"
        cal = _calibrate(index, codes[rows], groups[rows], len(names), k=k, quantile=quantile,
                         n_cells=calibration_cells, seed=seed)

    dist, nbr = nearest(unit_rows(q_emb, dev), index, min(2 * k, len(rows)))
    votes = [label_shares(dist, codes[rows][nbr], len(names))]
    dist = dist[:, :k]  # the distance rule reads the n_neighbors nearest, as calibrated
    # the embedding thresholds are per label of the embedding's own vote, as calibrated
    emb_voted, _ = winner(votes[0])
    far_input = np.zeros(query.n_obs, dtype=bool)
    if profiles is not None:
        ref_profiles, q_profiles = np.asarray(profiles[0], dtype=np.float32)[rows], np.asarray(profiles[1], np.float32)
        # as in the embedding: populations of one group only would teach that far is normal
        # (in input space: not narrowed to the embedding's calibration cells, which left a
        # few hundred cells on a one-slide reference and moved the threshold by 15 %)
        shared = shared_cells(ref_profiles, codes[rows], groups[rows], len(names), k=k, seed=seed)
        if len(shared) > calibration_cells:
            shared = np.sort(np.random.default_rng(seed).choice(shared, calibration_cells, replace=False))
        held_rows = shared if len(shared) else cal["rows"]
        far_input, (in_dist, in_nbr), input_figures = input_rule(
            ref_profiles, groups[rows], held_rows, q_profiles, k=2 * k,
            quantile=quantile, graph=query_graph, scales=profile_scales, device=dev)
        votes.append(label_shares(in_dist, codes[rows][in_nbr], len(names)))
    # the discriminant vote is cast given several patients or slides (module doc)
    blocks = None if wider_profiles is None or held_out_by in ("spatial block", "cell") else (
        [ref_profiles, np.asarray(wider_profiles[0])[rows]], [q_profiles, wider_profiles[1]])
    discriminant = None if blocks is None else discriminant_shares(
        blocks[0], codes[rows], blocks[1], len(names), 2 * k, device=dev)  # None too with one label
    if discriminant is not None:
        votes.append(discriminant)
    distance = spatial_mean(dist.mean(1), query_graph)
    far_embedding = distance > cal["per_label"][emb_voted]
    far = far_input if profiles is not None else far_embedding  # see the module doc
    shares = sum(votes) / len(votes)
    if align:  # the vote again, each slide's shift taken off (module doc)
        spaces = [("cosine", [ref_emb[rows]], [q_emb])]
        spaces += [] if profiles is None else [("euclidean", [ref_profiles], [q_profiles])]
        spaces += [] if discriminant is None else [("discriminant", *blocks)]
        slides = [slide_codes(a, slide_key) for a in (reference, query)]
        shares = aligned_shares(spaces, codes[rows], slides[0][rows], np.where(far, -1, winner(shares)[0]),
                                slides[1], len(names), 2 * k, min_cells=2 * k, device=dev)
    voted, confidence = winner(shares)
    ambiguous = confidence < min_confidence
    unknown = far | ambiguous

    labels = np.asarray(names, dtype=object)[voted]
    labels[unknown] = UNKNOWN
    query.obs[key_added] = pd.Categorical(labels, categories=[*names, UNKNOWN])
    query.obs[confidence_key] = confidence.astype(np.float32)
    query.obs[distance_key] = distance.astype(np.float32)

    counts = query.obs[key_added].value_counts(sort=False)
    calibration = {
        "held_out_by": held_out_by,
        "n_cells": cal["n_cells"],
        "median_distance": cal["median_distance"],
        "threshold_all_labels": cal["threshold"],
        "thresholds": {n: float(t) for n, t in zip(names, cal["per_label"])},
        "cells_per_label": {n: int(c) for n, c in zip(names, cal["n_per_label"])},
        "group_specific_fraction": 1.0 - cal["n_eligible"] / cal["n_index"],
        "own_label_agreement": cal["own_label_agreement"],
    }
    if profiles is not None:
        calibration.update(input_figures)
    summary = {
        "n_cells": int(query.n_obs),
        "counts": {str(n): int(c) for n, c in counts.items()},
        "n_unknown": int(unknown.sum()),
        "n_far": int(far.sum()),
        "n_far_input": int(far_input.sum()),
        "n_far_embedding": int(far_embedding.sum()),
        "n_ambiguous": int(ambiguous.sum()),
        "unknown_fraction": float(unknown.mean()) if len(unknown) else 0.0,
        "mean_confidence": float(confidence.mean()) if len(confidence) else 0.0,
        "calibration": calibration,
    }
    params = {"label_key": label_key, "use_rep": use_rep, "n_neighbors": k, "vote_neighbors": nbr.shape[1],
              "quantile": quantile, "min_confidence": min_confidence, "calibration_keys": list(calibration_keys),
              "input_rule": profiles is not None, "input_vote": profiles is not None,
              "discriminant_vote": discriminant is not None, "aligned_vote": align, "slide_key": slide_key,
              "input_edge_quantile": (edge_quantile(quantile) if profiles is not None and query_graph is not None
                                      else None),
              "spatial_mean": query_graph is not None, "profile_scales": profile_scales,
              "max_reference_cells": max_reference_cells, "n_reference_cells": int(len(rows)),
              "calibration_cells": calibration_cells, "key_added": key_added,
              "confidence_key": confidence_key, "distance_key": distance_key, "seed": seed}
    query.uns[TRANSFER_UNS_KEY] = to_plain({"params": params, **summary})
    return summary


# ----------------------------------------------------------------------- from a run


def _query_kwargs(run) -> dict:
    """A query is read and checked with the reference's keys and feature mode."""
    return {**run.keys.read_kwargs(), "features": run.features,
            "key_hint": f"a query is read with the keys of its reference run ({Path(run.path).name}): give the "
                        "query's column or coordinates that name"}


def _check_alignable(query: ad.AnnData, spec: FeatureSpec, *, cell_type_key: str, source: object) -> None:
    """Refuse a query that shares no cell type (pheno) or no gene (expr) with the reference."""
    if spec.uses_types:
        present = set(map(str, pd.Series(query.obs[cell_type_key]).dropna().unique()))
        if not present & set(spec.cell_types):
            raise CohortError(
                f"{source}: none of its cell types in obs[{cell_type_key!r}] ({sorted(present)[:_SHOW]}) "
                f"is one of the reference's {len(spec.cell_types)} ({spec.cell_types[:_SHOW]}): nothing "
                "to align; rename the labels to the reference's names")
    if spec.uses_expression:
        var = set(map(str, query.var_names))
        if not var & set(spec.input_genes):  # of a wide panel, the genes its PCA reads
            raise CohortError(
                f"{source}: none of its {len(var)} genes/proteins (var names {sorted(var)[:_SHOW]}) is "
                f"in the reference panel of {len(spec.input_genes)} ({spec.input_genes[:_SHOW]}): nothing to align")


def read_query(run, path: str | os.PathLike) -> ad.AnnData:
    """Read a query ``.h5ad`` / ``.zarr`` with the keys and feature mode of the reference run.

    Raises :class:`~cellniche_core.io.CohortError` naming the file for any problem.
    """
    return read_cohort([path], **_query_kwargs(run))


def annotate_query(run, query: ad.AnnData, *, label_key: str = Keys.NICHE, device: str = "auto",
                   source: object = "query", **options) -> dict:
    """Embed ``query`` with the run's frozen encoder and transfer ``label_key`` onto it.

    The query is validated with the reference's keys and feature mode, its features are
    aligned to the reference's (missing genes at the training mean, missing cell types
    absent, extra genes and unknown cell types dropped) and its graph is built with the
    reference's settings.

    Parameters
    ----------
    run
        A :class:`~cellniche_core.io.Run` loaded with its weights.
    query
        The new slide(s); annotated in place.
    label_key
        Categorical ``obs`` column of the reference to transfer.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``: embedding and neighbour search.
    source
        Name of the query in error messages.
    **options
        Passed to :func:`transfer_labels` (``n_neighbors``, ``quantile``, ...).

    Returns
    -------
    dict
        :func:`transfer_labels`'s summary plus ``alignment`` (``missing_genes``,
        ``extra_genes``, ``unknown_cell_types`` with cell counts, ``missing_cell_types``).

    Writes
    ------
    ``query.obsm["X_cellniche"]`` and everything :func:`transfer_labels` writes;
    ``query.uns["cellniche_transfer"]`` also holds ``alignment`` and ``reference``.
    """
    if run.state_dict is None:
        raise ValueError(f"{run.path}: the run was loaded without its weights")
    _reference_labels(run.adata, label_key)  # fail before the embedding
    keys = run.keys
    validate_cohort(query, source=source, **_query_kwargs(run))
    model = CellNiche.from_state(run.model_config, run.state_dict)
    _check_alignable(query, model.spec, cell_type_key=model.keys.cell_type_key, source=source)
    graph = spatial_graph(query, model.graph, model.keys)  # the query's graph and inputs made once, used thrice
    inputs = make_features(query, model.spec, cell_type_key=model.keys.cell_type_key)
    alignment = model.embed(query, device=device, graph=graph, inputs=inputs)
    alignment["input_notes"] = list(query.uns.get(INPUT_UNS_KEY, {}).get("notes", []))  # e.g. a z dropped
    kind = value_kind(query.X) if model.spec.uses_expression and query.X is not None else model.spec.transform
    if kind != model.spec.transform:
        alignment["values"] = {"reference": model.spec.transform, "query": kind}
    with run.expression() as X:  # the graph the run stored; its X, in memory or on disk
        ref_graph = run.graph()
        profiles = (model_input_profiles(model, run.adata, graph=ref_graph, X=X),
                    model_input_profiles(model, query, graph=graph, x=inputs[0]))
    wider = tuple(next_hop(p, g.indptr, g.indices, len(INPUT_HOPS)) for p, g in zip(profiles, (ref_graph, graph)))
    summary = transfer_labels(run.adata, query, label_key=label_key, device=device, profiles=profiles,
                              wider_profiles=wider, profile_scales=len(INPUT_HOPS),
                              query_graph=(graph.indptr, graph.indices),
                              calibration_keys=(keys.patient, keys.sample), spatial_key=keys.spatial,
                              slide_key=keys.sample, **options)
    query.uns[TRANSFER_UNS_KEY]["alignment"] = to_plain(alignment)
    query.uns[TRANSFER_UNS_KEY]["reference"] = str(run.path)
    return {**summary, "alignment": alignment}


def transfer_file(run_dir: str | os.PathLike, query_path: str | os.PathLike, out: str | os.PathLike, *,
                  label_key: str = Keys.NICHE, device: str = "auto", overwrite: bool = False,
                  truth_key: str | None = None, on_stage: Callable[[str, str], None] | None = None,
                  **options) -> tuple[Path, dict]:
    """Annotate the query file with a run and write ``out`` atomically.

    The query file is only read. ``out`` is written to a hidden temporary file beside it,
    then renamed into place, so it appears complete or not at all.

    Parameters
    ----------
    run_dir
        The reference run folder.
    query_path
        ``.h5ad`` or ``.zarr`` query, read with the reference's keys and feature mode.
    out
        The annotated ``.h5ad`` to write; never the query itself.
    truth_key
        An obs column of the query holding its own labels, to score the transfer against
        (:mod:`.agreement`); by default the query's ``label_key`` column, when it has one.
        The figures go in the report and in ``uns["cellniche_transfer"]["agreement"]``.
    on_stage
        Called with (stage, message) as the work goes on.
    **options
        As :func:`annotate_query`.

    Returns
    -------
    ``(out, report)`` with the report of :func:`annotate_query` (and ``"agreement"``).
    """
    from .agreement import agreement_summary, transfer_agreement

    say = on_stage or (lambda stage, message: None)
    out, query_path = Path(out), Path(query_path)
    check_output(out, query_path, overwrite=overwrite, what="query file")

    say("read", f"loading the reference run {run_dir}")
    run = load_run(run_dir)
    if label_key == Keys.NICHE:  # niches transfer under their labels ("N3 · B cell + ..."), see names.py
        from .names import named_run

        run = named_run(run)
    say("read", f"reading the query {query_path}")
    query = read_query(run, query_path)
    implied = truth_key is None and label_key in query.obs.columns  # scored when it can be, silently
    truth_key = label_key if implied else truth_key
    if truth_key is not None and truth_key not in query.obs.columns:  # before the work, not after
        raise CohortError(f"{query_path}: no obs[{truth_key!r}] to compare the transfer with; its obs columns: "
                          f"{list(map(str, query.obs.columns))[:_SHOW]}")
    say("transfer", f"embedding {query.n_obs:,} cells and transferring obs[{label_key!r}]")
    report = annotate_query(run, query, label_key=label_key, device=device, source=query_path, **options)
    if truth_key is not None:
        try:
            report["agreement"] = agreement_summary(transfer_agreement(query, truth_key))
            query.uns[TRANSFER_UNS_KEY]["agreement"] = to_plain(report["agreement"])
        except CohortError:
            if not implied:
                raise

    say("write", f"writing {out}")
    write_h5ad_atomic(query, out)
    return out, report
