"""Cached work of the Select cells page (see :mod:`explorer.select`).

Same rules as :mod:`explorer.state`: every cached function reads only its arguments; a
selection is passed as its text (:func:`explorer.select.to_text`), which is hashable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from . import select, state, tables
from .state import RunRef


def parse(ref: RunRef, text: str) -> select.Selection:
    """The selection ``text`` names on this run; ValueError when it names none."""
    return select.from_text(text, state.samples(ref))


@st.cache_data(max_entries=16, show_spinner=False)
def mask(ref: RunRef, text: str) -> np.ndarray:
    run = state.load(ref)
    return select.selected_mask(run.adata, state.run_keys(ref), parse(ref, text))


@st.cache_data(max_entries=8, show_spinner=False)
def umap_view(ref: RunRef, max_points: int) -> tuple[pd.DataFrame, np.ndarray]:
    """UMAP points to draw (a random sample) and the cell index of each."""
    run = state.load(ref)
    keys = state.run_keys(ref)
    keep = tables.subsample_index(run.adata.n_obs, max_points)
    xy = np.asarray(run.adata.obsm[keys.umap])[keep, :2].astype(float)
    points = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1],
                           "niche": run.adata.obs[keys.niche].astype(str).to_numpy()[keep],
                           "cell_type": tables.labels(run.adata, keys.cell_type, fill="n/a").to_numpy()[keep]})
    return points, keep


@st.cache_data(max_entries=16, show_spinner=False)
def slide_view(ref: RunRef, sample: str, max_points: int) -> tuple[pd.DataFrame, np.ndarray]:
    """One slide's points to draw (a random sample) and the cell index of each."""
    run = state.load(ref)
    keys = state.run_keys(ref)
    where = np.flatnonzero(tables.labels(run.adata, keys.sample).to_numpy() == sample)
    keep = where[tables.subsample_index(len(where), max_points)]
    xy = np.asarray(run.adata.obsm[keys.spatial])[keep, :2].astype(float)
    points = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1],
                           "niche": run.adata.obs[keys.niche].astype(str).to_numpy()[keep],
                           "cell_type": tables.labels(run.adata, keys.cell_type, fill="n/a").to_numpy()[keep]})
    return points, keep


def drawn_selection(ref: RunRef, rows: np.ndarray, text: str | None) -> np.ndarray | None:
    """Which drawn points (cell indices ``rows``) are selected; None without a selection."""
    return None if not text else mask(ref, text)[rows]


@st.cache_data(max_entries=8, show_spinner=False)
def cells(ref: RunRef, text: str) -> pd.DataFrame:
    run = state.load(ref)
    return select.selected_cells(run.adata, state.run_keys(ref), mask(ref, text))


@st.cache_data(max_entries=16, show_spinner=False)
def composition(ref: RunRef, text: str, column: str, against: str, sample: str | None) -> pd.DataFrame:
    run = state.load(ref)
    return select.composition(run.adata, state.run_keys(ref), mask(ref, text), column=column,
                                 against=against, sample=sample)


@st.cache_data(max_entries=8, show_spinner=False)
def slides_with_cells(ref: RunRef, text: str) -> pd.Series:
    """Selected cells per slide, most first."""
    run = state.load(ref)
    keys = state.run_keys(ref)
    chosen = tables.labels(run.adata, keys.sample)[mask(ref, text)]
    return chosen.value_counts()


def current(ref: RunRef, page: str = "select") -> str | None:
    """The selection made on the Select cells page in this session (its text), if it fits ``ref``."""
    text = st.session_state.get("_view", {}).get(f"{page}:sel")
    if not text:
        return None
    try:
        parse(ref, text)
    except ValueError:  # made on another run
        return None
    return text


@st.cache_data(max_entries=32, show_spinner=False)
def on_map(ref: RunRef, sample: str, max_points: int, text: str) -> np.ndarray:
    """Which of the points :func:`explorer.state.map_points` draws for ``sample`` are selected."""
    run = state.load(ref)
    keys = state.run_keys(ref)
    where = np.flatnonzero(tables.labels(run.adata, keys.sample).to_numpy() == sample)
    keep = where[tables.subsample_index(len(where), max_points)]  # as tables.slide_points samples
    return mask(ref, text)[keep]


@st.cache_data(max_entries=8, show_spinner=False)
def on_umap(ref: RunRef, max_points: int, text: str) -> np.ndarray:
    """Which of the points :func:`explorer.state.umap_points` draws are selected."""
    run = state.load(ref)
    return mask(ref, text)[tables.subsample_index(run.adata.n_obs, max_points)]  # as tables.umap_points samples
