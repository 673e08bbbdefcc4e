"""Embedding cohorts larger than memory with a trained run.

A backed ``.h5ad`` file or a ``.zarr`` store is opened without loading its expression
matrix: ``obs``, ``var`` and the coordinates come into memory (a few numbers per cell),
``X`` stays on disk and is read a block of rows at a time while the encoder inputs are
built. What is held whole is what the encoder needs: the (n, inputs) features, the spatial
graph and the (n, d) embedding, a few hundred bytes per cell whatever the number of genes.

Each cell is then given the niche of the run whose centre (the mean embedding of the
run's cells of that niche) is nearest. The result, the cells' obs plus ``obsm
["X_cellniche"]`` and ``obs["niche"]`` but not the expression matrix, is written to a new
``.h5ad`` atomically; the input is only read.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import zarr

from .cellniche import CellNiche
from .io import CohortError, check_output, load_run, refuse_outside_data, to_plain, write_h5ad_atomic
from .keys import Keys


@contextmanager
def open_backed(path: str | os.PathLike, *, spatial_key: str = Keys.SPATIAL) -> Iterator[tuple[ad.AnnData, Any]]:
    """Open ``path`` (.h5ad or .zarr) with ``X`` left on disk.

    Yields ``(cells, X)``: an AnnData with ``obs``, ``var`` and ``obsm[spatial_key]`` but
    no ``X``, and the on-disk matrix (an h5py / zarr array or an anndata sparse dataset;
    ``X[lo:hi]`` reads rows ``lo..hi``), or None when the file has no ``X``. The file
    is opened read-only and closed on exit.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".h5ad", ".zarr"):
        raise CohortError(f"{path}: expected an .h5ad file or a .zarr store, got {path.suffix or 'no extension'!r}")
    if not path.exists():
        raise CohortError(f"{path}: does not exist")
    handle = None
    try:
        try:
            if suffix == ".h5ad":
                handle = h5py.File(path, "r")
                group = handle
                refuse_outside_data(handle, path)
            else:
                group = zarr.open_group(str(path), mode="r")
        except CohortError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
            kind = "an HDF5 (.h5ad) file" if suffix == ".h5ad" else "a zarr store"
            raise CohortError(f"{path}: cannot be opened as {kind} ({type(exc).__name__})") from exc
        for key in ("obs", "var", "obsm"):
            if key not in group:
                raise CohortError(f"{path}: is not an AnnData file (no '{key}' group)")
        if spatial_key not in group["obsm"]:
            raise CohortError(f"{path}: obsm[{spatial_key!r}] is missing; the cell coordinates are needed")
        obs = ad.io.read_elem(group["obs"])
        var = ad.io.read_elem(group["var"])
        coords = np.asarray(ad.io.read_elem(group["obsm"][spatial_key]))
        if coords.ndim != 2 or coords.shape[0] != len(obs) or coords.shape[1] < 2:
            raise CohortError(f"{path}: obsm[{spatial_key!r}] has shape {coords.shape}; expected ({len(obs)}, 2)")
        if not np.issubdtype(coords.dtype, np.number):
            raise CohortError(f"{path}: obsm[{spatial_key!r}] is not numeric (dtype {coords.dtype})")
        if not np.isfinite(coords[:, :2]).all():
            raise CohortError(f"{path}: obsm[{spatial_key!r}] has missing or infinite coordinates")
        X = None
        if "X" in group:
            node = group["X"]
            X = ad.io.sparse_dataset(node) if _is_group(node) else node
            if X.shape != (len(obs), len(var)):
                raise CohortError(f"{path}: X has shape {X.shape}; expected ({len(obs)}, {len(var)})")
        cells = ad.AnnData(obs=obs, var=var, obsm={spatial_key: coords[:, :2].astype(np.float64)})
        yield cells, X
    finally:
        if handle is not None:
            handle.close()


def _is_group(node) -> bool:
    return isinstance(node, (h5py.Group, zarr.Group))


def niche_centres(run) -> tuple[list[str], np.ndarray]:
    """Niche names and their unit-length mean embeddings in the run."""
    emb = np.asarray(run.adata.obsm[Keys.EMBEDDING], dtype=np.float32)
    labels = pd.Series(run.adata.obs[Keys.NICHE]).astype(str).to_numpy()
    names = sorted(set(labels), key=lambda v: (len(v), v))
    centres = np.stack([emb[labels == name].mean(0) for name in names])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True).clip(1e-12)
    return names, centres


def nearest_niche(emb: np.ndarray, names: list[str], centres: np.ndarray,
                  chunk_size: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """Nearest niche centre (cosine) of every row of ``emb`` and the cosine similarity to it."""
    index = np.empty(len(emb), dtype=np.int64)
    similarity = np.empty(len(emb), dtype=np.float32)
    for lo in range(0, len(emb), chunk_size):
        s = emb[lo:lo + chunk_size] @ centres.T
        index[lo:lo + chunk_size] = s.argmax(1)
        similarity[lo:lo + chunk_size] = s.max(1)
    return np.asarray(names, dtype=object)[index], similarity


def embed_file(run_dir: str | os.PathLike, path: str | os.PathLike, out: str | os.PathLike, *,
               device: str = "auto", chunk_size: int = 65_536, overwrite: bool = False,
               on_stage: Callable[[str, str], None] | None = None) -> tuple[Path, dict]:
    """Embed every cell of ``path`` with the run's model, reading ``X`` lazily; write ``out``.

    ``out`` (.h5ad) holds the input's ``obs`` plus ``obs["niche"]`` (nearest niche centre of
    the run), ``obs["niche_similarity"]`` (cosine similarity to that centre),
    ``obsm["X_cellniche"]``, the coordinates and ``uns["cellniche_embed"]`` (what was
    done, feature alignment, timings); not the expression matrix. Returns ``(out, report)``.
    """
    say = on_stage or (lambda stage, message: None)
    out, path = Path(out), Path(path)
    check_output(out, path, overwrite=overwrite)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    say("read", f"loading the run {run_dir}")
    run = load_run(run_dir)
    model = CellNiche.from_state(run.model_config, run.state_dict)
    names, centres = niche_centres(run)
    del run
    keys = model.keys
    with open_backed(path, spatial_key=keys.spatial_key) as (cells, X):
        if model.spec.uses_types and keys.cell_type_key not in cells.obs:
            raise CohortError(f"{path}: obs[{keys.cell_type_key!r}] is missing; the run's model reads cell types")
        if model.spec.uses_expression and X is None:
            raise CohortError(f"{path}: has no X; the run's model reads expression")
        timings["read"] = time.perf_counter() - t
        say("embed", f"embedding {cells.n_obs:,} cells (X read from disk a block of rows at a time)")
        t = time.perf_counter()
        alignment = model.embed(cells, device=device, X=X, chunk_size=chunk_size)
        timings["embed"] = time.perf_counter() - t
    t = time.perf_counter()
    niche, similarity = nearest_niche(cells.obsm[Keys.EMBEDDING], names, centres)
    cells.obs[Keys.NICHE] = pd.Categorical(niche, categories=names)
    cells.obs[Keys.NICHE_SIMILARITY] = similarity
    timings["niches"] = time.perf_counter() - t
    report = {"run": str(run_dir), "input": str(path), "n_cells": int(cells.n_obs), "niche_rule": "nearest centre",
              "alignment": alignment, "timings_s": {k: round(v, 3) for k, v in timings.items()}}
    cells.uns[Keys.EMBED_UNS] = _plain(report)

    say("write", f"writing {out}")
    write_h5ad_atomic(cells, out)
    return out, report


def _plain(report: dict) -> dict:
    """The report as h5ad-storable values (JSON text for nested parts)."""
    import json

    return {k: (json.dumps(to_plain(v)) if isinstance(v, (dict, list)) else v) for k, v in report.items()}
