"""The spatial scale a run works at, measured on its own graph, for the manifest and the dashboard.

Every length in a run is counted in cells or graph hops, never in the unit of the
coordinates: the graph links each cell to its nearest cells (edges longer than a few
typical spacings cut), walks and GraphSAGE layers move hop by hop, and the similarity
strategies compare surroundings averaged over 1, 2, 3 hops. This module says what those
hops amount to on the data at hand (how many cells, how far), so that a user can judge
the scale, and override it with the command line's flags.
"""

from __future__ import annotations

import numpy as np

from .graph import SpatialGraph

#: the positive-pair rules in words (``TrainConfig.strategy``)
_POSITIVES = {"freq": "pairs the walks co-visit (freq)", "sim": "pairs with similar surroundings (sim)",
              "and": "co-visited pairs with similar surroundings (and)",
              "or": "co-visited pairs or pairs with similar surroundings (or)"}
#: cells whose neighbourhoods are counted to describe the scale
_SAMPLE_CELLS = 256


def cells_within_hops(graph: SpatialGraph, max_hops: int, *, seed: int = 0,
                      n_sample: int = _SAMPLE_CELLS) -> list[float]:
    """Mean number of cells within 1 … ``max_hops`` hops (the cell included), on a sample."""
    n = graph.n_nodes
    if n == 0 or max_hops < 1:
        return []
    rng = np.random.default_rng(seed)
    starts = rng.choice(n, size=min(n, n_sample), replace=False)
    sizes = np.zeros((len(starts), max_hops))
    for row, cell in enumerate(starts):
        seen = {int(cell)}
        frontier = np.array([cell])
        for h in range(max_hops):
            nxt = np.concatenate([graph.indices[graph.indptr[c]:graph.indptr[c + 1]] for c in frontier])
            new = [int(c) for c in np.unique(nxt) if int(c) not in seen]
            seen.update(new)
            frontier = np.array(new, dtype=np.int64)
            sizes[row, h] = len(seen)
            if frontier.size == 0:
                sizes[row, h + 1:] = len(seen)
                break
    return [round(float(v), 1) for v in sizes.mean(0)]


def describe_scale(graph: SpatialGraph, config, *, positives_per_cell: float | None = None,
                   batch_cells: float | None = None, seed: int = 0) -> dict:
    """The manifest's ``scale`` record: graph, walks, profiles, what they cover.

    ``config`` is the run's :class:`~cellniche_core.train.TrainConfig`.
    """
    hops = tuple(config.profile_hops) if config.strategy != "freq" else ()
    reach = max([config.walk_length, config.num_layers, *hops])
    within = cells_within_hops(graph, reach, seed=seed)
    spacing = graph.params.get("spacing_per_sample") or {}
    out = {
        "graph": graph.params.get("mode"),
        "mean_degree": round(graph.n_edges / max(graph.n_nodes, 1), 2),
        "spacing_per_sample": {k: round(float(v), 4) for k, v in spacing.items()},
        "cells_within_hops": {str(h + 1): v for h, v in enumerate(within)},
        "encoder_hops": config.num_layers,
        "walk_length": config.walk_length,
        "walks_per_seed": config.walks_per_seed,
        "seeds_per_batch": config.seeds_per_batch,
        "strategy": config.strategy,
        "profile_hops": list(hops),
        "area_weights": bool(getattr(config, "area_weights", False)),
    }
    if hops:
        out["similar_share"] = config.similar_share
    if positives_per_cell is not None:
        out["positives_per_cell"] = round(float(positives_per_cell), 2)
    if batch_cells is not None:
        out["batch_cells"] = round(float(batch_cells), 1)
    return out


def scale_lines(scale: dict | None) -> list[str]:
    """Plain-language lines describing a manifest's ``scale`` record (empty for old runs)."""
    if not scale:
        return []
    within = scale.get("cells_within_hops") or {}

    def cells(h) -> str:
        v = within.get(str(h))
        return f"~{v:.0f} cells" if v is not None else "n/a"

    lines = [f"graph: {scale.get('graph')}, {scale.get('mean_degree')} neighbours per cell on average",
             f"encoder sees {scale.get('encoder_hops')} hops ({cells(scale.get('encoder_hops'))}); walks of "
             f"{scale.get('walk_length')} steps ({cells(scale.get('walk_length'))}), {scale.get('walks_per_seed')} "
             f"per seed, {scale.get('seeds_per_batch')} seeds per batch"]
    if scale.get("area_weights"):
        lines.append("neighbour means weighted by the area each cell stands for (from its 6 nearest cells)")
    hops = scale.get("profile_hops") or []
    rule = _POSITIVES.get(scale.get("strategy"), str(scale.get("strategy")))
    if hops:
        share = scale.get("similar_share")
        similar = f"; similar = the {share:.0%} most similar pairs of a batch" if share else ""
        lines.append(f"positives: {rule}; surroundings compared at "
                     + ", ".join(f"{h} hop{'s' if h > 1 else ''} ({cells(h)})" for h in hops) + similar)
    else:
        lines.append(f"positives: {rule}")
    if "positives_per_cell" in scale:
        lines.append(f"{scale['positives_per_cell']} positive pairs per batch cell, "
                     f"{scale.get('batch_cells', 'n/a')} cells per batch")
    return lines
