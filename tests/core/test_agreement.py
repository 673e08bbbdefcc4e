"""Scoring a transfer against the query's own labels (cellniche_core.agreement) and its CLI report."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellniche_core.agreement import agreement_summary, describe_agreement, transfer_agreement
from cellniche_core.cli import main
from cellniche_core.io import CohortError
from cellniche_core.keys import TRANSFER_UNS_KEY, UNKNOWN, Keys


def annotated(own, called, reference=("A", "B", "C")):
    """A query whose obs holds its own labels ('own') and transferred ones over ``reference`` + unknown."""
    obs = pd.DataFrame({"own": own, Keys.TRANSFERRED: pd.Categorical(called, categories=[*reference, UNKNOWN])},
                       index=[f"c{i}" for i in range(len(own))])
    return ad.AnnData(obs=obs)


def test_agreement_counts_known_and_unseen_labels_apart():
    own = ["A", "A", "A", "A", "B", "B", "Z", "Z", "Z", "NA", None]
    called = ["A", "A", "B", UNKNOWN, "B", "C", UNKNOWN, UNKNOWN, "A", "A", "B"]
    result = transfer_agreement(annotated(own, called), "own")
    assert result["n_labelled"] == 9  # "NA" and None are no label
    assert result["n_known"] == 6 and result["accuracy"] == pytest.approx(3 / 6)  # unknown counts as wrong
    assert result["unknown_known"] == pytest.approx(1 / 6)
    assert result["n_unseen"] == 3 and result["unseen_labels"] == ["Z"]
    assert result["unknown_unseen"] == pytest.approx(2 / 3)
    table = result["per_label"].set_index("label")
    assert list(table.index) == ["A", "B", "Z"]  # the reference's labels in its order, then the unseen
    assert table.loc["A", "agreement"] == pytest.approx(0.5) and table.loc["A", "unknown"] == pytest.approx(0.25)
    assert table.loc["B", "most_called"] in {"B", "C"} and bool(table.loc["Z", "in_reference"]) is False
    assert np.isnan(table.loc["Z", "agreement"]) and table.loc["Z", "most_called"] == UNKNOWN
    confusion = result["confusion"]
    assert list(confusion.columns) == ["A", "B", "C", UNKNOWN] and confusion.to_numpy().sum() == 9
    assert confusion.loc["A", "A"] == 2 and confusion.loc["Z", UNKNOWN] == 2 and confusion.loc["B", "C"] == 1
    assert "per_label" not in agreement_summary(result) and agreement_summary(result)["accuracy"] == 0.5
    lines = describe_agreement(result)
    assert "50.0% of its 6 cells" in lines[0] and "16.7% of them called unknown" in lines[0]
    assert "3 cells of labels the reference lacks ('Z'): 66.7% called unknown" in lines[1]


def test_rows_follow_the_reference_order_so_agreement_is_the_diagonal():
    own = ["C", "C", "C", "A", "Y", "X", "X"]
    result = transfer_agreement(annotated(own, ["C", "C", "A", "A", UNKNOWN, UNKNOWN, "B"]), "own")
    assert list(result["confusion"].index) == ["A", "C", "X", "Y"]  # reference order, then unseen by size
    assert list(result["confusion"].columns) == ["A", "B", "C", UNKNOWN]


def test_integer_labels_compare_as_text():
    result = transfer_agreement(annotated([1, 1, 2, 2], ["1", "1", "2", "1"], reference=("1", "2")), "own")
    assert result["accuracy"] == pytest.approx(0.75) and result["n_unseen"] == 0


def test_a_column_naming_its_labels_otherwise_is_told_so():
    result = transfer_agreement(annotated(["x", "y"], ["A", "B"]), "own")
    assert result["n_known"] == 0 and np.isnan(result["accuracy"])
    said = describe_agreement(result)
    assert len(said) == 1 and "none of the query's own labels" in said[0]  # not "unseen, 0 % unknown"
    assert "called unknown" not in said[0]


@pytest.mark.parametrize("own, message", [
    ([0.1, 0.2, 0.3], "holds measurements"),
    (["NA", None, ""], "no query cell has a label"),
])
def test_a_column_without_labels_is_refused(own, message):
    with pytest.raises(CohortError, match=message):
        transfer_agreement(annotated(own, ["A", "B", "C"]), "own")


def test_a_column_of_cell_ids_is_refused(monkeypatch):
    import cellniche_core.agreement as agreement

    monkeypatch.setattr(agreement, "MAX_LABELS", 3)
    with pytest.raises(CohortError, match="holds 4 distinct values, more than 3: ids of cells"):
        transfer_agreement(annotated(["c1", "c2", "c3", "c4"], ["A", "B", "C", "A"]), "own")


def test_a_missing_column_is_named_with_the_columns_there_are():
    with pytest.raises(CohortError, match=r"no obs\['layer'\].*'own'"):
        transfer_agreement(annotated(["A"], ["A"]), "layer")


def test_the_command_line_scores_a_query_that_has_the_label(small_run, tmp_path, capsys):
    from cellniche_core.simulate import simulate_cohort

    q = simulate_cohort(n_patients=1, cells_per_slide=600, seed=7)
    path = tmp_path / "q.h5ad"
    q.write_h5ad(path)
    out = tmp_path / "o.h5ad"
    assert main(["transfer", str(small_run), str(path), "--out", str(out), "--label-key", Keys.TRUE_NICHE,
                 "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("agreement: the query's own"))
    shown = float(line.split("label for ")[1].split("%")[0]) / 100
    a = ad.read_h5ad(out)
    stored = a.uns[TRANSFER_UNS_KEY]["agreement"]
    assert stored["truth_key"] == Keys.TRUE_NICHE and stored["n_labelled"] == q.n_obs
    known = a.obs[Keys.TRUE_NICHE].astype(str).isin(a.obs[Keys.TRANSFERRED].cat.categories)
    expected = (a.obs[Keys.TRANSFERRED].astype(str) == a.obs[Keys.TRUE_NICHE].astype(str))[known].mean()
    assert stored["accuracy"] == pytest.approx(expected) and shown == pytest.approx(expected, abs=5e-4)
    assert stored["accuracy"] > 0.7  # a patient like the reference's: most cells keep their niche

    # the niches themselves: the query has no such column, so nothing is scored
    assert main(["transfer", str(small_run), str(path), "--out", str(tmp_path / "n.h5ad"), "--quiet"]) == 0
    assert "agreement:" not in capsys.readouterr().err
    assert "agreement" not in ad.read_h5ad(tmp_path / "n.h5ad").uns[TRANSFER_UNS_KEY]
    # a column asked for that is not there: refused before the work, nothing written
    assert main(["transfer", str(small_run), str(path), "--out", str(tmp_path / "x.h5ad"), "--truth-key", "layer",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no obs['layer'] to compare the transfer with" in err and "'true_niche'" in err
    assert not (tmp_path / "x.h5ad").exists()
