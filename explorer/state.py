"""Cached access to runs for the dashboard, and the one-time build of the demo run.

A run is addressed by a :class:`RunRef` (name, folder, modification time of its files):
hashable, so it is the cache key of everything derived from the run, and a run rebuilt
in place gets a new key. Loaded runs are shared objects (``st.cache_resource``); tables
derived from them are ``st.cache_data``. Every cached function reads only its arguments.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import streamlit as st

from cellniche_core import cli
from cellniche_core.io import Run, list_runs, load_run
from cellniche_core.keys import RUN_ADATA, RUN_MANIFEST, RunKeys
from cellniche_core.metrics import batch_mixing
from cellniche_core.niches import enrichment, marker_scores
from cellniche_core.pipeline import STAGES

from . import job_queue, tables
from .palette import ColorScale, color_scale

APP_DIR = Path(__file__).resolve().parent.parent
DEFAULT_RUNS_DIR = APP_DIR / "data" / "runs"
RUNS_DIR_ENV = "CELLNICHE_RUNS_DIR"
DEMO_RUN = "demo"

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


def runs_dir() -> Path:
    """The runs folder: ``$CELLNICHE_RUNS_DIR``, else ``data/runs`` next to ``app.py``."""
    value = os.environ.get(RUNS_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_RUNS_DIR


def find_runs(directory: Path) -> dict[str, RunRef]:
    """``{name: RunRef}`` of the run folders directly under ``directory``, sorted by name."""
    out = {}
    for path in list_runs(directory):
        try:
            stamp = max((path / f).stat().st_mtime for f in (RUN_MANIFEST, RUN_ADATA)
                        if (path / f).exists())
        except (OSError, ValueError):
            continue
        out[path.name] = RunRef(path.name, str(path), stamp)
    return out


# ----------------------------------------------------------------------------- loading


@st.cache_resource(max_entries=4, show_spinner="Loading run…")
def load(ref: RunRef) -> Run:
    """The run's annotated cohort and manifest (no model weights), shared by all sessions."""
    return load_run(ref.path, with_weights=False)


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
def umap_points(ref: RunRef, max_points: int) -> tuple[pd.DataFrame, int]:
    return tables.umap_points(load(ref).adata, run_keys(ref), max_points=max_points)


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
        per_niche, source = pd.Series(recorded, dtype=float), "per niche from the run manifest"
    else:
        per_niche = batch_mixing(emb, batches, run.adata.obs[keys.niche].iloc[keep])["mixing"]
        source = f"per niche computed{sampled}"
    cohort = batch_mixing(emb, batches)["mixing"].iloc[0]
    note = f"{source}; cohort score computed{sampled}"
    return tables.mixing_table(per_niche, niche_sizes(ref)), None if pd.isna(cohort) else float(cohort), note


@st.cache_data(max_entries=16, show_spinner=False)
def cell_type_enrichment(ref: RunRef) -> pd.DataFrame:
    keys = run_keys(ref)
    table = enrichment(load(ref).adata, niche_key=keys.niche, cell_type_key=keys.cell_type)
    return table.reindex(niches(ref))


@st.cache_data(max_entries=16, show_spinner=False)
def markers(ref: RunRef) -> pd.DataFrame:
    """(niches x features) mean z-scored expression."""
    return marker_scores(load(ref).adata, niche_key=run_keys(ref).niche)


# ----------------------------------------------------------------------------- demo run

#: the stages of the demo build, whose progress bar :func:`explorer.job_queue.overall_progress` draws
DEMO_STAGES = ("simulate", *STAGES)


def overall_progress(stage: str, fraction: float) -> float:
    """Position on the whole build's progress bar of ``fraction`` of ``stage``."""
    return job_queue.overall_progress(stage, fraction, DEMO_STAGES)


def _build_demo(directory: Path, on_stage) -> Path:
    """Build the demo run as ``directory/demo``; the simulated cohort is kept beside it."""
    # data/runs -> the cohort goes to data/demo_cohort.h5ad; another runs folder keeps it hidden
    out = directory.parent if directory.name == "runs" else directory / ".demo"
    try:
        built = cli.build_demo(out, on_stage=on_stage)
    except FileExistsError:  # built meanwhile by another process
        built = out / "runs" / DEMO_RUN
    target = directory / DEMO_RUN
    if Path(built).resolve() != target.resolve() and not target.exists():
        os.replace(built, target)
    return target


class DemoBuild:
    """The demo run being built in a background thread, shared by every session.

    The build runs outside any script run, so a user who clicks or navigates meanwhile
    does not interrupt it; every session only reads its progress.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.progress = 0.0
        self.text = "simulating the demo cohort"
        self.error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the build unless it is running or has failed (see :meth:`retry`)."""
        with self._lock:
            if self.running or self.error is not None:
                return
            self._thread = threading.Thread(target=self._run, name="cellniche-demo-build", daemon=True)
            self._thread.start()

    def retry(self) -> None:
        """Forget a failed build so that :meth:`start` tries again."""
        with self._lock:
            if not self.running:
                self._thread, self.error, self.progress = None, None, 0.0

    def _on_stage(self, stage: str, fraction: float, message: str) -> None:
        self.progress = overall_progress(stage, fraction)
        self.text = f"{stage}: {message}"

    def _run(self) -> None:
        try:
            _build_demo(self.directory, self._on_stage)
            self.progress, self.text = 1.0, "demo run ready"
        except Exception as exc:  # reported to every session by ensure_demo_run
            self.error = f"{type(exc).__name__}: {exc}"


@st.cache_resource
def _demo_build(directory: str) -> DemoBuild:
    # one build per runs folder for the whole server
    return DemoBuild(Path(directory))


def ensure_demo_run(directory: Path, *, poll_s: float = 0.5) -> bool:
    """Build the demo run into an empty runs folder, with a progress bar; True when it exists.

    The build happens once per server (a shared background thread) and the run is kept
    on disk. A failure is shown with ``st.error`` and a button to try again.
    """
    build = _demo_build(str(directory.resolve()))
    if find_runs(directory):
        return True
    build.start()
    if build.error is None:
        st.info(f"No run found in `{directory}`: building the demo run once (under a minute "
                "on a laptop CPU). It is kept on disk for next time.")
        bar = st.progress(build.progress, text=build.text)
        while build.running:
            time.sleep(poll_s)
            bar.progress(build.progress, text=build.text)
    if build.error is not None:
        st.error(f"Building the demo run failed: {build.error}")
        if st.button("Try again"):
            build.retry()
            st.rerun()
        return False
    return bool(find_runs(directory))
