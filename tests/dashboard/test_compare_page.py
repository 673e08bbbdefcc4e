"""The cohort-comparison page (AppTest, on the small run) and its figure builders."""

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellniche_core.compare import compare_groups, niche_abundance, summarise_adjacency, niche_adjacency
from cellniche_core.keys import RUN_ADATA
from explorer import compare
from explorer.tables import RunKeys

from apptest_support import assert_clean, open_app, plotly_specs, query

def open_compare(query: dict | None = None):
    return open_app(query, page="compare")


# ----------------------------------------------------------------------------- the page


def test_compare_page_renders_every_section(runs_dir):
    at = open_compare()
    assert_clean(at)
    assert at.title[0].value == "Cohort comparison"
    assert at.selectbox(key="_w_compare:group").value == "response"
    specs = plotly_specs(at)
    assert [s["data"][0]["type"] for s in specs] == ["heatmap", "scatter", "bar", "heatmap"]
    assert len(specs[0]["data"][0]["y"]) == 4  # patients x niches
    assert len(at.get("deck_gl_json_chart")) == 3  # two patients + the transition map
    niches = at.dataframe[0].value
    assert {"niche", "n_cells", "n_samples_present", "pattern"} <= set(niches.columns)
    tests = at.dataframe[1].value
    assert {"effect", "p_value", "q_value"} <= set(tests.columns)
    labels = [b.proto.label for b in at.get("download_button")]
    assert len(labels) == 6
    assert query(at, "page") == ["compare"] and query(at, "group") == ["response"]


def test_link_reopens_the_same_comparison(runs_dir):
    at = open_compare({"group": "none", "pa": "P2", "pb": "P4", "tslide": "P3_s1", "niche": "N2"})
    assert_clean(at)
    assert not at.warning
    assert len(at.get("plotly_chart")) == 3  # no group-difference plot without a group
    assert any("Choose a clinical column" in i.value for i in at.info)
    assert at.selectbox(key="_w_compare:pa").value == "P2"
    assert at.selectbox(key="_w_compare:pb").value == "P4"
    assert at.selectbox(key="_w_compare:tslide").value == "P3_s1"
    headers = "\n".join(m.value for m in at.markdown)
    assert "**P2**" in headers and "**P4**" in headers
    pair = at.dataframe[1].value
    assert {"P2", "P4", "difference", "presence"} <= set(pair.columns)
    # the transition map greys inside cells and colours border cells
    spec = json.loads(at.get("deck_gl_json_chart")[2].proto.json)
    alphas = {tuple(d["c"]) for d in spec["layers"][0]["data"]}
    assert (158, 158, 158, 255) in alphas and len(alphas) > 5


def test_the_two_patients_are_drawn_level_and_to_one_scale(runs_dir):
    at = open_compare({"pa": "P2", "pb": "P4"})
    assert_clean(at)
    # P4 has one slide: its slide menu is shown all the same, fixed, so that both maps start level
    chosen = at.selectbox(key="_w_compare:slide_a")
    assert chosen.value == "P2_s1" and not chosen.disabled
    menu = at.selectbox(key="one_slide_b")
    assert menu.value == "P4_s1" and menu.disabled
    specs = [json.loads(chart.proto.json) for chart in at.get("deck_gl_json_chart")[:2]]
    assert specs[0]["initialViewState"]["zoom"] == specs[1]["initialViewState"]["zoom"]
    bars = [next(layer for layer in spec["layers"] if layer["id"] == "scale_bar") for spec in specs]
    lengths = [bar["data"][0]["p"][1][0] - bar["data"][0]["p"][0][0] for bar in bars]
    assert lengths[0] == lengths[1] > 0


def test_widgets_write_the_comparison_into_the_url(runs_dir):
    at = open_compare()
    at.selectbox(key="_w_compare:pa").set_value("P3").run()
    at.selectbox(key="_w_compare:tslide").set_value("P4_s1").run()
    assert_clean(at)
    assert query(at, "pa") == ["P3"] and query(at, "tslide") == ["P4_s1"]
    assert query(at, "pb") == ["P2"]


def test_groups_that_cannot_be_tested_are_explained(runs_dir, small_run):
    copy = runs_dir / "arm"
    shutil.copytree(small_run, copy)
    adata = ad.read_h5ad(copy / RUN_ADATA)
    adata.obs["arm"] = pd.Categorical(np.where(adata.obs["patient"] == "P1", "A", "B"))
    adata.write_h5ad(copy / RUN_ADATA)
    at = open_compare({"run": "arm", "group": "arm"})
    assert_clean(at)
    assert any("at least 2 patients" in i.value for i in at.info)


# ----------------------------------------------------------------------------- builders


@pytest.fixture
def tiny():
    #  slide  patient  niches                 response
    #  s1     P1       A A A B                r
    #  s2     P2       A A B B                n
    #  s3     P3       A B B B                r
    #  s4     P4       A A A A                n
    niche = list("AAAB" "AABB" "ABBB" "AAAA")
    obs = pd.DataFrame({"sample": np.repeat(["s1", "s2", "s3", "s4"], 4),
                        "patient": np.repeat(["P1", "P2", "P3", "P4"], 4),
                        "response": np.repeat(list("rnrn"), 4), "niche": niche},
                       index=[f"c{i}" for i in range(16)])
    adata = ad.AnnData(obs=obs)
    adata.obsm["spatial"] = np.c_[np.tile(np.arange(4.0), 4), np.repeat(np.arange(4.0), 4)]
    return adata


def test_abundance_matrix_and_heatmap(tiny):
    matrix = compare.abundance_matrix(niche_abundance(tiny, min_cells=1), ["A", "B"])
    assert list(matrix.index) == ["P1", "P2", "P3", "P4"] and list(matrix.columns) == ["A", "B"]
    assert matrix.loc["P2"].tolist() == [0.5, 0.5]
    trace = compare.abundance_heatmap(matrix, {"A": "conserved"}).data[0]
    assert trace.type == "heatmap" and "conserved" in trace.x[0] and trace.x[1] == "B"


def test_group_difference_figure_marks_significant_niches():
    tests = pd.DataFrame({"niche": ["A", "B"], "effect": [0.1, -0.02], "effect_ci_low": [0.05, -0.06],
                          "effect_ci_high": [0.15, 0.01], "p_value": [0.001, 0.5], "q_value": [0.002, 0.5],
                          "comparison": ["n - r"] * 2, "enriched_in": ["n", "r"]})
    trace = compare.group_difference_figure(tests).data[0]
    assert list(trace.y) == ["B", "A"]  # drawn bottom-up: first niche on top
    assert list(trace.marker.color) == [compare.NOT_SIGNIFICANT_COLOR, compare.SIGNIFICANT_COLOR]
    np.testing.assert_allclose(trace.error_x.array, [0.03, 0.05])


def test_group_difference_figure_on_real_tests(tiny):
    tests = compare_groups(tiny, "response", n_boot=50)
    fig = compare.group_difference_figure(tests)
    assert "r - n" in fig.layout.xaxis.title.text  # reference: the first group, "n"


def test_adjacency_heatmap_is_symmetric(tiny):
    table = summarise_adjacency(niche_adjacency(tiny))
    z = np.array(compare.adjacency_heatmap(table, ["A", "B"]).data[0].z, dtype=float)
    assert z.shape == (2, 2) and z[0, 1] == z[1, 0]


def test_adjacency_heatmap_leaves_pairs_without_contacts_blank():
    """No boundary edge seen and under one expected: blank, not a smoothed 0 ("as expected")."""
    table = pd.DataFrame({"niche_a": ["A", "A", "B"], "niche_b": ["B", "C", "C"], "observed": [40, 0, 0],
                          "border_expected": [10.0, 0.3, 6.0],
                          "border_log2_ratio": [1.95, -0.0, np.log2(0.5 / 6.5)]})
    fig = compare.adjacency_heatmap(table, ["A", "B", "C"])
    z = np.array(fig.data[0].z, dtype=float)
    assert np.isnan(z[0, 2]) and np.isnan(z[2, 0])  # A-C: nothing seen, nothing expected
    assert z[0, 1] == 1.95 and z[1, 2] < -3  # B-C: expected 6, none seen: a real depletion
    assert "-0.0" not in list(np.ravel(fig.data[0].text))


def test_transition_points_grey_inside_cells(tiny):
    from cellniche_core.compare import transition_scores

    scores = transition_scores(tiny)
    points, n = compare.transition_points(tiny, RunKeys(), scores, "s4", max_points=10)
    assert n == 4 and len(points) == 4
    assert points["value"].isna().all()  # slide s4 is all A: no border cell
    points, _ = compare.transition_points(tiny, RunKeys(), scores, "s2", max_points=2)
    assert len(points) == 2 and set(points.columns) == {"x", "y", "niche", "cell_type", "value"}
