"""Linked selection of cells: a box or lasso on the embedding or on a slide (no Streamlit).

A selection is a polygon in one space: the UMAP (``"umap"``) or one slide's coordinates
(``"slide"`` with its sample). It is kept as geometry, not as a list of cells, so it is
small enough for the URL (``?sel=...``, at most :data:`MAX_VERTICES` vertices) and it
selects every cell inside it, also those a view leaves out of its drawn sample.

Functions here turn a plotly selection event into a :class:`Selection`, a selection into
text and back, find the cells inside it, and build the tables and figures of the
Select cells page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cellniche_core.keys import RunKeys

from .figures import LABEL_AXES, fit_labels, legend_swatch
from .palette import DIMMED_COLOR, ColorScale, rgba_css
from .tables import labels

#: the selection's bars without colours of their own (cell types), and the legend's
#: swatch for bars in each niche's colour
SELECTION_COLOR = "#1f77b4"
MIXED_COLOR = "#555555"

UMAP = "umap"
SLIDE = "slide"
#: lasso polygons are thinned to at most this many vertices (keeps the URL short)
MAX_VERTICES = 40
#: coordinates in the URL keep this many significant digits
DIGITS = 5


@dataclass(frozen=True)
class Selection:
    """A polygon in the UMAP (``space="umap"``) or on one slide (``space="slide"``, ``sample``)."""

    space: str
    polygon: tuple[tuple[float, float], ...]
    sample: str | None = None

    def describe(self) -> str:
        where = "the embedding" if self.space == UMAP else f"slide {self.sample}"
        shape = "box" if len(self.polygon) == 4 else f"lasso ({len(self.polygon)} points)"
        return f"{shape} on {where}"


def _round(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return 0.0
    return round(value, max(0, DIGITS - 1 - int(math.floor(math.log10(abs(value))))))


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_VERTICES:
        return points
    keep = np.linspace(0, len(points) - 1, MAX_VERTICES).round().astype(int)
    return [points[i] for i in keep]


def from_plotly_event(event, *, space: str, sample: str | None = None) -> Selection | None:
    """The selection of a ``st.plotly_chart(on_select=...)`` event; None when it holds none.

    The last box or lasso drawn wins; a lasso is thinned to :data:`MAX_VERTICES` vertices.
    """
    selection = (event or {}).get("selection") or {}
    shapes = []
    for box in selection.get("box") or []:
        x0, x1 = sorted(map(float, box.get("x", [])[:2])) if len(box.get("x", [])) >= 2 else (None, None)
        y0, y1 = sorted(map(float, box.get("y", [])[:2])) if len(box.get("y", [])) >= 2 else (None, None)
        if x0 is not None and y0 is not None:
            shapes.append([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    for lasso in selection.get("lasso") or []:
        xs, ys = lasso.get("x") or [], lasso.get("y") or []
        if len(xs) >= 3 and len(xs) == len(ys):
            shapes.append(_thin([(float(x), float(y)) for x, y in zip(xs, ys)]))
    if not shapes:
        return None
    polygon = tuple((_round(x), _round(y)) for x, y in shapes[-1])
    return Selection(space, polygon, sample if space == SLIDE else None)


def to_text(selection: Selection) -> str:
    """``"umap:x,y;x,y;..."`` or ``"slide:<sample>:x,y;..."`` for the URL."""
    coords = ";".join(f"{x:g},{y:g}" for x, y in selection.polygon)
    return f"{UMAP}:{coords}" if selection.space == UMAP else f"{SLIDE}:{selection.sample}:{coords}"


def from_text(text: str, samples) -> Selection:
    """Parse :func:`to_text`; raises ValueError (with the reason) for anything else.

    The sample of a slide selection must be one of ``samples``.
    """
    space, _, rest = str(text).partition(":")
    if space == UMAP:
        sample, coords = None, rest
    elif space == SLIDE:
        sample, _, coords = rest.rpartition(":")
        if sample not in set(map(str, samples)):
            raise ValueError(f"unknown slide {sample!r}")
    else:
        raise ValueError("a selection starts with 'umap:' or 'slide:'")
    try:
        polygon = tuple(tuple(float(v) for v in pair.split(",")) for pair in coords.split(";"))
    except ValueError:
        raise ValueError("its coordinates are not numbers") from None
    if not 3 <= len(polygon) <= MAX_VERTICES or any(len(p) != 2 or not all(map(math.isfinite, p))
                                                     for p in polygon):
        raise ValueError(f"expected 3 to {MAX_VERTICES} points x,y")
    return Selection(space, polygon, sample)


def points_in_polygon(xy: np.ndarray, polygon) -> np.ndarray:
    """Boolean mask of the rows of ``xy`` (n, 2) inside ``polygon`` (even-odd rule)."""
    xy = np.asarray(xy, dtype=float)
    poly = np.asarray(polygon, dtype=float)
    x, y = xy[:, 0], xy[:, 1]
    inside = np.zeros(len(xy), dtype=bool)
    # a bounding-box test first: most cells are far from a small selection
    box = (x >= poly[:, 0].min()) & (x <= poly[:, 0].max()) & (y >= poly[:, 1].min()) & (y <= poly[:, 1].max())
    idx = np.flatnonzero(box)
    px, py = x[idx], y[idx]
    hit = np.zeros(len(idx), dtype=bool)
    x0, y0 = poly[-1]
    for x1, y1 in poly:
        crosses = (y1 > py) != (y0 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = (x0 - x1) * (py - y1) / (y0 - y1) + x1
        hit ^= crosses & (px < at)
        x0, y0 = x1, y1
    inside[idx] = hit
    return inside


def selected_mask(adata, keys: RunKeys, selection: Selection) -> np.ndarray:
    """Which cells of ``adata`` lie inside ``selection`` (all cells, not a drawn sample)."""
    if selection.space == UMAP:
        return points_in_polygon(np.asarray(adata.obsm[keys.umap])[:, :2], selection.polygon)
    on_slide = labels(adata, keys.sample).to_numpy() == selection.sample
    mask = np.zeros(adata.n_obs, dtype=bool)
    where = np.flatnonzero(on_slide)
    mask[where] = points_in_polygon(np.asarray(adata.obsm[keys.spatial])[where, :2], selection.polygon)
    return mask


def selected_cells(adata, keys: RunKeys, mask: np.ndarray) -> pd.DataFrame:
    """One row per selected cell, for the CSV: id, slide, patient, niche, cell type, x, y (and UMAP)."""
    where = np.flatnonzero(mask)
    xy = np.asarray(adata.obsm[keys.spatial])[where, :2]
    frame = pd.DataFrame({
        "cell": adata.obs_names[where].astype(str),
        "sample": labels(adata, keys.sample).iloc[where].to_numpy(),
        "patient": labels(adata, keys.patient).iloc[where].to_numpy(),
        "niche": adata.obs[keys.niche].astype(str).iloc[where].to_numpy(),
        "cell_type": labels(adata, keys.cell_type, fill="n/a").iloc[where].to_numpy(),
        "x": xy[:, 0], "y": xy[:, 1]})
    if keys.umap in adata.obsm:
        umap = np.asarray(adata.obsm[keys.umap])[where, :2]
        frame["umap_1"], frame["umap_2"] = umap[:, 0], umap[:, 1]
    return frame


def composition(adata, keys: RunKeys, mask: np.ndarray, *, column: str, against: str = "cohort",
                sample: str | None = None) -> pd.DataFrame:
    """Shares of ``obs[column]`` among the selected cells and among a reference.

    ``against``: ``"cohort"`` (every cell) or ``"slide"`` (the cells of ``sample``).
    Returns one row per value: ``value``, ``selected`` (cells), ``selection_share``,
    ``reference_share`` and ``ratio`` (selection over reference share), ordered as the
    column's categories.
    """
    values = labels(adata, column, fill="n/a")
    if against == "slide":
        reference = values[labels(adata, keys.sample).to_numpy() == sample]
    else:
        reference = values
    chosen = values[mask]
    order = [str(c) for c in adata.obs[column].cat.categories] if (
        column in adata.obs and isinstance(adata.obs[column].dtype, pd.CategoricalDtype)) else sorted(values.unique())
    counts = chosen.value_counts().reindex(order, fill_value=0)
    ref_share = reference.value_counts(normalize=True).reindex(order, fill_value=0.0)
    share = counts / max(int(counts.sum()), 1)
    table = pd.DataFrame({"value": order, "selected": counts.to_numpy(), "selection_share": share.to_numpy(),
                          "reference_share": ref_share.to_numpy()})
    with np.errstate(divide="ignore", invalid="ignore"):
        table["ratio"] = np.where(table["reference_share"] > 0, table["selection_share"] / table["reference_share"],
                                  np.nan)
    keep = (table["selected"] > 0) | (table["reference_share"] > 0)
    return table[keep].reset_index(drop=True).rename(columns={"value": column})


# ----------------------------------------------------------------------------- figures


def scatter_figure(points: pd.DataFrame, scale: ColorScale, *, selected: np.ndarray | None,
                   title_x: str, title_y: str, equal_axes: bool, height: int = 520,
                   polygon=None, show_legend: bool = True, y_down: bool = False) -> go.Figure:
    """Cells as a WebGL scatter coloured by niche, the selected ones on top, the others grey.

    ``points``: ``x``, ``y``, ``niche``, ``cell_type`` (and any other columns);
    ``selected``: boolean per row, or None when nothing is selected (all in colour).
    The selection's ``polygon`` is outlined. Box and lasso selection are on, lasso first.
    ``y_down``: y grows downwards, as on the niche maps (image coordinates), so that a
    slide here looks as it does there.
    """
    fig = go.Figure()
    if selected is not None and (~selected).any():
        rest = points[~selected]
        fig.add_trace(go.Scattergl(x=rest["x"], y=rest["y"], mode="markers", name="not selected",
                                   marker=dict(size=3, color=rgba_css(DIMMED_COLOR, 0.35)),
                                   hoverinfo="skip"))
    shown = points if selected is None else points[selected]
    niches = shown["niche"].astype(str)
    for category, color in scale.color_map().items():
        part = shown[niches == category]
        if part.empty:
            continue
        fig.add_trace(go.Scattergl(
            x=part["x"], y=part["y"], mode="markers", name=category,
            marker=dict(size=4 if selected is not None else 3, color=color, opacity=0.9),
            customdata=part[["niche", "cell_type"]].to_numpy(),
            hovertemplate="%{customdata[0]}<br>%{customdata[1]}<extra></extra>"))
    if polygon is not None:
        xs = [p[0] for p in polygon] + [polygon[0][0]]
        ys = [p[1] for p in polygon] + [polygon[0][1]]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="selection", hoverinfo="skip",
                                 line=dict(color="#222", width=1.5, dash="dot")))
    fig.update_layout(**LABEL_AXES, height=height, margin=dict(l=10, r=10, t=30, b=10), dragmode="lasso",
                      showlegend=show_legend, plot_bgcolor="white",
                      legend=dict(itemsizing="constant", orientation="h", yanchor="top", y=-0.1, x=0))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, title=title_x)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, title=title_y,
                     autorange="reversed" if y_down else True,
                     **({"scaleanchor": "x", "scaleratio": 1} if equal_axes else {}))
    return fig


def composition_figure(table: pd.DataFrame, column: str, *, reference: str, colors: dict | None = None) -> go.Figure:
    """Horizontal bars: each value's share in the selection against its share in the reference."""
    table = table.iloc[::-1]
    names = table[column].astype(str)
    fig = go.Figure([
        go.Bar(y=names, x=table["reference_share"], orientation="h", name=reference,
               marker_color="#bdbdbd", hovertemplate="%{y}: %{x:.1%}<extra>" + reference + "</extra>"),
        go.Bar(y=names, x=table["selection_share"], orientation="h", name="selection", showlegend=False,
               marker_color=[(colors or {}).get(n, SELECTION_COLOR) for n in names],
               hovertemplate="%{y}: %{x:.1%}<extra>selection</extra>"),
        # the legend's "selection" entry: its bars take each niche's colour, so the entry
        # would take the first niche's; a marker-only trace with no point shows a neutral one
        legend_swatch("selection" if colors is None else "selection (niche colours)",
                      SELECTION_COLOR if colors is None else MIXED_COLOR)])
    fig.update_layout(**LABEL_AXES, barmode="group", height=max(240, 34 * len(table) + 90),
                      margin=dict(l=10, r=10, t=40, b=10), xaxis=dict(tickformat=".0%", title="share of cells"),
                      # above the bars, whatever the chart's height (at y=1.08 it covered the top bar
                      # of a short chart)
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0), plot_bgcolor="white")
    return fit_labels(fig)
