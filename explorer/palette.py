"""The dashboard's colours: one niche palette for every page, map and legend.

Niche ``i`` in natural order (N1, N2, …, N10) gets ``NICHE_PALETTE[i]``, whatever slide or
page it is drawn on; ``"unknown"`` is grey. Other categorical columns (cell type, sample,
clinical columns) use ``CATEGORY_PALETTE`` in the order of their cohort-wide categories,
numeric columns a viridis ramp between cohort-wide limits, so that side-by-side slides
share one scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cellniche_core.keys import UNKNOWN
from cellniche_core.niches import niche_categories

#: 20 qualitative colours, niche i -> colour i (cycled past 20)
NICHE_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#1a237e",
    "#f3c300", "#004d40", "#882d17", "#8db600", "#604e97",
    "#f99379", "#a1caf1", "#b3446c", "#c2b280", "#00a08b",
)
#: 24 colours for cell types and other categorical columns
CATEGORY_PALETTE = (
    "#2e91e5", "#e15f99", "#1ca71c", "#fb0d0d", "#da16ff", "#222a2a",
    "#b68100", "#750d86", "#eb663b", "#511cfb", "#00a08b", "#fb00d1",
    "#fc0080", "#b2828d", "#6c7c32", "#778aae", "#862a16", "#a777f1",
    "#620042", "#1616a7", "#da60ca", "#6c4516", "#0d2a63", "#af0038",
)
UNKNOWN_COLOR = "#9e9e9e"
#: colour and opacity of cells outside the highlighted niche
DIMMED_COLOR = "#cfcfcf"
DIMMED_ALPHA = 70
#: viridis, 9 evenly spaced stops
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c",
           "#28ae80", "#5ec962", "#addc30", "#fde725")

NICHE, CATEGORY, NUMERIC = "niche", "category", "numeric"


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``"#1f77b4"`` -> ``(31, 119, 180)``."""
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


def rgba_css(color: str, alpha: float = 1.0) -> str:
    """A hex colour as a CSS ``rgba(...)`` string with opacity ``alpha`` in [0, 1]."""
    r, g, b = hex_to_rgb(color)
    return f"rgba({r},{g},{b},{alpha:g})"


def niche_colors(labels) -> dict[str, str]:
    """``{niche: hex colour}`` for the niches in ``labels``, in natural order."""
    return _cycle(niche_categories(labels), NICHE_PALETTE)


def category_colors(categories) -> dict[str, str]:
    """``{category: hex colour}`` in the given order; ``"unknown"`` is grey."""
    return _cycle(categories, CATEGORY_PALETTE)


def _cycle(names, palette) -> dict[str, str]:
    """The colours of ``palette`` in turn for ``names``; ``"unknown"`` is grey and takes none."""
    out, i = {}, 0
    for name in names:
        if name == UNKNOWN:
            out[name] = UNKNOWN_COLOR
        else:
            out[name] = palette[i % len(palette)]
            i += 1
    return out


def viridis(fraction) -> np.ndarray:
    """(n, 3) uint8 viridis colours for ``fraction`` in [0, 1] (clipped)."""
    stops = np.array([hex_to_rgb(c) for c in VIRIDIS], dtype=float)
    t = np.clip(np.asarray(fraction, dtype=float), 0.0, 1.0) * (len(stops) - 1)
    lo = np.floor(t).astype(int).clip(0, len(stops) - 2)
    w = (t - lo)[:, None]
    return np.rint(stops[lo] * (1 - w) + stops[lo + 1] * w).astype(np.uint8)


@dataclass(frozen=True)
class ColorScale:
    """How one obs column maps to colours, fixed for the whole cohort.

    Attributes
    ----------
    column
        The obs column.
    kind
        ``"niche"`` (the niche palette), ``"category"`` or ``"numeric"``.
    categories
        Cohort-wide categories, in legend order (categorical kinds).
    colors
        One hex colour per category.
    vmin, vmax
        Limits of the colour ramp (numeric kind); values outside are clipped.
    """

    column: str
    kind: str
    categories: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()
    vmin: float = 0.0
    vmax: float = 1.0

    @property
    def is_numeric(self) -> bool:
        return self.kind == NUMERIC

    def color_map(self) -> dict[str, str]:
        """``{category: hex colour}`` (empty for a numeric scale)."""
        return dict(zip(self.categories, self.colors))

    def rgba(self, values, dimmed=None) -> np.ndarray:
        """(n, 4) uint8 RGBA colours of ``values``; rows where ``dimmed`` is True are greyed out.

        Unknown categories and missing numbers are grey.
        """
        n = len(values)
        out = np.empty((n, 4), dtype=np.uint8)
        out[:, 3] = 255
        if self.is_numeric:
            v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
            span = self.vmax - self.vmin
            frac = (v - self.vmin) / span if span > 0 else np.full(n, 0.5)
            out[:, :3] = viridis(np.nan_to_num(frac, nan=0.0))
            out[np.isnan(v), :3] = hex_to_rgb(UNKNOWN_COLOR)
        else:
            table = np.array([hex_to_rgb(c) for c in self.colors] + [hex_to_rgb(UNKNOWN_COLOR)],
                             dtype=np.uint8)
            codes = pd.Categorical(pd.Series(values).astype(str), categories=list(self.categories)).codes
            out[:, :3] = table[np.where(codes < 0, len(self.colors), codes)]
        if dimmed is not None:
            dimmed = np.asarray(dimmed, dtype=bool)
            out[dimmed, :3] = hex_to_rgb(DIMMED_COLOR)
            out[dimmed, 3] = DIMMED_ALPHA
        return out


def color_scale(values, *, column: str, kind: str) -> ColorScale:
    """A cohort-wide :class:`ColorScale` for one column's ``values``.

    ``kind="niche"`` uses the niche palette; ``"category"`` keeps a categorical's own
    category order (sorted otherwise); ``"numeric"`` spans the 1st–99th percentiles so
    that a few outliers do not flatten the ramp.
    """
    if kind == NUMERIC:
        v = pd.to_numeric(pd.Series(values), errors="coerce").dropna().to_numpy(dtype=float)
        if len(v) == 0:
            return ColorScale(column, NUMERIC, vmin=0.0, vmax=1.0)
        lo, hi = np.percentile(v, [1, 99])
        if hi <= lo:
            lo, hi = float(v.min()), float(v.max())
        return ColorScale(column, NUMERIC, vmin=float(lo), vmax=float(hi))
    if kind == NICHE:
        mapping = niche_colors(pd.Series(values).astype(str))
    elif kind == CATEGORY:
        series = pd.Series(values)
        if isinstance(series.dtype, pd.CategoricalDtype):
            present = set(series.astype(str).unique())
            cats = [str(c) for c in series.cat.categories if str(c) in present]
            if series.isna().any():
                cats.append("nan")
        else:
            cats = sorted(series.astype(str).unique())
        mapping = category_colors(cats)
    else:
        raise ValueError(f"kind must be 'niche', 'category' or 'numeric', got {kind!r}")
    return ColorScale(column, kind, tuple(mapping), tuple(mapping.values()))
