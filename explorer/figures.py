"""Figure builders: DataFrame -> pydeck Deck / plotly Figure / legend HTML (no Streamlit).

Colours always come from a :class:`~explorer.palette.ColorScale` built for the whole
cohort, so a niche, cell type or value has the same colour on every map and page.
"""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pydeck as pdk
from pydeck.bindings.json_tools import default_serialize

from .palette import DIMMED_ALPHA, DIMMED_COLOR, NICHE, UNKNOWN_COLOR, VIRIDIS, ColorScale, rgba_css
from .tables import point_radius

#: legend entries shown before "… and N more"
LEGEND_MAX = 40
#: every chart's layout: labels that are digits (Visium slide ids such as "151673") stay
#: labels; plotly would read them as numbers and draw "151.673k"
LABEL_AXES = {"autotypenumbers": "strict"}
_FONT = "font-size:0.85rem;line-height:1.5"
#: legend entries and axis labels longer than this are cut with "…" (the hover keeps them
#: whole): niche names made of Ensembl ids took half a chart's width
LABEL_CHARS = 32


def legend_swatch(name: str, color: str, *, line: str | None = None) -> go.Scatter:
    """A legend entry alone (a trace with no point): for bars that take each label's colour,
    whose own entry would show the first label's."""
    return go.Scatter(x=[None], y=[None], mode="markers", name=name, hoverinfo="skip",
                      marker=dict(symbol="square", size=11, color=color,
                                  **({"line": dict(color=line, width=1)} if line else {})))


def short_label(text: str, width: int = LABEL_CHARS) -> str:
    """``text`` cut to ``width`` characters with "…"; markup after a line break is kept."""
    head, brk, tail = str(text).partition("<br>")
    if len(head) > width:
        head = head[:width - 1].rstrip() + "…"
    return head + brk + tail


def _shortened(labels) -> list[str] | None:
    """The labels cut by :func:`short_label`, or None when none is long or two would look alike."""
    labels = [str(v) for v in labels]
    cut = [short_label(v) for v in labels]
    if cut == labels or len(set(cut)) < len(set(labels)):
        return None
    return cut


def fit_labels(fig: go.Figure) -> go.Figure:
    """Long category labels cut in the legend and on the axes, so the chart keeps its width.

    Trace names (the legend) and the categories of each axis are cut to
    :data:`LABEL_CHARS`; axes get the cut text as tick labels over the full values, so
    hovers and selections still see the whole label.
    """
    names = [t.name for t in fig.data if t.name is not None]
    cut = _shortened(names)
    if cut:
        for trace, name in zip([t for t in fig.data if t.name is not None], cut):
            trace.name = name
    for axis in ("x", "y"):
        found: dict[str, None] = {}  # the categories in order of appearance
        for trace in fig.data:
            data = getattr(trace, axis, None)
            if data is not None and len(data) and all(isinstance(v, str) for v in data):
                found.update(dict.fromkeys(data))
        values = list(found)
        cut = _shortened(values) if values else None
        if cut:
            fig.update_layout({f"{axis}axis": dict(tickmode="array", tickvals=values, ticktext=cut)})
    return fig


def _dimmed(points: pd.DataFrame, highlight: str | None) -> np.ndarray | None:
    if highlight is None:
        return None
    return (points["niche"] != highlight).to_numpy()


def _tooltip_text(text: str) -> str:
    # deck.gl fills {field} in the tooltip template: keep literal braces out of it
    return html.escape(str(text)).replace("{", "(").replace("}", ")")


# ----------------------------------------------------------------------------- maps


class CompactDeck(pdk.Deck):
    """A ``pydeck.Deck`` whose JSON has no indentation.

    ``st.pydeck_chart`` sends ``Deck.to_json()`` to the browser, and pydeck indents it,
    which triples the size of a map's point records; that payload, not the drawing, is
    what limits how many cells a map can show.
    """

    def to_json(self) -> str:
        return json.dumps(self, sort_keys=True, default=default_serialize, separators=(",", ":"))


def niche_map_deck(
    points: pd.DataFrame,
    scale: ColorScale,
    *,
    highlight: str | None = None,
    sample: str = "",
    width_px: int = 600,
    height_px: int = 520,
    radius: float | None = None,
    value_label: str | None = None,
    selected: np.ndarray | None = None,
    frame: tuple[float, float] | None = None,
) -> pdk.Deck:
    """A slide's cells as coloured dots in an orthographic view, with no base map.

    Parameters
    ----------
    points
        Columns ``x``, ``y`` (coordinates, any unit), ``niche``, ``cell_type`` and ``value``
        (the coloured column), as from :func:`explorer.tables.slide_points`.
    scale
        Colours of ``value``.
    highlight
        A niche drawn in colour on top of the others, which are dimmed.
    sample
        Slide name shown in the tooltip.
    width_px, height_px
        Expected size of the chart, used to fit the slide into the first view.
    radius
        Dot radius in coordinate units; by default just enough to cover the tissue.
    value_label
        Name of the coloured column, shown with its value in the tooltip; None leaves
        it out (when the colour is the niche or the cell type, already in the tooltip).
    selected
        Boolean per point: a linked selection; points outside it are dimmed too.
    frame
        ``(zoom, scale bar length)`` shared by maps shown side by side (:func:`shared_frame`),
        so that they are drawn to one scale; by default the slide fills the chart.

    Returns
    -------
    CompactDeck
        One ``ScatterplotLayer`` (id ``"cells"``) whose records are ``x``, ``y``, ``c``
        (RGBA), ``n`` (niche), ``t`` (cell type) and, with ``value_label``, ``v``; an
        ``OrthographicView`` with no base map; a tooltip with niche, cell type, sample
        and the coloured value.
    """
    dimmed = _dimmed(points, highlight)
    if selected is not None:
        outside = ~np.asarray(selected, dtype=bool)
        dimmed = outside if dimmed is None else dimmed | outside
    # highlighted cells last, so they are drawn over the dimmed ones
    order = np.arange(len(points)) if dimmed is None else np.argsort(~dimmed, kind="stable")
    columns = {"x": points["x"].to_numpy()[order].tolist(), "y": points["y"].to_numpy()[order].tolist(),
               "c": scale.rgba(points["value"], dimmed=dimmed)[order].tolist(),
               "n": points["niche"].to_numpy()[order].tolist(),
               "t": points["cell_type"].to_numpy()[order].tolist()}
    if value_label is not None:
        values = points["value"].round(3) if scale.is_numeric else points["value"]
        columns["v"] = values.to_numpy()[order].tolist()
    # records with one-letter keys: every point repeats them in the JSON sent to the browser
    data = [dict(zip(columns, row)) for row in zip(*columns.values())]
    radius = point_radius(points) if radius is None else radius

    x0, x1, y0, y1 = _cells_extent(points)
    # below the tissue (the view draws y downwards), in the band map_extent adds
    bar = scale_bar_layers(x0, x1, y1 + 0.4 * _BAR_BAND * max(x1 - x0, y1 - y0), length=frame and frame[1])
    x0, x1, y0, y1 = map_extent(points)
    zoom = frame[0] if frame else fit_zoom([(x0, x1, y0, y1)], width_px, height_px)
    view_state = pdk.ViewState(target=[(x0 + x1) / 2, (y0 + y1) / 2, 0], zoom=zoom,
                               min_zoom=zoom - 3, max_zoom=zoom + 7)

    layer = pdk.Layer(
        "ScatterplotLayer",
        data=data,
        id="cells",
        get_position=["x", "y"],
        get_fill_color="c",
        get_radius=radius,
        radius_units="'common'",  # quoted: pydeck would read a bare string as an accessor
        radius_min_pixels=0.8,
        stroked=False,
        filled=True,
        pickable=True,
        auto_highlight=True,
        highlight_color=[0, 0, 0, 90],
    )
    lines = ["<b>{n}</b>", "cell type: {t}", f"sample: {_tooltip_text(sample)}"]
    if value_label is not None:
        lines.append(f"{_tooltip_text(value_label)}: {{v}}")
    tooltip = {"html": "<br/>".join(lines),
               "style": {"fontSize": "12px", "backgroundColor": "rgba(30,30,30,0.85)", "color": "white"}}
    return CompactDeck(
        layers=[layer, *bar],
        views=[pdk.View(type="OrthographicView", controller=True)],
        initial_view_state=view_state,
        map_provider=None,
        map_style=None,
        tooltip=tooltip,
        height=height_px,
    )


#: share of a slide's larger side added under it for the scale bar and its label
_BAR_BAND = 0.1


def _cells_extent(points: pd.DataFrame) -> tuple[float, float, float, float]:
    x0, x1 = (float(points["x"].min()), float(points["x"].max())) if len(points) else (0.0, 1.0)
    y0, y1 = (float(points["y"].min()), float(points["y"].max())) if len(points) else (0.0, 1.0)
    return x0, x1, y0, y1  # a slide of one row or column of cells has a span of 0: fit_zoom clamps it


def map_extent(points: pd.DataFrame) -> tuple[float, float, float, float]:
    """``x0, x1, y0, y1`` of a slide's cells and of the band under them that holds the scale bar."""
    x0, x1, y0, y1 = _cells_extent(points)
    return x0, x1, y0, y1 + _BAR_BAND * max(x1 - x0, y1 - y0)


def fit_zoom(extents, width_px: int, height_px: int) -> float:
    """The orthographic zoom (2**zoom pixels per coordinate unit) at which every one of
    ``extents`` (:func:`map_extent`) fits a chart of ``width_px`` x ``height_px``, 5 % spare."""
    return min(math.log2(min(width_px / max(x1 - x0, 1e-9), height_px / max(y1 - y0, 1e-9)) * 0.95)
               for x0, x1, y0, y1 in extents)


def shared_frame(slides: list[pd.DataFrame], width_px: int, height_px: int) -> tuple[float, float]:
    """``(zoom, scale bar length)`` that draw ``slides`` (their points) to one scale, side by
    side in charts of ``width_px`` x ``height_px``: the zoom at which the largest fits, the bar
    of the widest."""
    extents = [map_extent(points) for points in slides]
    return fit_zoom(extents, width_px, height_px), scale_bar_length(max(x1 - x0 for x0, x1, _, _ in extents))


def scale_bar_length(width: float) -> float:
    """The longest of 1, 2 or 5 times a power of ten that is at most a fifth of ``width``."""
    if not width > 0 or not math.isfinite(width):
        return 0.0
    target = width / 5
    power = 10.0 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target * (1 + 1e-9))


def scale_bar_layers(x0: float, x1: float, y: float, *, length: float | None = None) -> list[pdk.Layer]:
    """A scale bar from ``x0`` at height ``y``, ``length`` long (default
    :func:`scale_bar_length` of the slide's width), and its length written under it, in the
    coordinates' own unit (µm or pixels, as the input gave them). Empty for no length."""
    length = scale_bar_length(x1 - x0) if length is None else length
    if not length > 0:
        return []
    path = pdk.Layer("PathLayer", data=[{"p": [[x0, y], [x0 + length, y]]}], id="scale_bar", get_path="p",
                     get_color=[60, 60, 60], get_width=3, width_units="'pixels'", pickable=False)
    text = pdk.Layer("TextLayer", data=[{"p": [x0 + length / 2, y], "s": f"{length:g}"}], id="scale_label",
                     get_position="p", get_text="s", get_size=12, size_units="'pixels'", get_color=[60, 60, 60],
                     get_text_anchor="'middle'", get_alignment_baseline="'top'", get_pixel_offset=[0, 5],
                     font_family="'Source Sans Pro, Helvetica, Arial, sans-serif'", pickable=False)
    return [path, text]


def _swatch(color: str, alpha: float = 1.0) -> str:
    return (f'<span style="display:inline-block;width:0.8em;height:0.8em;border-radius:50%;'
            f'margin-right:0.3em;vertical-align:-0.05em;background:{rgba_css(color, alpha)}"></span>')


def legend_html(scale: ColorScale, *, highlight: str | None = None, present=None) -> str:
    """A small HTML legend for a map coloured with ``scale``.

    Categorical scales list a swatch per category (only those in ``present`` when given);
    with a highlighted niche, the others are shown faded and a dimmed swatch explains the
    grey cells. Numeric scales draw a viridis bar between the limits.
    """
    title = f"<b>{html.escape(scale.column)}</b>"
    if scale.is_numeric:
        gradient = ", ".join(VIRIDIS)
        bar = (f'<div style="height:0.7em;width:14em;border-radius:2px;'
               f'background:linear-gradient(to right, {gradient})"></div>')
        body = (f'{bar}<div style="display:flex;justify-content:space-between;width:14em">'
                f"<span>{scale.vmin:.3g}</span><span>{scale.vmax:.3g}</span></div>")
        if highlight is not None:
            body += f"<div>{_swatch(DIMMED_COLOR)}outside niche {html.escape(highlight)}</div>"
        return f'<div style="{_FONT}">{title} (1st–99th percentile){body}</div>'
    present = None if present is None else {str(p) for p in present}
    entries = []
    shown = [(c, col) for c, col in scale.color_map().items() if present is None or c in present]
    for category, color in shown[:LEGEND_MAX]:
        faded = (highlight is not None and scale.kind == NICHE and category != highlight)
        label = html.escape(category)
        label = f"<b>{label}</b>" if highlight is not None and category == highlight else label
        entries.append(f'<span style="white-space:nowrap">{_swatch(color, 0.35 if faded else 1.0)}'
                       f"{label}</span>")
    if len(shown) > LEGEND_MAX:
        entries.append(f"<span>… and {len(shown) - LEGEND_MAX} more</span>")
    if highlight is not None and scale.kind != NICHE:
        entries.append(f'<span style="white-space:nowrap">{_swatch(DIMMED_COLOR)}'
                       f"outside niche {html.escape(highlight)}</span>")
    items = "".join(f'<span style="margin-right:0.9em">{e}</span>' for e in entries)
    return f'<div style="{_FONT}">{title}: {items}</div>'


# ----------------------------------------------------------------------------- embedding


def _axis_off(fig: go.Figure) -> None:
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, title="UMAP 1")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, title="UMAP 2",
                     scaleanchor="x", scaleratio=1)


#: random parts each category is drawn in when the UMAP is coloured by anything but the niche
UMAP_LAYERS = 4


def umap_figure(points: pd.DataFrame, scale: ColorScale, *, color_column: str,
                highlight: str | None = None, height: int = 620, selected: np.ndarray | None = None,
                title: str | None = None) -> go.Figure:
    """UMAP scatter (WebGL ``Scattergl``), one trace per category of ``color_column``.

    ``points`` has ``x``, ``y``, ``niche`` and the ``color_column`` (``title``: its name
    in the legend, ``color_column`` by default); with ``highlight``,
    cells of other niches form one grey trace underneath, and so do the cells outside
    ``selected`` (boolean per point: a linked selection).
    """
    fig = go.Figure()
    dimmed = _dimmed(points, highlight)
    if selected is not None:
        outside = ~np.asarray(selected, dtype=bool)
        dimmed = outside if dimmed is None else dimmed | outside
    if dimmed is not None and dimmed.any():
        rest = points[dimmed]
        fig.add_trace(go.Scattergl(
            x=rest["x"], y=rest["y"], mode="markers",
            name=f"not {highlight}" if selected is None else "not selected",
            marker=dict(size=3, color=rgba_css(DIMMED_COLOR, DIMMED_ALPHA / 255)),
            hoverinfo="skip"))
        points = points[~dimmed]
    values = points[color_column].astype(str)
    extra = color_column not in ("niche", "sample", "cell_type")  # an annotation: in the hover too
    hover = ("niche %{customdata[0]}<br>sample %{customdata[1]}<br>cell type %{customdata[2]}"
             + (f"<br>{html.escape(str(title or color_column))} %{{customdata[3]}}" if extra else "")
             + "<extra></extra>")
    shown = ["niche", "sample", "cell_type"] + ([color_column] if extra else [])
    missing = ~values.isin(list(scale.color_map()))  # cells without a value of the column
    groups = [(category, color, 0.8, (values == category).to_numpy()) for category, color in scale.color_map().items()]
    groups.append(("n/a", UNKNOWN_COLOR, 0.6, missing.to_numpy()))
    groups = [g for g in groups if g[3].any()]
    # Colouring by anything but the niche (samples, patients: the check of batch mixing), each
    # category is drawn in UMAP_LAYERS random parts, the first part of every category before
    # the second of any: one trace per category would draw the last ones over the others, and
    # the cohort would look less mixed than it is. A category's parts share its legend entry.
    layers = 1 if color_column == "niche" else UMAP_LAYERS
    rng = np.random.default_rng(0)
    parts = {name: np.array_split(rng.permutation(np.flatnonzero(rows)), layers) for name, _, _, rows in groups}
    for layer in range(layers):
        for category, color, opacity, _ in groups:
            part = points.iloc[np.sort(parts[category][layer])]
            if part.empty:
                continue
            fig.add_trace(go.Scattergl(
                x=part["x"], y=part["y"], mode="markers", name=category, legendgroup=category,
                showlegend=layer == 0, marker=dict(size=3, color=color, opacity=opacity),
                customdata=part[shown].to_numpy(), hovertemplate=hover))
    fig.update_layout(**LABEL_AXES, height=height, margin=dict(l=10, r=10, t=30, b=10),
                      # below the plot: beside it, the legend took half the width of an equal-axes UMAP
                      legend=dict(itemsizing="constant", title=html.escape(str(title or color_column)),
                                  orientation="h", yanchor="top", y=-0.08, x=0),
                      plot_bgcolor="white")
    _axis_off(fig)
    return fit_labels(fig)


def mixing_figure(table: pd.DataFrame, colors: dict[str, str], *, cohort: float | None = None) -> go.Figure:
    """Horizontal bars of the batch-mixing score per niche (0 = each sample apart, 1 = fully mixed)."""
    table = table.iloc[::-1]
    fig = go.Figure(go.Bar(
        x=table["mixing"].fillna(0), y=table.index, orientation="h",
        marker_color=[colors.get(n, "#9e9e9e") for n in table.index],
        text=[("n/a" if pd.isna(v) else f"{v:.2f}") for v in table["mixing"]],
        textposition="outside", hovertemplate="%{y}: %{x:.2f}<extra></extra>"))
    if cohort is not None and not pd.isna(cohort):
        fig.add_vline(x=cohort, line_dash="dash", line_color="#444",
                      annotation_text=f"cohort {cohort:.2f}", annotation_position="top")
    fig.update_layout(**LABEL_AXES, height=max(220, 28 * len(table) + 80), margin=dict(l=10, r=30, t=30, b=10),
                      xaxis=dict(range=[0, 1.12], title="batch mixing"), showlegend=False,
                      plot_bgcolor="white")
    return fit_labels(fig)


# ----------------------------------------------------------------------------- tables


def abundance_figure(fractions: pd.DataFrame, colors: dict[str, str], *, height: int = 420) -> go.Figure:
    """Stacked bars: each slide's cells split by niche; ``fractions`` is (slides x niches)."""
    fig = go.Figure()
    for niche in fractions.columns:
        fig.add_trace(go.Bar(
            x=fractions.index.astype(str), y=fractions[niche], name=niche,
            marker_color=colors.get(niche, "#9e9e9e"),
            hovertemplate=f"{html.escape(str(niche))}: %{{y:.1%}}<extra>%{{x}}</extra>"))
    fig.update_layout(**LABEL_AXES, barmode="stack", height=height, margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(tickformat=".0%", title="share of cells", range=[0, 1]),
                      xaxis=dict(title="slide"), legend=dict(title="niche", traceorder="normal"),
                      plot_bgcolor="white")
    return fit_labels(fig)


def every_label_axis(n_columns: int) -> dict:
    """Axis settings that label every column of a heatmap (plotly labels every other one
    when they crowd, and a reader gives the unlabelled columns to their neighbours' names),
    up to 80 columns, in a smaller font past 40; beyond, plotly's own choice."""
    if n_columns > 80:
        return {}
    return {"dtick": 1, **({"tickfont": {"size": 9}} if n_columns > 40 else {})}


def enrichment_heatmap(table: pd.DataFrame, *, height: int | None = None) -> go.Figure:
    """(niches x cell types) log2 fold enrichment, diverging colours centred on 0."""
    limit = float(np.nanmax(np.abs(table.to_numpy()))) if table.size else 1.0
    limit = min(max(limit, 1.0), 6.0)
    fig = go.Figure(go.Heatmap(
        z=table.to_numpy(), x=list(table.columns.astype(str)), y=list(table.index.astype(str)),
        colorscale="RdBu_r", zmin=-limit, zmax=limit, zmid=0,
        colorbar=dict(title="log2 fold"),
        text=np.round(table.to_numpy(), 1), texttemplate="%{text}",
        hovertemplate="%{y} · %{x}: %{z:+.2f}<extra></extra>"))
    fig.update_layout(**LABEL_AXES, height=height or max(300, 34 * len(table) + 140),
                      margin=dict(l=10, r=10, t=30, b=10), yaxis=dict(autorange="reversed"),
                      xaxis=dict(tickangle=-40, **every_label_axis(table.shape[1])))
    return fit_labels(fig)


def marker_heatmap(scores: pd.DataFrame, *, height: int | None = None) -> go.Figure:
    """(niches x features) mean z-scored expression."""
    fig = go.Figure(go.Heatmap(
        z=scores.to_numpy(), x=list(scores.columns.astype(str)), y=list(scores.index.astype(str)),
        colorscale="RdBu_r", zmid=0, zmin=-2, zmax=2, colorbar=dict(title="mean z"),
        hovertemplate="%{y} · %{x}: %{z:+.2f}<extra></extra>"))
    fig.update_layout(**LABEL_AXES, height=height or max(300, 30 * len(scores) + 150),
                      margin=dict(l=10, r=10, t=30, b=10), yaxis=dict(autorange="reversed"),
                      xaxis=dict(tickangle=-45, **every_label_axis(scores.shape[1])))
    return fit_labels(fig)


def niche_size_figure(sizes: pd.DataFrame, colors: dict[str, str]) -> go.Figure:
    """Bars of cells per niche, coloured with the niche palette; horizontal, so that niche
    names (ids and their cell types, or the user's names) read across, not slanted over each other."""
    fig = go.Figure(go.Bar(
        y=sizes.index.astype(str), x=sizes["cells"], orientation="h",
        marker_color=[colors.get(n, "#9e9e9e") for n in sizes.index],
        customdata=np.c_[sizes["fraction"], sizes["slides"], sizes["patients"]],
        hovertemplate="%{y}: %{x:,} cells (%{customdata[0]:.1%})<br>"
                      "in %{customdata[1]} slides, %{customdata[2]} patients<extra></extra>"))
    fig.update_layout(**LABEL_AXES, height=max(220, 28 * len(sizes) + 90), margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(title="cells"), yaxis=dict(autorange="reversed"),
                      showlegend=False, plot_bgcolor="white")
    return fit_labels(fig)
