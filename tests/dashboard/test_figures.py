"""Palette, derived tables and figure builders of the dashboard, without Streamlit."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pydeck as pdk
import pytest
import scipy.sparse as sp
from PIL import Image

from cellniche_core.io import Run
from cellniche_core.keys import RunKeys
from cellniche_core.niches import marker_scores
from explorer import figures, tables
from explorer.imagecheck import count_saturated_colors
from explorer.palette import (CATEGORY_PALETTE, DIMMED_ALPHA, NICHE_PALETTE, UNKNOWN_COLOR,
                              ColorScale, color_scale, hex_to_rgb, niche_colors)


@pytest.fixture
def tiny():
    """12 cells, 3 slides, 2 patients, 3 niches, 2 markers.

    slide  patient  response      niches (cells)
    A1     P1       responder     N1 N1 N2 N2
    A2     P1       responder     N1 N3 N3 N3
    B1     P2       non-responder N1 N1 N1 N2
    """
    niche = ["N1", "N1", "N2", "N2", "N1", "N3", "N3", "N3", "N1", "N1", "N1", "N2"]
    obs = pd.DataFrame({
        "fov": pd.Categorical(["A1"] * 4 + ["A2"] * 4 + ["B1"] * 4, categories=["A1", "A2", "B1"]),
        "donor": ["P1"] * 8 + ["P2"] * 4,
        "response": ["responder"] * 8 + ["non-responder"] * 4,
        "cell_type": ["T", "T", "B", "B", "T", "M", "M", "B", "T", "M", "T", "B"],
        "niche": pd.Categorical(niche, categories=["N1", "N2", "N3"]),
        "score": np.linspace(0.0, 1.1, 12),
    }, index=[f"c{i}" for i in range(12)])
    x = np.array([[1.0, 0.0]] * 4 + [[0.0, 2.0]] * 8, dtype=np.float32)
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=["CD3", "CD20"]))
    adata.obsm["xy"] = np.c_[np.arange(12.0) * 10, np.arange(12.0) % 4 * 10].astype(np.float32)
    adata.obsm["X_umap"] = np.c_[np.arange(12.0), -np.arange(12.0)].astype(np.float32)
    return adata


@pytest.fixture
def keys():
    manifest = {"params": {"keys": {"sample_key": "fov", "spatial_key": "xy", "cell_type_key": "cell_type"},
                           "patient_key": "donor"}}
    return Run(Path("run"), ad.AnnData(), None, {}, manifest).keys


# ----------------------------------------------------------------------------- palette


def test_niche_colours_follow_natural_order_and_grey_unknown():
    colors = niche_colors(["N10", "N2", "unknown", "N1", "N2"])
    assert list(colors) == ["N1", "N2", "N10", "unknown"]
    assert colors["N1"] == NICHE_PALETTE[0]
    assert colors["N2"] == NICHE_PALETTE[1]
    assert colors["N10"] == NICHE_PALETTE[2]
    assert colors["unknown"] == UNKNOWN_COLOR
    # the same niches get the same colours whatever order the labels come in
    assert niche_colors(["N1", "N2", "N10"]) == {k: v for k, v in colors.items() if k != "unknown"}


def test_palettes_are_distinct_and_cycle():
    assert len(set(NICHE_PALETTE)) == len(NICHE_PALETTE) == 20
    assert len(set(CATEGORY_PALETTE)) == len(CATEGORY_PALETTE)
    assert UNKNOWN_COLOR not in NICHE_PALETTE
    colors = niche_colors([f"N{i}" for i in range(1, 23)])
    assert colors["N21"] == NICHE_PALETTE[0]


def test_colour_scale_rgba_maps_categories_dims_and_greys_unknowns():
    scale = color_scale(pd.Categorical(["N2", "N1", "N1"]), column="niche", kind="niche")
    rgba = scale.rgba(["N1", "N2", "N9"], dimmed=[False, True, False])
    assert tuple(rgba[0, :3]) == hex_to_rgb(NICHE_PALETTE[0]) and rgba[0, 3] == 255
    assert rgba[1, 3] == DIMMED_ALPHA
    assert tuple(rgba[2, :3]) == hex_to_rgb(UNKNOWN_COLOR)


def test_category_scale_keeps_categorical_order():
    values = pd.Categorical(["b", "a"], categories=["b", "a", "unused"])
    scale = color_scale(values, column="x", kind="category")
    assert scale.categories == ("b", "a")
    assert scale.colors == CATEGORY_PALETTE[:2]


def test_numeric_scale_spans_percentiles_and_greys_nan():
    values = np.r_[np.arange(100.0), 1e6]
    scale = color_scale(values, column="score", kind="numeric")
    assert scale.is_numeric and scale.vmin == pytest.approx(1.0) and scale.vmax < 1000
    rgba = scale.rgba([scale.vmin, scale.vmax, np.nan])
    assert tuple(rgba[0, :3]) == hex_to_rgb("#440154")
    assert tuple(rgba[1, :3]) == hex_to_rgb("#fde725")
    assert tuple(rgba[2, :3]) == hex_to_rgb(UNKNOWN_COLOR)


# ----------------------------------------------------------------------------- tables


def run_keys(manifest: dict, model_config: dict | None = None) -> RunKeys:
    return Run(Path("run"), ad.AnnData(), None, model_config or {}, manifest).keys


def test_run_keys_from_manifest_with_defaults():
    assert run_keys({}) == RunKeys()
    keys = run_keys({"params": {"keys": {"sample_key": "fov"}}})
    assert keys.sample == "fov" and keys.patient == "patient"
    # an older manifest without params.keys: the model config's keys
    keys = run_keys({"params": {"patient_key": "donor"}}, {"keys": {"spatial_key": "xy", "cell_type_key": "ct"}})
    assert (keys.spatial, keys.cell_type, keys.patient, keys.sample) == ("xy", "ct", "donor", "sample")


def test_summary_patients_and_clinical_columns(tiny, keys):
    info = tables.cohort_summary(tiny, keys)
    assert info == {"n_patients": 2, "n_slides": 3, "n_cells": 12, "n_niches": 3, "clinical": ["response"]}
    patients = tables.patient_table(tiny, keys)
    assert patients.loc["P1", "slides"] == 2 and patients.loc["P1", "cells"] == 8
    assert patients.loc["P2", "response"] == "non-responder"


def test_niche_abundance_and_sizes(tiny, keys):
    abundance = tables.niche_abundance(tiny, keys)
    assert list(abundance.index) == ["A1", "A2", "B1"] and list(abundance.columns) == ["N1", "N2", "N3"]
    assert abundance.loc["A1"].tolist() == [0.5, 0.5, 0.0]
    np.testing.assert_allclose(abundance.sum(1), 1.0)
    sizes = tables.niche_sizes(tiny, keys, min_cells=1)
    assert sizes["cells"].tolist() == [6, 3, 3]
    assert sizes.loc["N3", "slides"] == 1 and sizes.loc["N3", "patients"] == 1
    assert sizes.loc["N1", "patients"] == 2
    # the default rule also needs 10 cells: none of these 4-cell slides holds a niche
    assert tables.niche_sizes(tiny, keys)[["slides", "patients"]].sum().tolist() == [0, 0]


def test_default_slides_take_one_per_patient(tiny, keys):
    assert tables.default_slides(tiny, keys) == ["A1", "B1"]


def test_colour_options_order_and_kinds(tiny, keys):
    options = tables.color_options(tiny, keys)
    assert list(options)[:2] == ["niche", "cell_type"]
    assert options["niche"] == "niche" and options["fov"] == "category"
    assert options["score"] == "numeric"
    assert list(options)[-1] == "score"


def test_subsample_index_is_bounded_sorted_and_reproducible():
    idx = tables.subsample_index(1000, 100, seed=3)
    assert len(idx) == 100 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, tables.subsample_index(1000, 100, seed=3))
    np.testing.assert_array_equal(tables.subsample_index(50, 100), np.arange(50))


def test_slide_points_subsample_one_slide(tiny, keys):
    points, n = tables.slide_points(tiny, keys, "A2", color_by="score", max_points=3)
    assert n == 4 and len(points) == 3
    assert list(points.columns) == ["x", "y", "niche", "cell_type", "value"]
    assert points["x"].isin([40.0, 50.0, 60.0, 70.0]).all()
    assert points["value"].dtype == float
    points, _ = tables.slide_points(tiny, keys, "A1", color_by="niche", max_points=10)
    assert points["value"].tolist() == ["N1", "N1", "N2", "N2"]


def test_slide_points_keep_precision_of_small_units(tiny, keys):
    mm = tiny.copy()
    mm.obsm["xy"] = mm.obsm["xy"] / 1000  # the same slide in mm: 0.01 mm apart
    points, _ = tables.slide_points(mm, keys, "A1", color_by="niche", max_points=10)
    assert points["x"].tolist() == pytest.approx([0.0, 0.01, 0.02, 0.03])


def test_point_radius_grows_when_points_are_sparser():
    grid = pd.DataFrame({"x": np.repeat(np.arange(10.0), 10), "y": np.tile(np.arange(10.0), 10)})
    assert tables.point_radius(grid) == pytest.approx(0.5 * np.sqrt(81 / 100))
    assert tables.point_radius(grid.iloc[::4]) > tables.point_radius(grid)


def test_marker_scores_dense_and_sparse_agree(tiny):
    scores = marker_scores(tiny, niche_key="niche")
    assert list(scores.index) == ["N1", "N2", "N3"] and list(scores.columns) == ["CD3", "CD20"]
    # CD3 is 1 in cells 0-3 only: mean 1/3, sd sqrt(2)/3; N2 holds cells 2, 3, 11
    z_on, z_off = (1 - 1 / 3) / (np.sqrt(2) / 3), (0 - 1 / 3) / (np.sqrt(2) / 3)
    assert scores.loc["N2", "CD3"] == pytest.approx((2 * z_on + z_off) / 3)
    sparse = tiny.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    pd.testing.assert_frame_equal(marker_scores(sparse, niche_key="niche"), scores, atol=1e-6)


def test_top_markers_lists_best_first():
    scores = pd.DataFrame({"a": [1.0, -1.0], "b": [2.0, 0.5], "c": [0.0, 3.0]}, index=["N1", "N2"])
    top = tables.top_markers(scores, n_top=2)
    assert top.loc["N1", "1"] == "b" and top.loc["N1", "2"] == "a"
    assert top.loc["N2", "markers"] == "c (+3.0), b (+0.5)"


def test_mixing_table_reads_scores():
    sizes = pd.DataFrame({"cells": [10, 5], "slides": [3, 1], "patients": [2, 1]}, index=["N1", "N2"])
    table = tables.mixing_table(pd.Series({"N1": 0.9, "N2": None}), sizes)
    assert table.loc["N1", "reading"] == "well mixed"
    assert table.loc["N2", "reading"] == "one sample only"


# ----------------------------------------------------------------------------- figures


def _points(n=6):
    niche = ["N1", "N2", "N3"] * (n // 3)
    return pd.DataFrame({"x": np.arange(n, dtype=float) * 10, "y": np.arange(n, dtype=float) * 5,
                         "niche": niche, "cell_type": ["T"] * n, "value": niche})


def test_niche_map_deck_is_orthographic_without_base_map():
    points = _points()
    scale = color_scale(points["niche"], column="niche", kind="niche")
    deck = figures.niche_map_deck(points, scale, sample="P1_s1", width_px=500, height_px=400)
    assert isinstance(deck, pdk.Deck)
    spec = json.loads(deck.to_json())
    assert [v["@@type"] for v in spec["views"]] == ["OrthographicView"]
    assert not spec.get("mapStyle") and not spec.get("mapProvider")
    layer = spec["layers"][0]
    assert layer["@@type"] == "ScatterplotLayer" and layer["radiusUnits"] == "common"
    assert len(layer["data"]) == 6
    first = layer["data"][0]
    assert first["c"] == [*hex_to_rgb(NICHE_PALETTE[0]), 255] and first["n"] == "N1"
    # centred on the cells (x 0..50, y 0..25) and the scale bar below them (to y 25 + 0.1 x 50)
    assert spec["initialViewState"]["target"][:2] == [25.0, 15.0]
    bar, label = spec["layers"][1:]
    assert bar["@@type"] == "PathLayer" and bar["data"] == [{"p": [[0.0, 27.0], [10.0, 27.0]]}]
    assert label["@@type"] == "TextLayer" and label["data"] == [{"p": [5.0, 27.0], "s": "10"}]
    # compact JSON: no indentation
    assert "\n" not in deck.to_json()
    assert "P1_s1" in deck._tooltip["html"] and "{n}" in deck._tooltip["html"]


@pytest.mark.parametrize("width, length", [(50, 10), (1234, 200), (4999, 500), (5000, 1000), (0.7, 0.1),
                                           (3, 0.5), (0, 0), (float("nan"), 0)])
def test_scale_bar_is_a_round_length_of_at_most_a_fifth_of_the_slide(width, length):
    assert figures.scale_bar_length(width) == pytest.approx(length)
    assert (figures.scale_bar_layers(0.0, width, 1.0) == []) == (length == 0)


def test_a_slide_of_one_column_of_cells_far_from_the_origin_is_drawn():
    points = _points().assign(x=3e7, y=3e7 + np.arange(6.0))  # no width: 3e7 + 1e-9 == 3e7
    zoom, bar = figures.shared_frame([points], 400, 400)
    assert np.isfinite(zoom) and bar == 0
    spec = json.loads(figures.niche_map_deck(points, color_scale(points["niche"], column="niche", kind="niche"),
                                             frame=(zoom, bar)).to_json())
    assert [layer["@@type"] for layer in spec["layers"]] == ["ScatterplotLayer"]  # no bar of no length


def test_niche_map_deck_highlight_dims_others_and_draws_them_first():
    points = _points()
    scale = color_scale(points["niche"], column="niche", kind="niche")
    data = json.loads(figures.niche_map_deck(points, scale, highlight="N2").to_json())["layers"][0]["data"]
    assert [d["n"] for d in data][-2:] == ["N2", "N2"]
    assert all(d["c"][3] == DIMMED_ALPHA for d in data if d["n"] != "N2")
    assert all(d["c"][3] == 255 for d in data if d["n"] == "N2")


def test_niche_map_deck_value_in_tooltip_only_when_asked():
    points = _points().assign(value=np.linspace(0, 1, 6))
    scale = color_scale(points["value"], column="score", kind="numeric")
    deck = figures.niche_map_deck(points, scale, value_label="score")
    assert "score: {v}" in deck._tooltip["html"]
    assert json.loads(deck.to_json())["layers"][0]["data"][-1]["v"] == 1.0
    plain = figures.niche_map_deck(points, scale)
    assert "v" not in json.loads(plain.to_json())["layers"][0]["data"][0]


def test_legend_lists_present_categories_and_highlight():
    scale = color_scale(["N1", "N2", "N3"], column="niche", kind="niche")
    legend = figures.legend_html(scale, present={"N1", "N3"})
    assert "N1" in legend and "N3" in legend and "N2" not in legend
    r, g, b = hex_to_rgb(NICHE_PALETTE[0])
    assert f"rgba({r},{g},{b},1)" in legend
    assert "<b>N2</b>" in figures.legend_html(scale, highlight="N2")
    types = color_scale(["<T>", "B"], column="cell_type", kind="category")
    legend = figures.legend_html(types, highlight="N2")
    assert "&lt;T&gt;" in legend and "outside niche N2" in legend


def test_legend_for_numbers_is_a_colour_bar():
    scale = ColorScale("score", "numeric", vmin=0.0, vmax=2.5)
    legend = figures.legend_html(scale)
    assert "linear-gradient" in legend and "2.5" in legend


def test_umap_figure_uses_webgl_and_niche_colours():
    points = _points().assign(sample=["s1", "s2"] * 3)
    scale = color_scale(points["niche"], column="niche", kind="niche")
    fig = figures.umap_figure(points, scale, color_column="niche")
    assert isinstance(fig, go.Figure)
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    assert [t.name for t in fig.data] == ["N1", "N2", "N3"]
    assert fig.data[1].marker.color == NICHE_PALETTE[1]
    fig = figures.umap_figure(points, scale, color_column="niche", highlight="N3")
    assert [t.name for t in fig.data] == ["not N3", "N3"]


def test_umap_figure_colours_by_an_annotation_and_shows_cells_without_one():
    points = _points().assign(sample=["s1", "s2"] * 3, color=["L1", "L2", "L1", "n/a", "L2", "L1"])
    scale = color_scale(pd.Series(["L1", "L2"]), column="layer", kind="category")
    fig = figures.umap_figure(points, scale, color_column="color", title="layer")
    assert [t.name for t in fig.data if t.showlegend] == ["L1", "L2", "n/a"]  # one legend entry each
    counts = {name: sum(len(t.x) for t in fig.data if t.legendgroup == name) for name in ("L1", "L2", "n/a")}
    assert counts == {"L1": 3, "L2": 2, "n/a": 1}
    # drawn in parts, the first part of every category before the second of any (no category on top)
    assert [t.name for t in fig.data][:3] == ["L1", "L2", "n/a"] and fig.data[3].name == "L1"
    assert fig.layout.legend.title.text == "layer" and "layer %{customdata[3]}" in fig.data[0].hovertemplate
    assert fig.data[2].marker.color == UNKNOWN_COLOR


def test_abundance_figure_stacks_niches_in_palette_colours():
    fractions = pd.DataFrame({"N1": [0.25, 1.0], "N2": [0.75, 0.0]}, index=["s1", "s2"])
    fig = figures.abundance_figure(fractions, niche_colors(fractions.columns))
    assert fig.layout.barmode == "stack"
    assert [t.name for t in fig.data] == ["N1", "N2"]
    assert fig.data[1].marker.color == NICHE_PALETTE[1]
    assert list(fig.data[0].y) == [0.25, 1.0]


def test_heatmaps_and_bars():
    table = pd.DataFrame([[1.0, -2.0], [0.0, 0.5]], index=["N1", "N2"], columns=["T", "B"])
    fig = figures.enrichment_heatmap(table)
    assert fig.data[0].zmid == 0 and fig.data[0].zmax == 2.0
    assert np.asarray(fig.data[0].z).shape == (2, 2)
    assert isinstance(figures.marker_heatmap(table), go.Figure)
    # every column labelled (plotly labels every other one of 30 by itself), up to 80
    wide = pd.DataFrame(np.zeros((2, 30)), index=["N1", "N2"], columns=[f"g{i}" for i in range(30)])
    assert figures.marker_heatmap(wide).layout.xaxis.dtick == 1
    assert figures.enrichment_heatmap(wide).layout.xaxis.dtick == 1
    huge = pd.DataFrame(np.zeros((2, 500)), index=["N1", "N2"], columns=[f"g{i}" for i in range(500)])
    assert figures.marker_heatmap(huge).layout.xaxis.dtick is None
    sizes = pd.DataFrame({"cells": [3, 1], "fraction": [0.75, 0.25], "slides": [2, 1], "patients": [1, 1]},
                         index=["N1", "N2"])
    bars = figures.niche_size_figure(sizes, niche_colors(sizes.index))
    assert list(bars.data[0].marker.color) == list(NICHE_PALETTE[:2])
    mixing = tables.mixing_table(pd.Series({"N1": 0.8, "N2": np.nan}), sizes)
    fig = figures.mixing_figure(mixing, niche_colors(sizes.index), cohort=0.7)
    assert list(fig.data[0].text) == ["n/a", "0.80"]  # drawn bottom-up


def test_digit_labels_stay_labels_in_every_chart():
    # Visium slide ids such as "151673": read as numbers, plotly would draw "151.673k" on the axis
    from explorer import compare

    ids = ["151673", "151674"]
    fractions = pd.DataFrame({"N1": [0.25, 1.0], "N2": [0.75, 0.0]}, index=ids)
    table = pd.DataFrame([[1.0, -2.0], [0.0, 0.5]], index=["1", "2"], columns=["3", "4"])
    sizes = pd.DataFrame({"cells": [3, 1], "fraction": [0.75, 0.25], "slides": [2, 1], "patients": [1, 1]},
                         index=["1", "2"])
    charts = [figures.abundance_figure(fractions, niche_colors(fractions.columns)),
              figures.enrichment_heatmap(table), figures.marker_heatmap(table),
              figures.niche_size_figure(sizes, niche_colors(sizes.index)),
              compare.abundance_heatmap(fractions)]
    for fig in charts:
        assert fig.layout.autotypenumbers == "strict"
    assert list(charts[0].data[0].x) == ids and list(charts[-1].data[0].y) == ids  # given as text


# ----------------------------------------------------------------------------- screenshots


def test_count_saturated_colors():
    image = Image.new("RGB", (200, 100), "white")
    for i, color in enumerate(NICHE_PALETTE[:5]):
        image.paste(Image.new("RGB", (40, 50), color), (i * 40, 0))
    image.paste(Image.new("RGB", (200, 50), "#cfcfcf"), (0, 50))  # dimmed grey does not count
    assert count_saturated_colors(image) == 5
    assert count_saturated_colors(Image.new("RGB", (50, 50), "white")) == 0


def test_composition_and_comparison_pages_count_presence_alike(small_run):
    """The Composition page's niche sizes and the Comparison page's niche summary apply one
    presence rule, so they report the same slides and patients for every niche."""
    from cellniche_core.compare import summarise_niches
    from cellniche_core.io import load_run

    run = load_run(small_run, with_weights=False)
    sizes = tables.niche_sizes(run.adata, run.keys)
    summary = summarise_niches(run.adata, n_boot=10, **run.keys.table_kwargs()).set_index("niche")
    assert list(sizes.index) == list(summary.index)
    assert sizes["slides"].tolist() == summary["n_samples_present"].tolist()
    assert sizes["patients"].tolist() == summary["n_patients_present"].tolist()
    assert sizes["cells"].tolist() == summary["n_cells"].tolist()


def test_long_labels_are_cut_in_legends_and_on_axes_but_not_in_hovers():
    long = ["N1 · ENSG00000197971+ ENSG00000131095+", "N2 · ENSG00000183036+ ENSG00000034510+"]
    fractions = pd.DataFrame({long[0]: [0.4, 0.7], long[1]: [0.6, 0.3]}, index=["151673", "151674"])
    fig = figures.abundance_figure(fractions, niche_colors(fractions.columns))
    names = [t.name for t in fig.data]
    assert names == ["N1 · ENSG00000197971+ ENSG00000…", "N2 · ENSG00000183036+ ENSG00000…"]
    assert all(len(n) == figures.LABEL_CHARS for n in names)
    assert long[0] in fig.data[0].hovertemplate  # the hover names the niche in full
    table = pd.DataFrame({"mixing": [0.4, 0.5]}, index=long)
    fig = figures.mixing_figure(table, niche_colors(long))
    assert list(fig.layout.yaxis.tickvals) == long[::-1]  # the bars keep the full names as values
    assert [t.endswith("…") for t in fig.layout.yaxis.ticktext] == [True, True]
    # short labels, and labels that would look alike once cut, are left whole
    fig = figures.mixing_figure(pd.DataFrame({"mixing": [0.4]}, index=["N1 · CAF"]), {})
    assert fig.layout.yaxis.ticktext is None
    alike = ["a very long cell type name, variant one", "a very long cell type name, variant two"]
    fig = figures.mixing_figure(pd.DataFrame({"mixing": [0.4, 0.5]}, index=alike), {})
    assert fig.layout.yaxis.ticktext is None
    assert figures.short_label("N3 · " + "x" * 40 + "<br><sub>conserved</sub>").endswith("…<br><sub>conserved</sub>")


def test_number_text_says_missing_where_a_number_is_missing():
    from explorer.tables import number_text

    assert number_text([0.391, np.nan, -7.4926, None], "{:+.2f}") == ["+0.39", "–", "-7.49", "–"]
    assert number_text(pd.Series([0.5, np.nan]), "{:.2f}", missing="n/a") == ["0.50", "n/a"]
