"""Every dashboard page under Streamlit's AppTest, on the small run (never the full demo)."""

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from apptest_support import assert_clean, decks, query
from apptest_support import open_app as _open_app
from cellniche_core.io import load_run
from cellniche_core.keys import Keys
from cellniche_core.names import niche_id
from explorer import state

PAGES = ("pages/overview.py", "pages/maps.py", "pages/embedding.py", "pages/composition.py")


def open_app(query: dict | None = None):
    return _open_app(query, timeout=120)


def option(at: AppTest, key: str, niche: str) -> str:
    """The option of selectbox ``key`` that is niche ``niche`` (shown as "N3 · name")."""
    return next(o for o in at.selectbox(key=key).options if niche_id(o) == niche)


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


# ----------------------------------------------------------------------------- pages


def test_overview_shows_cohort_summary(runs_dir):
    at = open_app()
    assert_clean(at)
    assert at.title[0].value == "Cohort overview"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Patients"] == "4" and metrics["Niches"] == "6"
    assert metrics["Slides"] == "6"
    assert len(at.get("plotly_chart")) == 1  # niche abundance per slide
    assert "response" in "\n".join(c.value for c in at.caption)
    assert at.sidebar.selectbox[0].value == "small"
    assert query(at, "run") == ["small"] and query(at, "page") == ["overview"]


@pytest.mark.parametrize("page, n_decks, n_plotly", [
    ("pages/maps.py", 2, 0),
    ("pages/embedding.py", 0, 2),
    ("pages/composition.py", 0, 3),
])
def test_every_page_renders(runs_dir, page, n_decks, n_plotly):
    at = open_app()
    at.switch_page(page).run()
    assert_clean(at)
    assert not at.warning
    assert len(at.get("deck_gl_json_chart")) == n_decks
    assert len(at.get("plotly_chart")) == n_plotly
    assert at.sidebar.selectbox[0].value == "small"  # the entrypoint ran: run picker present


def test_page_run_without_the_entrypoint_goes_through_it(runs_dir, legacy_pages_mode):
    # what a fresh server does with a deep link to /maps before any session called
    # st.navigation: the page file runs alone, and must send itself through app.py
    at = open_app()
    at.switch_page("pages/maps.py").run()
    assert_clean(at)
    assert at.title[0].value == "Niche maps"
    assert at.sidebar.selectbox[0].value == "small"
    assert len(at.get("deck_gl_json_chart")) == 2


def test_maps_default_compares_two_patients_with_legend(runs_dir):
    at = open_app()
    at.switch_page("pages/maps.py").run()
    assert at.multiselect[0].value == ["P1_s1", "P2_s1"]
    for spec in decks(at):
        assert spec["views"][0]["@@type"] == "OrthographicView"
        assert len({tuple(d["c"]) for d in spec["layers"][0]["data"]}) >= 4
    legend = markdown_text(at)
    assert "niche" in legend and "N1" in legend and "rgba(" in legend
    assert "Every cell is drawn" in "\n".join(c.value for c in at.caption)


def test_maps_point_budget_subsamples_and_says_so(runs_dir):
    at = open_app({"page": "maps", "points": "10000"})
    at.selectbox(key="_w_maps:points").set_value(10_000).run()
    assert_clean(at)
    # no slide of the small run exceeds 10k cells: everything is drawn
    assert "Every cell is drawn" in "\n".join(c.value for c in at.caption)


def test_link_opens_the_same_map_view(runs_dir):
    at = open_app({"page": "maps", "run": "small", "slides": ["P1_s2", "P3_s1", "P4_s1"],
                   "color": "cell_type", "niche": "N2"})
    assert_clean(at)
    assert not at.warning
    assert at.multiselect[0].value == ["P1_s2", "P3_s1", "P4_s1"]
    assert len(decks(at)) == 3
    assert "outside niche N2" in markdown_text(at)
    for spec in decks(at):
        data = spec["layers"][0]["data"]
        assert all(d["c"][3] < 255 for d in data if niche_id(d["n"]) != "N2")
    assert query(at, "color") == ["cell_type"] and query(at, "niche") == ["N2"]


def test_widgets_write_the_view_into_the_url(runs_dir):
    at = open_app()
    at.switch_page("pages/maps.py").run()
    at.selectbox(key="_w_maps:color").set_value("response").run()
    at.selectbox(key="_w_niche").set_value(option(at, "_w_niche", "N3")).run()
    at.multiselect[0].set_value(["P2_s2"]).run()
    assert_clean(at)
    assert query(at, "color") == ["response"]
    assert query(at, "niche") == ["N3"]
    assert query(at, "slides") == ["P2_s2"]
    assert "response" in markdown_text(at)
    # the view survives a trip to another page
    at.switch_page("pages/overview.py").run()
    at.switch_page("pages/maps.py").run()
    assert at.selectbox(key="_w_maps:color").value == "response"
    assert at.multiselect[0].value == ["P2_s2"]


def test_maps_colour_by_a_numeric_column(runs_dir, small_run):
    import anndata as ad
    import numpy as np

    copy = runs_dir / "numeric"
    shutil.copytree(small_run, copy)
    adata = ad.read_h5ad(copy / "cohort.h5ad")
    adata.obs["area"] = np.random.default_rng(0).uniform(20, 80, adata.n_obs)
    adata.write_h5ad(copy / "cohort.h5ad")
    at = open_app({"run": "numeric", "page": "maps", "color": "area", "slides": "P1_s1"})
    assert_clean(at)
    assert not at.warning
    legend = markdown_text(at)
    assert "linear-gradient" in legend and "area" in legend
    data = decks(at)[0]["layers"][0]["data"]
    assert all(isinstance(d["v"], float) for d in data)
    assert len({tuple(d["c"]) for d in data}) > 20  # a continuous ramp, not a few categories


@pytest.mark.parametrize("query, expected", [
    ({"run": "../../etc"}, "Unknown run '../../etc'"),
    ({"run": "nope"}, "Unknown run 'nope'"),
    ({"page": "maps", "slides": ["P9_s9"]}, "Unknown slide 'P9_s9'"),
    ({"page": "maps", "color": "secret_column"}, "Unknown colour column 'secret_column'"),
    ({"page": "maps", "niche": "N99"}, "Unknown niche 'N99'"),
    ({"page": "maps", "points": "7"}, "Unknown point budget '7'"),
    ({"page": "nowhere"}, "Unknown page 'nowhere'"),
    ({"page": "embedding", "color": "x"}, "Unknown colour 'x'"),
])
def test_bad_link_values_fall_back_with_a_warning(runs_dir, query, expected):
    at = open_app(query)
    assert_clean(at)
    warnings = [w.value for w in at.warning]
    assert any(expected in w for w in warnings), warnings
    assert at.sidebar.selectbox[0].value == "small"


def test_embedding_shows_mixing_per_niche_and_cohort(runs_dir):
    at = open_app({"page": "embedding", "color": "sample", "batch": "patient"})
    assert_clean(at)
    assert at.metric[0].label == "Cohort"
    assert 0.0 <= float(at.metric[0].value) <= 1.0
    table = at.dataframe[0].value
    assert {"mixing", "reading"} <= set(table.columns) and len(table) == 6
    umap = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["type"] for t in umap["data"]} == {"scattergl"}
    assert len([t for t in umap["data"] if t.get("showlegend", True)]) == 6  # one legend entry per slide


def test_embedding_colours_by_another_annotation(runs_dir):
    at = open_app({"page": "embedding", "color": Keys.TRUE_NICHE})
    assert_clean(at)
    picker = at.selectbox(key="_w_embedding:color")
    assert picker.options == ["niche", "sample", "cell_type", "patient", "response", Keys.TRUE_NICHE]
    cells = load_run(runs_dir / "small", with_weights=False).adata
    umap = json.loads(at.get("plotly_chart")[0].proto.spec)
    planted = set(cells.obs[Keys.TRUE_NICHE].astype(str))
    assert {t["name"] for t in umap["data"]} == planted
    assert umap["layout"]["legend"]["title"]["text"] == Keys.TRUE_NICHE


def test_composition_shows_enrichment_markers_and_sizes(runs_dir):
    at = open_app({"page": "composition"})
    assert_clean(at)
    heatmap = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert heatmap["type"] == "heatmap" and len(heatmap["y"]) == 6
    markers = at.dataframe[0].value
    assert len(markers) == 6 and markers["markers"].str.count(",").eq(4).all()


# ----------------------------------------------------------------------------- bad states


def test_broken_run_folder_is_an_error_message(runs_dir):
    broken = runs_dir / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    (broken / "model.json").write_text("{}")
    (broken / "cohort.h5ad").write_text("not an h5ad file")
    for page in (None, "maps", "embedding", "composition"):
        at = open_app({"run": "broken", **({"page": page} if page else {})})
        assert not at.exception, [e.value for e in at.exception]
        assert any("could not be loaded" in e.value for e in at.error)


def test_run_change_resets_slides_silently(runs_dir, small_run):
    shutil.copytree(small_run, runs_dir / "copy")
    at = open_app({"page": "maps", "slides": ["P4_s1"]})
    at.sidebar.selectbox[0].set_value("copy").run()
    assert_clean(at)
    assert query(at, "run") == ["copy"]
    assert at.multiselect[0].value == ["P4_s1"]  # the same slide exists in the copy


def test_heavy_work_is_cached_across_pages_and_colours(runs_dir, small_run, monkeypatch):
    shutil.copytree(small_run, runs_dir / "fresh")  # a new cache key
    calls = {"load": 0, "points": 0}
    real_load, real_points = state.load_run, state.tables.slide_points

    def counting_load(*args, **kwargs):
        calls["load"] += 1
        return real_load(*args, **kwargs)

    def counting_points(*args, **kwargs):
        calls["points"] += 1
        return real_points(*args, **kwargs)

    monkeypatch.setattr(state, "load_run", counting_load)
    monkeypatch.setattr(state.tables, "slide_points", counting_points)
    at = open_app({"run": "fresh", "page": "maps"})
    assert calls == {"load": 1, "points": 2}
    for page in PAGES:
        at.switch_page(page).run()
    at.switch_page("pages/maps.py").run()
    at.selectbox(key="_w_niche").set_value(option(at, "_w_niche", "N1")).run()  # recolouring reuses the sampled points
    assert_clean(at)
    assert calls == {"load": 1, "points": 2}
