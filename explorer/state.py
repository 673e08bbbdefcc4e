"""Cached access to runs for the dashboard (the demo run's build is in :mod:`explorer.startup`).

A run is addressed by a :class:`RunRef` (name, folder, modification time of its files):
hashable, so it is the cache key of everything derived from the run, and a run rebuilt
in place gets a new key. Loaded runs are shared objects (``st.cache_resource``); tables
derived from them are ``st.cache_data``. Every cached function reads only its arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd
import streamlit as st

from cellniche_core.io import Run, list_runs, load_run
from cellniche_core.keys import RUN_ADATA, RUN_MANIFEST, RunKeys
from cellniche_core.metrics import batch_mixing
from cellniche_core.names import NAMES_FILE, label, named_run, niche_id, read_names, run_auto_names, write_names
from cellniche_core.niches import enrichment, marker_scores, niche_categories

from . import tables
from .palette import ColorScale, color_scale
from .startup import APP_DIR, DEFAULT_RUNS_DIR, DEMO_RUN, RUNS_DIR_ENV, runs_dir  # noqa: F401

#: most cells drawn on one slide map by default; larger slides show a random sample (the
#: browser paints 25k points of a 56k-cell slide in ~4 s with software WebGL, 50k in ~6 s)
MAP_POINT_BUDGET = 25_000
#: most cells drawn in the UMAP
UMAP_POINT_BUDGET = 30_000
#: most cells used to score batch mixing in the dashboard
MIXING_CELLS = 30_000


class RunRef(NamedTuple):
    """A run folder as a cache key."""

    name: str
    path: str
    stamp: float  # latest modification time of the manifest and the cohort file
    names_stamp: float = 0.0  # modification time of the niche names file (0: none)


def find_runs(directory: Path) -> dict[str, RunRef]:
    """``{name: RunRef}`` of the run folders directly under ``directory``, sorted by name."""
    out = {}
    for path in list_runs(directory):
        try:
            stamp = max((path / f).stat().st_mtime for f in (RUN_MANIFEST, RUN_ADATA)
                        if (path / f).exists())
        except (OSError, ValueError):
            continue
        names_file = path / NAMES_FILE
        try:
            names_stamp = names_file.stat().st_mtime if names_file.is_file() else 0.0
        except OSError:
            names_stamp = 0.0
        out[path.name] = RunRef(path.name, str(path), stamp, names_stamp)
    return out


# ----------------------------------------------------------------------------- loading


@st.cache_resource(max_entries=4, show_spinner="Loading run…")
def _read(path: str, stamp: float) -> Run:
    # X stays on disk (read when markers or a transfer need it): a viewer of a run of a
    # million cells x 500 genes would otherwise hold 2 GB of it per run it has open
    return load_run(path, with_weights=False, expression=False)


@st.cache_resource(max_entries=4, show_spinner="Naming niches…")
def load(ref: RunRef) -> Run:
    """The run's annotated cohort and manifest (no model weights), shared by all sessions.

    Its niche column holds the niches' labels (``"N3 · B cell + Dendritic cell"``, see
    :mod:`cellniche_core.names`), so every table, legend, tooltip and download shows them.
    A rename changes ``ref.names_stamp`` only: the cohort file is not read again.
    """
    run = _read(ref.path, ref.stamp)
    return named_run(run)


@st.cache_data(max_entries=32, show_spinner=False)
def niche_names_table(ref: RunRef) -> pd.DataFrame:
    """One row per niche: ``niche`` (id), ``auto_name``, ``name`` (the user's, or empty), ``label``."""
    run = _read(ref.path, ref.stamp)
    keys = run.keys
    auto = run_auto_names(run, keys.niche)
    given = read_names(ref.path)
    ids = niche_categories(run.adata.obs[keys.niche])
    return pd.DataFrame({"niche": ids, "auto_name": [auto.get(n, "") for n in ids],
                         "name": [given.get(n, "") for n in ids],
                         "label": [label(n, given.get(n) or auto.get(n)) for n in ids]})


def save_niche_names(ref: RunRef, names: dict[str, str]) -> None:
    """Store the user's names of ``ref``'s niches (raises NamesError on a bad name)."""
    write_names(ref.path, names, niches=niche_names_table(ref)["niche"].tolist())


def run_keys(ref: RunRef) -> RunKeys:
    """Column names recorded in the run's manifest."""
    return load(ref).keys


@st.cache_data(max_entries=32, show_spinner=False)
def summary(ref: RunRef) -> dict:
    run = load(ref)
    return tables.cohort_summary(run.adata, run_keys(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def patient_table(ref: RunRef) -> pd.DataFrame:
    return tables.patient_table(load(ref).adata, run_keys(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def samples(ref: RunRef) -> list[str]:
    return tables.samples(load(ref).adata, run_keys(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def default_slides(ref: RunRef, n: int = 2) -> list[str]:
    return tables.default_slides(load(ref).adata, run_keys(ref), n=n)


@st.cache_data(max_entries=32, show_spinner=False)
def niches(ref: RunRef) -> list[str]:
    return tables.niches(load(ref).adata, run_keys(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def abundance(ref: RunRef) -> pd.DataFrame:
    return tables.niche_abundance(load(ref).adata, run_keys(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def niche_sizes(ref: RunRef) -> pd.DataFrame:
    return tables.niche_sizes(load(ref).adata, run_keys(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def color_options(ref: RunRef) -> dict[str, str]:
    return tables.color_options(load(ref).adata, run_keys(ref))


@st.cache_data(max_entries=64, show_spinner=False)
def scale(ref: RunRef, column: str) -> ColorScale:
    """Cohort-wide colours of one obs column."""
    kind = color_options(ref)[column]
    return color_scale(load(ref).adata.obs[column], column=column, kind=kind)


@st.cache_data(max_entries=64, show_spinner=False)
def map_points(ref: RunRef, sample: str, column: str, max_points: int) -> tuple[pd.DataFrame, int]:
    """One slide's cells to draw (see :func:`explorer.tables.slide_points`)."""
    return tables.slide_points(load(ref).adata, run_keys(ref), sample, color_by=column,
                               max_points=max_points)


@st.cache_data(max_entries=16, show_spinner=False)
def umap_points(ref: RunRef, max_points: int, color_by: str | None = None) -> tuple[pd.DataFrame, int]:
    return tables.umap_points(load(ref).adata, run_keys(ref), max_points=max_points, color_by=color_by)


@st.cache_data(max_entries=16, show_spinner="Scoring batch mixing…")
def mixing(ref: RunRef, batch: str) -> tuple[pd.DataFrame, float | None, str]:
    """Batch mixing of ``batch`` ("sample" or "patient") in the embedding.

    Returns the per-niche table (:func:`explorer.tables.mixing_table`), the cohort-wide
    score (None with a single sample), and a note on where the scores come from. Scores
    computed here use a random sample of at most ``MIXING_CELLS`` cells: the neighbour
    search behind them grows with the number of cells.
    """
    run = load(ref)
    keys = run_keys(ref)
    keep = tables.subsample_index(run.adata.n_obs, MIXING_CELLS)
    emb = run.adata.obsm[keys.embedding][keep]
    batch_key = keys.sample if batch == "sample" else keys.patient
    batches = tables.labels(run.adata, batch_key).iloc[keep]
    sampled = (f" on a random sample of {len(keep):,} of {run.adata.n_obs:,} cells"
               if len(keep) < run.adata.n_obs else "")
    recorded = (run.manifest.get("metrics") or {}).get("batch_mixing_per_niche")
    if batch == "sample" and recorded:
        labels = {niche_id(n): n for n in niches(ref)}  # the manifest knows the niches by id
        per_niche = pd.Series(recorded, dtype=float).rename(index=lambda n: labels.get(n, n))
        source = "each niche's as measured when the run was made (5,000 cells per niche)"
    else:
        per_niche = batch_mixing(emb, batches, run.adata.obs[keys.niche].iloc[keep])["mixing"]
        source = f"each niche's measured here{sampled}"
    cohort = batch_mixing(emb, batches)["mixing"].iloc[0]
    note = f"{source}; the cohort's measured here{sampled}"
    return tables.mixing_table(per_niche, niche_sizes(ref)), None if pd.isna(cohort) else float(cohort), note


@st.cache_data(max_entries=16, show_spinner=False)
def cell_type_enrichment(ref: RunRef) -> pd.DataFrame:
    keys = run_keys(ref)
    table = enrichment(load(ref).adata, niche_key=keys.niche, cell_type_key=keys.cell_type)
    return table.reindex(niches(ref))


@st.cache_data(max_entries=16, show_spinner=False)
def markers(ref: RunRef) -> pd.DataFrame | None:
    """(niches x features) mean z-scored expression; None for a run without an expression matrix."""
    run = load(ref)
    with run.expression() as X:
        return None if X is None else marker_scores(run.adata, niche_key=run_keys(ref).niche, X=X)
