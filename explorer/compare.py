"""Tables and figures of the cohort-comparison page (plain pandas / plotly, no Streamlit).

The statistics come from :mod:`cellniche_core.compare`; this module only reshapes its
tables for display and draws them. Colours follow :mod:`explorer.palette`.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cellniche_core.keys import RunKeys
from cellniche_core.labels import natural_key

from .figures import LABEL_AXES, fit_labels
from .palette import NUMERIC, UNKNOWN_COLOR, VIRIDIS, ColorScale
from .tables import labels, subsample_index

#: colours of a group-difference marker
SIGNIFICANT_COLOR = "#d62728"
NOT_SIGNIFICANT_COLOR = "#7f7f7f"
#: fixed 0-1 colour ramp of the per-cell mixing score
MIXING_SCALE = ColorScale("mixing", NUMERIC, vmin=0.0, vmax=1.0)


def abundance_matrix(long: pd.DataFrame, niches: list[str]) -> pd.DataFrame:
    """(patients x niches) abundance from :func:`cellniche_core.compare.niche_abundance`."""
    matrix = long.pivot(index="patient", columns="niche", values="abundance")
    order = list(dict.fromkeys(long["patient"]))  # the table's own (cohort) order
    return matrix.reindex(index=order, columns=[n for n in niches if n in matrix.columns])


def patients_by_slide(adata, keys: RunKeys) -> dict[str, list[str]]:
    """``{patient: [its slides]}``, both in natural order."""
    frame = pd.DataFrame({"p": labels(adata, keys.patient).to_numpy(),
                          "s": labels(adata, keys.sample).to_numpy()}).drop_duplicates()
    out: dict[str, list[str]] = {}
    for patient in sorted(frame["p"].unique(), key=natural_key):
        out[patient] = sorted(frame.loc[frame["p"] == patient, "s"], key=natural_key)
    return out


def transition_points(adata, keys: RunKeys, scores: pd.DataFrame, sample: str, *, max_points: int,
                      seed: int = 0) -> tuple[pd.DataFrame, int]:
    """One slide's cells for the transition map, at most ``max_points`` of them.

    Same sample of cells as :func:`explorer.tables.slide_points` (same seed). Columns
    ``x``, ``y``, ``niche``, ``cell_type`` and ``value``: the cell's mixing score when it
    is a border cell, NaN (drawn grey) otherwise.
    """
    where = np.flatnonzero(labels(adata, keys.sample).to_numpy() == sample)
    keep = where[subsample_index(len(where), max_points, seed=seed)]
    xy = np.asarray(adata.obsm[keys.spatial])[keep, :2].astype(float)
    part = scores.iloc[keep]
    points = pd.DataFrame({
        "x": np.round(xy[:, 0], 2),
        "y": np.round(xy[:, 1], 2),
        "niche": part["niche"].astype(str).to_numpy(),
        "cell_type": labels(adata, keys.cell_type, fill="n/a").iloc[keep].to_numpy(),
        "value": np.where(part["border"].to_numpy(), part["mixing"].to_numpy(), np.nan),
    })
    return points, len(where)


# ----------------------------------------------------------------------------- figures


def mixing_legend_html() -> str:
    """Legend of the transition map: the 0-1 mixing ramp and the grey of non-border cells."""
    gradient = ", ".join(VIRIDIS)
    return (f'<div style="font-size:0.85rem;line-height:1.5"><b>mixing</b> of border cells '
            f'<span style="display:inline-block;height:0.7em;width:10em;border-radius:2px;'
            f'vertical-align:-0.05em;margin:0 0.3em;background:linear-gradient(to right, {gradient})">'
            f'</span>0 → 1 · <span style="color:{UNKNOWN_COLOR}">●</span> inside a niche</div>')


def abundance_heatmap(matrix: pd.DataFrame, patterns: dict[str, str] | None = None, *,
                      height: int | None = None) -> go.Figure:
    """(patients x niches) abundance as a heatmap; niche labels carry their pattern."""
    patterns = patterns or {}
    x = [f"{n}<br><sub>{html.escape(patterns[n])}</sub>" if n in patterns else n for n in matrix.columns]
    z = matrix.to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=list(matrix.index.astype(str)), colorscale="Viridis", zmin=0,
        colorbar=dict(title="share", tickformat=".0%"),
        text=np.vectorize(lambda v: f"{v:.0%}" if v >= 0.005 else "")(np.nan_to_num(z)),
        texttemplate="%{text}",
        hovertemplate="%{y} · %{x}: %{z:.1%} of the patient's cells<extra></extra>"))
    fig.update_layout(**LABEL_AXES, height=height or max(260, 32 * len(matrix) + 150),
                      margin=dict(l=10, r=10, t=30, b=10), yaxis=dict(autorange="reversed", title="patient"))
    return fit_labels(fig)


def group_difference_figure(tests: pd.DataFrame, *, alpha: float = 0.05) -> go.Figure:
    """Effect per niche with its bootstrap interval; red when BH q < ``alpha``.

    ``tests`` is :func:`cellniche_core.compare.compare_groups`' table.
    """
    tests = tests.iloc[::-1]
    significant = (tests["q_value"] < alpha).to_numpy()
    fig = go.Figure(go.Scatter(
        x=tests["effect"], y=tests["niche"].astype(str), mode="markers",
        marker=dict(size=11, color=np.where(significant, SIGNIFICANT_COLOR, NOT_SIGNIFICANT_COLOR)),
        error_x=dict(type="data", symmetric=False, color="#555", thickness=1.2,
                     array=(tests["effect_ci_high"] - tests["effect"]).clip(lower=0),
                     arrayminus=(tests["effect"] - tests["effect_ci_low"]).clip(lower=0)),
        customdata=np.c_[tests["comparison"].astype(str), tests["p_value"], tests["q_value"],
                         tests["enriched_in"].astype(str)],
        hovertemplate="<b>%{y}</b><br>%{customdata[0]}: %{x:+.1%}<br>p = %{customdata[1]:.2g}, "
                      "q = %{customdata[2]:.2g}<br>higher in %{customdata[3]}<extra></extra>"))
    fig.add_vline(x=0, line_color="#444", line_width=1)
    comparison = tests["comparison"].iloc[0] if tests["comparison"].nunique() == 1 else "group - rest"
    fig.update_layout(**LABEL_AXES, height=max(240, 34 * len(tests) + 110), margin=dict(l=10, r=20, t=30, b=10),
                      xaxis=dict(title=f"difference in mean abundance ({comparison})", tickformat="+.0%",
                                 zeroline=False),
                      showlegend=False, plot_bgcolor="white")
    fig.update_xaxes(showgrid=True, gridcolor="#eee")
    return fit_labels(fig)


def patient_difference_figure(table: pd.DataFrame, colors: dict[str, str], *, patient_a: str,
                              patient_b: str) -> go.Figure:
    """Bars of ``abundance_b - abundance_a`` per niche (:func:`~cellniche_core.compare.compare_patients`)."""
    fig = go.Figure(go.Bar(
        x=table["difference"], y=table["niche"].astype(str), orientation="h",
        marker_color=[colors.get(n, "#9e9e9e") for n in table["niche"]],
        customdata=np.c_[table["abundance_a"], table["abundance_b"]],
        hovertemplate=(f"%{{y}}: {html.escape(patient_a)} %{{customdata[0]:.1%}}, "
                       f"{html.escape(patient_b)} %{{customdata[1]:.1%}}<extra></extra>")))
    fig.add_vline(x=0, line_color="#444", line_width=1)
    fig.update_layout(**LABEL_AXES, height=max(220, 30 * len(table) + 100), margin=dict(l=10, r=20, t=30, b=10),
                      xaxis=dict(title=f"abundance in {patient_b} minus {patient_a}", tickformat="+.0%"),
                      yaxis=dict(autorange="reversed"), showlegend=False, plot_bgcolor="white")
    return fit_labels(fig)


def adjacency_heatmap(cohort: pd.DataFrame, niches: list[str]) -> go.Figure:
    """Which niches border which: (niche x niche) ``border_log2_ratio`` of the cohort adjacency table.

    Red: the two niches share more of the boundary edges than their sizes predict; the
    diagonal (a niche with itself) is left blank, and so is a pair that neither touches nor
    is expected to (no boundary edge seen, under one expected): its ratio, 0 by the
    smoothing, would read as "as expected".
    """
    cohort = cohort.astype({"niche_a": str, "niche_b": str})
    evidence = (cohort["observed"] > 0) | (cohort["border_expected"] >= 1)
    cohort = cohort.assign(border_log2_ratio=cohort["border_log2_ratio"].where(evidence))
    both = pd.concat([cohort, cohort.rename(columns={"niche_a": "niche_b", "niche_b": "niche_a"})])
    both = both.drop_duplicates(["niche_a", "niche_b"])
    matrix = both.pivot(index="niche_a", columns="niche_b", values="border_log2_ratio")
    matrix = matrix.reindex(index=niches, columns=niches)
    z = matrix.to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    limit = min(max(limit, 1.0), 4.0)
    fig = go.Figure(go.Heatmap(
        z=z, x=niches, y=niches, colorscale="RdBu_r", zmin=-limit, zmax=limit, zmid=0,
        colorbar=dict(title="log2 obs/exp<br>boundary"),
        text=np.where(np.isfinite(z), (np.round(z, 1) + 0.0).astype(str), ""), texttemplate="%{text}",  # no "-0.0"
        hovertemplate="%{y} – %{x}: %{z:+.2f}<extra></extra>"))
    fig.update_layout(**LABEL_AXES, height=max(280, 34 * len(niches) + 140), margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(autorange="reversed"))
    return fit_labels(fig)
