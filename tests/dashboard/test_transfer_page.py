"""The label-transfer page (AppTest, on the small run) and its helpers."""

import base64
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellniche_core.io import CohortError, load_run
from cellniche_core.keys import UNKNOWN, Keys
from explorer import transfer
from explorer.palette import UNKNOWN_COLOR, hex_to_rgb
from explorer.tables import RunKeys

from apptest_support import assert_clean, decks, link_runs_dir, open_app

@pytest.fixture(scope="module")
def query_bytes(tmp_path_factory):
    """A new 2-patient cohort (another seed) with 12 cells of a type the reference never saw."""
    from cellniche_core.simulate import simulate_cohort

    q = simulate_cohort(n_patients=2, cells_per_slide=800, seed=5)
    types = q.obs[Keys.CELL_TYPE].astype(str).to_numpy().copy()
    types[:12] = "Mast cell"
    q.obs[Keys.CELL_TYPE] = pd.Categorical(types)
    path = tmp_path_factory.mktemp("query") / "q.h5ad"
    q.write_h5ad(path)
    return path.read_bytes()


@pytest.fixture
def data_dir(tmp_path, small_run, query_bytes, monkeypatch):
    """data/ as the page sees it: runs/small and a query file beside it."""
    link_runs_dir(tmp_path, small_run, monkeypatch)
    (tmp_path / "new_patient.h5ad").write_bytes(query_bytes)
    return tmp_path


def open_transfer(query: dict | None = None):
    return open_app(query, page="transfer")


# ----------------------------------------------------------------------------- the page


def test_transfer_page_asks_for_a_query(data_dir):
    at = open_transfer()
    assert_clean(at)
    assert at.title[0].value == "Label transfer"
    assert at.selectbox(key="_w_transfer:label").value == Keys.NICHE
    options = at.selectbox(key="_w_transfer:query").options
    assert options == ["— upload an .h5ad file —", "data/new_patient.h5ad"]
    assert "Upload a query" in at.info[0].value
    assert len(at.file_uploader) == 1 and not at.get("deck_gl_json_chart")


def test_transfer_page_annotates_a_file_under_data(data_dir):
    at = open_transfer({"query": "new_patient.h5ad"})
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Query cells"] == f"{ad.read_h5ad(data_dir / 'new_patient.h5ad').n_obs:,}"
    assert metrics["Slides"] == "4"  # P1 and P2 have two slides each
    assert "Mast cell (12 cells)" in at.warning[0].value  # the alignment is reported
    specs = decks(at)
    assert len(specs) == 3  # reference, transferred labels, confidence
    reference_colors = {tuple(d["c"]) for d in specs[0]["layers"][0]["data"]}
    label_colors = {tuple(d["c"]) for d in specs[1]["layers"][0]["data"]}
    grey = (*hex_to_rgb(UNKNOWN_COLOR), 255)
    assert label_colors - {grey} <= reference_colors  # a niche has one colour on both maps
    assert len(label_colors) >= 4
    legend = "\n".join(m.value for m in at.markdown)
    assert UNKNOWN in legend and "transfer confidence" in legend
    bars = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(bars) == 1 and [t["name"] for t in bars[0]["data"] if t["type"] == "bar"] == ["reference", "query"]
    table = at.dataframe[0].value
    assert table["label"].iloc[-1] == UNKNOWN
    assert table["query_share"].sum() == pytest.approx(1.0)
    assert len(at.get("download_button")) == 1
    assert at.query_params["query"] == "new_patient.h5ad"


def test_transfer_page_scores_the_querys_own_labels(data_dir):
    # transferring the planted niche, which the query has too: scored against it at once
    at = open_transfer({"query": "new_patient.h5ad", "label": Keys.TRUE_NICHE})
    assert_clean(at)
    assert at.selectbox(key="_w_transfer:own").value == Keys.TRUE_NICHE
    options = at.selectbox(key="_w_transfer:own").options
    assert Keys.CELL_TYPE in options and Keys.SAMPLE not in options and Keys.CONFIDENCE not in options
    metrics = {m.label: m.value for m in at.metric}
    agreement = float(metrics["Agreement (labels the reference knows)"].rstrip("%")) / 100
    assert 0.6 < agreement <= 1.0
    captions = " ".join(c.value for c in at.caption)
    assert f"The query's own obs['{Keys.TRUE_NICHE}'] agrees with the transferred label for" in captions
    heatmap = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"][0]
    assert heatmap["type"] == "heatmap"
    z = heatmap["z"]  # plotly's typed array: base64 bytes, dtype and shape
    rows = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(
        [int(n) for n in str(z["shape"]).split(",")])
    assert np.allclose(rows.sum(1), 1.0)  # each own label as shares of its cells
    table = at.dataframe[-1].value
    assert table["cells"].sum() == int(metrics["Query cells"].replace(",", ""))
    # the niches: the query has no such column, nothing is compared until one is picked
    at = open_transfer({"query": "new_patient.h5ad"})
    assert at.selectbox(key="_w_transfer:own").value == ""
    assert "Agreement (labels the reference knows)" not in {m.label for m in at.metric}
    at.selectbox(key="_w_transfer:own").set_value(Keys.CELL_TYPE).run()  # names nothing the reference has
    assert_clean(at)
    assert any("None of the query's own labels" in i.value for i in at.info)
    assert not at.metric or "Agreement (labels the reference knows)" not in {m.label for m in at.metric}
    assert any("transfer_agreement" in c.proto.id for c in at.get("plotly_chart"))  # the correspondence is drawn
    assert at.query_params["own"] == Keys.CELL_TYPE


def test_agreement_helpers(monkeypatch):
    from cellniche_core.agreement import transfer_agreement

    query = ad.AnnData(obs=pd.DataFrame({
        "own": pd.Categorical(["A", "A", "B", "Z"]), "depth": [0.1, 0.2, 0.3, 0.4], Keys.SAMPLE: list("ssss"),
        "barcode": [f"AAC{i}" for i in range(4)],
        Keys.TRANSFERRED: pd.Categorical(["A", "B", "B", UNKNOWN], categories=["A", "B", UNKNOWN])},
        index=list("wxyz")))
    assert transfer.truth_options(query, RunKeys()) == ["own", "barcode"]
    monkeypatch.setattr(transfer, "MAX_CATEGORIES", 3)  # a column with a value per cell (ids) is no annotation
    assert transfer.truth_options(query, RunKeys()) == ["own"]
    result = transfer_agreement(query, "own")
    fig = transfer.agreement_figure(result["confusion"])
    assert list(fig.data[0].y) == ["A", "B", "Z"] and list(fig.data[0].x) == ["A", "B", UNKNOWN]
    assert np.allclose(fig.data[0].z[0], [0.5, 0.5, 0.0]) and fig.data[0].customdata[2][2] == 1
    shown = transfer.agreement_table(result["per_label"])
    assert shown["agreement"].tolist() == ["50.0%", "100.0%", "not in the reference"]
    assert result["per_label"]["agreement"].isna().tolist() == [False, False, True]  # the result is left as it was
    assert transfer.agreement_metrics(result) == {"Agreement (labels the reference knows)": "66.7%",
                                                  "Of those, called unknown": "0.0%",
                                                  "Labels the reference lacks: unknown": "100.0%"}


def test_transfer_page_takes_an_upload_and_leaves_no_file(data_dir, query_bytes):
    at = open_transfer()
    at.file_uploader[0].set_value(("my slide.h5ad", query_bytes, "application/octet-stream")).run()
    assert_clean(at)
    assert len(at.get("deck_gl_json_chart")) == 3
    uploads = data_dir / transfer.UPLOADS
    assert uploads.is_dir() and not any(p.name.startswith(".query-") for p in uploads.iterdir())


def test_transfer_page_reports_a_bad_upload(data_dir):
    at = open_transfer()
    at.file_uploader[0].set_value(("broken.h5ad", b"this is not an HDF5 file", "application/octet-stream")).run()
    assert not at.exception
    assert len(at.error) == 1 and "broken.h5ad" in at.error[0].value
    assert "not an HDF5 file" in at.error[0].value and ".query-" not in at.error[0].value
    assert not at.get("deck_gl_json_chart")


def test_transfer_page_warns_about_an_unknown_query_in_the_link(data_dir):
    at = open_transfer({"query": "../../etc/passwd"})
    assert not at.exception
    assert any("Unknown query file" in w.value for w in at.warning)
    assert at.selectbox(key="_w_transfer:query").value == "upload"


def test_demo_query_is_the_first_choice(data_dir, query_bytes):
    (data_dir / transfer.DEMO_QUERY).write_bytes(query_bytes)
    at = open_transfer()
    assert_clean(at)
    options = at.selectbox(key="_w_transfer:query").options
    assert options == ["data/demo_query.h5ad", "— upload an .h5ad file —", "data/new_patient.h5ad"]
    assert at.selectbox(key="_w_transfer:query").value == transfer.DEMO_QUERY
    assert len(decks(at)) == 3 and not at.file_uploader  # annotated at once, nothing to upload
    assert at.query_params["query"] == transfer.DEMO_QUERY
    # a link naming the file as the menu shows it, "data/...", is that file, not an unknown one
    at = open_transfer({"query": "data/demo_query.h5ad"})
    assert not any("Unknown query file" in w.value for w in at.warning)
    assert at.selectbox(key="_w_transfer:query").value == transfer.DEMO_QUERY


def test_demo_writes_a_held_out_query_patient():
    from cellniche_core.cli import DEMO_QUERY
    from cellniche_core.simulate import simulate_cohort, simulate_query_patient

    assert DEMO_QUERY == transfer.DEMO_QUERY
    query = simulate_query_patient(cells_per_slide=400, seed=0)
    cohort = simulate_cohort(n_patients=2, cells_per_slide=400, seed=0)
    assert set(query.obs[Keys.PATIENT]) == {"P7"} and set(query.obs[Keys.SAMPLE]) == {"P7_s1"}
    assert not set(query.obs_names) & set(cohort.obs_names)
    assert list(query.var_names) == list(cohort.var_names)
    assert not np.allclose(query.obsm["spatial"][:50], cohort.obsm["spatial"][:50])


# ----------------------------------------------------------------------------- helpers


def test_query_files_skip_runs_uploads_and_hidden(tmp_path):
    for name in ("a.h5ad", "sub/b.h5ad", "runs/x/cohort.h5ad", "uploads/c.h5ad", ".hidden.h5ad", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list(transfer.query_files(tmp_path)) == ["a.h5ad", "sub/b.h5ad"]
    assert transfer.query_files(tmp_path / "missing") == {}


def test_upload_errors_name_the_upload(small_run, tmp_path):
    run = transfer.with_weights(load_run(small_run, with_weights=False))
    for name, data, message in (("x.csv", b"a,b", "expected an .h5ad"), ("e.h5ad", b"", "empty"),
                                ("bad.h5ad", b"garbage", "not an HDF5 file")):
        with pytest.raises(CohortError, match=message) as exc:
            transfer.annotate_upload(run, data, name, upload_dir=tmp_path, label_key=Keys.NICHE)
        assert str(tmp_path) not in str(exc.value)
    assert not any(tmp_path.iterdir())


def test_label_table_and_scales():
    from explorer.palette import NICHE, color_scale

    reference = ad.AnnData(obs=pd.DataFrame({Keys.NICHE: pd.Categorical(["N1", "N1", "N2", "N3"])},
                                            index=list("abcd")))
    query = ad.AnnData(obs=pd.DataFrame({
        Keys.TRANSFERRED: pd.Categorical(["N1", UNKNOWN, "N1"], categories=["N1", "N2", "N3", UNKNOWN]),
        Keys.CONFIDENCE: np.array([1.0, 0.4, 0.8], dtype=np.float32)}, index=list("xyz")))
    table = transfer.label_table(reference, Keys.NICHE, query)
    assert table["label"].tolist() == ["N1", "N2", "N3", UNKNOWN]
    assert table["reference_cells"].tolist() == [2, 1, 1, 0]
    assert table["query_cells"].tolist() == [2, 0, 0, 1]
    assert table["mean_confidence"].iloc[0] == pytest.approx(0.9) and np.isnan(table["mean_confidence"].iloc[1])

    ref_scale = color_scale(reference.obs[Keys.NICHE], column=Keys.NICHE, kind=NICHE)
    scale = transfer.transferred_scale(ref_scale)
    assert scale.categories == ("N1", "N2", "N3", UNKNOWN)
    assert scale.color_map()["N2"] == ref_scale.color_map()["N2"] and scale.color_map()[UNKNOWN] == UNKNOWN_COLOR
    fig = transfer.composition_figure(table, scale)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["reference", "query"] and not any(t.showlegend for t in bars)
    # the legend's entries are neutral swatches, pale and full: the bars take each label's colour
    assert [t.name for t in fig.data if t.showlegend is not False] == ["reference (pale)", "query (full colour)"]
    assert transfer.label_options({"niche": "niche", "cell_type": "category", "sample": "category",
                                        "transfer_confidence": "numeric"}, RunKeys()) == ["niche", "cell_type"]


def test_build_demo_writes_the_query_beside_the_cohort(tmp_path, monkeypatch):
    import cellniche_core.pipeline as pipeline
    from cellniche_core.cli import build_demo

    calls, stages = [], []

    def fake_fit(inputs, out, options, **kwargs):
        calls.append([str(p) for p in inputs])
        return out

    monkeypatch.setattr(pipeline, "fit_run", fake_fit)
    build_demo(tmp_path, on_stage=lambda stage, fraction, message: stages.append(stage))
    assert calls == [[str(tmp_path / "demo_cohort.h5ad")]]  # the query is not in the run
    query = ad.read_h5ad(tmp_path / transfer.DEMO_QUERY)
    cohort = ad.read_h5ad(tmp_path / "demo_cohort.h5ad", backed="r")
    assert set(query.obs[Keys.PATIENT]) == {"P7"} and "P7" not in set(cohort.obs[Keys.PATIENT])
    assert stages[0] == "simulate"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_cohort.h5ad", "demo_query.h5ad"]


def test_unknown_note_counts_the_reasons_and_says_which_distance_decides():
    report = {"n_unknown": 12, "n_cells": 1000, "n_far": 9, "n_ambiguous": 4,
              "calibration": {"held_out_by": "patient", "input_threshold": 1.2, "input_edge_threshold": 0.7}}
    note = transfer.unknown_note(report, quantile=0.99, min_confidence=0.5)
    assert note.startswith("12 of 1,000 cells are unknown: 9 have neighbourhood-averaged inputs farther")
    assert "99.0% of reference cells held out by patient" in note and "on the edge of such a region" in note
    assert "4 have a winning label with less than 50% of the vote" in note and "same label" not in note
    # the default transfer calls no split vote unknown, and the note says what such cells get
    note = transfer.unknown_note(report, quantile=0.99)
    assert "less than" not in note and "keeps the label most of them hold" in note
    report["calibration"]["input_edge_threshold"] = None  # no spatial graph: no region to follow
    assert "edge" not in transfer.unknown_note(report, quantile=0.99)
    # on embeddings alone the embedding's per-label thresholds decide
    report["calibration"] = {"held_out_by": "cell"}
    note = transfer.unknown_note(report, quantile=0.95)
    assert "9 lie (with their neighbours, on average) farther" in note
    assert "95.0% of reference cells held out one by one (same label)" in note and "inputs" not in note


def test_an_annotated_query_names_its_files_without_the_servers_folders(small_run, tmp_path, query_bytes):
    from cellniche_core.io import load_run
    from cellniche_core.keys import INPUT_UNS_KEY

    run = transfer.with_weights(load_run(small_run, with_weights=False))
    path = tmp_path / "deep" / "folder" / "slide.h5ad"
    path.parent.mkdir(parents=True)
    path.write_bytes(query_bytes)
    query, _ = transfer.annotate_file(run, path, label_key=Keys.NICHE, device="cpu")
    assert list(query.uns[INPUT_UNS_KEY]["files"]) == ["slide.h5ad"]
    query, _ = transfer.annotate_upload(run, query_bytes, "my slide.h5ad", upload_dir=tmp_path / "up",
                                        label_key=Keys.NICHE, device="cpu")
    assert str(tmp_path) not in str(query.uns[INPUT_UNS_KEY]["files"])
