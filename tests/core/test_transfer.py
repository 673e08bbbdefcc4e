import os
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellniche_core.names import SEPARATOR, niche_id
from cellniche_core.cli import main
from cellniche_core.io import CohortError, Run, load_run
from cellniche_core.keys import UNKNOWN, Keys
from cellniche_core.transfer import TRANSFER_UNS_KEY, annotate_query, describe_alignment, transfer_labels

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------- hand-made embeddings


def _cloud(centres: dict, *, n_per_patient=60, patients=("P1", "P2", "P3", "P4"), spread=0.05, seed=0):
    """Unit-vector embeddings around labelled centres, in every patient.

    ``centres``: label -> direction (d,). Each patient holds ``n_per_patient`` cells
    of each label, drawn around its (normalised) centre with Gaussian noise ``spread``.
    """
    rng = np.random.default_rng(seed)
    emb, label, patient = [], [], []
    for p in patients:
        for name, c in centres.items():
            c = np.asarray(c, dtype=float) / np.linalg.norm(c)
            emb.append(c + spread * rng.standard_normal((n_per_patient, len(c))))
            label += [name] * n_per_patient
            patient += [p] * n_per_patient
    emb = np.concatenate(emb)
    adata = ad.AnnData(obs=pd.DataFrame({Keys.NICHE: pd.Categorical(label), Keys.PATIENT: patient},
                                        index=[f"c{i}" for i in range(len(label))]))
    adata.obsm[Keys.EMBEDDING] = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    return adata


def _query(points) -> ad.AnnData:
    points = np.asarray(points, dtype=float)
    q = ad.AnnData(obs=pd.DataFrame(index=[f"q{i}" for i in range(len(points))]))
    q.obsm[Keys.EMBEDDING] = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return q


#   A = e1        B = e2          far = e3
#   query: near A (x2), exactly between A and B, far from both
AB = {"A": [1, 0, 0], "B": [0, 1, 0]}


def test_vote_on_two_tight_clusters():
    ref = _cloud(AB)
    q = _query([[1, 0.02, 0], [1, 0, 0.03], [1, 1, 0], [0, 0, 1]])
    summary = transfer_labels(ref, q)
    labels = q.obs[Keys.TRANSFERRED].astype(str).tolist()
    conf = q.obs[Keys.CONFIDENCE].to_numpy()
    assert labels[:2] == ["A", "A"]
    assert (conf[:2] > 0.95).all()
    assert labels[2] == UNKNOWN and 0.3 < conf[2] < 0.75  # between the two: no clear winner
    assert labels[3] == UNKNOWN  # unlike any reference label
    assert q.obs[Keys.TRANSFERRED].cat.categories.tolist() == ["A", "B", UNKNOWN]
    assert summary["counts"] == {"A": 2, "B": 0, UNKNOWN: 2}
    assert summary["n_far"] >= 2 and summary["calibration"]["held_out_by"] == Keys.PATIENT
    assert ((conf >= 0) & (conf <= 1)).all() and q.obs[Keys.CONFIDENCE].dtype == np.float32
    d = q.obs[Keys.TRANSFER_DISTANCE].to_numpy()
    assert d[3] > d[2] > d[0]
    assert TRANSFER_UNS_KEY in q.uns and q.uns[TRANSFER_UNS_KEY]["params"]["label_key"] == Keys.NICHE
    assert Keys.TRANSFERRED not in ref.obs  # the reference is left as it was


def test_twice_n_neighbors_vote_and_each_counts_alike():
    # around a query point: 12 B cells right on it, then 18 A cells a little farther (a ring),
    # spread over the four patients; everything else is far away
    ref = _cloud(AB)
    rng = np.random.default_rng(2)
    spot = np.array([0.0, 0.0, 1.0])
    ring = np.c_[np.cos(np.arange(18)), np.sin(np.arange(18)), np.full(18, 20.0)]
    near = np.vstack([spot + 0.001 * rng.standard_normal((12, 3)), ring / np.linalg.norm(ring, axis=1, keepdims=True)])
    extra = ad.AnnData(obs=pd.DataFrame({Keys.NICHE: ["B"] * 12 + ["A"] * 18,
                                         Keys.PATIENT: np.resize(["P1", "P2", "P3", "P4"], 30)},
                                        index=[f"s{i}" for i in range(30)]))
    extra.obsm[Keys.EMBEDDING] = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    both = ad.concat([ref, extra])
    both.obs[Keys.NICHE] = pd.Categorical(both.obs[Keys.NICHE])
    q = _query([spot])
    summary = transfer_labels(both, q, n_neighbors=15, min_confidence=0.0)
    # the 15 nearest alone, or the closest counted more, would say B
    assert q.obs[Keys.TRANSFERRED].astype(str).tolist() == ["A"]
    assert q.obs[Keys.CONFIDENCE].iloc[0] == pytest.approx(18 / 30)
    assert q.uns[TRANSFER_UNS_KEY]["params"]["vote_neighbors"] == 30 and summary["n_far"] == 0


def test_a_split_vote_keeps_its_plurality_label_unless_a_majority_is_asked_for():
    # A, B and C share one place: a query there is close to the reference, but no label
    # reliably holds a majority of the vote; D elsewhere is clear
    ref = _cloud({"A": [1, 0, 0], "B": [1, 0, 0], "C": [1, 0, 0], "D": [0, 1, 0]})
    points = np.array([1, 0, 0]) + 0.03 * np.random.default_rng(1).standard_normal((20, 3))
    q = _query(np.vstack([points, [[0, 1, 0.01]]]))
    summary = transfer_labels(ref, q)
    labels = q.obs[Keys.TRANSFERRED].astype(str).to_numpy()
    conf = q.obs[Keys.CONFIDENCE].to_numpy()
    # by default unknown means far from the reference: the split cells keep a label of the place
    assert summary["n_far"] == 0 and summary["n_ambiguous"] == 0 and summary["n_unknown"] == 0
    assert set(labels[:-1]) <= {"A", "B", "C"} and labels[-1] == "D" and conf[-1] == 1.0
    assert (conf[:-1] < 0.5).sum() >= 3 and conf[:-1].max() < 0.9  # the confidence shows the split
    assert q.uns[TRANSFER_UNS_KEY]["params"]["min_confidence"] == 0.0
    # asked for a majority, the cells without one are unknown, exactly those
    summary = transfer_labels(ref, q, min_confidence=0.5)
    labels = q.obs[Keys.TRANSFERRED].astype(str).to_numpy()
    assert summary["n_far"] == 0 and summary["n_ambiguous"] >= 3
    np.testing.assert_array_equal(labels == UNKNOWN, q.obs[Keys.CONFIDENCE].to_numpy() < 0.5)
    assert labels[-1] == "D"


def test_a_held_out_patient_is_rarely_unknown():
    data = _cloud({"A": [1, 0, 0, 0], "B": [0, 1, 0, 0], "C": [0, 0, 1, 1]}, spread=0.1,
                  patients=("P1", "P2", "P3", "P4", "P5"), seed=3)
    held = data.obs[Keys.PATIENT] == "P5"
    ref, q = data[~held].copy(), data[held].copy()
    summary = transfer_labels(ref, q)
    assert summary["unknown_fraction"] < 0.05
    right = q.obs[Keys.TRANSFERRED].astype(str) == q.obs[Keys.NICHE].astype(str)
    assert right.mean() > 0.9


def test_a_patient_specific_population_does_not_widen_the_thresholds():
    # P4 alone has a population labelled "A" (clustering merged it) far from everything;
    # held out by patient it looks novel, and must not teach the rule that far is normal
    ref = _cloud(AB, n_per_patient=80)
    odd = _cloud({"A": [0, 0, 1]}, n_per_patient=40, patients=("P4",), seed=1)
    ref = ad.concat([ref, odd], index_unique="-")
    summary = transfer_labels(ref, _query([[1, 0, 0]]))
    calibration = summary["calibration"]
    assert calibration["group_specific_fraction"] > 0.05
    assert calibration["thresholds"]["A"] < 0.05
    q = _query([[1, 0, 0], [1, 0, 1]])  # an A cell, and a cell halfway to the odd population
    transfer_labels(ref, q)
    assert q.obs[Keys.TRANSFERRED].astype(str).tolist() == ["A", UNKNOWN]


def test_calibration_falls_back_to_single_cells_without_patients():
    ref = _cloud(AB)
    del ref.obs[Keys.PATIENT]
    summary = transfer_labels(ref, _query([[1, 0, 0], [0, 0, 1]]))
    assert summary["calibration"]["held_out_by"] == "cell"
    assert summary["counts"]["A"] == 1 and summary["counts"][UNKNOWN] == 1


def test_inputs_unlike_the_reference_are_unknown_even_where_the_embedding_is_close():
    # the encoder folds a new input onto a niche it knows (embedding right at "A"); the
    # cell's averaged inputs are 3x as strong as any reference cell's: far from the inputs
    ref = _cloud(AB)
    rng = np.random.default_rng(4)
    ref_profiles = np.where(ref.obs[Keys.NICHE].to_numpy()[:, None] == "A", [1.0, 0.0], [0.0, 1.0])
    ref_profiles = ref_profiles + 0.1 * rng.standard_normal((ref.n_obs, 2))
    q = _query([[1, 0, 0], [1, 0.01, 0], [0, 1, 0]])
    q_profiles = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.05]])
    summary = transfer_labels(ref, q, profiles=(ref_profiles, q_profiles))
    assert q.obs[Keys.TRANSFERRED].astype(str).tolist() == ["A", UNKNOWN, "B"]
    assert summary["n_far_input"] == 1
    calibration = summary["calibration"]
    assert 0.1 < calibration["input_threshold"] < 1.0
    assert calibration["input_neighbors"] == 40  # 2 x 15 neighbours, at the density of 4 patients minus one
    assert q.uns[TRANSFER_UNS_KEY]["params"]["input_rule"] is True
    # without the input profiles the same cell keeps its label
    transfer_labels(ref, q)
    assert q.obs[Keys.TRANSFERRED].astype(str).tolist() == ["A", "A", "B"]
    with pytest.raises(ValueError, match="one row per reference and query cell"):
        transfer_labels(ref, q, profiles=(ref_profiles, q_profiles[:2]))


def test_with_inputs_the_input_rule_alone_decides_what_is_far():
    # a query cell the embedding puts far from every label while its inputs are plainly A's
    # (an embedding a new slide shifted): reported as far in the embedding, but it keeps A
    ref = _cloud(AB)
    rng = np.random.default_rng(4)
    ref_profiles = np.where(ref.obs[Keys.NICHE].to_numpy()[:, None] == "A", [1.0, 0.0], [0.0, 1.0])
    ref_profiles = ref_profiles + 0.1 * rng.standard_normal((ref.n_obs, 2))
    q = _query([[1, 0, 0], [1, 0, 0.6]])
    q_profiles = np.array([[1.0, 0.0], [1.0, 0.0]])
    summary = transfer_labels(ref, q, profiles=(ref_profiles, q_profiles))
    assert q.obs[Keys.TRANSFERRED].astype(str).tolist() == ["A", "A"]
    assert summary["n_far_embedding"] == 1 and summary["n_far"] == summary["n_far_input"] == 0
    assert q.obs[Keys.TRANSFER_DISTANCE].iloc[1] > summary["calibration"]["thresholds"]["A"]
    # on the embedding alone its distance decides
    summary = transfer_labels(ref, q)
    assert q.obs[Keys.TRANSFERRED].astype(str).tolist() == ["A", UNKNOWN]
    assert summary["n_far"] == summary["n_far_embedding"] == 1


def test_the_input_threshold_does_not_depend_on_the_embedding():
    # same inputs and labels, two embeddings: in the second, patient P4's A cells sit apart
    # (patient-specific in the embedding, left out of its calibration); the input rule is
    # calibrated in input space, so its threshold must not move
    ref = _cloud(AB, n_per_patient=80)
    rng = np.random.default_rng(7)
    profiles = np.where(ref.obs[Keys.NICHE].to_numpy()[:, None] == "A", [1.0, 0.0], [0.0, 1.0])
    profiles = profiles + rng.gamma(2.0, 0.05, (ref.n_obs, 2))  # skewed: the top quantile depends on who counts
    q = _query([[1, 0, 0], [0, 1, 0]])
    q_profiles = np.array([[1.0, 0.0], [0.0, 1.0]])
    first = transfer_labels(ref, q, profiles=(profiles, q_profiles))["calibration"]
    moved = ref.copy()
    odd = ((moved.obs[Keys.PATIENT] == "P4") & (moved.obs[Keys.NICHE] == "A")).to_numpy()
    moved.obsm[Keys.EMBEDDING][odd] = np.array([0, 0, 1], dtype=np.float32)
    second = transfer_labels(moved, q, profiles=(profiles, q_profiles))["calibration"]
    assert second["group_specific_fraction"] > first["group_specific_fraction"]
    assert second["input_threshold"] == pytest.approx(first["input_threshold"])


def _chain(n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of a path graph 0 - 1 - ... - n-1 (a row of cells along a slide)."""
    nbrs = [[j for j in (i - 1, i + 1) if 0 <= j < n] for i in range(n)]
    return np.cumsum([0] + [len(r) for r in nbrs]), np.array([j for r in nbrs for j in r])


def test_distances_are_read_over_each_cells_surroundings_with_the_query_graph():
    # a row of 30 query cells: 20 at A, one lone cell a little off A inside them (cell 10),
    # then 9 far cells side by side (a region the reference lacks)
    ref = _cloud(AB)
    far = [0, 0.3, 1]
    q = _query([[1, 0, 0]] * 10 + [[1, 0, 0.2]] + [[1, 0, 0]] * 10 + [far] * 9)
    summary = transfer_labels(ref, q)
    alone = q.obs[Keys.TRANSFERRED].astype(str).to_numpy()
    own = q.obs[Keys.TRANSFER_DISTANCE].to_numpy()
    assert alone[10] == UNKNOWN and (alone[21:] == UNKNOWN).all() and summary["n_far"] == 10
    summary = transfer_labels(ref, q, query_graph=_chain(q.n_obs))
    labels = q.obs[Keys.TRANSFERRED].astype(str).to_numpy()
    mean = q.obs[Keys.TRANSFER_DISTANCE].to_numpy()
    np.testing.assert_allclose(mean[10], own[9:12].mean(), rtol=1e-5)
    np.testing.assert_allclose(mean[0], own[:2].mean(), rtol=1e-5)  # an end of the row has one neighbour
    assert (labels[:20] == "A").all()  # the lone cell is averaged with its two known neighbours
    assert (labels[21:] == UNKNOWN).all()  # the region stays unknown, its edge cell included
    assert labels[20] == UNKNOWN  # and blurs by a cell: the known cell beside it is pulled in
    assert summary["n_far"] == 10 and q.uns[TRANSFER_UNS_KEY]["params"]["spatial_mean"] is True
    with pytest.raises(ValueError, match="query_graph has 29 nodes, the query 30 cells"):
        transfer_labels(ref, q, query_graph=_chain(29))


def test_grow_regions_follows_a_far_region_through_its_edge_cells_only():
    from cellniche_core.novelty import edge_quantile, grow_regions

    far = np.zeros(20, dtype=bool)
    far[10:13] = True
    edge = np.zeros(20, dtype=bool)
    edge[[2, 7, 8, 9, 13, 14, 16]] = True  # 2 and 16 are cut off from the region
    grown = grow_regions(far, edge, _chain(20))
    assert np.flatnonzero(grown).tolist() == list(range(7, 15))
    assert np.flatnonzero(grow_regions(np.zeros(20, dtype=bool), edge, _chain(20))).tolist() == []
    assert edge_quantile(0.99) == pytest.approx(0.95) and edge_quantile(0.8) == 0.5


def test_a_new_region_grows_into_its_edge_but_not_into_known_cells_beside_it():
    """Input distances between the edge threshold and the threshold: unknown only where the
    cell is joined to a far region and its finest scale is far too."""
    ref = _cloud(AB, n_per_patient=80)
    rng = np.random.default_rng(5)
    side = np.where(ref.obs[Keys.NICHE].to_numpy()[:, None] == "A", [1.0, 0.0], [0.0, 1.0])
    ref_profiles = np.hstack([side, side]) + 0.1 * rng.standard_normal((ref.n_obs, 4))  # a fine and a coarse scale
    grid = 1 + np.linspace(0.0, 1.0, 401)

    def profiles(fine, coarse) -> np.ndarray:
        """Query profiles offset along the A axis at each scale."""
        fine, coarse = np.broadcast_arrays(np.asarray(fine, dtype=float), np.asarray(coarse, dtype=float))
        return np.c_[fine, 0 * fine, coarse, 0 * coarse]

    def first_far(quantile: float, fine: float | None = None) -> float:
        """The smallest coarse offset of the grid whose lone cell is far at this quantile, with
        the fine offset ``fine``; without it, the smallest far offset of the fine scale alone."""
        probe = _query([[1, 0, 0]] * len(grid))
        pair = (ref_profiles[:, :2], profiles(grid, 0)[:, :2]) if fine is None else (ref_profiles, profiles(fine, grid))
        transfer_labels(ref, probe, quantile=quantile, profiles=pair)
        far = probe.obs[Keys.TRANSFERRED].astype(str).to_numpy() == UNKNOWN
        assert far.any() and not far[0]
        return grid[np.argmax(far)]

    edge_fine = first_far(0.95) + 0.01  # the finest scale alone is beyond the edge threshold
    # coarse offsets that put the whole profile between the edge threshold (0.95) and the threshold
    edge_coarse = np.mean([first_far(0.95, edge_fine), first_far(0.99, edge_fine)])
    mixed_coarse = np.mean([first_far(0.95, 1.0), first_far(0.99, 1.0)])
    #      known x10 | lone edge-like patch x5 | known x10 | known, coarse scale mixed x6 | edge x8 | far x10
    fine = [1.0] * 10 + [edge_fine] * 5 + [1.0] * 10 + [1.0] * 6 + [edge_fine] * 8 + [3.0] * 10
    coarse = [1.0] * 10 + [edge_coarse] * 5 + [1.0] * 10 + [mixed_coarse] * 6 + [edge_coarse] * 8 + [3.0] * 10
    q = _query([[1, 0, 0]] * len(fine))  # the encoder folds them all onto A
    args = dict(profiles=(ref_profiles, profiles(fine, coarse)), query_graph=_chain(len(fine)))
    summary = transfer_labels(ref, q, profile_scales=2, **args)
    labels = q.obs[Keys.TRANSFERRED].astype(str).to_numpy()
    assert (labels[:31] == "A").all()  # the patch, like the edge, is not joined to anything far
    assert (labels[32:] == UNKNOWN).all()  # the region and its edge (the edge's first cell is averaged)
    calibration = summary["calibration"]
    assert calibration["input_edge_threshold"] < calibration["input_threshold"]
    assert q.uns[TRANSFER_UNS_KEY]["params"]["input_edge_quantile"] == pytest.approx(0.95)
    # read as one scale, the known cells whose coarse scale is mixed are taken into the region
    transfer_labels(ref, q, **args)
    assert (q.obs[Keys.TRANSFERRED].astype(str).to_numpy()[26:] == UNKNOWN).all()
    with pytest.raises(ValueError, match="cannot be cut into 3 scales"):
        transfer_labels(ref, q, profile_scales=3, **args)


def test_one_slide_is_calibrated_on_spatial_blocks():
    ref = _cloud(AB, patients=("P1",), n_per_patient=200)
    del ref.obs[Keys.PATIENT]
    rng = np.random.default_rng(0)
    ref.obsm[Keys.SPATIAL] = rng.uniform(0, 1000, (ref.n_obs, 2))
    summary = transfer_labels(ref, _query([[1, 0, 0], [0, 0, 1]]))
    assert summary["calibration"]["held_out_by"] == "spatial block"
    assert summary["counts"]["A"] == 1 and summary["counts"][UNKNOWN] == 1


def test_nearest_euclidean_skips_the_own_group_and_matches_brute_force():
    from cellniche_core.novelty import nearest_euclidean, profile_distances, spatial_blocks

    rng = np.random.default_rng(1)
    index, points = rng.standard_normal((50, 3)), rng.standard_normal((7, 3))
    brute = np.sort(np.linalg.norm(points[:, None] - index[None], axis=2), axis=1)[:, :4]
    np.testing.assert_allclose(nearest_euclidean(points, index, 4), brute, rtol=1e-4, atol=1e-4)
    groups = np.repeat([0, 1], 25)
    held = nearest_euclidean(index[:3], index, 2, groups=(groups[:3], groups))
    brute = np.sort(np.linalg.norm(index[:3, None] - index[None, 25:], axis=2), axis=1)[:, :2]
    np.testing.assert_allclose(held, brute, rtol=1e-4, atol=1e-4)
    # two equal groups: a held-out cell sees half the reference, so the query takes twice the neighbours
    _, query, k_query, (near, rows) = profile_distances(index, groups, np.arange(50), points, k=5)
    assert k_query == 10 and query.shape == (7,)
    # the query's k nearest rows come back for the input vote, closest first
    np.testing.assert_allclose(near, np.linalg.norm(points[:, None] - index[rows], axis=2), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(near, np.sort(np.linalg.norm(points[:, None] - index[None], axis=2), axis=1)[:, :5],
                               rtol=1e-4, atol=1e-4)
    # one slide cut into compact blocks: every block is one side of a clear gap
    coords = np.vstack([rng.uniform(0, 1, (30, 2)), rng.uniform(0, 1, (30, 2)) + [10, 0]])
    blocks = spatial_blocks(coords, n_blocks=2)
    assert len(set(blocks[:30])) == 1 and len(set(blocks[30:])) == 1 and blocks[0] != blocks[-1]


def test_cells_nearest_in_input_space_vote_beside_the_embedding():
    """An embedding that cannot tell A from B leaves the vote to chance; the inputs decide it."""
    rng = np.random.default_rng(3)
    n = 240
    ref = ad.AnnData(obs=pd.DataFrame({Keys.NICHE: pd.Categorical(np.tile(["A", "B"], n // 2)),
                                       Keys.PATIENT: np.repeat(["P1", "P2", "P3", "P4"], n // 4)},
                                      index=[f"r{i}" for i in range(n)]))
    blur = lambda m, sd: np.array([1.0, 0.0, 0.0]) + sd * rng.standard_normal((m, 3))  # noqa: E731
    ref.obsm[Keys.EMBEDDING] = blur(n, 0.05).astype(np.float32)
    sides = np.tile([[2.0, 0.0], [0.0, 2.0]], (n // 2, 1))
    ref_profiles = (sides + 0.1 * rng.standard_normal((n, 2))).astype(np.float32)
    # unlabelled reference cells are dropped before the vote: its rows are not the reference's
    ref.obs[Keys.NICHE] = ref.obs[Keys.NICHE].astype(object).where(np.arange(n) % 7 != 3)
    ref.obs[Keys.NICHE] = pd.Categorical(ref.obs[Keys.NICHE])
    truth = np.tile(["A", "B"], 10)
    q = _query(blur(len(truth), 0.01))  # near the centre of the reference: never far
    q_profiles = (np.where(truth[:, None] == "A", [2.0, 0.0], [0.0, 2.0])
                  + 0.02 * rng.standard_normal((len(truth), 2))).astype(np.float32)
    transfer_labels(ref, q, profiles=(ref_profiles, q_profiles))
    with_inputs = q.obs[Keys.TRANSFERRED].astype(str).to_numpy()
    confident = q.obs[Keys.CONFIDENCE].to_numpy()
    assert (with_inputs == truth).all()
    # the input vote is unanimous, the embedding's split: the shares average to 0.5-1
    assert (confident > 0.5).all() and (confident < 1.0).all()
    transfer_labels(ref, q)
    assert np.mean(q.obs[Keys.TRANSFERRED].astype(str).to_numpy() == truth) < 1.0


def test_not_annotated_text_labels_do_not_vote():
    # exported annotations often write "NA" (or nothing) for spots nobody labelled
    ref = _cloud({"A": [1, 0, 0], "B": [0, 1, 0], "NA": [0, 0, 1]})
    q = _query([[0, 0, 1], [1, 0, 0]])
    summary = transfer_labels(ref, q, min_confidence=0.0)
    assert "NA" not in q.obs[Keys.TRANSFERRED].cat.categories
    assert set(summary["counts"]) == {"A", "B", UNKNOWN} and q.obs[Keys.TRANSFERRED].iloc[1] == "A"
    ref.obs[Keys.NICHE] = ref.obs[Keys.NICHE].astype(str).replace("NA", "")
    transfer_labels(ref, q)
    assert list(q.obs[Keys.TRANSFERRED].cat.categories) == ["A", "B", UNKNOWN]


def test_reference_subsample_keeps_every_label():
    ref = _cloud({"A": [1, 0, 0], "B": [0, 1, 0]}, n_per_patient=200)
    rare = _cloud({"R": [0, 0, 1]}, n_per_patient=8)
    ref = ad.concat([ref, rare], index_unique="-")
    q = _query([[0, 0, 1], [1, 0, 0]])
    summary = transfer_labels(ref, q, max_reference_cells=300)
    assert q.uns[TRANSFER_UNS_KEY]["params"]["n_reference_cells"] <= 300
    assert summary["counts"]["R"] == 1 and summary["counts"]["A"] == 1


def test_bad_label_key_lists_the_usable_columns():
    ref = _cloud(AB)
    ref.obs["score"] = 1.0
    with pytest.raises(CohortError, match=r"obs\['cell_state'\] is missing.*'niche'"):
        transfer_labels(ref, _query([[1, 0, 0]]), label_key="cell_state")
    with pytest.raises(CohortError, match="numeric"):
        transfer_labels(ref, _query([[1, 0, 0]]), label_key="score")
    with pytest.raises(CohortError, match="dimensions"):
        transfer_labels(ref, _query([[1, 0]]))


def test_any_categorical_column_transfers_and_unknown_does_not_vote():
    ref = _cloud(AB)
    ref.obs["expert"] = np.where(ref.obs[Keys.NICHE] == "A", "tumour", UNKNOWN)
    q = _query([[1, 0, 0], [0, 1, 0]])
    transfer_labels(ref, q, label_key="expert", key_added="expert_transferred")
    assert q.obs["expert_transferred"].cat.categories.tolist() == ["tumour", UNKNOWN]
    assert q.obs["expert_transferred"].astype(str).tolist() == ["tumour", UNKNOWN]


# ----------------------------------------------------------------- alignment with a model


@pytest.fixture(scope="module")
def pheno_expr_run():
    """A tiny pheno_expr model (cell types and markers) wrapped as an in-memory run."""
    from cellniche_core.cellniche import CellNiche
    from cellniche_core.niches import call_niches
    from cellniche_core.simulate import simulate_cohort
    from cellniche_core.train import TrainConfig

    cohort = simulate_cohort(n_patients=3, cells_per_slide=500, slides_per_patient=1, seed=2)
    model = CellNiche(features="pheno_expr", config=TrainConfig(n_steps=20, seed=0)).fit(cohort, device="cpu")
    model.embed(cohort, device="cpu")
    labels, _ = call_niches(cohort.obsm[Keys.EMBEDDING], 4)
    cohort.obs[Keys.NICHE] = pd.Categorical(labels)
    manifest = {"params": {"keys": vars(model.keys).copy(), "patient_key": Keys.PATIENT}}
    return Run(Path("<memory>"), cohort, model.state_dict(), model.model_config(), manifest)


def _query_from(cohort: ad.AnnData, patient="P1") -> ad.AnnData:
    return cohort[cohort.obs[Keys.PATIENT] == patient].copy()


def test_a_query_of_another_kind_of_values_is_flagged_or_refused(pheno_expr_run):
    from cellniche_core.cellniche import CellNiche
    from cellniche_core.train import TrainConfig

    cohort = pheno_expr_run.adata.copy()  # the markers made into counts
    cohort.X = np.random.default_rng(0).poisson(3.0 * np.clip(cohort.X, 0, None) + 1.0).astype(np.float32)
    model = CellNiche(features="expr", config=TrainConfig(n_steps=5, seed=0)).fit(cohort, device="cpu")
    assert model.spec.transform == "log1p_norm"
    run = Run(Path("<memory>"), cohort, model.state_dict(), model.model_config(), pheno_expr_run.manifest)
    q = _query_from(cohort)
    del q.obsm[Keys.EMBEDDING], q.obs[Keys.NICHE]
    assert "values" not in annotate_query(run, q.copy(), device="cpu")["alignment"]  # counts, as trained
    logged = q.copy()
    logged.X = np.log1p(logged.X / logged.X.sum(1, keepdims=True) * 1e4)  # a log-normalised export
    alignment = annotate_query(run, logged, device="cpu")["alignment"]
    assert alignment["values"] == {"reference": "log1p_norm", "query": "none"}
    assert any("the query's values look like values already transformed" in line and "counts (whole numbers)" in line
               for line in describe_alignment(alignment))
    scaled = q.copy()
    scaled.X = scaled.X - scaled.X.mean(0)  # centred: negative values
    with pytest.raises(CohortError, match="X has negative values"):
        annotate_query(run, scaled, device="cpu")
    assert Keys.TRANSFERRED not in scaled.obs


def test_alignment_is_reported_and_the_query_still_embeds(pheno_expr_run):
    q = _query_from(pheno_expr_run.adata)
    del q.obsm[Keys.EMBEDDING], q.obs[Keys.NICHE]
    x = q[:, [g for g in q.var_names if g != "CD8"]].X  # a missing gene
    q = ad.AnnData(np.hstack([x, np.ones((q.n_obs, 1), np.float32)]), obs=q.obs.copy(),
                   var=pd.DataFrame(index=[g for g in q.var_names if g != "CD8"] + ["NEW1"]),
                   obsm={Keys.SPATIAL: q.obsm[Keys.SPATIAL]})
    types = q.obs[Keys.CELL_TYPE].astype(str).to_numpy().copy()
    types[:25] = "Mast cell"  # an unknown cell type
    q.obs[Keys.CELL_TYPE] = pd.Categorical(types)

    report = annotate_query(pheno_expr_run, q, device="cpu")
    alignment = report["alignment"]
    assert alignment["missing_genes"] == ["CD8"]
    assert alignment["extra_genes"] == ["NEW1"]
    assert alignment["unknown_cell_types"] == {"Mast cell": 25}
    emb = q.obsm[Keys.EMBEDDING]
    assert emb.shape == (q.n_obs, pheno_expr_run.adata.obsm[Keys.EMBEDDING].shape[1])
    assert np.isfinite(emb).all()
    assert q.obs[Keys.TRANSFERRED].notna().all()
    assert q.uns[TRANSFER_UNS_KEY]["alignment"]["missing_genes"] == ["CD8"]


@pytest.mark.parametrize("what", ["genes", "cell types"])
def test_a_query_with_nothing_to_align_is_refused(pheno_expr_run, what):
    q = _query_from(pheno_expr_run.adata)
    if what == "genes":
        q.var_names = [f"gene{i}" for i in range(q.n_vars)]
    else:
        q.obs[Keys.CELL_TYPE] = pd.Categorical(["alien"] * q.n_obs)
    with pytest.raises(CohortError, match="nothing to align"):
        annotate_query(pheno_expr_run, q, device="cpu", source="new.h5ad")


def test_query_is_validated_with_the_reference_keys(pheno_expr_run):
    q = _query_from(pheno_expr_run.adata)
    del q.obsm[Keys.SPATIAL]
    with pytest.raises(CohortError, match=r"new.h5ad: obsm\['spatial'\] is missing"):
        annotate_query(pheno_expr_run, q, source="new.h5ad")
    q = _query_from(pheno_expr_run.adata)
    del q.obs[Keys.CELL_TYPE]
    with pytest.raises(CohortError, match="cell_type"):
        annotate_query(pheno_expr_run, q, source="new.h5ad")


# ----------------------------------------------------------------- the trained small run


def test_a_held_out_patient_of_the_small_run_is_rarely_unknown(small_run):
    a = load_run(small_run, with_weights=False).adata
    held = a.obs[Keys.PATIENT] == "P1"  # the necrotic niche is P4's: P1 has only shared niches
    ref, q = a[~held].copy(), a[held].copy()
    summary = transfer_labels(ref, q)
    assert summary["unknown_fraction"] < 0.05
    agree = q.obs[Keys.TRANSFERRED].astype(str) == q.obs[Keys.NICHE].astype(str)
    assert agree.mean() > 0.85


@pytest.fixture
def query_path(tmp_path):
    from cellniche_core.simulate import simulate_cohort

    q = simulate_cohort(n_patients=2, cells_per_slide=800, seed=5)
    types = q.obs[Keys.CELL_TYPE].astype(str).to_numpy().copy()
    types[:12] = "Mast cell"
    q.obs[Keys.CELL_TYPE] = pd.Categorical(types)
    path = tmp_path / "query.h5ad"
    q.write_h5ad(path)
    return path


def test_transfer_through_the_command_line(small_run, query_path, tmp_path, capsys):
    before = query_path.read_bytes()
    out = tmp_path / "annotated.h5ad"
    code = main(["transfer", str(small_run), str(query_path), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert query_path.read_bytes() == before  # the query file is only read
    assert "alignment: 1 cell type(s) not in the reference" in err and "Mast cell (12 cells)" in err
    assert "far from every reference label)" in err and "confidence below" not in err  # no split-vote rule
    a = ad.read_h5ad(out)
    assert a.obsm[Keys.EMBEDDING].shape == (a.n_obs, 32)
    assert UNKNOWN in a.obs[Keys.TRANSFERRED].cat.categories
    reference_niches = set(load_run(small_run, with_weights=False).adata.obs[Keys.NICHE].astype(str))
    transferred = set(a.obs[Keys.TRANSFERRED].astype(str)) - {UNKNOWN}
    assert {niche_id(n) for n in transferred} <= reference_niches
    assert all(SEPARATOR in n for n in transferred)  # niches transfer under their labels
    conf = a.obs[Keys.CONFIDENCE].to_numpy()
    assert ((conf >= 0) & (conf <= 1)).all()
    uns = a.uns[TRANSFER_UNS_KEY]
    assert uns["reference"] == str(small_run) and uns["alignment"]["unknown_cell_types"] == {"Mast cell": 12}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.h5ad", "query.h5ad"]  # no temp left

    # a second run does not overwrite without --overwrite; a label key that is not there is named
    assert main(["transfer", str(small_run), str(query_path), "--out", str(out), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    # asked for, the split-vote rule is applied and its count reported
    code = main(["transfer", str(small_run), str(query_path), "--out", str(tmp_path / "m.h5ad"),
                 "--device", "cpu", "--min-confidence", "0.9"])
    err = capsys.readouterr().err
    n_low = int(re.search(r"([\d,]+) with a confidence below 0\.9\)", err).group(1).replace(",", ""))
    m = ad.read_h5ad(tmp_path / "m.h5ad")
    assert n_low == int((m.obs[Keys.CONFIDENCE] < 0.9).sum()) > 0
    assert (m.obs[Keys.TRANSFERRED].astype(str)[m.obs[Keys.CONFIDENCE] < 0.9] == UNKNOWN).all()
    (tmp_path / "m.h5ad").unlink()
    assert uns["params"]["aligned_vote"]  # by default the vote is cast again without each slide's shift
    assert main(["transfer", str(small_run), str(query_path), "--out", str(tmp_path / "n.h5ad"), "--quiet",
                 "--device", "cpu", "--no-slide-shift"]) == 0
    once = ad.read_h5ad(tmp_path / "n.h5ad")
    assert not once.uns[TRANSFER_UNS_KEY]["params"]["aligned_vote"]
    np.testing.assert_array_equal(once.obs[Keys.TRANSFERRED] == UNKNOWN, a.obs[Keys.TRANSFERRED] == UNKNOWN)
    (tmp_path / "n.h5ad").unlink()
    code = main(["transfer", str(small_run), str(query_path), "--out", str(tmp_path / "b.h5ad"),
                 "--label-key", "expert", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "obs['expert'] is missing" in err and "'niche'" in err
    assert main(["transfer", str(small_run), str(query_path), "--out", str(query_path), "--overwrite"]) == 2
    assert "overwrite the query" in capsys.readouterr().err
    assert query_path.read_bytes() == before


def test_what_reading_the_query_did_is_said(small_run, query_path, tmp_path, capsys):
    """A z column dropped and cell names made unique are said with the alignment, not only kept in uns."""
    q = ad.read_h5ad(query_path)
    q.obsm[Keys.SPATIAL] = np.hstack([q.obsm[Keys.SPATIAL], np.zeros((q.n_obs, 1))])
    q.obs_names = ["cell"] * 3 + list(q.obs_names[3:])
    q.write_h5ad(tmp_path / "z.h5ad")
    assert main(["transfer", str(small_run), str(tmp_path / "z.h5ad"), "--out", str(tmp_path / "a.h5ad")]) == 0
    err = capsys.readouterr().err
    assert "alignment: the query as read: z.h5ad: obsm['spatial'] has 3 columns; the first 2 (x, y) are used" in err
    assert "alignment: the query as read: 2 duplicate obs names were made unique" in err
    notes = ad.read_h5ad(tmp_path / "a.h5ad").uns[TRANSFER_UNS_KEY]["alignment"]["input_notes"]
    assert len(notes) == 2
    assert main(["transfer", str(small_run), str(query_path), "--out", str(tmp_path / "b.h5ad")]) == 0
    assert "the query as read" not in capsys.readouterr().err  # nothing to say of a plain file


def test_a_query_missing_the_references_keys_is_told_to_use_them(small_run, tmp_path, capsys):
    q = ad.read_h5ad(small_run / "cohort.h5ad")[:40].copy()
    q.obs = q.obs.rename(columns={Keys.CELL_TYPE: "celltype"})
    q.write_h5ad(tmp_path / "renamed.h5ad")
    code = main(["transfer", str(small_run), str(tmp_path / "renamed.h5ad"), "--out", str(tmp_path / "o.h5ad"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"obs['{Keys.CELL_TYPE}'] is missing" in err and "'celltype'" in err
    assert f"keys of its reference run ({small_run.name})" in err and "--cell-type-key" not in err
    assert not (tmp_path / "o.h5ad").exists()


def test_transfer_command_errors_are_clean(small_run, tmp_path, capsys):
    bad = tmp_path / "bad.h5ad"
    q = ad.AnnData(obs=pd.DataFrame({Keys.CELL_TYPE: ["x"] * 30}, index=[f"c{i}" for i in range(30)]))
    q.obsm[Keys.SPATIAL] = np.random.default_rng(0).uniform(0, 100, (30, 2))
    q.write_h5ad(bad)
    code = main(["transfer", str(small_run), str(bad), "--out", str(tmp_path / "o.h5ad"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.h5ad" in err and "nothing to align" in err
    code = main(["transfer", str(tmp_path / "no_run"), str(bad), "--out", str(tmp_path / "o.h5ad")])
    assert code == 2 and "no such run folder" in capsys.readouterr().err
    assert not (tmp_path / "o.h5ad").exists()


def test_transfer_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["transfer", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("RUN_DIR", "QUERY", "--out", "--label-key", "--device", "--n-neighbors", "--quantile",
                 "--min-confidence", "--no-slide-shift", "--overwrite"):
        assert flag in text


@pytest.mark.slow
def test_transfer_as_a_subprocess(small_run, query_path, tmp_path):
    out = tmp_path / "o.h5ad"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "cellniche_core", "transfer", str(small_run), str(query_path),
                          "--out", str(out), "--device", "cpu", "--quiet"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out) and out.is_file()


# ----------------------------------------------------------------- acceptance (README figures)


@pytest.mark.slow
def test_leave_one_patient_out_accuracy_on_the_demo_cohort():
    import torch

    from bench.bench_transfer import leave_one_patient_out
    from cellniche_core.simulate import simulate_cohort

    # a UMAP fit earlier in the session (numba's OpenMP layer) leaves torch on every core;
    # on a shared 2-core machine that makes this training ~10x slower
    torch.set_num_threads(1)

    # P6 alone carries the necrotic niche: the reference (P1-P5) has never seen it
    r = leave_one_patient_out(simulate_cohort(), "P6", seed=0, device="cpu")
    assert r["accuracy_known"] >= 0.9
    assert r["unknown_novel"]["necrotic"] >= 0.8
    assert r["unknown_known"] < 0.05


def test_transfer_compares_surroundings_at_its_own_scales_not_trainings(tiny_run):
    """Training compares wider surroundings for its positives than transfer does for its rule."""
    from cellniche_core.cellniche import CellNiche, spatial_graph
    from cellniche_core.features import make_features
    from cellniche_core.novelty import INPUT_HOPS, input_profiles, model_input_profiles

    run = load_run(tiny_run)
    model = CellNiche.from_state(run.model_config, run.state_dict)
    assert max(model.config.profile_hops) > max(INPUT_HOPS)
    x, _ = make_features(run.adata, model.spec, cell_type_key=model.keys.cell_type_key)
    g = spatial_graph(run.adata, model.graph, model.keys)
    np.testing.assert_array_equal(model_input_profiles(model, run.adata),
                                  input_profiles(x, g.indptr, g.indices, INPUT_HOPS))
    q = run.adata.copy()
    annotate_query(run, q, device="cpu")
    assert q.uns[TRANSFER_UNS_KEY]["params"]["profile_scales"] == len(INPUT_HOPS)


def test_the_discriminant_vote_reads_one_hop_more_than_the_input_rule(tiny_run):
    """The third vote reads the input rule's surroundings and the next hop, and annotate_query casts it."""
    from cellniche_core.cellniche import CellNiche, spatial_graph
    from cellniche_core.features import make_features
    from cellniche_core.novelty import INPUT_HOPS, VOTE_HOPS, input_profiles, model_input_profiles, next_hop

    assert VOTE_HOPS == (*INPUT_HOPS, INPUT_HOPS[-1] + 1)
    run = load_run(tiny_run)
    model = CellNiche.from_state(run.model_config, run.state_dict)
    x, _ = make_features(run.adata, model.spec, cell_type_key=model.keys.cell_type_key)
    g = spatial_graph(run.adata, model.graph, model.keys)
    narrow = model_input_profiles(model, run.adata)
    np.testing.assert_allclose(next_hop(narrow, g.indptr, g.indices, len(INPUT_HOPS)),
                               input_profiles(x, g.indptr, g.indices, VOTE_HOPS[-1:]), rtol=1e-5, atol=1e-6)
    q = run.adata.copy()
    annotate_query(run, q, device="cpu")
    params = q.uns[TRANSFER_UNS_KEY]["params"]
    assert params["discriminant_vote"] and params["input_vote"]
    ref = run.adata
    with pytest.raises(ValueError, match="wider_profiles need one row per reference and query cell"):
        transfer_labels(ref, q, profiles=(narrow, narrow), wider_profiles=(narrow, narrow[:5]))
    with pytest.raises(ValueError, match="read beside profiles: give both"):
        transfer_labels(ref, q, wider_profiles=(narrow, narrow))
    transfer_labels(ref, q)  # two embeddings alone: neither the inputs' vote nor the discriminant one
    assert not q.uns[TRANSFER_UNS_KEY]["params"]["discriminant_vote"]


def test_the_discriminant_vote_decides_where_the_embedding_and_the_inputs_are_split():
    """Query cells half-way between A and B in the embedding, whose inputs vary far more within
    each label (x1..x6) than between A and B (x0): only the discriminant space tells them apart."""
    ref = _cloud(AB)
    rng = np.random.default_rng(0)

    def inputs(codes):
        x = np.concatenate([rng.normal(0, 0.15, (len(codes), 1)), rng.normal(0, 3.0, (len(codes), 6))], axis=1)
        x[:, 0] += codes
        return x.astype(np.float32)

    ref_x = inputs((ref.obs[Keys.NICHE].astype(str) == "B").to_numpy().astype(int))
    truth = np.repeat([0, 1], 100)
    q = _query([[1, 1, 0]] * len(truth))
    q_x = inputs(truth)
    right = np.where(truth == 1, "B", "A")

    transfer_labels(ref, q, profiles=(ref_x, q_x))
    without = np.mean(q.obs[Keys.TRANSFERRED].astype(str).to_numpy() == right)
    transfer_labels(ref, q, profiles=(ref_x[:, :4], q_x[:, :4]), wider_profiles=(ref_x[:, 4:], q_x[:, 4:]))
    with_it = np.mean(q.obs[Keys.TRANSFERRED].astype(str).to_numpy() == right)
    assert without < 0.8 < 0.9 < with_it


def test_the_discriminant_vote_waits_for_several_patients_or_slides():
    """On one slide the spread within a label holds no slide-to-slide difference to set aside:
    no discriminant vote, whatever is given."""
    ref = _cloud(AB, patients=("P1",), n_per_patient=200)
    del ref.obs[Keys.PATIENT]
    rng = np.random.default_rng(0)
    ref.obsm[Keys.SPATIAL] = rng.uniform(0, 1000, (ref.n_obs, 2))
    q = _query([[1, 0.02, 0]] * 10 + [[0.02, 1, 0]] * 10)
    ref_x = rng.normal(size=(ref.n_obs, 4)).astype(np.float32)
    q_x = rng.normal(size=(q.n_obs, 4)).astype(np.float32)
    summary = transfer_labels(ref, q, profiles=(ref_x[:, :2], q_x[:, :2]), wider_profiles=(ref_x[:, 2:], q_x[:, 2:]))
    assert summary["calibration"]["held_out_by"] == "spatial block"
    assert not q.uns[TRANSFER_UNS_KEY]["params"]["discriminant_vote"]
    assert q.uns[TRANSFER_UNS_KEY]["params"]["input_vote"]


def test_a_query_slides_shift_is_taken_off_before_the_vote_that_labels_it():
    """Labels A, B, C at steps along e2; each query slide is moved by about a third of a step,
    one up, one down (as a section of another depth or thickness is): the plain vote drifts,
    the vote with each slide's shift, measured label by label from the plain vote, taken
    off does less."""
    steps = {"A": [1, 0, 0], "B": [1, 0.5, 0], "C": [1, 1, 0]}
    ref = _cloud(steps, spread=0.1)
    rng = np.random.default_rng(3)
    truth = np.tile(np.repeat([0, 1, 2], 60), 2)
    points = np.array([steps[n] for n in "ABC"], dtype=float)[truth] + rng.normal(0, 0.1, (len(truth), 3))
    points[:180, 1] += 0.15
    points[180:, 1] -= 0.15
    q = _query(points)
    q.obs[Keys.SAMPLE] = np.repeat(["S1", "S2"], 180)
    right = np.array(list("ABC"))[truth]
    transfer_labels(ref, q, align=False)
    plain = np.mean(q.obs[Keys.TRANSFERRED].astype(str).to_numpy() == right)
    assert not q.uns[TRANSFER_UNS_KEY]["params"]["aligned_vote"]
    transfer_labels(ref, q)
    aligned = np.mean(q.obs[Keys.TRANSFERRED].astype(str).to_numpy() == right)
    assert q.uns[TRANSFER_UNS_KEY]["params"]["aligned_vote"]
    assert q.uns[TRANSFER_UNS_KEY]["params"]["slide_key"] == Keys.SAMPLE
    assert plain < 0.86 and aligned > max(plain + 0.05, 0.88)
    # one slide name for both: one shift for all, which is none on average: as plain
    q.obs[Keys.SAMPLE] = "S"
    transfer_labels(ref, q)
    assert abs(np.mean(q.obs[Keys.TRANSFERRED].astype(str).to_numpy() == right) - plain) < 0.03
