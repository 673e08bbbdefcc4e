"""The discriminant vote of label transfer (cellniche_core.vote.discriminant_shares)."""

import warnings

import numpy as np

from cellniche_core.vote import discriminant_shares, label_shares
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
