"""Cached cohort-comparison tables for the dashboard, keyed by :class:`~explorer.state.RunRef`.

Same rules as :mod:`explorer.state`: every cached function reads only its arguments;
small tables are ``st.cache_data``; the spatial graph and the per-cell transition scores
(one row per cell) are shared read-only objects in ``st.cache_resource``, so they are
neither copied nor rebuilt on a rerun.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cellniche_core import compare as cohort
from cellniche_core.transitions import BORDER_THRESHOLD

from . import compare, state
from .state import RunRef


def _keys(ref: RunRef) -> dict[str, str]:
    return state.run_keys(ref).table_kwargs()


@st.cache_data(max_entries=32, show_spinner=False)
def niche_summary(ref: RunRef, group_key: str | None) -> pd.DataFrame:
    """Conserved vs sample-specific table (:func:`cellniche_core.cohort.summarise_niches`)."""
    return cohort.summarise_niches(state.load(ref).adata, group_key=group_key, **_keys(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def patient_abundance(ref: RunRef) -> pd.DataFrame:
    """Long (patient, niche) abundance table."""
    return cohort.niche_abundance(state.load(ref).adata, **_keys(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def group_tests(ref: RunRef, group_key: str) -> pd.DataFrame:
    """Patient-level group tests; raises ValueError with a readable message when impossible."""
    return cohort.compare_groups(state.load(ref).adata, group_key, **_keys(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def patient_pair(ref: RunRef, patient_a: str, patient_b: str) -> pd.DataFrame:
    return cohort.compare_patients(state.load(ref).adata, patient_a, patient_b, **_keys(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def patients_by_slide(ref: RunRef) -> dict[str, list[str]]:
    return compare.patients_by_slide(state.load(ref).adata, state.run_keys(ref))


@st.cache_resource(max_entries=4, show_spinner="Loading the run's spatial graph…")
def graph(ref: RunRef):
    """The spatial graph the run was trained on (shared, read-only)."""
    return state.load(ref).graph()


@st.cache_resource(max_entries=4, show_spinner="Scoring transition zones…")
def transition_scores(ref: RunRef, border_threshold: float = BORDER_THRESHOLD) -> pd.DataFrame:
    """Per-cell mixing and border flags (shared, read-only: one row per cell)."""
    return cohort.transition_scores(state.load(ref).adata, graph(ref), niche_key=state.run_keys(ref).niche,
                                     border_threshold=border_threshold)


@st.cache_data(max_entries=32, show_spinner=False)
def transition_summary(ref: RunRef, border_threshold: float = BORDER_THRESHOLD) -> pd.DataFrame:
    return cohort.summarise_transitions(transition_scores(ref, border_threshold))


@st.cache_data(max_entries=64, show_spinner=False)
def transition_points(ref: RunRef, sample: str, max_points: int,
                      border_threshold: float = BORDER_THRESHOLD) -> tuple[pd.DataFrame, int]:
    return compare.transition_points(state.load(ref).adata, state.run_keys(ref),
                                        transition_scores(ref, border_threshold), sample,
                                        max_points=max_points)


@st.cache_data(max_entries=16, show_spinner="Counting niche contacts…")
def adjacency(ref: RunRef) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-slide and cohort niche adjacency tables."""
    per_slide = cohort.niche_adjacency(state.load(ref).adata, graph(ref), **_keys(ref))
    return per_slide, cohort.summarise_adjacency(per_slide)
