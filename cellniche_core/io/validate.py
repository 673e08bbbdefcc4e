"""Check that an in-memory AnnData can be used as a cohort (:func:`validate_cohort`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..features import FEATURE_MODES, resolve_feature_mode
from ..keys import Keys
from .errors import SHOW, cells_phrase, cohort_error, first_names

FEATURES = FEATURE_MODES
PHENO_MODES = ("pheno", "pheno_expr")  # feature modes that need a cell-type column
EXPR_MODES = ("expr", "pheno_expr")  # feature modes that need a numeric X


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
    key_hint: str | None = None,
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
        slide; a missing non-default ``sample_key`` / ``patient_key`` is an error, and so
        is a missing non-default ``cell_type_key`` with ``features="auto"`` (no silent
        fall-back to expression).
    key_hint
        What to do about a missing column or coordinates key, instead of naming the option
        that sets it (a query slide, read with its reference's keys, has no such option).

    Raises
    ------
    CohortError
        At the first problem found, naming ``source``.
    """
    check_features(features)
    requested, features = features, resolve_feature_mode(features, adata.obs.columns, cell_type_key)
    if adata.n_obs == 0:
        raise cohort_error(source, "has zero cells")
    if adata.n_obs == 1:
        raise cohort_error(source, "has a single cell; niches are built from neighbouring cells, so "
                             f"every slide needs at least min_cells_per_sample={min_cells_per_sample} cells")
    _check_spatial(adata, spatial_key, source, hint=key_hint)

    named = {k: "group_keys" for k in group_keys}
    if features in PHENO_MODES:
        named[cell_type_key] = "cell_type_key"
    if cell_type_key != Keys.CELL_TYPE and requested == "auto":
        named[cell_type_key] = "cell_type_key"  # named on purpose: a typo must not fall back to expression
    if sample_key != Keys.SAMPLE:
        named[sample_key] = "sample_key"
    if patient_key != Keys.PATIENT:
        named[patient_key] = "patient_key"
    require_columns(adata, source, named, hint=key_hint)

    if features in PHENO_MODES:
        _check_labels(adata, cell_type_key, source, what="cell type")
    if features in EXPR_MODES:
        _check_expression(adata, source, features)
    for key, what in ((sample_key, "slide id"), (patient_key, "patient id")):
        if key in adata.obs:
            _check_labels(adata, key, source, what=what)
    _check_slide_sizes(adata, sample_key, min_cells_per_sample, source)
    _check_spread(adata, spatial_key, sample_key, source)


def check_features(features: str) -> None:
    if features != "auto" and features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")


#: obs columns that commonly hold the coordinates (lower case), for the message on missing ones
_XY_COLUMNS = (("x", "y"), ("x_centroid", "y_centroid"), ("center_x", "center_y"), ("x_um", "y_um"),
               ("array_col", "array_row"), ("imagecol", "imagerow"))
#: how to fix a missing column, by the argument that named it
_COLUMN_HINTS = {
    "cell_type_key": "name the cell-type column with cell_type_key (--cell-type-key), "
                     "or use features='expr' to work from X alone",
    "sample_key": "name the slide column with sample_key (--sample-key)",
    "patient_key": "name the patient column with patient_key (--patient-key)",
    "group_keys": "add the column, or leave it out of group_keys (--group-key)",
}


def require_columns(adata: ad.AnnData, source: object, named: Mapping[str, str], *,
                    hint: str | None = None) -> None:
    for key, role in named.items():
        if key not in adata.obs:
            found = list(map(str, adata.obs.columns[:20]))
            raise cohort_error(
                source, f"obs[{key!r}] is missing (named by {role}; found obs columns: {found}); "
                        f"{hint or _COLUMN_HINTS[role]}"
            )


def _check_spatial(adata: ad.AnnData, key: str, source: object, *, hint: str | None = None) -> None:
    where = f"obsm[{key!r}]"
    if key not in adata.obsm:
        columns = {str(c).lower(): str(c) for c in adata.obs.columns}
        pair = next(([columns[a], columns[b]] for a, b in _XY_COLUMNS if a in columns and b in columns), None)
        found = f"found obsm keys: {list(adata.obsm.keys())}" + (f", and obs columns {pair}" if pair else "")
        move = (f"; to use obs columns {pair}: adata.obsm[{key!r}] = adata.obs[{pair}].to_numpy()" if pair else "")
        raise cohort_error(source, f"{where} is missing ({found}); "
                             + (hint or "store the (n_cells, 2) cell coordinates there, or name their key "
                                        "with spatial_key (--spatial-key)") + move)
    coords = adata.obsm[key]
    if sp.issparse(coords):
        raise cohort_error(source, f"{where} is a sparse matrix; expected a dense (n_cells, 2) array")
    coords = np.asarray(coords)
    if coords.dtype.kind not in "iuf":
        raise cohort_error(source, f"{where} is not numeric (dtype {coords.dtype})")
    if coords.ndim != 2:
        raise cohort_error(source, f"{where} must be 2-D (n_cells, 2), got shape {coords.shape}")
    if coords.shape[1] not in (2, 3):
        raise cohort_error(
            source, f"{where} has {coords.shape[1]} column(s); expected 2 (x, y) or 3 (x, y, z)"
        )
    if coords.shape[0] != adata.n_obs:
        raise cohort_error(
            source, f"{where} has {coords.shape[0]} rows but there are {adata.n_obs} cells"
        )
    xy = coords[:, :2]
    if xy.dtype.kind == "f":
        nan, inf = np.isnan(xy).any(axis=1), np.isinf(xy).any(axis=1)
        if nan.any() or inf.any():
            raise cohort_error(
                source,
                f"{where} has {_nonfinite(nan, inf, 'coordinates')} "
                f"(first: {first_names(adata.obs_names[nan | inf])}); every cell needs a finite "
                "(x, y): fix or drop those cells",
            )


def _nonfinite(nan: np.ndarray, inf: np.ndarray, what: str) -> str:
    """'NaN {what} in 2 cells and infinite {what} in 1 cell' from two row masks."""
    parts = [f"{kind} {what} in {cells_phrase(int(mask.sum()))}"
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
        raise cohort_error(
            source,
            f"the {int(in_slide.sum())} cells{named} all share one position "
            f"{tuple(float(v) for v in xy[in_slide][0])} in obsm[{key!r}]; the coordinates look "
            "like a placeholder: store each cell's own (x, y)",
        )


def _check_labels(adata: ad.AnnData, key: str, source: object, *, what: str) -> None:
    missing = adata.obs[key].isna().to_numpy()
    if missing.all():
        raise cohort_error(source, f"obs[{key!r}] is empty: no cell has a {what} (all values are NaN)")
    if missing.any():
        # a NaN label would silently fall out of the one-hot / slide grouping downstream
        raise cohort_error(
            source,
            f"obs[{key!r}] has no {what} (NaN) for {int(missing.sum())} of {adata.n_obs} cells "
            f"(first: {first_names(adata.obs_names[missing])}); give them a label",
        )


def _check_expression(adata: ad.AnnData, source: object, features: str) -> None:
    x = adata.X
    if x is None:
        raise cohort_error(source, f"X is missing, but features={features!r} needs expression")
    if x.shape[1] == 0:
        raise cohort_error(
            source,
            f"X has zero columns (no genes or proteins), but features={features!r} needs them",
        )
    if np.dtype(x.dtype).kind not in "biuf":
        raise cohort_error(source, f"X is not numeric (dtype {x.dtype})")
    names = pd.Index(map(str, adata.var_names))
    if names.has_duplicates:
        repeated = names[names.duplicated()].unique()
        raise cohort_error(
            source,
            f"{len(repeated)} gene/protein name(s) occur more than once in var_names (first: "
            f"{first_names(repeated)}), so a column cannot be matched by its name; drop the duplicates or "
            "make the names unique (adata.var_names_make_unique())",
        )
    bad = _rows_with_nonfinite(x)
    if bad.size:
        rows = x[bad]
        rows = rows.toarray() if sp.issparse(rows) else np.asarray(rows)
        nan, inf = np.isnan(rows).any(axis=1), np.isinf(rows).any(axis=1)
        raise cohort_error(
            source,
            f"X has {_nonfinite(nan, inf, 'values')} (first: {first_names(adata.obs_names[bad])}); "
            "fix or drop those cells, or use features='pheno'",
        )


def _rows_with_nonfinite(x: Any, chunk_size: int = 65_536) -> np.ndarray:
    """Sorted row indices of ``x`` holding NaN or inf; dense or sparse, in memory or on disk, never densified."""
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
    # row chunks of ~CHUNK_BYTES bound the temporary mask for atlas-sized dense X (or one on disk)
    from ..features import CHUNK_BYTES

    chunk_size = max(1, min(chunk_size, CHUNK_BYTES // (np.dtype(x.dtype).itemsize * max(1, x.shape[1]))))
    found = []
    for start in range(0, x.shape[0], chunk_size):
        block = x[start : start + chunk_size]
        bad = _rows_with_nonfinite(block) if sp.issparse(block) else np.flatnonzero(
            ~np.isfinite(np.asarray(block)).all(axis=1))
        found.append(start + bad)
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def _check_slide_sizes(adata: ad.AnnData, sample_key: str, minimum: int, source: object) -> None:
    if sample_key not in adata.obs:
        if adata.n_obs < minimum:
            raise cohort_error(
                source,
                f"the slide has {adata.n_obs} cells, fewer than min_cells_per_sample={minimum}",
            )
        return
    counts = adata.obs[sample_key].value_counts()
    small = counts[(counts > 0) & (counts < minimum)].sort_values()
    if len(small):
        listed = ", ".join(f"{name!r} ({cells_phrase(n)})" for name, n in small.iloc[:SHOW].items())
        raise cohort_error(
            source,
            f"{len(small)} slide(s) in obs[{sample_key!r}] have fewer than "
            f"min_cells_per_sample={minimum} cells: {listed}",
        )


# ------------------------------------------------------------------------ run folders
