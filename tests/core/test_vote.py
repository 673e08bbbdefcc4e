"""The discriminant vote of label transfer (cellniche_core.vote.discriminant_shares) and the vote with
each slide's shift taken off (aligned_shares)."""

import warnings

import numpy as np
import pytest

from cellniche_core.vote import (align_slides, aligned_shares, discriminant_shares, label_means, label_shares,
                                 matched_shift)
from cellniche_core.novelty import nearest_euclidean


def _cells(n_per_label=300, seed=0):
    """Two labels apart by 1 along x0 (spread 0.15); along x1..x6 every cell varies by 3
    whatever its label (as depth or section thickness do). Reference and query alike."""
    rng = np.random.default_rng(seed)

    def draw(n):
        codes = np.repeat([0, 1], n)
        x = np.concatenate([rng.normal(0, 0.15, (2 * n, 1)), rng.normal(0, 3.0, (2 * n, 6))], axis=1)
        x[:, 0] += codes
        return x, codes

    ref, codes = draw(n_per_label)
    query, truth = draw(100)
    return ref, codes, query, truth


def test_the_discriminant_space_sets_aside_what_varies_within_every_label():
    ref, codes, query, truth = _cells()
    shares = discriminant_shares([ref], codes, [query], 2, 30)
    assert shares.shape == (len(query), 2)
    np.testing.assert_allclose(shares.sum(1), 1.0, rtol=1e-6)
    assert np.mean(shares.argmax(1) == truth) > 0.95
    # in the inputs themselves the shared variation decides who is near
    dist, rows = nearest_euclidean(query, ref, 30, return_index=30)
    plain = label_shares(dist, codes[rows], 2).argmax(1)
    assert np.mean(plain == truth) < 0.8


def test_one_label_or_too_few_cells_gives_no_vote():
    ref, codes, query, _ = _cells(n_per_label=20)
    assert discriminant_shares([ref], np.zeros(len(ref), dtype=np.int64), [query], 1, 10) is None
    assert discriminant_shares([ref[:2]], codes[[0, -1]], [query], 2, 1) is None


def test_collinear_inputs_such_as_cell_type_shares_are_projected_without_warnings():
    rng = np.random.default_rng(1)
    shares_in = rng.dirichlet([1, 1, 1, 1], size=400).astype(np.float32)  # rows sum to 1: collinear
    codes = shares_in.argmax(1)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        shares = discriminant_shares([shares_in], codes, [shares_in[:50]], 4, 15)
    assert np.mean(shares.argmax(1) == codes[:50]) > 0.8
    assert shares.dtype == np.float64 and not np.isnan(shares).any()


def test_column_blocks_row_blocks_and_the_search_agree(monkeypatch):
    """Inputs given as column blocks, a query voted on a few rows at a time, and the
    KD-tree or the matrix products: the same shares."""
    import cellniche_core.vote as vote

    ref, codes, query, _ = _cells(n_per_label=40)
    whole = discriminant_shares([ref], codes, [query], 2, 10)
    np.testing.assert_allclose(discriminant_shares([ref[:, :2], ref[:, 2:]], codes, [query[:, :2], query[:, 2:]],
                                                   2, 10), whole)
    monkeypatch.setattr(vote, "_PROJECT_ROWS", 7)
    np.testing.assert_allclose(discriminant_shares([ref], codes, [query], 2, 10), whole)
    monkeypatch.setattr(vote, "_KD_TREE_DIMS", 0)  # matrix products
    np.testing.assert_allclose(discriminant_shares([ref], codes, [query], 2, 10), whole)


# ----------------------------------------------------------------------- slide shift


def _slide(rng, n_per_label, shift, centres):
    """Cells of labels around ``centres`` (n_labels, f), spread 0.3, the whole slide moved by ``shift``."""
    codes = np.repeat(np.arange(len(centres)), n_per_label)
    return centres[codes] + rng.normal(0, 0.3, (len(codes), centres.shape[1])) + shift, codes


def test_a_slides_shift_is_measured_label_by_label_whatever_its_proportions():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    ref, codes = _slide(rng, [300, 300, 300], 0.0, centres)
    query, truth = _slide(rng, [800, 100, 30], np.array([1.0, -0.5]), centres)  # other proportions
    centre = label_means(ref, codes, 3, 30)
    shift = matched_shift(label_means(query, truth, 3, 30), centre)
    np.testing.assert_allclose(shift, [1.0, -0.5], atol=0.1)
    naive = query.mean(0) - ref.mean(0)  # the slide's mean moves with its proportions
    assert np.abs(naive - [1.0, -0.5]).max() > 0.5
    # a label with fewer than min_cells cells, or none (-1), is left out of the shift
    means = label_means(query, np.where(truth == 2, -1, truth), 3, 30)
    assert np.isnan(means[2]).all() and np.isfinite(means[:2]).all()
    assert np.isnan(label_means(query, truth, 3, 31)[2]).all()
    np.testing.assert_allclose(matched_shift(np.full((3, 2), np.nan), centre), 0.0)


def test_reference_slides_are_aligned_to_each_other():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [3.0, 0.0]])
    a, ca = _slide(rng, [200, 200], np.array([0.8, 0.0]), centres)
    b, cb = _slide(rng, [50, 350], np.array([-0.8, 0.0]), centres)
    x, codes, slides = np.vstack([a, b]), np.concatenate([ca, cb]), np.repeat([0, 1], 400)
    (aligned,), (centre,) = align_slides([x], codes, slides, 2, 30)
    per_slide = [label_means(aligned[slides == s], codes[slides == s], 2, 30) for s in (0, 1)]
    np.testing.assert_allclose(per_slide[0], per_slide[1], atol=0.1)
    np.testing.assert_allclose(centre, label_means(aligned, codes, 2, 30))
    assert aligned.dtype == np.float32 and not np.shares_memory(aligned, x)  # the input is not moved


@pytest.mark.parametrize("kind", ["euclidean", "cosine", "discriminant"])
def test_the_vote_again_with_the_query_slides_shift_taken_off(kind):
    rng = np.random.default_rng(2)
    centres = np.array([[3.0, 0.0, 0.0], [3.0, 1.5, 0.0], [3.0, 3.0, 0.0]])
    ref, codes = _slide(rng, [300, 300, 300], 0.0, centres)
    shift = np.array([0.0, 0.6, 0.0])  # 40 % of a label's step: the plain vote drifts one label up or down
    q1, t1 = _slide(rng, [200, 200, 200], shift, centres)
    q2, t2 = _slide(rng, [200, 200, 200], -shift, centres)
    query, truth, slides = np.vstack([q1, q2]), np.concatenate([t1, t2]), np.repeat([0, 1], 600)
    dist, rows = nearest_euclidean(query, ref, 30, return_index=30)
    plain = label_shares(dist, codes[rows], 3).argmax(1)
    assert np.mean(plain == truth) < 0.85
    first = np.where(rng.random(len(truth)) < 0.2, -1, plain)  # the first vote, with some cells unknown
    spaces = [(kind, [ref], [query])]
    shares = aligned_shares(spaces, codes, np.zeros(len(ref), int), first, slides, 3, 30, min_cells=30)
    np.testing.assert_allclose(shares.sum(1), 1.0, rtol=1e-6)
    assert np.mean(shares.argmax(1) == truth) > np.mean(plain == truth) + 0.1
    assert np.mean(shares.argmax(1) == truth) > 0.9
    # a query slide that holds no label with min_cells cells is voted on as it is
    none = aligned_shares(spaces, codes, np.zeros(len(ref), int), np.full(len(truth), -1), slides, 3, 30,
                          min_cells=30)
    if kind == "euclidean":
        np.testing.assert_allclose(none, label_shares(dist, codes[rows], 3))


@pytest.mark.parametrize("kind", ["euclidean", "cosine", "discriminant"])
def test_more_voters_asked_for_than_the_reference_holds_are_every_reference_row(kind):
    rng = np.random.default_rng(4)
    ref, codes = rng.normal(size=(20, 3)).astype(np.float32), np.repeat([0, 1], [5, 15])
    query = rng.normal(size=(7, 3)).astype(np.float32)
    shares = aligned_shares([(kind, [ref], [query])], codes, np.zeros(20, int), np.zeros(7, int), np.zeros(7, int),
                            2, 30, min_cells=5)
    np.testing.assert_allclose(shares, np.tile([0.25, 0.75], (7, 1)))
