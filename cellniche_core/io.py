"""Read, validate and concatenate spatial cohorts; write and load run folders.

A cohort is one AnnData holding every cell: coordinates in ``obsm[spatial_key]``,
a slide id in ``obs[sample_key]`` and a patient id in ``obs[patient_key]``. Every
problem with the input raises :class:`CohortError` whose message starts with the
file it comes from.

A run folder holds ``cohort.h5ad`` (the annotated AnnData, manifest in
``uns["cellniche"]``), ``model.pt`` (a ``state_dict``), ``model.json`` (the model
config) and ``manifest.json``. It is written atomically: it appears complete or
not at all.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import zarr

from .features import FEATURE_MODES, resolve_feature_mode
from .keys import RUN_ADATA, RUN_MANIFEST, RUN_MODEL_CONFIG, RUN_WEIGHTS, Keys

__all__ = [
    "INPUT_UNS_KEY",
    "CohortError",
    "Run",
    "list_runs",
    "load_run",
    "load_weights",
    "read_cohort",
    "safe_child",
    "to_plain",
    "validate_cohort",
    "write_run",
]

#: ``uns`` key where :func:`read_cohort` records the files, keys and derived columns.
INPUT_UNS_KEY = "cellniche_input"

FEATURES = FEATURE_MODES
_PHENO = ("pheno", "pheno_expr")
_EXPR = ("expr", "pheno_expr")
_SHOW = 5  # how many offending cell / slide names a message lists
_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".xlsx")
_CONVERT_HINT = ("a table of cells must be converted to AnnData first, e.g. "
                 "anndata.AnnData(obs=table, obsm={'spatial': xy}).write_h5ad('cohort.h5ad')")


class CohortError(ValueError):
    """An input cohort cannot be used; the message names the file and the problem."""


def _error(source: object, problem: str) -> CohortError:
    return CohortError(f"{source}: {problem}")


def _cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def _first(names: Sequence[object] | pd.Index) -> list[str]:
    return [str(n) for n in list(names[:_SHOW])]


# --------------------------------------------------------------------------- reading


def read_cohort(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    spatial_key: str = Keys.SPATIAL,
    sample_key: str = Keys.SAMPLE,
    patient_key: str = Keys.PATIENT,
    cell_type_key: str = Keys.CELL_TYPE,
    group_keys: Sequence[str] = (),
    features: str = "pheno",
    min_cells_per_sample: int = 20,
) -> ad.AnnData:
    """Read, validate and concatenate one or more cohort files.

    Parameters
    ----------
    paths
        One path or several: ``.h5ad`` files and ``.zarr`` stores (directories).
        They are read fully into memory and opened read-only.
    spatial_key
        ``obsm`` key of the coordinates, shape (n, 2); (n, 3) is accepted and
        only its first two columns are kept.
    sample_key
        ``obs`` column of the slide id. Where a file lacks it, every cell of that
        file belongs to one slide named after the file stem. A non-default name
        that is missing is an error (the user named a column that is not there).
    patient_key
        ``obs`` column of the patient id; where missing, patient = sample. Same
        rule as ``sample_key`` for a non-default name.
    cell_type_key
        ``obs`` column of the phenotype; required when ``features`` uses "pheno".
    group_keys
        Further ``obs`` columns that must be present in every file.
    features
        "pheno", "expr" or "pheno_expr": decides whether the cell type column
        and/or a numeric ``X`` are required.
    min_cells_per_sample
        Smallest slide accepted.

    Returns
    -------
    AnnData
        Every input cell, in file order. ``var`` is the intersection of the
        files' var names; ``obs`` columns are the union (NaN where absent);
        duplicate obs names get suffixes "-1", "-2", .... ``obs[sample_key]``
        and ``obs[patient_key]`` are categorical strings.
        ``uns["cellniche_input"]`` records the files, keys, derived columns and notes.

    Raises
    ------
    CohortError
        For any problem with the input, naming the file.
    """
    _check_features(features)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise CohortError("no input files were given")

    keys = dict(
        spatial_key=spatial_key,
        sample_key=sample_key,
        patient_key=patient_key,
        cell_type_key=cell_type_key,
        group_keys=tuple(group_keys),
        features=features,
        min_cells_per_sample=min_cells_per_sample,
    )
    adatas, notes = [], []
    derived: dict[str, list[str]] = {}
    for path in paths:
        adata = _read_file(path)
        for column in _derive_slide_columns(
            adata, source=path, stem=path.stem, sample_key=sample_key, patient_key=patient_key
        ):
            derived.setdefault(column, []).append(path.name)
        validate_cohort(adata, source=path, **keys)
        notes += _keep_xy(adata, spatial_key, source=path)
        adatas.append(adata)

    _check_distinct_slides(adatas, paths, sample_key)
    features = resolve_feature_mode(features, adatas[0].obs.columns, cell_type_key)
    adata, concat_notes = _concatenate(adatas, paths, features=features)
    notes += concat_notes

    n_renamed = int(adata.obs_names.duplicated().sum())
    if n_renamed:
        adata.obs_names_make_unique()
        notes.append(f"{n_renamed} duplicate obs names were made unique with a '-N' suffix")

    adata.uns[INPUT_UNS_KEY] = {
        "files": [str(p) for p in paths],
        "n_cells": [a.n_obs for a in adatas],
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in keys.items()},
        "derived": derived,
        "n_renamed_obs": n_renamed,
        "notes": notes,
    }
    return adata


def _read_file(path: Path) -> ad.AnnData:
    if not path.exists():
        raise _error(path, "does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".h5ad", ".zarr"):
        hint = f"; {_CONVERT_HINT}" if suffix in _TABLE_SUFFIXES else ""
        raise _error(
            path,
            f"unsupported file type {path.suffix or '(no extension)'!r}; "
            f"expected an .h5ad file or a .zarr store{hint}",
        )
    if suffix == ".h5ad":
        if not path.is_file():
            raise _error(path, "is not a readable .h5ad file (it is a directory)")
        if path.stat().st_size == 0:
            raise _error(path, "is empty (0 bytes)")
        return _read_h5ad(path)
    if not path.is_dir():
        raise _error(path, "is not a readable .zarr store (expected a directory)")
    if not any(path.iterdir()):
        raise _error(path, "is empty (a .zarr store with no files)")
    return _read_zarr(path)


def _h5ad_keys(path: Path) -> list[str]:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        first_line = _text_start(path)
        if first_line is not None and "signature not found" in str(exc):
            raise _error(path, f"is a text file, not an HDF5 file (first line: {first_line!r}); "
                               f"{_CONVERT_HINT}") from exc
        raise
    with f:
        refuse_outside_data(f, path)
        return list(f.keys())


def refuse_outside_data(f: h5py.File, path: Path) -> None:
    """Refuse an HDF5 file that reads data from outside itself.

    HDF5 lets a dataset keep its bytes in another file (external storage, virtual
    datasets) and a group link to an object in another file; h5py follows them when
    reading, so such a file could make the server read, and show, any file it can open.
    An AnnData file never needs them.
    """
    found: list[str] = []

    def link(name: str, obj) -> None:
        if isinstance(obj, h5py.ExternalLink):
            found.append(f"'{name}' links to another file")

    def dataset(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
            found.append(f"'{name}' stores its data in another file")

    f.visititems_links(link)
    f.visititems(dataset)
    if found:
        raise _error(path, f"refers to data outside itself ({'; '.join(found[:3])}); an .h5ad file must "
                           "hold its own data: write it again with anndata")


def _text_start(path: Path, size: int = 1024) -> str | None:
    """The first line of ``path`` when its first bytes read as UTF-8 text, else None."""
    with open(path, "rb") as f:
        head = f.read(size)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the block
            return None
        text = head[: exc.start].decode("utf-8")
    if not text or any(ch < " " and ch not in "\t\n\r\f" for ch in text):
        return None
    line = next((line for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= 60 else line[:57] + "..."


def _read_h5ad(path: Path) -> ad.AnnData:
    return _read_store(path, kind=".h5ad file", container="an HDF5 file",
                       list_keys=lambda: _h5ad_keys(path), read=lambda: ad.read_h5ad(path))


def _read_zarr(path: Path) -> ad.AnnData:
    group = None

    def list_keys():
        nonlocal group
        group = zarr.open_group(str(path), mode="r")
        return list(group.keys())

    return _read_store(path, kind=".zarr store", container="a zarr group", list_keys=list_keys,
                       read=lambda: ad.read_zarr(group))


def _read_store(path: Path, *, kind: str, container: str, list_keys, read) -> ad.AnnData:
    """Open a store, check it holds an AnnData, read it; every failure names the file."""
    try:
        top = sorted(list_keys())
    except CohortError:
        raise
    except Exception as exc:
        raise _error(path, f"is not a readable {kind} ({_short_reason(exc)})") from exc
    if not {"obs", "var"} <= set(top):
        raise _error(path, f"is not a readable {kind} ({container} but not an AnnData: "
                           f"no 'obs'/'var' groups; found {top})")
    try:
        with _duplicate_names_are_fixed_later():
            return read()
    except MemoryError:
        raise
    except Exception as exc:
        text_error = _unicode_error(exc)
        if text_error is not None:
            raise _error(path, f"is not a readable {kind}: a name or label in it is not valid "
                               f"UTF-8 text ({text_error.object[:60]!r}); write it again with "
                               "UTF-8 text (anndata in Python 3 does)") from exc
        raise _error(path, f"is not a readable {kind} ({_short_reason(exc)})") from exc


def _unicode_error(exc: BaseException | None) -> UnicodeDecodeError | None:
    """The UnicodeDecodeError behind ``exc`` (itself, its cause or context), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UnicodeDecodeError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def _duplicate_names_are_fixed_later() -> Iterator[None]:
    # read_cohort makes obs names unique itself, so anndata's advice would only confuse
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*names are not unique.*")
        yield


_SHAPE_MISMATCH = re.compile(
    r"Value passed for key '(?P<key>[^']*)' is of incorrect shape\. Values of (?P<attr>\w+) must "
    r"match dimensions .*? Value had shape \((?P<had>[^)]*)\) while it should have had "
    r"\((?P<want>[^)]*)\)",
    re.DOTALL,
)


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    # h5py / zarr messages are long and technical; translate the common ones
    if "signature not found" in text:
        return "not an HDF5 file"
    if "truncated file" in text:
        return "the file is truncated"
    if "No group found" in text:
        return "not a zarr store"
    shape = _SHAPE_MISMATCH.search(text)
    if shape:  # anndata's check that every obsm / layers entry has one row per cell
        had, want = shape["had"].split(",")[0], shape["want"].split(",")[0]
        return (f"{shape['attr']}[{shape['key']!r}] has {had} rows but the file has {want} cells; "
                "it must hold one row per cell")
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _derive_slide_columns(
    adata: ad.AnnData, *, source: Path, stem: str, sample_key: str, patient_key: str
) -> list[str]:
    """Create missing sample / patient columns in place; return the ones created."""
    named = {sample_key: "sample_key"} if sample_key != Keys.SAMPLE else {}
    if patient_key != Keys.PATIENT:
        named[patient_key] = "patient_key"
    _require_columns(adata, source, named)

    derived = []
    if sample_key not in adata.obs:
        adata.obs[sample_key] = pd.Categorical([stem] * adata.n_obs)
        derived.append(sample_key)
    adata.obs[sample_key] = _as_str_category(adata.obs[sample_key])
    if patient_key not in adata.obs:
        adata.obs[patient_key] = adata.obs[sample_key].copy()
        derived.append(patient_key)
    adata.obs[patient_key] = _as_str_category(adata.obs[patient_key])
    return derived


def _as_str_category(column: pd.Series) -> pd.Categorical:
    # NaN stays NaN so that validation can still report cells without an id
    if isinstance(column.dtype, pd.CategoricalDtype) and all(
        isinstance(c, str) for c in column.cat.categories
    ):
        return column.cat.remove_unused_categories().array
    return pd.Categorical(column.astype(object).map(str, na_action="ignore"))


def _keep_xy(adata: ad.AnnData, spatial_key: str, *, source: Path) -> list[str]:
    """Reduce validated coordinates to a (n, 2) array; return notes."""
    coords = adata.obsm[spatial_key]
    if isinstance(coords, np.ndarray) and coords.shape[1] == 2:
        return []
    coords = np.asarray(coords)
    adata.obsm[spatial_key] = np.ascontiguousarray(coords[:, :2])
    if coords.shape[1] == 3:
        return [f"{source.name}: obsm[{spatial_key!r}] has 3 columns; the first 2 (x, y) are used"]
    return []


def _check_distinct_slides(adatas: list[ad.AnnData], paths: list[Path], sample_key: str) -> None:
    # Two files sharing a slide id would merge into one graph with overlapping coordinates
    seen: dict[str, Path] = {}
    for adata, path in zip(adatas, paths):
        for slide in adata.obs[sample_key].unique():
            if slide in seen:
                raise _error(
                    path,
                    f"slide {slide!r} (obs[{sample_key!r}]) is also in {seen[slide]}; slide ids "
                    "must be distinct across files: rename them, or remove the column so that "
                    "each file is one slide named after the file",
                )
            seen[slide] = path


def _concatenate(
    adatas: list[ad.AnnData], paths: list[Path], *, features: str
) -> tuple[ad.AnnData, list[str]]:
    if len(adatas) == 1:
        return adatas[0], []

    # anndata.concat intersects obs columns too; rebuild obs as their union
    obs = pd.concat([a.obs for a in adatas], join="outer")
    categorical = {c for a in adatas for c in a.obs if not pd.api.types.is_numeric_dtype(a.obs[c])}
    with _duplicate_names_are_fixed_later():
        adata = ad.concat(adatas, join="inner", merge="same", uns_merge="same")
        obs.index = adata.obs_names
        for column in obs:
            if column in categorical or obs[column].dtype == object:
                obs[column] = obs[column].astype("category")
        adata.obs = obs

    notes = []
    n_union = len(set().union(*(a.var_names for a in adatas)))
    if adata.n_vars == 0 and features in _EXPR:
        raise _error(
            ", ".join(str(p) for p in paths),
            "no gene/protein names are shared by all files (the var intersection is empty), "
            f"but features={features!r} needs expression",
        )
    if adata.n_vars < n_union:
        notes.append(f"kept the {adata.n_vars} var names shared by all files (of {n_union})")
    return adata, notes


# ------------------------------------------------------------------------ validation


def validate_cohort(
    adata: ad.AnnData,
    *,
    source: object = "<in-memory>",
    spatial_key: str = Keys.SPATIAL,
    sample_key: str = Keys.SAMPLE,
    patient_key: str = Keys.PATIENT,
    cell_type_key: str = Keys.CELL_TYPE,
    group_keys: Sequence[str] = (),
    features: str = "pheno",
    min_cells_per_sample: int = 20,
) -> None:
    """Check that an in-memory AnnData can be used as a cohort.

    Parameters
    ----------
    adata
        The cohort; not modified.
    source
        Name used at the start of every error message (a path or upload name).
    spatial_key, sample_key, patient_key, cell_type_key, group_keys, features, min_cells_per_sample
        As in :func:`read_cohort`. A missing default ``sample_key`` means one
        slide; a missing non-default ``sample_key`` / ``patient_key`` is an error.

    Raises
    ------
    CohortError
        At the first problem found, naming ``source``.
    """
    _check_features(features)
    requested, features = features, resolve_feature_mode(features, adata.obs.columns, cell_type_key)
    if adata.n_obs == 0:
        raise _error(source, "has zero cells")
    if adata.n_obs == 1:
        raise _error(source, "has a single cell; niches are built from neighbouring cells, so "
                             f"every slide needs at least min_cells_per_sample={min_cells_per_sample} cells")
    _check_spatial(adata, spatial_key, source)

    named = {k: "group_keys" for k in group_keys}
    if features in _PHENO:
        named[cell_type_key] = "cell_type_key"
    if cell_type_key != Keys.CELL_TYPE and requested == "auto":
        named[cell_type_key] = "cell_type_key"  # named on purpose: a typo must not fall back to expression
    if sample_key != Keys.SAMPLE:
        named[sample_key] = "sample_key"
    if patient_key != Keys.PATIENT:
        named[patient_key] = "patient_key"
    _require_columns(adata, source, named)

    if features in _PHENO:
        _check_labels(adata, cell_type_key, source, what="cell type")
    if features in _EXPR:
        _check_expression(adata, source, features)
    for key, what in ((sample_key, "slide id"), (patient_key, "patient id")):
        if key in adata.obs:
            _check_labels(adata, key, source, what=what)
    _check_slide_sizes(adata, sample_key, min_cells_per_sample, source)
    _check_spread(adata, spatial_key, sample_key, source)


def _check_features(features: str) -> None:
    if features != "auto" and features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")


#: how to fix a missing column, by the argument that named it
_COLUMN_HINTS = {
    "cell_type_key": "name the cell-type column with cell_type_key (--cell-type-key), "
                     "or use features='expr' to work from X alone",
    "sample_key": "name the slide column with sample_key (--sample-key)",
    "patient_key": "name the patient column with patient_key (--patient-key)",
    "group_keys": "add the column, or leave it out of group_keys (--group-key)",
}


def _require_columns(adata: ad.AnnData, source: object, named: Mapping[str, str]) -> None:
    for key, role in named.items():
        if key not in adata.obs:
            found = list(map(str, adata.obs.columns[:20]))
            raise _error(
                source, f"obs[{key!r}] is missing (named by {role}; found obs columns: {found}); "
                        f"{_COLUMN_HINTS[role]}"
            )


def _check_spatial(adata: ad.AnnData, key: str, source: object) -> None:
    where = f"obsm[{key!r}]"
    if key not in adata.obsm:
        raise _error(source, f"{where} is missing (found obsm keys: {list(adata.obsm.keys())}); "
                             "store the (n_cells, 2) cell coordinates there, or name their key "
                             "with spatial_key (--spatial-key)")
    coords = adata.obsm[key]
    if sp.issparse(coords):
        raise _error(source, f"{where} is a sparse matrix; expected a dense (n_cells, 2) array")
    coords = np.asarray(coords)
    if coords.dtype.kind not in "iuf":
        raise _error(source, f"{where} is not numeric (dtype {coords.dtype})")
    if coords.ndim != 2:
        raise _error(source, f"{where} must be 2-D (n_cells, 2), got shape {coords.shape}")
    if coords.shape[1] not in (2, 3):
        raise _error(
            source, f"{where} has {coords.shape[1]} column(s); expected 2 (x, y) or 3 (x, y, z)"
        )
    if coords.shape[0] != adata.n_obs:
        raise _error(
            source, f"{where} has {coords.shape[0]} rows but there are {adata.n_obs} cells"
        )
    xy = coords[:, :2]
    if xy.dtype.kind == "f":
        nan, inf = np.isnan(xy).any(axis=1), np.isinf(xy).any(axis=1)
        if nan.any() or inf.any():
            raise _error(
                source,
                f"{where} has {_nonfinite(nan, inf, 'coordinates')} "
                f"(first: {_first(adata.obs_names[nan | inf])}); every cell needs a finite "
                "(x, y): fix or drop those cells",
            )


def _nonfinite(nan: np.ndarray, inf: np.ndarray, what: str) -> str:
    """'NaN {what} in 2 cells and infinite {what} in 1 cell' from two row masks."""
    parts = [f"{kind} {what} in {_cells(int(mask.sum()))}"
             for kind, mask in (("NaN", nan), ("infinite", inf)) if mask.any()]
    return " and ".join(parts)


def _check_spread(adata: ad.AnnData, key: str, sample_key: str, source: object) -> None:
    """A slide whose cells all sit at one point has no spatial structure to learn."""
    xy = np.asarray(adata.obsm[key])[:, :2]
    has_slides = sample_key in adata.obs
    codes, names = (pd.factorize(adata.obs[sample_key]) if has_slides
                    else (np.zeros(adata.n_obs, dtype=np.int64), pd.Index(["the slide"])))
    grouped = pd.DataFrame(xy).groupby(codes, sort=False)
    span = (grouped.max() - grouped.min()).max(axis=1)
    flat = span.index[(span == 0) & (grouped.size() > 1)]
    if len(flat):
        in_slide = codes == flat[0]
        named = f" of slide {str(names[flat[0]])!r} (obs[{sample_key!r}])" if has_slides else ""
        raise _error(
            source,
            f"the {int(in_slide.sum())} cells{named} all share one position "
            f"{tuple(float(v) for v in xy[in_slide][0])} in obsm[{key!r}]; the coordinates look "
            "like a placeholder: store each cell's own (x, y)",
        )


def _check_labels(adata: ad.AnnData, key: str, source: object, *, what: str) -> None:
    missing = adata.obs[key].isna().to_numpy()
    if missing.all():
        raise _error(source, f"obs[{key!r}] is empty: no cell has a {what} (all values are NaN)")
    if missing.any():
        # a NaN label would silently fall out of the one-hot / slide grouping downstream
        raise _error(
            source,
            f"obs[{key!r}] has no {what} (NaN) for {int(missing.sum())} of {adata.n_obs} cells "
            f"(first: {_first(adata.obs_names[missing])}); give them a label",
        )


def _check_expression(adata: ad.AnnData, source: object, features: str) -> None:
    x = adata.X
    if x is None:
        raise _error(source, f"X is missing, but features={features!r} needs expression")
    if x.shape[1] == 0:
        raise _error(
            source,
            f"X has zero columns (no genes or proteins), but features={features!r} needs them",
        )
    if np.dtype(x.dtype).kind not in "biuf":
        raise _error(source, f"X is not numeric (dtype {x.dtype})")
    bad = _rows_with_nonfinite(x)
    if bad.size:
        rows = x[bad]
        rows = rows.toarray() if sp.issparse(rows) else np.asarray(rows)
        nan, inf = np.isnan(rows).any(axis=1), np.isinf(rows).any(axis=1)
        raise _error(
            source,
            f"X has {_nonfinite(nan, inf, 'values')} (first: {_first(adata.obs_names[bad])}); "
            "fix or drop those cells, or use features='pheno'",
        )


def _rows_with_nonfinite(x: Any, chunk_size: int = 65_536) -> np.ndarray:
    """Sorted row indices of ``x`` holding NaN or inf; dense or sparse, never densified."""
    if np.dtype(x.dtype).kind in "biu":
        return np.empty(0, dtype=np.int64)
    if sp.issparse(x):
        if x.format == "csr":
            bad = np.flatnonzero(~np.isfinite(x.data))
            rows = np.searchsorted(x.indptr, bad, side="right") - 1
        else:
            coo = x.tocoo()
            rows = coo.row[~np.isfinite(coo.data)]
        return np.unique(rows)
    # row chunks bound the temporary boolean mask for atlas-sized dense X
    found = []
    for start in range(0, x.shape[0], chunk_size):
        block = np.asarray(x[start : start + chunk_size])
        found.append(start + np.flatnonzero(~np.isfinite(block).all(axis=1)))
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def _check_slide_sizes(adata: ad.AnnData, sample_key: str, minimum: int, source: object) -> None:
    if sample_key not in adata.obs:
        if adata.n_obs < minimum:
            raise _error(
                source,
                f"the slide has {adata.n_obs} cells, fewer than min_cells_per_sample={minimum}",
            )
        return
    counts = adata.obs[sample_key].value_counts()
    small = counts[(counts > 0) & (counts < minimum)].sort_values()
    if len(small):
        listed = ", ".join(f"{name!r} ({_cells(n)})" for name, n in small.iloc[:_SHOW].items())
        raise _error(
            source,
            f"{len(small)} slide(s) in obs[{sample_key!r}] have fewer than "
            f"min_cells_per_sample={minimum} cells: {listed}",
        )


# ------------------------------------------------------------------------ run folders


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
    """

    path: Path
    adata: ad.AnnData
    state_dict: dict[str, Any] | None
    model_config: dict[str, Any]
    manifest: dict[str, Any]


def to_plain(obj: Any) -> Any:
    """Return ``obj`` as plain JSON types (dict, list, str, int, float, bool, None).

    Tuples and sets become lists, numpy scalars and arrays become Python numbers
    and lists, paths and devices become strings, dataclasses become dicts.

    Raises
    ------
    TypeError
        For a value with no JSON form.
    """
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, (os.PathLike, torch.device, torch.dtype)):
        return str(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    raise TypeError(f"a {type(obj).__name__} cannot be stored in a run manifest: {obj!r}")


def _to_uns(plain: Any) -> Any:
    """Make plain JSON data writable by h5ad (lists of dicts or mixed lists become JSON text)."""
    if isinstance(plain, dict):
        return {str(k): _to_uns(v) for k, v in plain.items()}
    if isinstance(plain, list) and not _is_array_like(plain):
        return json.dumps(plain)
    return plain


def _is_array_like(values: list) -> bool:
    # h5ad stores a list as an array: it must be rectangular and of one scalar kind
    kinds = {_scalar_kind(v) for v in _leaves(values)}
    if None in kinds or len(kinds) > 1:
        return False
    try:
        return np.asarray(values).dtype != object
    except ValueError:  # ragged
        return False


def _scalar_kind(value: Any) -> type | None:
    if isinstance(value, (bool, str)):
        return type(value)
    if isinstance(value, (int, float)):
        return float
    return None


def _leaves(values: Any):
    if isinstance(values, list):
        for v in values:
            yield from _leaves(v)
    else:
        yield values


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
        raise _exists_error(run_dir)
    manifest = to_plain(dict(manifest))
    model_config = to_plain(dict(model_config))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    # hidden name, so that list_runs and the dashboard never pick a half-written run
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".tmp", dir=run_dir.parent))
    try:
        _write_adata(adata, tmp / RUN_ADATA, manifest)
        _save_weights(state_dict, tmp / RUN_WEIGHTS)
        (tmp / RUN_MODEL_CONFIG).write_text(json.dumps(model_config, indent=2))
        (tmp / RUN_MANIFEST).write_text(json.dumps(manifest, indent=2))
        _move_into_place(tmp, run_dir, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


def _save_weights(state_dict: Mapping[str, Any], path: Path) -> None:
    torch.save(dict(state_dict), path)
    # fail now rather than when the dashboard loads the run
    try:
        torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ValueError(
            f"state_dict cannot be reloaded with weights_only=True (store tensors and plain "
            f"Python values only): {_short_reason(exc)}"
        ) from exc


def _exists_error(run_dir: Path) -> FileExistsError:
    return FileExistsError(
        f"{run_dir}: a run folder already exists (pass overwrite=True to replace it)"
    )


def _write_adata(adata: ad.AnnData, path: Path, manifest: dict) -> None:
    had_uns = Keys.UNS in adata.uns
    previous = adata.uns.get(Keys.UNS)
    adata.uns[Keys.UNS] = _to_uns(manifest)
    try:
        adata.write_h5ad(path)
    finally:
        if had_uns:
            adata.uns[Keys.UNS] = previous
        else:
            del adata.uns[Keys.UNS]


def _move_into_place(tmp: Path, run_dir: Path, *, overwrite: bool) -> None:
    if not run_dir.exists():
        os.rename(tmp, run_dir)
        return
    if not overwrite:
        raise _exists_error(run_dir)
    old = run_dir.with_name(f".{run_dir.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(run_dir, old)
    try:
        os.rename(tmp, run_dir)
    except BaseException:
        os.rename(old, run_dir)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def check_output(out: Path, source: Path, *, overwrite: bool, what: str = "input") -> None:
    """Refuse an output that is not an .h5ad, would replace ``source`` (named ``what`` in the
    message), or exists (unless ``overwrite``)."""
    if out.suffix.lower() != ".h5ad":
        raise ValueError(f"{out}: the output must be an .h5ad file")
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise ValueError(f"{out}: the output would overwrite the {what}; choose another --out")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")


def write_h5ad_atomic(adata: ad.AnnData, out: Path) -> Path:
    """Write ``adata`` to a hidden temporary file beside ``out``, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def load_run(run_dir: str | os.PathLike, *, with_weights: bool = True) -> Run:
    """Load a run folder written by :func:`write_run`.

    Parameters
    ----------
    run_dir
        The run folder.
    with_weights
        Load ``model.pt`` (on the CPU, ``weights_only=True``); False skips it.

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

    manifest = _read_json(run_dir / RUN_MANIFEST)
    model_config = _read_json(run_dir / RUN_MODEL_CONFIG)
    adata = ad.read_h5ad(run_dir / RUN_ADATA)
    adata.uns[Keys.UNS] = manifest
    state_dict = load_weights(run_dir / RUN_WEIGHTS) if with_weights else None
    return Run(run_dir, adata, state_dict, model_config, manifest)


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
        raise ValueError(f"{path}: is not a readable model weights file ({_short_reason(exc)})") from exc
    if not isinstance(state_dict, Mapping):  # a bad run file: ValueError, as above
        raise ValueError(  # noqa: TRY004
            f"{path}: holds a {type(state_dict).__name__}, not a state_dict of weights")
    return dict(state_dict)


def safe_child(base: str | os.PathLike, name: str) -> Path:
    """``base / name`` for a ``name`` that came from a user, checked to stay inside ``base``.

    ``name`` must be one plain path component: not empty, no NUL byte, no ``/`` or ``\\``,
    not ``.`` or ``..``, not hidden (a leading dot marks temporary folders), and the
    result, symlinks resolved, must lie inside ``base``. Text such as ``%2e%2e`` is taken
    literally (it is decoded, if at all, before it gets here).

    Raises
    ------
    ValueError
        Naming the problem; the message quotes ``name`` with ``repr``.
    """
    base = Path(base)
    if not isinstance(name, str) or not name:
        raise ValueError("a name is needed (empty)")
    problem = None
    if "\x00" in name:
        problem = "holds a NUL byte"
    elif "/" in name or "\\" in name:
        problem = "holds a path separator"
    elif name in (".", ".."):
        problem = "names a parent or the folder itself"
    elif name.startswith("."):
        problem = "is hidden (starts with a dot)"
    if problem is None:
        child, root = base / name, base.resolve()
        resolved = child.resolve()
        if resolved != root and resolved.is_relative_to(root):
            return child
        problem = f"is a symbolic link leading outside {base}"
    raise ValueError(f"{name!r} cannot name an entry of {base}: it {problem}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: is not valid JSON ({exc})") from exc


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
