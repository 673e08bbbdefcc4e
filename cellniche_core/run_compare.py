"""Every comparison table of a run folder (:func:`compare_run`), written as CSV files
(:func:`write_comparison`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .compare import niche_abundance, summarise_niches
from .groups import compare_groups
from .io import atomic_folder, to_plain
from .tally import MIN_CELLS, MIN_FRACTION
from .transitions import (BORDER_THRESHOLD, niche_adjacency, summarise_adjacency, summarise_transitions,
                          transition_scores)

__all__ = ["TABLE_ORDER", "compare_run", "write_comparison"]

#: the tables of a comparison, in the order they are written
TABLE_ORDER = ("niches", "patient_abundance", "group_tests", "adjacency", "adjacency_cohort",
               "transitions")


def compare_run(
    run,
    *,
    group_key: str | None = None,
    reference: str | None = None,
    niche_key: str | None = None,
    min_fraction: float = MIN_FRACTION,
    min_cells: int = MIN_CELLS,
    border_threshold: float = BORDER_THRESHOLD,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Every comparison table of a loaded run (:class:`~cellniche_core.io.Run`).

    Keys come from the run's manifest (:attr:`Run.keys <cellniche_core.io.Run.keys>`) and the
    spatial graph is the run's own (:meth:`Run.graph <cellniche_core.io.Run.graph>`).
    ``group_key`` is checked first, so a bad one fails before any other work.

    Returns
    -------
    dict
        ``niches`` (:func:`summarise_niches`), ``patient_abundance``
        (:func:`niche_abundance`), ``group_tests`` (:func:`compare_groups`, only with
        ``group_key``), ``adjacency`` (:func:`niche_adjacency`, per slide),
        ``adjacency_cohort`` (:func:`summarise_adjacency`) and ``transitions``
        (:func:`summarise_transitions`).
    """
    table_keys = run.keys.table_kwargs()
    if niche_key is not None:
        table_keys["niche_key"] = niche_key
    adata = run.adata
    tables: dict[str, pd.DataFrame] = {}
    if group_key is not None:
        tables["group_tests"] = compare_groups(adata, group_key, reference=reference,
                                               n_boot=n_boot, seed=seed, **table_keys)
    tables["niches"] = summarise_niches(adata, group_key=group_key, min_fraction=min_fraction,
                                        min_cells=min_cells, n_boot=n_boot, seed=seed, **table_keys)
    tables["patient_abundance"] = niche_abundance(adata, min_fraction=min_fraction,
                                                  min_cells=min_cells, **table_keys)
    graph = run.graph()
    tables["adjacency"] = niche_adjacency(adata, graph, **table_keys)
    tables["adjacency_cohort"] = summarise_adjacency(tables["adjacency"])
    scores = transition_scores(adata, graph, niche_key=table_keys["niche_key"],
                               border_threshold=border_threshold)
    tables["transitions"] = summarise_transitions(scores)
    return {name: tables[name] for name in TABLE_ORDER if name in tables}


def write_comparison(tables: Mapping[str, pd.DataFrame], out: str | os.PathLike, *,
                     params: Mapping | None = None, overwrite: bool = False) -> Path:
    """Write ``<name>.csv`` for every table (and ``compare.json``) into ``out``, atomically.

    Through :func:`~cellniche_core.io.atomic_folder`: ``out`` appears complete or not at all,
    and with ``overwrite`` an existing ``out`` is replaced as a whole (no stale table from
    an earlier comparison survives); without it, an existing ``out`` is a FileExistsError.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    with atomic_folder(out, overwrite=overwrite) as tmp:
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
        summary = {"tables": [f"{name}.csv" for name in tables], "params": dict(params or {})}
        (tmp / "compare.json").write_text(json.dumps(to_plain(summary), indent=2))
    return out
