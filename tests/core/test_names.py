"""Niche names: automatic names, the run's names file and the command line."""

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellniche_core.cli import main
from cellniche_core.keys import RUN_ADATA, Keys
from cellniche_core.names import (NAMES_FILE, NamesError, auto_names, auto_names_from_markers, label,
                                  niche_id, niche_labels, read_names, read_names_csv, with_labels, write_names)


def test_auto_names_list_the_most_enriched_cell_types():
    # 3 niches x 3 cell types; cohort shares: B 30/90, T 30/90, tumour 30/90
    counts = pd.DataFrame({"B cell": [20, 9, 1], "T cell": [10, 1, 19], "Tumour": [0, 20, 10]},
                          index=["N1", "N2", "N3"])
    names = auto_names(counts)
    # N1: B 20/30 = 2x its cohort share (log2 1.0); T 1x; tumour 0
    assert names["N1"] == "B cell"
    # N2: tumour 2x; N3: T 1.9x (log2 0.93) is below 2x: no enriched type
    assert names["N2"] == "Tumour"
    assert names["N3"] == "mixed, mostly T cell"
    assert auto_names(counts, min_log2=0.9)["N3"] == "T cell"


def test_auto_names_order_by_enrichment_and_skip_rare_types():
    counts = pd.DataFrame({"A": [50, 50], "B": [40, 0], "C": [10, 100], "D": [1, 0]}, index=["N1", "N2"])
    # cohort: A 100, B 40, C 110, D 1 of 251 cells. N1 (101 cells): B 2.5x, D 2.5x but 1 % of
    # the niche, A 1.2x. N2 (150 cells): C 1.5x, not enough
    assert auto_names(counts) == {"N1": "B", "N2": "mixed, mostly C"}
    assert auto_names(counts, min_share=0.0)["N1"] == "B + D"
    assert auto_names(counts, min_log2=0.5)["N2"] == "C"
    counts["B"] = [40, 1]  # B's fold in N1 drops below D's: the most enriched comes first
    assert auto_names(counts, min_share=0.0)["N1"] == "D + B"


def test_auto_names_from_markers():
    scores = pd.DataFrame({"CD20": [2.0, -1.0], "CD3": [0.6, 0.1], "PanCK": [0.1, 0.2]}, index=["N1", "N2"])
    assert auto_names_from_markers(scores) == {"N1": "CD20+ CD3+", "N2": "no marker"}


def test_labels_and_ids():
    assert label("N3", "B cell + FDC") == "N3 · B cell + FDC" and label("N3", "  ") == "N3"
    assert niche_id("N3 · B cell + FDC") == "N3" and niche_id("N3") == "N3"
    assert niche_labels(["N1", "N2"], {"N1": "auto 1", "N2": "auto 2"}, {"N2": "mine"}) == {
        "N1": "N1 · auto 1", "N2": "N2 · mine"}


def test_with_labels_leaves_the_input_alone():
    a = ad.AnnData(X=np.ones((3, 2), dtype=np.float32),
                   obs=pd.DataFrame({Keys.NICHE: pd.Categorical(["N2", "N1", "N2"], categories=["N1", "N2"])},
                                    index=["a", "b", "c"]))
    a.obsm["spatial"] = np.zeros((3, 2))
    b = with_labels(a, {"N1": "N1 · x", "N2": "N2 · y"}, niche_key=Keys.NICHE)
    assert b.obs[Keys.NICHE].tolist() == ["N2 · y", "N1 · x", "N2 · y"]
    assert list(b.obs[Keys.NICHE].cat.categories) == ["N1 · x", "N2 · y"]
    assert a.obs[Keys.NICHE].tolist() == ["N2", "N1", "N2"]
    assert b.obsm["spatial"] is a.obsm["spatial"] or np.shares_memory(b.obsm["spatial"], a.obsm["spatial"])


def test_names_file_is_written_atomically_and_checked(tmp_path):
    assert read_names(tmp_path) == {}
    write_names(tmp_path, {"N1": "  tumour   core ", "N2": ""}, niches=["N1", "N2"])
    assert read_names(tmp_path) == {"N1": "tumour core"}
    assert [p.name for p in tmp_path.iterdir()] == [NAMES_FILE]
    with pytest.raises(NamesError, match=r"unknown niche\(s\) 'N7'.*N1, N2"):
        write_names(tmp_path, {"N7": "x"}, niches=["N1", "N2"])
    with pytest.raises(NamesError, match="may not contain"):
        write_names(tmp_path, {"N1": "<img src=x onerror=alert(1)>"}, niches=["N1", "N2"])
    with pytest.raises(NamesError, match="at most 60"):
        write_names(tmp_path, {"N1": "x" * 61}, niches=["N1", "N2"])
    assert read_names(tmp_path) == {"N1": "tumour core"}  # unchanged after refusals
    (tmp_path / NAMES_FILE).write_text("{broken")
    with pytest.raises(NamesError, match="cannot be read as JSON"):
        read_names(tmp_path)


def test_names_csv_errors_name_the_line(tmp_path):
    good = tmp_path / "names.csv"
    good.write_text("niche,name\nN1,tumour core\nN2 · old name,\"B cell, follicle\"\n")
    assert read_names_csv(good, ["N1", "N2"]) == {"N1": "tumour core", "N2": "B cell, follicle"}
    cases = {
        "niche;name\nN1;x\n": "first line must be the header 'niche,name'",
        "": "first line must be the header",
        "niche,name\nN1,x,y\n": "line 2: expected 2 fields",
        "niche,name\nN1,x\nN1,y\n": "line 3: niche N1 is named twice",
        "niche,name\nN9,x\n": r"unknown niche\(s\) 'N9'",
    }
    for text, message in cases.items():
        good.write_text(text)
        with pytest.raises(NamesError, match=message):
            read_names_csv(good, ["N1", "N2"])
    with pytest.raises(NamesError, match="cannot be read"):
        read_names_csv(tmp_path / "missing.csv", ["N1"])


def test_the_downloaded_names_csv_reads_back_with_its_automatic_names_column(tmp_path):
    # as the Niche names page writes it: the given names (empty: automatic) beside the automatic ones
    path = tmp_path / "run_niche_names.csv"
    path.write_text("niche,name,automatic_name\nN1,,CAF\nN2,tumour core,Tumour + Tumour (Ki67+)\n")
    assert read_names_csv(path, ["N1", "N2"]) == {"N1": "", "N2": "tumour core"}
    path.write_text("niche,name,automatic_name\nN1,x\n")
    with pytest.raises(NamesError, match=r"line 2: expected 3 fields \(niche,name,automatic_name\), found 2"):
        read_names_csv(path, ["N1"])
    path.write_text("niche,name,notes\nN1,x,y\n")
    with pytest.raises(NamesError, match="header 'niche,name'"):
        read_names_csv(path, ["N1"])


@pytest.fixture
def run_copy(tmp_path, small_run):
    copy = tmp_path / "runs" / "small"
    shutil.copytree(small_run, copy)
    return copy


def test_names_command_sets_names_from_a_csv(run_copy, tmp_path, capsys):
    before = (run_copy / RUN_ADATA).read_bytes()
    csv = tmp_path / "names.csv"
    csv.write_text("niche,name\nN2,tumour core\n")
    assert main(["names", str(run_copy), "--from", str(csv)]) == 0
    table = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert list(table.columns) == ["niche", "auto_name", "name", "label"]
    row = table.set_index("niche").loc["N2"]
    assert row["name"] == "tumour core" and row["label"] == "N2 · tumour core"
    assert json.loads((run_copy / NAMES_FILE).read_text()) == {"names": {"N2": "tumour core"}}
    assert (run_copy / RUN_ADATA).read_bytes() == before  # the cohort file is never rewritten

    csv.write_text("niche,name\nN42,x\n")
    assert main(["names", str(run_copy), "--from", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "unknown niche(s) 'N42'" in err and "N1, N2" in err
    assert read_names(run_copy) == {"N2": "tumour core"}
    # an empty name takes a named niche back to its automatic name; the others keep theirs
    csv.write_text("niche,name\nN1,immune edge\n")
    assert main(["names", str(run_copy), "--from", str(csv)]) == 0
    csv.write_text("niche,name,automatic_name\nN2,,whatever the download said\n")
    assert main(["names", str(run_copy), "--from", str(csv)]) == 0
    capsys.readouterr()
    assert read_names(run_copy) == {"N1": "immune edge"}
    assert main(["names", str(run_copy), "--reset"]) == 0
    assert read_names(run_copy) == {}


def test_transfer_labels_use_the_names(run_copy, tmp_path, capsys):
    write_names(run_copy, {"N1": "first"}, niches=[f"N{i}" for i in range(1, 7)])
    a = ad.read_h5ad(run_copy / RUN_ADATA)
    query = a[a.obs[Keys.SAMPLE] == a.obs[Keys.SAMPLE].iloc[0]].copy()
    for key in (Keys.NICHE, Keys.EMBEDDING, Keys.UMAP):
        query.obs.pop(key) if key in query.obs else query.obsm.pop(key, None)
    path = tmp_path / "q.h5ad"
    query.write_h5ad(path)
    out = tmp_path / "out.h5ad"
    assert main(["transfer", str(run_copy), str(path), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    labels = set(ad.read_h5ad(out).obs[Keys.TRANSFERRED].astype(str))
    assert "N1 · first" in labels


def test_a_loaded_run_carries_its_given_names(run_copy):
    from cellniche_core.io import load_run
    from cellniche_core.names import given_names, named_run

    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["niche_names"] = {"N1": "from the manifest", "N2": "also from the manifest"}
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    write_names(run_copy, {"N2": "from the file"}, niches=[f"N{i}" for i in range(1, 7)])
    assert given_names(run_copy, manifest) == {"N1": "from the manifest", "N2": "from the file"}
    run = load_run(run_copy, with_weights=False)
    assert run.niche_names == {"N1": "from the manifest", "N2": "from the file"}
    named = named_run(run)
    assert {"N1 · from the manifest", "N2 · from the file"} <= set(named.adata.obs[Keys.NICHE].astype(str))
    assert set(run.adata.obs[Keys.NICHE].astype(str)) == {f"N{i}" for i in range(1, 7)}  # unchanged
