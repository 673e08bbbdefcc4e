"""Cached label transfer for the dashboard, keyed by the reference run and the query.

Same rules as :mod:`explorer.state`: every cached function reads only its arguments. The
reference model and each annotated query are shared read-only objects
(``st.cache_resource``); the tables and map points drawn from them are ``st.cache_data``.
A query is addressed by a :class:`QueryRef`: a file by its path and modification time,
an upload by the SHA-256 of its bytes (the bytes themselves are passed unhashed).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import pandas as pd
import streamlit as st

from cellniche_core.agreement import transfer_agreement
from cellniche_core.io import Run

from . import state, tables, transfer
from .state import RunRef


class QueryRef(NamedTuple):
    """A query as a cache key."""

    name: str  # shown to the user
    source: str  # "file" or "upload"
    ident: str  # the path of a file, the SHA-256 of an upload
    stamp: float  # modification time of a file, 0 for an upload


def data_dir() -> Path:
    """The folder holding ``runs/``: ``data/`` by default; query files are listed from it."""
    return state.runs_dir().parent


def upload_dir() -> Path:
    """Where uploads are staged, each in a temporary folder removed right after reading."""
    return data_dir() / transfer.UPLOADS


def file_query(name: str, path: Path) -> QueryRef:
    return QueryRef(name, "file", str(path), path.stat().st_mtime)


def upload_query(name: str, data: bytes) -> QueryRef:
    return QueryRef(Path(str(name)).name, "upload", hashlib.sha256(data).hexdigest(), 0.0)


@st.cache_resource(max_entries=2, show_spinner="Loading the reference model…")
def reference(ref: RunRef) -> Run:
    """The run with its model weights (shares the cohort loaded by :func:`explorer.state.load`)."""
    return transfer.with_weights(state.load(ref))


@st.cache_resource(max_entries=6, show_spinner="Embedding the query and transferring labels…")
def annotated(ref: RunRef, query: QueryRef, label_key: str, staging: str,
              _data: bytes | None = None) -> tuple[ad.AnnData, dict]:
    """The annotated query and the transfer report; raises CohortError / ValueError on bad input.

    ``staging`` is the folder an upload's bytes (``_data``) are staged in.
    """
    run = reference(ref)
    if query.source == "upload":
        return transfer.annotate_upload(run, _data or b"", query.name, upload_dir=Path(staging),
                                             label_key=label_key)
    return transfer.annotate_file(run, Path(query.ident), label_key=label_key)


@st.cache_data(max_entries=64, show_spinner=False)
def map_points(ref: RunRef, query: QueryRef, label_key: str, sample: str, column: str, max_points: int,
               _adata: ad.AnnData) -> tuple[pd.DataFrame, int]:
    """One query slide's cells to draw (``_adata`` is the query annotated for the other arguments)."""
    keys = transfer.query_keys(state.run_keys(ref))
    return tables.slide_points(_adata, keys, sample, color_by=column, max_points=max_points)


@st.cache_data(max_entries=16, show_spinner=False)
def label_table(ref: RunRef, query: QueryRef, label_key: str, _adata: ad.AnnData) -> pd.DataFrame:
    return transfer.label_table(state.load(ref).adata, label_key, _adata)


@st.cache_data(max_entries=16, show_spinner=False)
def agreement(ref: RunRef, query: QueryRef, label_key: str, truth_key: str, _adata: ad.AnnData) -> dict:
    """The transfer scored against the query's own ``truth_key`` (raises CohortError)."""
    return transfer_agreement(_adata, truth_key)


@st.cache_data(max_entries=4, show_spinner="Preparing the download…")
def download_bytes(ref: RunRef, query: QueryRef, label_key: str, staging: str, _adata: ad.AnnData) -> bytes:
    return transfer.h5ad_bytes(_adata, tmp_dir=Path(staging))
