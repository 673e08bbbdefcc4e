"""Run folders: write one atomically, load it back, list them.

A run folder holds ``cohort.h5ad`` (the annotated AnnData, manifest in
``uns["cellniche"]``, the spatial graph in ``obsp["spatial_connectivities"]``),
``model.pt`` (a ``state_dict``), ``model.json`` (the model config) and
``manifest.json``. It is written atomically: it appears complete or not at all.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import torch

from ..cellniche import spatial_graph, stored_graph
from ..graph import GraphSettings, SpatialGraph
from ..keys import RUN_ADATA, RUN_MANIFEST, RUN_MODEL_CONFIG, RUN_WEIGHTS, InputKeys, Keys, RunKeys
from .errors import short_reason
from .files import atomic_folder, exists_error, write_h5ad
from .plain import read_json, to_plain, to_uns


@dataclass
class Run:
    """A run folder loaded into memory.

    Attributes
    ----------
    path
        The run folder.
    adata
        The annotated cohort; ``uns["cellniche"]`` is the manifest.
    state_dict
        Model weights on the CPU, or None when loaded without weights.
    model_config
        Keyword arguments that rebuild the model.
    manifest
        Parameters, seed, versions, device, timings, metrics.
    niche_names
        A readable name for each niche label, where one was given (else empty): the
        manifest's ``niche_names`` under those of ``niche_names.json`` (see
        :mod:`cellniche_core.names`).
    x_on_disk
        Loaded with ``expression=False``: ``adata.X`` is None and :meth:`expression` reads
        the matrix from ``cohort.h5ad``.
    """

    path: Path
    adata: ad.AnnData
    state_dict: dict[str, Any] | None
    model_config: dict[str, Any]
    manifest: dict[str, Any]
    niche_names: dict[str, str] = field(default_factory=dict)
    x_on_disk: bool = False

    @property
    def keys(self) -> RunKeys:
        """Where the run keeps its columns, read from the manifest (``params.keys``,
        ``params.patient_key``; the model config's keys for an older manifest); defaults
        from :class:`~cellniche_core.keys.Keys` for anything missing. The one place a
        manifest is read into keys."""
        params = (self.manifest or {}).get("params") or {}
        keys = params.get("keys") or (self.model_config or {}).get("keys") or {}
        return RunKeys(spatial=keys.get("spatial_key") or Keys.SPATIAL,
                       sample=keys.get("sample_key") or Keys.SAMPLE,
                       patient=params.get("patient_key") or Keys.PATIENT,
                       cell_type=keys.get("cell_type_key") or Keys.CELL_TYPE)

    @property
    def features(self) -> str:
        """The feature mode the model was trained with."""
        return self.model_config["features"]["mode"]

    @contextmanager
    def expression(self) -> Iterator[Any]:
        """The run's expression matrix: ``adata.X``, or, for a run loaded with
        ``expression=False``, the matrix in ``cohort.h5ad`` opened read-only for the
        ``with`` block (an h5py dataset or an anndata sparse dataset; read it a block of rows
        at a time). None when the run has none."""
        if not self.x_on_disk:
            yield self.adata.X
            return
        path = Path(self.path) / RUN_ADATA
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise FileNotFoundError(f"{path}: the run's cohort file cannot be read any more ({short_reason(exc)}); "
                                    "was the run deleted or replaced since it was opened?") from exc
        with f:
            node = f.get("X")
            if isinstance(node, h5py.Group):
                node = ad.io.sparse_dataset(node)
            if node is not None and tuple(node.shape) != tuple(self.adata.shape):
                raise FileNotFoundError(f"{path}: X has shape {tuple(node.shape)}, not the {self.adata.shape} of the "
                                        "run opened; was the run replaced since it was opened?")
            if isinstance(node, ad.abc.CSCDataset):  # a block of rows of a CSC matrix reads all of it
                node = node.to_memory()
            yield node

    def graph(self) -> SpatialGraph:
        """The spatial graph the run was trained on.

        Read from ``obsp["spatial_connectivities"]``; a run written before the graph was
        stored there gets it rebuilt with its own settings and keys (same graph, slower).
        """
        stored = stored_graph(self.adata)
        if stored is not None:
            return stored
        return spatial_graph(self.adata, GraphSettings(**self.model_config["graph"]),
                             InputKeys(**self.model_config["keys"]))


def write_run(
    run_dir: str | os.PathLike,
    *,
    adata: ad.AnnData,
    state_dict: Mapping[str, Any],
    model_config: Mapping[str, Any],
    manifest: Mapping[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a run folder atomically.

    Everything is written into a hidden sibling directory, then renamed into
    place; if anything fails (including Ctrl-C) the temporary directory is
    removed and ``run_dir`` is left as it was.

    Parameters
    ----------
    run_dir
        The folder to create; its parent is created if needed.
    adata
        The annotated cohort, written to ``cohort.h5ad`` with
        ``uns["cellniche"] = manifest``. Its own ``uns`` is left as it was.
    state_dict
        Model weights, written to ``model.pt``; must load with ``weights_only=True``.
    model_config
        Written to ``model.json``.
    manifest
        Written to ``manifest.json`` (see :func:`to_plain` for accepted types).
    overwrite
        Replace an existing ``run_dir``; otherwise an existing one is an error.

    Returns
    -------
    Path
        ``run_dir``.

    Raises
    ------
    FileExistsError
        ``run_dir`` exists and ``overwrite`` is False.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:
        raise exists_error(run_dir)
    manifest = to_plain(dict(manifest))
    model_config = to_plain(dict(model_config))
    with atomic_folder(run_dir, overwrite=overwrite) as tmp:
        _write_adata(adata, tmp / RUN_ADATA, manifest)
        _save_weights(state_dict, tmp / RUN_WEIGHTS)
        (tmp / RUN_MODEL_CONFIG).write_text(json.dumps(model_config, indent=2))
        (tmp / RUN_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return run_dir


def _save_weights(state_dict: Mapping[str, Any], path: Path) -> None:
    torch.save(dict(state_dict), path)
    # fail now rather than when the dashboard loads the run
    try:
        torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ValueError(
            f"state_dict cannot be reloaded with weights_only=True (store tensors and plain "
            f"Python values only): {short_reason(exc)}"
        ) from exc


def _write_adata(adata: ad.AnnData, path: Path, manifest: dict) -> None:
    had_uns = Keys.UNS in adata.uns
    previous = adata.uns.get(Keys.UNS)
    adata.uns[Keys.UNS] = to_uns(manifest)
    try:
        if adata.isbacked:
            _write_backed(adata, path)
        else:
            write_h5ad(adata, path)
    finally:
        if had_uns:
            adata.uns[Keys.UNS] = previous
        else:
            del adata.uns[Keys.UNS]


def _write_backed(adata: ad.AnnData, path: Path) -> None:
    """Write a backed AnnData: all but ``X`` (and ``raw``) from memory, those two copied from
    its file by HDF5, a chunk at a time, never read whole."""
    in_memory = ad.AnnData(obs=adata.obs, var=adata.var, uns=adata.uns, obsm=dict(adata.obsm),
                           varm=dict(adata.varm), obsp=dict(adata.obsp), varp=dict(adata.varp),
                           layers=dict(adata.layers))
    write_h5ad(in_memory, path)
    with h5py.File(adata.filename, "r") as source, h5py.File(path, "r+") as out:
        for key in ("X", "raw"):
            if key in source:
                source.copy(source[key], out, key)


def load_run(run_dir: str | os.PathLike, *, with_weights: bool = True, expression: bool = True) -> Run:
    """Load a run folder written by :func:`write_run`.

    Parameters
    ----------
    run_dir
        The run folder.
    with_weights
        Load ``model.pt`` (on the CPU, ``weights_only=True``); False skips it.
    expression
        Read the expression matrix (``X``, ``layers``, ``raw``) into memory; False leaves
        them on disk (``adata.X`` is None, :meth:`Run.expression` reads ``X``): a viewer
        of a run of a million cells x 500 genes then holds no 2 GB of it.

    Returns
    -------
    Run
        ``adata.uns["cellniche"]`` is replaced by the manifest read from
        ``manifest.json`` (the exact JSON, which h5ad cannot always store).

    Raises
    ------
    FileNotFoundError
        ``run_dir`` is missing or is not a run folder.
    ValueError
        A JSON file or the weights cannot be read; weights holding anything besides
        tensors and plain values are refused (see :func:`load_weights`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    needed = [RUN_ADATA, RUN_MODEL_CONFIG, RUN_MANIFEST] + ([RUN_WEIGHTS] if with_weights else [])
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir}: not a CellNiche run folder (missing {', '.join(missing)})"
        )

    manifest = read_json(run_dir / RUN_MANIFEST)
    model_config = read_json(run_dir / RUN_MODEL_CONFIG)
    adata = ad.read_h5ad(run_dir / RUN_ADATA) if expression else _read_without_expression(run_dir / RUN_ADATA)
    adata.uns[Keys.UNS] = manifest
    state_dict = load_weights(run_dir / RUN_WEIGHTS) if with_weights else None
    from ..names import given_names

    return Run(run_dir, adata, state_dict, model_config, manifest, niche_names=given_names(run_dir, manifest),
               x_on_disk=not expression)


def _read_without_expression(path: Path) -> ad.AnnData:
    """An .h5ad file's AnnData without ``X``, ``layers`` or ``raw``, which stay on disk."""
    with h5py.File(path, "r") as f:
        parts = {key: ad.io.read_elem(f[key]) for key in ("obs", "var", "obsm", "obsp", "varm", "varp", "uns")
                 if key in f}
    return ad.AnnData(**parts)


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """A run's model weights, on the CPU, unpickling tensors and plain values only.

    ``torch.load(..., weights_only=True)``: a file holding any other Python object (which
    unpickling could make run code) is refused, never executed.

    Raises
    ------
    ValueError
        The file is not a readable weights file, or holds something besides weights.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ValueError(f"{path}: is not a readable model weights file (not the zip archive "
                         "torch.save writes, or truncated)")
    try:
        state_dict = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: refused to load the model weights: the file holds Python objects other "
            "than tensors and plain values, which could run code when loaded; it was not "
            "loaded (rebuild the run, or replace the file with one written by write_run)"
        ) from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path}: is not a readable model weights file ({short_reason(exc)})") from exc
    if not isinstance(state_dict, Mapping):  # a bad run file: ValueError, as above
        raise ValueError(  # noqa: TRY004
            f"{path}: holds a {type(state_dict).__name__}, not a state_dict of weights")
    return dict(state_dict)


def list_runs(runs_dir: str | os.PathLike) -> list[Path]:
    """Run folders directly under ``runs_dir``, sorted by name.

    A run folder is a non-hidden sub-folder holding a ``manifest.json``;
    hidden ones (temporary or replaced runs) are skipped. A missing
    ``runs_dir`` gives an empty list.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(
        (p for p in runs_dir.iterdir()
         if p.is_dir() and not p.name.startswith(".") and (p / RUN_MANIFEST).is_file()),
        key=lambda p: p.name,
    )
