"""Label transfer for the dashboard: query files, annotation, tables and figures (no Streamlit).

The heavy work is :func:`cellniche_core.transfer.annotate_query`; this module finds query
files, stages an upload in a temporary folder, and turns the annotated query into what
the page draws, with the colours of the reference's labels (``unknown`` in grey).
"""

from __future__ import annotations

import html
import json
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cellniche_core.io import Run, load_weights, write_h5ad
from cellniche_core.keys import DEMO_QUERY, INPUT_UNS_KEY, RUN_MODEL_CONFIG, RUN_WEIGHTS, UNKNOWN, Keys, RunKeys
from cellniche_core.transfer import annotate_query, read_query

from .figures import LABEL_AXES, fit_labels, legend_swatch, short_label
from .palette import NUMERIC, UNKNOWN_COLOR, VIRIDIS, ColorScale, rgba_css
from .tables import MAX_CATEGORIES, labels
from .uploads import DOWNLOAD_PREFIX, QUERY_PREFIX, Upload, read_staged, staging

#: folders of the data directory that never hold query files
SKIP_DIRS = ("runs", "uploads")
UPLOADS = "uploads"


# ----------------------------------------------------------------------------- inputs


def query_files(directory: Path) -> dict[str, Path]:
    """``{name: path}`` of the ``.h5ad`` files in ``directory`` and its direct sub-folders.

    ``runs/`` and ``uploads/`` and hidden entries are skipped; names are relative paths,
    sorted. A missing ``directory`` gives an empty dict.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    found = list(directory.glob("*.h5ad")) + [
        p for sub in directory.iterdir()
        if sub.is_dir() and sub.name not in SKIP_DIRS and not sub.name.startswith(".")
        for p in sub.glob("*.h5ad")]
    files = {p.relative_to(directory).as_posix(): p for p in found
             if p.is_file() and not p.name.startswith(".")}
    return dict(sorted(files.items()))


def query_choices(files: dict[str, Path], upload: str) -> list[str]:
    """The Query picker's options, the first being the default.

    The demo's query slide comes first when it is there, so a newcomer sees the page at
    work at once; otherwise ``upload`` (the page asks for a file), then the files.
    """
    others = [name for name in files if name != DEMO_QUERY]
    return [DEMO_QUERY, upload, *others] if DEMO_QUERY in files else [upload, *others]


def with_weights(run: Run) -> Run:
    """``run`` (loaded without weights) with its model weights and config read from disk."""
    config = json.loads((run.path / RUN_MODEL_CONFIG).read_text())
    state_dict = load_weights(run.path / RUN_WEIGHTS)  # tensors only: a tampered file is refused
    return replace(run, state_dict=state_dict, model_config=config)


def annotate_file(run: Run, path: Path, *, label_key: str, device: str = "auto") -> tuple[ad.AnnData, dict]:
    """Read the query at ``path`` (only read) and annotate it; see :func:`annotate_query`."""
    query = _file_names_only(read_query(run, path))
    return query, annotate_query(run, query, label_key=label_key, device=device, source=Path(path).name)


def annotate_upload(run: Run, data: bytes, name: str, *, upload_dir: Path, label_key: str,
                    device: str = "auto") -> tuple[ad.AnnData, dict]:
    """Annotate uploaded ``.h5ad`` bytes.

    The bytes are staged as :mod:`explorer.uploads` stages every upload: in a fresh
    temporary folder inside ``upload_dir`` under a safe name, read fully into memory and
    the folder removed, whatever happens. Errors are :class:`CohortError` naming the
    upload, never the temporary path.
    """
    upload = Upload(name, data)
    query = _file_names_only(read_staged([upload], Path(upload_dir), QUERY_PREFIX,
                                         lambda paths: read_query(run, paths[0])))
    return query, annotate_query(run, query, label_key=label_key, device=device, source=upload.shown)


def _file_names_only(query: ad.AnnData) -> ad.AnnData:
    """``query`` with the files it was read from recorded by name only: the annotated file
    is downloaded by collaborators, and the server's folders (or its temporary upload
    folder) are none of theirs."""
    read = query.uns.get(INPUT_UNS_KEY)
    if isinstance(read, dict) and "files" in read:
        read["files"] = [Path(str(f)).name for f in read["files"]]
    return query


def h5ad_bytes(adata: ad.AnnData, *, tmp_dir: Path) -> bytes:
    """The bytes of ``adata`` written as ``.h5ad`` (through a temporary file in ``tmp_dir``)."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with staging(tmp_dir, DOWNLOAD_PREFIX) as tmp:
        path = Path(tmp) / "annotated.h5ad"
        write_h5ad(adata, path)
        return path.read_bytes()


# ----------------------------------------------------------------------------- tables


def label_options(color_options: dict[str, str], keys: RunKeys) -> list[str]:
    """Reference columns that can be transferred: the niche first, then categorical columns."""
    skip = {keys.sample, keys.patient, Keys.TRANSFERRED}
    return [c for c, kind in color_options.items() if kind != NUMERIC and c not in skip]


def truth_options(query: ad.AnnData, keys: RunKeys) -> list[str]:
    """Columns of the annotated query that may hold its own labels: not numbers, not the
    transfer's output, not the slide or patient ids, and not ids of single cells (more than
    :data:`~explorer.tables.MAX_CATEGORIES` values, as the maps' colour menu)."""
    skip = {keys.sample, keys.patient, Keys.TRANSFERRED}
    return [str(c) for c, column in query.obs.items()
            if str(c) not in skip and not pd.api.types.is_float_dtype(column)
            and not pd.api.types.is_complex_dtype(column) and column.nunique() <= MAX_CATEGORIES]


def query_keys(keys: RunKeys) -> RunKeys:
    """Keys for drawing the annotated query: its "niche" is the transferred label."""
    return replace(keys, niche=Keys.TRANSFERRED)


def query_slides(query: ad.AnnData, keys: RunKeys) -> list[str]:
    """The query's slide ids, in order of appearance."""
    return list(pd.unique(labels(query, keys.sample)))


def label_table(reference: ad.AnnData, label_key: str, query: ad.AnnData) -> pd.DataFrame:
    """Cells and shares of each label in the reference and the query.

    One row per reference label, then ``unknown``: ``label``, ``reference_cells``,
    ``reference_share``, ``query_cells``, ``query_share`` and ``mean_confidence`` (of the
    query cells given that label; NaN where there are none).
    """
    names = [str(c) for c in query.obs[Keys.TRANSFERRED].cat.categories]
    ref_counts = reference.obs[label_key].astype(str).value_counts().reindex(names, fill_value=0)
    transferred = query.obs[Keys.TRANSFERRED].astype(str)
    q_counts = transferred.value_counts().reindex(names, fill_value=0)
    confidence = query.obs[Keys.CONFIDENCE].groupby(transferred.to_numpy()).mean().reindex(names)
    n_ref = max(int(ref_counts.sum()), 1)
    return pd.DataFrame({
        "label": names,
        "reference_cells": ref_counts.to_numpy(),
        "reference_share": ref_counts.to_numpy() / n_ref,
        "query_cells": q_counts.to_numpy(),
        "query_share": q_counts.to_numpy() / max(query.n_obs, 1),
        "mean_confidence": confidence.to_numpy(dtype=float),
    })


def summary_metrics(report: dict, query: ad.AnnData, keys: RunKeys) -> dict[str, str]:
    """Headline figures of a transfer, formatted."""
    n = max(report["n_cells"], 1)
    return {"Query cells": f"{report['n_cells']:,}",
            "Slides": str(len(query_slides(query, keys))),
            "Unknown": f"{report['n_unknown'] / n:.1%}",
            "Mean confidence": f"{report['mean_confidence']:.2f}"}


# ----------------------------------------------------------------------------- colours and figures


def transferred_scale(reference_scale: ColorScale) -> ColorScale:
    """The reference label's colours plus grey ``unknown``, for the transferred column."""
    categories = tuple(c for c in reference_scale.categories if c != UNKNOWN)
    colors = tuple(col for c, col in zip(reference_scale.categories, reference_scale.colors) if c != UNKNOWN)
    return ColorScale(Keys.TRANSFERRED, reference_scale.kind, categories + (UNKNOWN,),
                      colors + (UNKNOWN_COLOR,))


def confidence_scale() -> ColorScale:
    """Viridis from 0 to 1 for the transfer confidence."""
    return ColorScale(Keys.CONFIDENCE, NUMERIC, vmin=0.0, vmax=1.0)


def confidence_legend_html() -> str:
    """A viridis bar from 0 (no agreement) to 1 (every neighbour agrees)."""
    gradient = ", ".join(VIRIDIS)
    return ('<div style="font-size:0.85rem;line-height:1.5"><b>transfer confidence</b>'
            '<div style="height:0.7em;width:14em;border-radius:2px;'
            f'background:linear-gradient(to right, {gradient})"></div>'
            '<div style="display:flex;justify-content:space-between;width:14em">'
            "<span>0</span><span>0.5</span><span>1</span></div></div>")


#: the legend swatches of the composition chart, whose bars take each label's colour
NEUTRAL_SWATCH = "#616161"


def composition_figure(table: pd.DataFrame, scale: ColorScale, *, height: int = 360) -> go.Figure:
    """Grouped bars: each label's share of the reference (pale) and of the query (full colour)."""
    colors = scale.color_map()
    names = table["label"].astype(str).tolist()
    palette = [colors.get(n, UNKNOWN_COLOR) for n in names]
    fig = go.Figure()
    for column, name, alpha in (("reference_share", "reference", 0.4), ("query_share", "query", 1.0)):
        fig.add_trace(go.Bar(
            x=names, y=table[column], name=name, marker_color=[rgba_css(c, alpha) for c in palette],
            marker_line=dict(color=palette, width=1), showlegend=False,
            hovertemplate=f"{name} · %{{x}}: %{{y:.1%}}<extra></extra>"))
    # the legend says pale against full colour: a bar trace's entry would take the first label's colour
    for name, alpha in (("reference (pale)", 0.4), ("query (full colour)", 1.0)):
        fig.add_trace(legend_swatch(name, rgba_css(NEUTRAL_SWATCH, alpha), line=NEUTRAL_SWATCH))
    fig.update_layout(**LABEL_AXES, barmode="group", height=height, margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(tickformat=".0%", title="share of cells"),
                      xaxis=dict(title=html.escape(str(scale.column))), plot_bgcolor="white",
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0))
    return fit_labels(fig)


def agreement_metrics(agreement: dict) -> dict[str, str]:
    """Headline figures of :func:`cellniche_core.agreement.transfer_agreement`, formatted."""
    def pct(value: float) -> str:
        return "–" if value != value else f"{value:.1%}"  # NaN: no such cells

    return {"Agreement (labels the reference knows)": pct(agreement["accuracy"]),
            "Of those, called unknown": pct(agreement["unknown_known"]),
            "Labels the reference lacks: unknown": pct(agreement["unknown_unseen"])}


def agreement_table(per_label: pd.DataFrame) -> pd.DataFrame:
    """The per-label table of :func:`cellniche_core.agreement.transfer_agreement` for the
    page: ``agreement`` as text, "not in the reference" for the labels the reference lacks
    (a number column would show their NaN as "None")."""
    table = per_label.copy()
    table["agreement"] = [f"{value:.1%}" if known else "not in the reference"
                          for value, known in zip(table["agreement"], table["in_reference"])]
    return table


def agreement_figure(confusion: pd.DataFrame, *, height: int | None = None) -> go.Figure:
    """The query's own labels (rows) against the transferred ones (columns), each row as
    shares of its cells; the hover gives the counts."""
    counts = confusion.to_numpy()
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    rows = [html.escape(str(r)) for r in confusion.index]
    columns = [html.escape(str(c)) for c in confusion.columns]
    fig = go.Figure(go.Heatmap(
        z=shares, x=columns, y=rows, customdata=counts, colorscale="Blues", zmin=0, zmax=1,
        colorbar=dict(title="share of row", tickformat=".0%"),
        texttemplate="%{z:.0%}" if counts.size <= 400 else None,
        hovertemplate="own %{y} → transferred %{x}: %{customdata:,} cells (%{z:.1%} of the row)<extra></extra>"))
    fig.update_layout(**LABEL_AXES, height=height or max(260, 60 + 28 * len(rows)),
                      margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white",
                      xaxis=dict(title="transferred label", side="bottom"),
                      yaxis=dict(title=html.escape(short_label(str(confusion.index.name or "query's label"), 24)),
                                 autorange="reversed"))
    return fit_labels(fig)


def unknown_note(report: dict, *, quantile: float, min_confidence: float = 0.0) -> str:
    """How many cells are unknown and why, in one sentence (``min_confidence``: the
    transfer's, when its split-vote rule was on)."""
    calibration = report["calibration"]
    by = calibration["held_out_by"]
    held = "reference cells held out one by one" if by == "cell" else f"reference cells held out by {by}"
    if "input_threshold" in calibration:  # the inputs decide what is far
        far = (f"{report['n_far']:,} have neighbourhood-averaged inputs farther from the reference (with their "
               f"neighbours, on average) than {quantile:.1%} of {held}"
               f"{' or lie on the edge of such a region' if calibration.get('input_edge_threshold') else ''}")
    else:
        far = (f"{report['n_far']:,} lie (with their neighbours, on average) farther from the reference than "
               f"{quantile:.1%} of {held} (same label)")
    if min_confidence <= 0:
        return (f"{report['n_unknown']:,} of {report['n_cells']:,} cells are unknown: {far}. A cell whose reference "
                "neighbours split between labels keeps the label most of them hold; its confidence shows the split.")
    return (f"{report['n_unknown']:,} of {report['n_cells']:,} cells are unknown: {far}, "
            f"{report['n_ambiguous']:,} have a winning label with less than {min_confidence:.0%} of the vote "
            "(a cell can be both).")
