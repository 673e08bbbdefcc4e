"""Linked selection: geometry, the URL form, composition, and the pages (AppTest on the small run)."""

import numpy as np
import pandas as pd
import pytest

from apptest_support import assert_clean, decks, link_runs_dir, open_app

from cellniche_core.keys import RunKeys
from explorer import select as selection


def test_points_in_polygon_on_a_grid():
    # a 5 x 5 grid of cells at integer positions; an L-shaped lasso:
    #  y=4 . . . . .
    #  y=3 X X . . .
    #  y=2 X X . . .
    #  y=1 X X X X .
    #  y=0 . . . . .
    grid = np.array([(x, y) for y in range(5) for x in range(5)], dtype=float)
    lasso = [(-0.5, 0.5), (3.5, 0.5), (3.5, 1.5), (1.5, 1.5), (1.5, 3.5), (-0.5, 3.5)]
    inside = selection.points_in_polygon(grid, lasso)
    chosen = {tuple(map(int, p)) for p in grid[inside]}
    assert chosen == {(0, 1), (1, 1), (2, 1), (3, 1), (0, 2), (1, 2), (0, 3), (1, 3)}


def test_plotly_events_become_selections():
    box = {"selection": {"box": [{"x": [3.0, 1.0], "y": [0.0, 2.0]}], "lasso": [], "points": []}}
    sel = selection.from_plotly_event(box, space="umap")
    assert sel.space == "umap" and sel.polygon == ((1.0, 0.0), (3.0, 0.0), (3.0, 2.0), (1.0, 2.0))
    angles = np.linspace(0, 2 * np.pi, 300, endpoint=False)
    lasso = {"selection": {"lasso": [{"x": list(np.cos(angles)), "y": list(np.sin(angles))}]}}
    sel = selection.from_plotly_event(lasso, space="slide", sample="P1_s1")
    assert sel.sample == "P1_s1" and len(sel.polygon) == selection.MAX_VERTICES
    assert selection.from_plotly_event({"selection": {"box": [], "lasso": [], "points": []}}, space="umap") is None
    assert selection.from_plotly_event(None, space="umap") is None


def test_selection_text_round_trip_and_refusals():
    sel = selection.Selection("slide", ((0.0, 0.0), (10.5, 0.0), (10.5, 2.25)), "P1:s1")
    text = selection.to_text(sel)
    assert text == "slide:P1:s1:0,0;10.5,0;10.5,2.25" and len(text) < 100
    assert selection.from_text(text, ["P1:s1"]) == sel
    for bad, message in (("slide:P9:0,0;1,0;1,1", "unknown slide"), ("disk:0,0;1,1;2,2", "starts with"),
                         ("umap:0,0;1,1", "3 to 40"), ("umap:a,b;1,1;2,2", "not numbers"),
                         ("umap:0,0;1,nan;2,2", "3 to 40")):
        with pytest.raises(ValueError, match=message):
            selection.from_text(bad, ["P1_s1"])


def test_composition_against_the_cohort_and_the_slide():
    import anndata as ad

    obs = pd.DataFrame({"sample": ["a", "a", "a", "b"], "niche": pd.Categorical(["N1", "N1", "N2", "N2"]),
                        "cell_type": ["T", "B", "T", "T"]}, index=list("wxyz"))
    adata = ad.AnnData(obs=obs)
    adata.obsm["spatial"] = np.array([[0, 0], [1, 0], [5, 5], [0, 0]], dtype=float)
    keys = RunKeys()
    mask = selection.selected_mask(adata, keys, selection.Selection("slide", ((-1, -1), (2, -1), (2, 1), (-1, 1)), "a"))
    assert mask.tolist() == [True, True, False, False]  # cell z of slide b sits at (0, 0) too: not selected
    table = selection.composition(adata, keys, mask, column="niche", against="cohort").set_index("niche")
    assert table.loc["N1", "selected"] == 2 and table.loc["N1", "selection_share"] == 1.0
    assert table.loc["N1", "reference_share"] == 0.5 and table.loc["N1", "ratio"] == 2.0
    on_slide = selection.composition(adata, keys, mask, column="niche", against="slide", sample="a")
    assert on_slide.set_index("niche").loc["N1", "reference_share"] == pytest.approx(2 / 3)
    cells = selection.selected_cells(adata, keys, mask)
    assert cells["cell"].tolist() == ["w", "x"] and list(cells.columns)[:5] == [
        "cell", "sample", "patient", "niche", "cell_type"]

    # the bars take each niche's colour; the legend's "selection" entry a neutral one, not the first niche's
    fig = selection.composition_figure(table.reset_index(), "niche", reference="the cohort",
                                       colors={"N1": "#ff7f0e", "N2": "#2ca02c"})
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["the cohort", "selection"] and not bars[1].showlegend
    assert set(bars[1].marker.color) == {"#ff7f0e", "#2ca02c"}
    swatch = next(t for t in fig.data if t.type == "scatter")
    assert swatch.name == "selection (niche colours)" and swatch.marker.color == selection.MIXED_COLOR
    fig = selection.composition_figure(table.reset_index(), "niche", reference="the cohort")
    swatch = next(t for t in fig.data if t.type == "scatter")
    assert swatch.name == "selection" and swatch.marker.color == selection.SELECTION_COLOR


def test_select_page_from_a_link_and_the_maps_page_dims_the_rest(tmp_path, small_run, monkeypatch):
    import anndata as ad

    link_runs_dir(tmp_path, small_run, monkeypatch)
    umap = ad.read_h5ad(small_run / "cohort.h5ad").obsm["X_umap"]
    (x0, y0), (x1, y1) = umap.min(0), (umap.min(0) + umap.max(0)) / 2
    sel = f"umap:{x0:g},{y0:g};{x1:g},{y0:g};{x1:g},{y1:g};{x0:g},{y1:g}"
    x0, y0, x1, y1 = (float(f"{v:g}") for v in (x0, y0, x1, y1))  # the box as the link states it
    at = open_app({"page": "select", "sel": sel})
    assert_clean(at)
    inside = ((umap[:, 0] >= x0) & (umap[:, 0] <= x1) & (umap[:, 1] >= y0) & (umap[:, 1] <= y1)).sum()
    found = {m.label: m.value for m in at.metric}
    assert found["Selected cells"] == f"{inside:,}"
    assert at.query_params["sel"] == [sel] or at.query_params["sel"] == sel
    assert len(at.get("download_button")) == 1
    assert len(at.dataframe) == 2  # niches and cell types against the cohort

    at.switch_page("pages/maps.py").run()
    assert_clean(at)
    assert at.toggle(key="maps_selection").value
    data = decks(at)[0]["layers"][0]["data"]
    assert any(d["c"][3] < 255 for d in data) and any(d["c"][3] == 255 for d in data)
    at.toggle(key="maps_selection").set_value(False).run()
    assert all(d["c"][3] == 255 for d in decks(at)[0]["layers"][0]["data"])

    at.switch_page("pages/select.py").run()
    at.button(key="select_clear").click().run()
    assert_clean(at)
    assert not at.metric and "sel" not in at.query_params


def test_a_box_on_a_slide_is_highlighted_on_the_embedding(tmp_path, small_run, monkeypatch):
    import base64
    import json

    import anndata as ad

    link_runs_dir(tmp_path, small_run, monkeypatch)
    adata = ad.read_h5ad(small_run / "cohort.h5ad")
    on_slide = (adata.obs["sample"] == "P1_s1").to_numpy()
    xy = adata.obsm["spatial"][on_slide]
    (x0, y0), (x1, y1) = xy.min(0), (xy.min(0) + xy.max(0)) / 2
    sel = f"slide:P1_s1:{x0:g},{y0:g};{x1:g},{y0:g};{x1:g},{y1:g};{x0:g},{y1:g}"
    at = open_app({"page": "select", "sel": sel})
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Slides"] == "1"
    # the slide as the niche maps draw it (y grows downwards); the embedding as plotted
    axes = {c.proto.id: json.loads(c.proto.spec)["layout"].get("yaxis", {}) for c in at.get("plotly_chart")}
    slide, umap_axis = (next(a for k, a in axes.items() if f"select_{name}" in k) for name in ("slide", "umap"))
    assert slide.get("autorange") == "reversed" and umap_axis.get("autorange") is True
    at.switch_page("pages/embedding.py").run()
    assert_clean(at)
    assert at.toggle(key="embedding_selection").value
    umap = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name") for t in umap["data"]]
    assert names[0] == "not selected" and len(names) > 1
    def n_points(trace) -> int:  # plotly sends long arrays as base64 float64
        x = trace["x"]
        return len(base64.b64decode(x["bdata"])) // 8 if isinstance(x, dict) else len(x)

    n_selected = sum(n_points(t) for t in umap["data"][1:])
    assert 0 < n_selected < n_points(umap["data"][0])


def test_a_bad_selection_in_the_link_is_a_warning(tmp_path, small_run, monkeypatch):
    link_runs_dir(tmp_path, small_run, monkeypatch)
    at = open_app({"page": "select", "sel": "slide:../../etc:0,0;1,1;2,2"})
    assert not at.exception and not at.error
    assert any("cannot be used" in w.value and "unknown slide" in w.value for w in at.warning)
    assert not at.metric
