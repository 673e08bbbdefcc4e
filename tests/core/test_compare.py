import itertools
import json
import math
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from cellniche_core.names import SEPARATOR, niche_id
from cellniche_core.cli import main
from cellniche_core.compare import (compare_groups, compare_patients, niche_abundance, niche_adjacency,
                                    summarise_adjacency, summarise_niches, summarise_transitions,
                                    transition_scores)
from cellniche_core.keys import RUN_ADATA, Keys
from cellniche_core.simulate import PLANTED, RESPONSE_KEY, simulate_cohort


def cohort(slides: dict, groups: dict | None = None) -> ad.AnnData:
    """Cells from ``{(patient, slide): {niche: n_cells}}``; coordinates are irrelevant here."""
    obs = []
    for (patient, slide), counts in slides.items():
        for niche, n in counts.items():
            obs += [(patient, slide, niche)] * n
    obs = pd.DataFrame(obs, columns=["patient", "sample", "niche"])
    obs.index = [f"c{i}" for i in range(len(obs))]
    if groups:
        obs["response"] = obs["patient"].map(groups)
    adata = ad.AnnData(obs=obs)
    adata.obsm["spatial"] = np.random.default_rng(0).uniform(0, 100, (len(obs), 2))
    return adata


def by_niche(table: pd.DataFrame) -> pd.DataFrame:
    return table.set_index("niche")


# ----------------------------------------------------------------- conserved / specific


def test_one_patient_niche_is_sample_specific_and_shared_one_conserved():
    # P1 has two slides; "B" lives in P3 only, "C" is a stray handful (noise) in P2
    adata = cohort({
        ("P1", "P1_s1"): {"A": 90, "B": 0},
        ("P1", "P1_s2"): {"A": 100},
        ("P2", "P2_s1"): {"A": 95, "C": 5},
        ("P3", "P3_s1"): {"A": 60, "B": 40},
    })
    before = adata.obs.copy()
    t = by_niche(summarise_niches(adata, n_boot=200))
    pd.testing.assert_frame_equal(adata.obs, before)  # never modified
    assert t.loc["A", "pattern"] == "conserved"
    assert t.loc["A", "n_samples_present"] == 4 and t.loc["A", "n_patients_present"] == 3
    assert t.loc["B", "pattern"] == "sample-specific"
    assert (t.loc["B", "n_samples_present"], t.loc["B", "n_patients_present"]) == (1, 1)
    assert t.loc["B", "dominant_sample"] == "P3_s1" and t.loc["B", "dominant_sample_share"] == 1.0
    assert t.loc["B", "patients_present"] == "P3"
    # 5 cells < max(10 cells, 1 % of 100): noise, not a niche
    assert t.loc["C", "n_samples_present"] == 0 and t.loc["C", "pattern"] == "rare"
    assert t.loc["A", "n_cells"] == 345 and t.loc["B", "share"] == pytest.approx(40 / 390)
    # abundance = mean of the patients' shares (P1 pools its slides)
    assert t.loc["A", "abundance"] == pytest.approx((190 / 190 + 95 / 100 + 60 / 100) / 3)
    # one slide holds all of B: evenness 0; A evenly spread except P3: high
    assert t.loc["B", "evenness"] == 0.0 and t.loc["A", "evenness"] > 0.9
    lo, hi = t.loc["A", ["abundance_ci_low", "abundance_ci_high"]]
    assert 0.6 <= lo <= t.loc["A", "abundance"] <= hi <= 1.0


def test_presence_threshold_is_max_of_cells_and_fraction():
    adata = cohort({
        ("P1", "s1"): {"A": 2990, "X": 30, "Y": 29},  # 1 % of 3049 cells = 30.49 cells
        ("P2", "s2"): {"A": 90, "X": 10, "Y": 9},  # 10 cells needed (1 % would be 1)
    })
    table = niche_abundance(adata, by="sample").set_index(["sample", "niche"])["present"]
    assert not table["s1", "X"] and not table["s1", "Y"]
    assert table["s2", "X"] and not table["s2", "Y"]
    assert niche_abundance(adata, by="sample", min_fraction=0.0098).set_index(
        ["sample", "niche"]).loc[("s1", "X"), "present"]


def test_patterns_for_small_cohorts_and_dominance():
    # two patients: conserved means present in both
    two = by_niche(summarise_niches(cohort({("P1", "a"): {"A": 50, "B": 50},
                                            ("P2", "b"): {"A": 100}}), n_boot=50))
    assert two.loc["A", "pattern"] == "conserved" and two.loc["B", "pattern"] == "sample-specific"
    # one patient: nothing to compare
    one = summarise_niches(cohort({("P1", "a"): {"A": 50, "B": 50}}), n_boot=50)
    assert set(one["pattern"]) == {"undetermined"} and one["abundance_ci_low"].isna().all()
    # six patients: present in all but one patient holds >= 90 % of the size-adjusted abundance
    slides = {(f"P{i}", f"s{i}"): {"A": 1000, "D": 11} for i in range(1, 6)}  # 1.1 %: present
    slides[("P6", "s6")] = {"A": 1000, "D": 3000}  # 75 %: 0.75 / (0.75 + 5 x 0.011) > 0.9
    six = by_niche(summarise_niches(cohort(slides), n_boot=50))
    assert six.loc["D", "n_patients_present"] == 6
    assert six.loc["D", "dominant_patient"] == "P6" and six.loc["D", "dominant_patient_share"] > 0.9
    assert six.loc["D", "pattern"] == "sample-specific"
    # present in 4 of 6 (>= ceil(2/3 * 6)) but uneven -> variable; in 2 of 6 -> partial
    slides = {(f"P{i}", f"s{i}"): {"A": 1000, "V": 12, "Q": 0} for i in range(1, 7)}
    slides[("P1", "s1")] = {"A": 1000, "V": 1000, "Q": 100}
    slides[("P2", "s2")] = {"A": 1000, "V": 800, "Q": 100}
    slides[("P5", "s5")] = {"A": 1000, "V": 0}
    slides[("P6", "s6")] = {"A": 1000, "V": 0}
    mixed = by_niche(summarise_niches(cohort(slides), n_boot=50))
    assert mixed.loc["V", "n_patients_present"] == 4 and mixed.loc["V", "evenness"] < 0.5
    assert mixed.loc["V", "pattern"] == "variable"
    assert mixed.loc["Q", "pattern"] == "partial"


def test_group_enriched_needs_all_present_patients_in_one_group():
    groups = {"P1": "yes", "P2": "no", "P3": "yes", "P4": "no", "P5": "yes", "P6": "no"}
    slides = {(p, f"{p}_s"): {"A": 200, "T": 40 if g == "yes" else 0, "U": 40 if p in ("P1", "P2") else 0}
              for p, g in groups.items()}
    t = by_niche(summarise_niches(cohort(slides, groups), group_key="response", n_boot=50))
    assert t.loc["T", "pattern"] == "group-enriched"
    assert t.loc["U", "pattern"] == "partial"
    assert by_niche(summarise_niches(cohort(slides, groups), n_boot=50)).loc["T", "pattern"] == "partial"


# ---------------------------------------------------------------------- group tests


def welch_by_hand(x, y):
    """Welch's t-test from its textbook formulas (only the t distribution from scipy)."""
    x, y = np.arcsin(np.sqrt(x)), np.arcsin(np.sqrt(y))
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    t = (y.mean() - x.mean()) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    return t, 2 * stats.t.sf(abs(t), df)


def bh_by_hand(p):
    """Benjamini-Hochberg: q_(i) = min over j >= i of p_(j) m / j."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1)
    return out


def test_bh_by_hand_matches_a_worked_example():
    # sorted p .01 .03 .04 .2 -> p*m/rank .04 .06 .0533 .2 -> running min from the top
    np.testing.assert_allclose(bh_by_hand([0.01, 0.04, 0.03, 0.2]), [0.04, 0.16 / 3, 0.16 / 3, 0.2])


def test_group_test_uses_patients_and_matches_a_hand_computation():
    # 100 cells per patient: abundances are the counts / 100; P1 has two slides of 50 cells
    counts = {  # patient: (group, X, Y, Z)
        "P1": ("a", 10, 30, 20), "P2": ("a", 20, 28, 25), "P3": ("a", 15, 35, 30),
        "P4": ("b", 40, 33, 22), "P5": ("b", 45, 27, 20), "P6": ("b", 42, 30, 20),
    }
    slides = {}
    for p, (_, x, y, z) in counts.items():
        cells = {"X": x, "Y": y, "Z": z, "W": 100 - x - y - z}
        if p == "P1":
            half = {k: v // 2 for k, v in cells.items()}
            slides[(p, "P1_s1")], slides[(p, "P1_s2")] = half, half
        else:
            slides[(p, f"{p}_s1")] = cells
    adata = cohort(slides, {p: v[0] for p, v in counts.items()})
    t = by_niche(compare_groups(adata, "response", n_boot=200))

    expected_p = {}
    for j, niche in enumerate("XYZ", start=1):
        a = np.array([v[j] for v in counts.values() if v[0] == "a"]) / 100
        b = np.array([v[j] for v in counts.values() if v[0] == "b"]) / 100
        stat, expected_p[niche] = welch_by_hand(a, b)
        assert t.loc[niche, "statistic"] == pytest.approx(stat)
        assert t.loc[niche, "p_value"] == pytest.approx(expected_p[niche])
        assert t.loc[niche, "effect"] == pytest.approx(b.mean() - a.mean())
        assert t.loc[niche, "mean_a"] == pytest.approx(a.mean())
    w = np.array([100 - sum(v[1:]) for v in counts.values()]) / 100
    expected_p["W"] = welch_by_hand(w[:3], w[3:])[1]
    q = bh_by_hand([expected_p[n] for n in t.index])
    np.testing.assert_allclose(t["q_value"].to_numpy(), q)
    assert t.loc["X", "significant"] and t.loc["X", "enriched_in"] == "b"
    assert t.loc["X", "comparison"] == "b - a" and (t["n_patients_a"] == 3).all()
    assert t.loc["X", "effect_ci_low"] <= t.loc["X", "effect"] <= t.loc["X", "effect_ci_high"]
    assert t.loc["X", "log2_fold_change"] > 1 and t.loc["X", "hedges_g"] > 2
    # the reference flips the sign
    flipped = by_niche(compare_groups(adata, "response", reference="b", n_boot=50))
    assert flipped.loc["X", "effect"] == pytest.approx(-t.loc["X", "effect"])
    assert flipped.loc["X", "p_value"] == pytest.approx(t.loc["X", "p_value"])


def test_rank_test_cannot_go_below_0_1_with_3_vs_3():
    groups = {f"P{i}": "a" if i <= 3 else "b" for i in range(1, 7)}
    slides = {(p, p): {"X": 10 * i, "W": 100 - 10 * i} for i, p in enumerate(groups, start=1)}
    t = by_niche(compare_groups(cohort(slides, groups), "response", method="rank", n_boot=50))
    assert t.loc["X", "test"] == "Mann-Whitney U"
    assert t.loc["X", "p_value"] == pytest.approx(0.1)  # perfectly separated: the exact minimum
    welch = by_niche(compare_groups(cohort(slides, groups), "response", n_boot=50))
    assert welch.loc["X", "p_value"] < 0.05


def test_three_groups_use_welch_anova():
    groups = {f"P{i}": g for i, g in enumerate("aabbcc", start=1)}
    rich = {"a": 10, "b": 12, "c": 40}
    slides = {(p, p): {"X": rich[g] + i % 2, "W": 100 - rich[g] - i % 2}
              for i, (p, g) in enumerate(groups.items())}
    t = by_niche(compare_groups(cohort(slides, groups), "response", n_boot=50))
    assert t.loc["X", "test"].startswith("Welch ANOVA")
    assert t.loc["X", "enriched_in"] == "c" and t.loc["X", "comparison"] == "c - rest"
    assert t.loc["X", "effect"] == pytest.approx(0.405 - (0.105 + 0.125) / 2)
    assert t.loc["X", "p_value"] < 0.05


def test_group_key_errors_explain_themselves():
    groups = {"P1": "r", "P2": "n", "P3": "r", "P4": "r"}
    slides = {(p, p): {"A": 50, "B": 50} for p in groups}
    adata = cohort(slides, groups)
    with pytest.raises(ValueError, match=r"unknown group key 'arm'.*\['response'\]"):
        compare_groups(adata, "arm")
    with pytest.raises(ValueError, match=r"'n': 1 patient.*cannot be estimated"):
        compare_groups(adata, "response")
    adata.obs["site"] = "same"
    with pytest.raises(ValueError, match="1 group"):
        compare_groups(adata, "site")
    adata.obs["cellwise"] = np.arange(adata.n_obs) % 2
    with pytest.raises(ValueError, match="differs between cells of patient"):
        compare_groups(adata, "cellwise")


# ------------------------------------------------------------------------- patients


def test_compare_two_patients():
    adata = cohort({("P1", "a"): {"A": 80, "B": 20}, ("P2", "b"): {"A": 50, "C": 50},
                    ("P3", "c"): {"A": 100}})
    t = by_niche(compare_patients(adata, "P1", "P2"))
    assert t.loc["A", "difference"] == pytest.approx(0.5 - 0.8)
    assert t.loc["B", "presence"] == "only P1" and t.loc["C", "presence"] == "only P2"
    assert t.loc["A", "presence"] == "both"
    assert t.loc["C", "log2_ratio"] > 5 and t.loc["B", "log2_ratio"] < -4
    assert t.loc["A", "cohort_mean"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    # a niche present in neither (a few stray cells in one) gets no fold change
    adata = cohort({("P1", "a"): {"A": 997, "D": 3}, ("P2", "b"): {"A": 1000}, ("P3", "c"): {"D": 500, "A": 500}})
    t = by_niche(compare_patients(adata, "P1", "P2"))
    assert t.loc["D", "presence"] == "neither" and t.loc["D", "n_cells_a"] == 3
    assert np.isnan(t.loc["D", "log2_ratio"]) and np.isfinite(t.loc["A", "log2_ratio"])
    with pytest.raises(ValueError, match="unknown patient 'P9'"):
        compare_patients(adata, "P1", "P9")


# -------------------------------------------------------------------- transitions


def grid(n_rows: int, n_cols: int) -> sp.csr_matrix:
    """4-neighbour grid adjacency; cell (r, c) has index r * n_cols + c."""
    idx = np.arange(n_rows * n_cols).reshape(n_rows, n_cols)
    pairs = np.concatenate([np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()], 1),
                            np.stack([idx[:-1].ravel(), idx[1:].ravel()], 1)])
    m = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(idx.size,) * 2)
    return (m + m.T).tocsr()


def two_halves() -> ad.AnnData:
    #   A A A | B B B
    #   A A A | B B B      4 x 6 grid, 4-neighbour edges;
    #   A A A | B B B      only columns 2 and 3 touch the other niche
    #   A A A | B B B
    rows, cols = np.divmod(np.arange(24), 6)
    obs = pd.DataFrame({"niche": np.where(cols < 3, "A", "B"), "sample": "s1", "patient": "P1"},
                       index=[f"c{i}" for i in range(24)])
    adata = ad.AnnData(obs=obs)
    adata.obsm["spatial"] = np.stack([cols, rows], 1).astype(float)
    return adata


def test_transition_scores_on_two_halves():
    adata = two_halves()
    s = transition_scores(adata, grid(4, 6))
    col = np.arange(24) % 6
    assert (s["mixing"][col == 0] == 0).all()  # all neighbours in one niche: entropy 0
    assert s["border"].to_numpy().tolist() == list(np.isin(col, (2, 3)))
    # an inner-row boundary cell: 3 A + 1 B neighbours, entropy / log 2
    h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)) / np.log(2)
    assert s.loc["c8", "mixing"] == pytest.approx(h) and s.loc["c8", "frac_other"] == 0.25
    assert s.loc["c2", "frac_other"] == pytest.approx(1 / 3)  # top row: 3 neighbours
    assert s.loc["c8", "neighbour_niche"] == "B" and pd.isna(s.loc["c0", "neighbour_niche"])
    summary = by_niche(summarise_transitions(s))
    assert summary.loc["A", "n_border"] == 4 and summary.loc["A", "main_neighbour"] == "B"


def test_adjacency_on_two_halves_borders_along_one_line():
    t = niche_adjacency(two_halves(), grid(4, 6))
    t = t.set_index(["niche_a", "niche_b"])
    assert t.loc[("A", "B"), "observed"] == 4  # one edge per row across the line
    assert t.loc[("A", "A"), "observed"] == 17 and t.loc[("B", "B"), "observed"] == 17
    assert t.loc[("A", "B"), "z_score"] < -3 and t.loc[("A", "A"), "log2_ratio"] > 0
    # expected A-B edges under permutation: 38 edges x P(ends differ) = 38 x 2 * 12 * 12 / (24 * 23)
    assert t.loc[("A", "B"), "expected"] == pytest.approx(38 * 2 * 144 / 552)
    # the only boundary pair takes all 4 boundary edges, exactly what its sizes predict
    assert t.loc[("A", "B"), "border_expected"] == 4 and t.loc[("A", "B"), "border_log2_ratio"] == 0
    assert pd.isna(t.loc[("A", "A"), "border_expected"])


def test_adjacency_null_is_exact_over_all_relabellings():
    # 3 x 3 grid plus two diagonals (uneven degrees), labels 4 x a, 3 x b, 2 x c
    g = grid(3, 3).tolil()
    g[0, 4] = g[4, 0] = g[4, 8] = g[8, 4] = 1
    g = g.tocsr()
    base = np.array(list("aaaabbbcc"))
    adata = ad.AnnData(obs=pd.DataFrame({"niche": base, "sample": "s"}, index=[f"c{i}" for i in range(9)]))
    adata.obsm["spatial"] = np.zeros((9, 2))
    t = niche_adjacency(adata, g).set_index(["niche_a", "niche_b"])
    u, v = sp.triu(g, 1).nonzero()
    counts = {pair: [] for pair in t.index}
    for pos_a in itertools.combinations(range(9), 4):  # every distinct labelling, equally likely
        rest = [i for i in range(9) if i not in pos_a]
        for pos_b in itertools.combinations(rest, 3):
            lab = np.full(9, "c")
            lab[list(pos_a)], lab[list(pos_b)] = "a", "b"
            pair = [tuple(sorted(p)) for p in zip(lab[u], lab[v])]
            for key in counts:
                counts[key].append(sum(p == key for p in pair))
    for key, values in counts.items():
        assert t.loc[key, "expected"] == pytest.approx(np.mean(values), rel=1e-12)
        assert t.loc[key, "expected_sd"] == pytest.approx(np.std(values), rel=1e-9)


def test_cohort_adjacency_adds_slides():
    one = two_halves()
    two = one.copy()
    two.obs["sample"] = "s2"
    two.obs_names = [f"d{i}" for i in range(24)]
    both = ad.concat([one, two])
    g = sp.block_diag([grid(4, 6), grid(4, 6)]).tocsr()
    per_slide = niche_adjacency(both, g)
    assert set(per_slide["sample"]) == {"s1", "s2"}
    cohort_table = summarise_adjacency(per_slide).set_index(["niche_a", "niche_b"])
    single = niche_adjacency(one, grid(4, 6)).set_index(["niche_a", "niche_b"])
    assert cohort_table.loc[("A", "B"), "observed"] == 8
    assert cohort_table.loc[("A", "B"), "expected_sd"] == pytest.approx(
        math.sqrt(2) * single.loc[("A", "B"), "expected_sd"])
    assert cohort_table.loc[("A", "B"), "n_samples_touching"] == 2


# ------------------------------------------------------------ demo cohort, true niches


@pytest.fixture(scope="module")
def demo():
    return simulate_cohort()


def test_demo_planted_niches_come_out_right(demo):
    table = by_niche(summarise_niches(demo, niche_key=Keys.TRUE_NICHE, group_key=RESPONSE_KEY))
    for niche in PLANTED["conserved"]:
        assert table.loc[niche, "pattern"] == "conserved", niche
    for niche, patient in PLANTED["patient_specific"].items():
        assert table.loc[niche, "pattern"] == "sample-specific"
        assert table.loc[niche, "dominant_patient"] == patient
    for niche in PLANTED["group_linked"]:
        assert table.loc[niche, "pattern"] == "group-enriched"

    tests = by_niche(compare_groups(demo, RESPONSE_KEY, niche_key=Keys.TRUE_NICHE))
    linked = set(PLANTED["group_linked"])
    assert set(tests.index[tests["q_value"] < 0.05]) == linked
    for niche, (_, group) in PLANTED["group_linked"].items():
        assert tests.loc[niche, "enriched_in"] == group


def test_demo_necrosis_borders_the_tumour(demo):
    adjacency = niche_adjacency(demo, niche_key=Keys.TRUE_NICHE)
    cohort_table = summarise_adjacency(adjacency).set_index(["niche_a", "niche_b"])
    assert cohort_table.loc[("tumour_core", "necrotic"), "observed"] > 0
    assert cohort_table.loc[("stroma", "necrotic"), "observed"] == 0
    assert cohort_table.loc[("tumour_core", "necrotic"), "border_log2_ratio"] > 0.5
    # the margin wraps the tumour: they share far more boundary than their sizes predict
    assert cohort_table.loc[("tumour_core", "immune_margin"), "border_log2_ratio"] > 0.5
    assert cohort_table.loc[("tumour_core", "stroma"), "border_log2_ratio"] < -3
    assert (adjacency["sample"][adjacency["niche_b"] == "necrotic"] == "P6_s1").all()


# ------------------------------------------------------------------------------ CLI


def test_compare_command_on_a_run(small_run, tmp_path, capsys):
    out = tmp_path / "cmp"
    before = (small_run / RUN_ADATA).read_bytes()
    assert main(["compare", str(small_run), "--out", str(out), "--group-key", "response", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    niches = pd.read_csv(out / "niches.csv")
    assert {"niche", "n_cells", "n_samples_present", "pattern"} <= set(niches.columns)
    adata = ad.read_h5ad(small_run / RUN_ADATA)
    assert niches["n_cells"].sum() == adata.n_obs
    # exported under their labels, "N3 · <most enriched cell types>"
    assert {niche_id(n) for n in niches["niche"]} == set(adata.obs[Keys.NICHE].astype(str))
    assert all(SEPARATOR in n for n in niches["niche"])
    tests = pd.read_csv(out / "group_tests.csv")
    assert {"niche", "effect", "p_value", "q_value"} <= set(tests.columns)
    assert tests["p_value"].between(0, 1).all() and tests["q_value"].between(0, 1).all()
    abundance = pd.read_csv(out / "patient_abundance.csv")
    assert abundance.groupby("patient")["abundance"].sum().round(10).eq(1).all()
    for name in ("adjacency", "adjacency_cohort", "transitions"):
        assert len(pd.read_csv(out / f"{name}.csv"))
    params = json.loads((out / "compare.json").read_text())["params"]
    assert params["group_key"] == "response"
    assert (small_run / RUN_ADATA).read_bytes() == before
    # an existing DIR is kept unless --overwrite; no temporary folder is left behind
    assert main(["compare", str(small_run), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["compare", str(small_run), "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert not (out / "group_tests.csv").exists()  # replaced as a whole
    assert [p.name for p in tmp_path.iterdir()] == ["cmp"]


@pytest.mark.parametrize("args, message", [
    (["--group-key", "arm"], "unknown group key 'arm'"),
    (["--group-key", "patient"], "at least 2 patients"),
    (["--group-key", "cell_type"], "differs between cells of patient"),
])
def test_compare_command_errors(small_run, tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    assert main(["compare", str(small_run), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not out.exists()
    if "arm" in args:
        assert "'response'" in err  # the columns that can be compared are listed


def test_compare_command_missing_run_and_single_group(small_run, tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "cmp")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    copy = tmp_path / "run"
    shutil.copytree(small_run, copy)
    adata = ad.read_h5ad(copy / RUN_ADATA)
    adata.obs["site"] = "Paris"
    adata.write_h5ad(copy / RUN_ADATA)
    assert main(["compare", str(copy), "--out", str(tmp_path / "cmp"), "--group-key", "site"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "1 group" in err and not (tmp_path / "cmp").exists()


def test_compare_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    for flag in ("--out", "--group-key", "--reference", "--niche-key", "--min-fraction", "--min-cells",
                 "--border-threshold", "--n-boot", "--seed", "--overwrite"):
        assert flag in text


@pytest.mark.slow
def test_demo_patterns_hold_for_niches_called_by_a_trained_model(demo):
    from cellniche_core.cellniche import CellNiche
    from cellniche_core.niches import call_niches
    from cellniche_core.train import TrainConfig

    adata = demo.copy()
    model = CellNiche(config=TrainConfig(n_steps=300, walk_length=3, seed=0)).fit(adata, device="cpu")
    model.embed(adata, device="cpu")
    k = adata.obs[Keys.TRUE_NICHE].nunique()
    labels, _ = call_niches(adata.obsm[Keys.EMBEDDING], k, seed=0)
    adata.obs[Keys.NICHE] = pd.Categorical(labels)
    # each called niche stands for the true niche holding most of its cells
    overlap = pd.crosstab(adata.obs[Keys.NICHE], adata.obs[Keys.TRUE_NICHE])
    truth = overlap.idxmax(axis=1)
    planted = set(PLANTED["conserved"]) | set(PLANTED["group_linked"]) | set(PLANTED["patient_specific"])
    assert planted <= set(truth), f"planted niches not recovered:\n{overlap}"

    table = by_niche(summarise_niches(adata, group_key=RESPONSE_KEY))
    tests = by_niche(compare_groups(adata, RESPONSE_KEY))
    for called, true in truth.items():
        row, test = table.loc[called], tests.loc[called]
        context = f"{called} -> {true}\n{overlap}\n{table}\n{tests.iloc[:, :12]}"
        if true in PLANTED["conserved"]:
            assert row["pattern"] == "conserved", context
        if true in PLANTED["patient_specific"]:
            assert row["pattern"] == "sample-specific", context
            assert row["dominant_patient"] == PLANTED["patient_specific"][true], context
        if true in PLANTED["group_linked"]:
            assert row["pattern"] == "group-enriched", context
            assert test["q_value"] < 0.05, context
            assert test["enriched_in"] == PLANTED["group_linked"][true][1], context
        else:
            assert not test["q_value"] < 0.05, context
