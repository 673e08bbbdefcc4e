"""Read and concatenate spatial cohorts (:func:`read_cohort`).

A cohort is one AnnData holding every cell: coordinates in ``obsm[spatial_key]``,
a slide id in ``obs[sample_key]`` and a patient id in ``obs[patient_key]``. Every
problem with the input raises :class:`~cellniche_core.io.CohortError` whose message
starts with the file it comes from.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import zarr

from ..features import resolve_feature_mode
from ..keys import INPUT_UNS_KEY, Keys
from .errors import SHOW, CohortError, cohort_error, short_reason
from .validate import EXPR_MODES, check_features, require_columns, validate_cohort

_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".xlsx")
_CONVERT_HINT = ("a table of cells must be converted to AnnData first, e.g. "
                 "anndata.AnnData(obs=table, obsm={'spatial': xy}).write_h5ad('cohort.h5ad')")



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
    key_hint: str | None = None,
    backed: bool = False,
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
    key_hint
        As in :func:`~cellniche_core.io.validate_cohort`.
    backed
        With one ``.h5ad`` file whose ``X`` is dense or CSR, leave ``X`` on disk (anndata's
        backed mode, read-only): it is checked, and later read, a block of rows at a time.
        The caller closes the file (``adata.file.close()``). Other inputs are read whole.

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
    check_features(features)
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
        adata = _read_file(path, backed=backed and len(paths) == 1)
        try:
            for column in _derive_slide_columns(
                adata, source=path, stem=path.stem, sample_key=sample_key, patient_key=patient_key
            ):
                derived.setdefault(column, []).append(path.name)
            validate_cohort(adata, source=path, key_hint=key_hint, **keys)
            notes += _keep_xy(adata, spatial_key, source=path)
        except BaseException:
            close_backed(adata)
            raise
        adatas.append(adata)

    _check_distinct_slides(adatas, paths, sample_key)
    modes = [resolve_feature_mode(features, a.obs.columns, cell_type_key) for a in adatas]
    if len(set(modes)) > 1:  # "auto" resolved per file: a cohort is trained on one kind of input
        with_types = [p.name for p, m in zip(paths, modes) if m != "expr"]
        without = [p.name for p, m in zip(paths, modes) if m == "expr"]

        def listed(names: list[str], one: str, many: str) -> str:
            return f"{', '.join(names[:SHOW])}{' …' if len(names) > SHOW else ''} {one if len(names) == 1 else many}"

        raise CohortError(
            f"features='auto': {listed(with_types, 'has', 'have')} obs[{cell_type_key!r}] (cell types) but "
            f"{listed(without, 'does not', 'do not')} (expression only); give every file the column, or choose "
            "features='expr' (--features expr) to train on the expression of all of them")
    features = modes[0]
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


def close_backed(adata: ad.AnnData) -> None:
    """Close the file a backed AnnData reads ``X`` from (nothing for one in memory)."""
    if adata.isbacked:
        adata.file.close()


def _read_file(path: Path, *, backed: bool = False) -> ad.AnnData:
    if not path.exists():
        raise cohort_error(path, "does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".h5ad", ".zarr"):
        hint = f"; {_CONVERT_HINT}" if suffix in _TABLE_SUFFIXES else ""
        raise cohort_error(
            path,
            f"unsupported file type {path.suffix or '(no extension)'!r}; "
            f"expected an .h5ad file or a .zarr store{hint}",
        )
    if suffix == ".h5ad":
        if not path.is_file():
            raise cohort_error(path, "is not a readable .h5ad file (it is a directory)")
        if path.stat().st_size == 0:
            raise cohort_error(path, "is empty (0 bytes)")
        return _read_h5ad(path, backed=backed)
    if not path.is_dir():
        raise cohort_error(path, "is not a readable .zarr store (expected a directory)")
    if not any(path.iterdir()):
        raise cohort_error(path, "is empty (a .zarr store with no files)")
    return _read_zarr(path)


def _h5ad_keys(path: Path) -> list[str]:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        first_line = _text_start(path)
        if first_line is not None and "signature not found" in str(exc):
            raise cohort_error(path, f"is a text file, not an HDF5 file (first line: {first_line!r}); "
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
        raise cohort_error(path, f"refers to data outside itself ({'; '.join(found[:3])}); an .h5ad file must "
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


def _read_h5ad(path: Path, *, backed: bool = False) -> ad.AnnData:
    def read() -> ad.AnnData:
        return ad.read_h5ad(path, backed="r") if backed and _x_by_rows(path) else ad.read_h5ad(path)

    return _read_store(path, kind=".h5ad file", container="an HDF5 file",
                       list_keys=lambda: _h5ad_keys(path), read=read)


def _x_by_rows(path: Path) -> bool:
    """Whether the file's ``X`` is one a block of rows is read from cheaply: dense or CSR."""
    with h5py.File(path, "r") as f:
        node = f.get("X")
        if isinstance(node, h5py.Dataset):
            return node.ndim == 2
        return isinstance(node, h5py.Group) and node.attrs.get("encoding-type") == "csr_matrix"


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
        raise cohort_error(path, f"is not a readable {kind} ({short_reason(exc)})") from exc
    if not {"obs", "var"} <= set(top):
        raise cohort_error(path, f"is not a readable {kind} ({container} but not an AnnData: "
                           f"no 'obs'/'var' groups; found {top})")
    try:
        with _duplicate_names_are_fixed_later():
            return read()
    except MemoryError:
        raise
    except Exception as exc:
        text_error = _unicode_error(exc)
        if text_error is not None:
            raise cohort_error(path, f"is not a readable {kind}: a name or label in it is not valid "
                               f"UTF-8 text ({text_error.object[:60]!r}); write it again with "
                               "UTF-8 text (anndata in Python 3 does)") from exc
        raise cohort_error(path, f"is not a readable {kind} ({short_reason(exc)})") from exc


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



def _derive_slide_columns(
    adata: ad.AnnData, *, source: Path, stem: str, sample_key: str, patient_key: str
) -> list[str]:
    """Create missing sample / patient columns in place; return the ones created."""
    named = {sample_key: "sample_key"} if sample_key != Keys.SAMPLE else {}
    if patient_key != Keys.PATIENT:
        named[patient_key] = "patient_key"
    require_columns(adata, source, named)

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
                raise cohort_error(
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
    if adata.n_vars == 0 and features in EXPR_MODES:
        raise cohort_error(
            ", ".join(str(p) for p in paths),
            "no gene/protein names are shared by all files (the var intersection is empty), "
            f"but features={features!r} needs expression",
        )
    if adata.n_vars < n_union:
        notes.append(f"kept the {adata.n_vars} var names shared by all files (of {n_union})")
    return adata, notes


# ------------------------------------------------------------------------ validation
