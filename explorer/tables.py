"""Tables the dashboard draws, derived from a loaded run (plain pandas, no Streamlit).

Every function takes the run's AnnData first and a :class:`~cellniche_core.keys.RunKeys`
naming its columns (:attr:`cellniche_core.io.Run.keys`), and returns a new DataFrame (or
dict); the AnnData is never modified. So a cohort whose slide column is called ``"fov"``
works without any change here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellniche_core.compare import niche_abundance as abundance_table
from cellniche_core.keys import Keys, RunKeys
from cellniche_core.labels import natural_key
from cellniche_core.niches import niche_categories
from cellniche_core.tally import MIN_CELLS, MIN_FRACTION

from .palette import CATEGORY, NICHE, NUMERIC

#: a categorical column with more distinct values than this is not offered as a colour
MAX_CATEGORIES = 60
#: clinical columns hold at most this many distinct values
MAX_CLINICAL_VALUES = 20


def labels(adata, key: str, *, fill: str = "all") -> pd.Series:
    """``obs[key]`` as strings; a constant ``fill`` when the run has no such column."""
    if key in adata.obs:
        return adata.obs[key].astype(str)
    return pd.Series(fill, index=adata.obs_names)


def ordered_values(adata, key: str) -> list[str]:
    """Distinct values of ``obs[key]``: a categorical's own order, else natural order."""
    if key not in adata.obs:
        return ["all"]
    column = adata.obs[key]
    present = set(column.astype(str).unique())
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [str(c) for c in column.cat.categories if str(c) in present]
    return sorted(present, key=natural_key)


def samples(adata, keys: RunKeys) -> list[str]:
    """Slide ids in display order."""
    return ordered_values(adata, keys.sample)


def default_slides(adata, keys: RunKeys, *, n: int = 2) -> list[str]:
    """The first slide of each of the first ``n`` patients, to compare patients side by side."""
    patient_of = (pd.DataFrame({"s": labels(adata, keys.sample), "p": labels(adata, keys.patient)})
                  .drop_duplicates("s").set_index("s")["p"])
    chosen, seen = [], set()
    for slide in samples(adata, keys):
        if patient_of[slide] not in seen:
            seen.add(patient_of[slide])
            chosen.append(slide)
    return chosen[:n]


def niches(adata, keys: RunKeys) -> list[str]:
    """Niche names in natural order (N2 before N10)."""
    return niche_categories(adata.obs[keys.niche])


# ----------------------------------------------------------------------------- overview


def clinical_columns(adata, keys: RunKeys) -> list[str]:
    """Group columns that describe patients (e.g. ``response``).

    An obs column counts when it is not one of the run's own keys, is categorical, text
    or boolean with 2 to ``MAX_CLINICAL_VALUES`` values, and is constant within each
    patient.
    """
    skip = {keys.sample, keys.patient, keys.cell_type, keys.niche, Keys.TRUE_NICHE,
            Keys.TRANSFERRED, Keys.CONFIDENCE}
    patients = labels(adata, keys.patient)
    out = []
    for name in adata.obs.columns:
        column = adata.obs[name]
        if name in skip or not _is_categorical(column):
            continue
        n = column.nunique()
        if not 2 <= n <= MAX_CLINICAL_VALUES:
            continue
        if (column.astype(str).groupby(patients.to_numpy()).nunique() <= 1).all():
            out.append(name)
    return out


def cohort_summary(adata, keys: RunKeys) -> dict:
    """Counts of patients, slides, cells and niches, and the clinical columns."""
    return {
        "n_patients": int(labels(adata, keys.patient).nunique()),
        "n_slides": int(labels(adata, keys.sample).nunique()),
        "n_cells": int(adata.n_obs),
        "n_niches": len(niches(adata, keys)),
        "clinical": clinical_columns(adata, keys),
    }


def patient_table(adata, keys: RunKeys) -> pd.DataFrame:
    """One row per patient: slides, cells and the clinical columns."""
    frame = pd.DataFrame({"patient": labels(adata, keys.patient).to_numpy(),
                          "slide": labels(adata, keys.sample).to_numpy()})
    for name in clinical_columns(adata, keys):
        frame[name] = adata.obs[name].astype(str).to_numpy()
    grouped = frame.groupby("patient", sort=False)
    table = grouped.agg(slides=("slide", "nunique"), cells=("slide", "size"))
    for name in frame.columns[2:]:
        table[name] = grouped[name].first()
    order = ordered_values(adata, keys.patient) if keys.patient in adata.obs else ["all"]
    return table.reindex([p for p in order if p in table.index])


def niche_abundance(adata, keys: RunKeys) -> pd.DataFrame:
    """Fraction of each slide's cells in each niche, (slides x niches); rows sum to 1."""
    counts = pd.crosstab(labels(adata, keys.sample), adata.obs[keys.niche].astype(str))
    counts = counts.reindex(index=samples(adata, keys), columns=niches(adata, keys), fill_value=0)
    return counts.div(counts.sum(1).replace(0, 1), axis=0)


def niche_sizes(adata, keys: RunKeys, *, min_fraction: float = MIN_FRACTION,
                min_cells: int = MIN_CELLS) -> pd.DataFrame:
    """Per niche: cells, share of the cohort, and in how many slides and patients it is present.

    Presence follows the comparison's rule (:mod:`cellniche_core.tally`): at least
    ``max(min_cells, min_fraction x the slide's cells)`` cells, so a handful of stray cells
    does not count; a patient has the niche when one of its slides does.
    """
    niche = adata.obs[keys.niche].astype(str)
    counts = niche.value_counts().reindex(niches(adata, keys), fill_value=0)
    present = {}
    for unit in ("sample", "patient"):
        table = abundance_table(adata, by=unit, min_fraction=min_fraction, min_cells=min_cells,
                                **keys.table_kwargs())
        present[unit] = table.groupby("niche", sort=False)["present"].sum()
    return pd.DataFrame({
        "cells": counts.astype(int),
        "fraction": counts / max(int(counts.sum()), 1),
        "slides": present["sample"].reindex(counts.index, fill_value=0).astype(int),
        "patients": present["patient"].reindex(counts.index, fill_value=0).astype(int),
    }).rename_axis("niche")


# ----------------------------------------------------------------------------- colours


def _is_categorical(column: pd.Series) -> bool:
    return (isinstance(column.dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(column)
            or pd.api.types.is_string_dtype(column) or pd.api.types.is_bool_dtype(column))


def color_options(adata, keys: RunKeys) -> dict[str, str]:
    """Obs columns a map can be coloured by, ``{column: kind}``, in menu order.

    The niche first, then the cell type, then other categorical columns with at most
    ``MAX_CATEGORIES`` values (ids such as cell barcodes are left out), then numeric
    columns. ``kind`` is ``"niche"``, ``"category"`` or ``"numeric"``.
    """
    out = {keys.niche: NICHE}
    if keys.cell_type in adata.obs:
        out[keys.cell_type] = CATEGORY
    numeric = {}
    for name in adata.obs.columns:
        if name in out:
            continue
        column = adata.obs[name]
        if name == Keys.TRANSFERRED:
            out[name] = NICHE
        elif _is_categorical(column):
            if 1 <= column.nunique() <= MAX_CATEGORIES:
                out[name] = CATEGORY
        elif pd.api.types.is_numeric_dtype(column) and column.nunique() > 1:
            numeric[name] = NUMERIC
    out.update(numeric)
    return out


# ----------------------------------------------------------------------------- points


def subsample_index(n: int, max_points: int, *, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` items, uniformly at random."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def slide_points(adata, keys: RunKeys, sample: str, *, color_by: str, max_points: int,
                 seed: int = 0) -> tuple[pd.DataFrame, int]:
    """The cells of one slide to draw on a map, at most ``max_points`` of them.

    Returns
    -------
    points
        Columns ``x``, ``y`` (``obsm[spatial]``, rounded to ~1/10,000 of the slide's
        extent), ``niche``, ``cell_type``
        and ``value`` (the ``color_by`` column: strings, or floats for a numeric column).
    n_cells
        Cells on the slide before subsampling.
    """
    where = np.flatnonzero(labels(adata, keys.sample).to_numpy() == sample)
    keep = where[subsample_index(len(where), max_points, seed=seed)]
    xy = np.asarray(adata.obsm[keys.spatial])[keep, :2].astype(float)
    obs = adata.obs.iloc[keep]
    column = obs[color_by]
    value = (column.astype(float) if pd.api.types.is_numeric_dtype(column) and
             not isinstance(column.dtype, pd.CategoricalDtype) else column.astype(str))
    # ~1/10,000 of the slide's extent: far below a cell, and short in the JSON sent to the browser
    span = float(np.ptp(xy, axis=0).max()) if len(xy) > 1 else 0.0
    decimals = int(np.clip(4 - np.floor(np.log10(span)), 1, 8)) if span > 0 else 2
    points = pd.DataFrame({
        "x": np.round(xy[:, 0], decimals),
        "y": np.round(xy[:, 1], decimals),
        "niche": obs[keys.niche].astype(str).to_numpy(),
        "cell_type": (obs[keys.cell_type].astype(str).to_numpy() if keys.cell_type in obs
                      else np.full(len(keep), "n/a", dtype=object)),
        "value": value.to_numpy(),
    })
    return points, len(where)


def umap_points(adata, keys: RunKeys, *, max_points: int, seed: int = 0,
                color_by: str | None = None) -> tuple[pd.DataFrame, int]:
    """A random sample of at most ``max_points`` cells with their UMAP position.

    Columns ``x``, ``y`` (``obsm[umap]``), ``niche``, ``sample``, ``cell_type`` and, with
    ``color_by`` (another obs column, e.g. an expert annotation), ``color`` (its values
    as text, "n/a" where missing).
    """
    keep = subsample_index(adata.n_obs, max_points, seed=seed)
    xy = np.asarray(adata.obsm[keys.umap])[keep, :2].astype(float)
    obs = adata.obs.iloc[keep]
    points = pd.DataFrame({
        "x": xy[:, 0], "y": xy[:, 1],
        "niche": obs[keys.niche].astype(str).to_numpy(),
        "sample": labels(adata, keys.sample).iloc[keep].to_numpy(),
        "cell_type": labels(adata, keys.cell_type, fill="n/a").iloc[keep].to_numpy(),
    })
    if color_by is not None:
        points["color"] = labels(adata, color_by, fill="n/a").iloc[keep].to_numpy()
    return points, adata.n_obs


def point_radius(points: pd.DataFrame) -> float:
    """Radius (coordinate units) that lets the drawn points just cover the tissue.

    ``sqrt(area / n) / 2`` over the bounding box: with a subsample the points are sparser
    and grow accordingly.
    """
    if len(points) < 2:
        return 1.0
    area = float(np.ptp(points["x"]) * np.ptp(points["y"]))
    if area <= 0:
        return 1.0
    return 0.5 * float(np.sqrt(area / len(points)))


# ----------------------------------------------------------------------------- composition


def top_markers(scores: pd.DataFrame, *, n_top: int = 5) -> pd.DataFrame:
    """The ``n_top`` highest-scoring features of each niche from a (niches x features) table.

    Returns one row per niche: ``niche`` and ``markers`` (``"CD8 (+1.9), …"``), plus the
    ``n_top`` names in columns ``1`` … ``n_top``.
    """
    rows = []
    for niche, row in scores.iterrows():
        best = row.sort_values(ascending=False).head(n_top)
        entry = {"niche": niche, "markers": ", ".join(f"{f} ({v:+.1f})" for f, v in best.items())}
        entry.update({str(i + 1): f for i, f in enumerate(best.index)})
        rows.append(entry)
    return pd.DataFrame(rows).set_index("niche")


def mixing_table(per_niche: pd.Series, sizes: pd.DataFrame) -> pd.DataFrame:
    """Per-niche mixing scores joined with niche sizes, with a plain-words reading."""
    table = sizes[["cells", "slides", "patients"]].copy()
    table["mixing"] = pd.to_numeric(per_niche.reindex(table.index), errors="coerce")

    def reading(row) -> str:
        if pd.isna(row["mixing"]):
            return "one sample only" if row["slides"] <= 1 else "not scored"
        if row["mixing"] >= 0.7:
            return "well mixed"
        if row["mixing"] >= 0.4:
            return "partly mixed"
        return "sample-specific"

    table["reading"] = table.apply(reading, axis=1)
    return table


def number_text(values, fmt: str, *, missing: str = "–") -> list[str]:
    """Numbers as text in ``fmt`` (e.g. ``"{:+.2f}"``), ``missing`` where there is none.

    For a table column that may hold NaN: ``st.dataframe`` shows a missing number as
    "None", whatever a Styler's ``na_rep`` says.
    """
    return [missing if v is None or pd.isna(v) else fmt.format(v) for v in values]
