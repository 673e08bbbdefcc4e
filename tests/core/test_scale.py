"""Multi-scale surroundings, the run's scale record, and the flags that override it."""

import numpy as np
import pytest

from cellniche_core.cli import main
from cellniche_core.features import neighbourhood_profiles
from cellniche_core.graph import SpatialGraph
from cellniche_core.io import load_run
from cellniche_core.scale import cells_within_hops, describe_scale, scale_lines
from cellniche_core.train import TrainConfig


def path_graph(n):
    """Cells on a line, each linked to the next: 0 - 1 - 2 - ... - (n-1)."""
    rows = [[i - 1, i + 1] for i in range(n)]
    rows = [[j for j in r if 0 <= j < n] for r in rows]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    return SpatialGraph(np.asarray(indptr, np.int64), np.asarray(sum(rows, []), np.int64))


def test_one_hop_profile_is_the_mean_over_the_cell_and_its_neighbours():
    g = path_graph(4)
    x = np.eye(4, dtype=np.float32)
    p = neighbourhood_profiles(x, g.indptr, g.indices)
    np.testing.assert_allclose(p[0], [1 / 2, 1 / 2, 0, 0])
    np.testing.assert_allclose(p[1], [1 / 3, 1 / 3, 1 / 3, 0])


def test_two_hop_profile_smooths_twice_and_reaches_two_cells_away():
    g = path_graph(5)
    x = np.eye(5, dtype=np.float32)
    one = neighbourhood_profiles(x, g.indptr, g.indices, hops=(1,))
    two = neighbourhood_profiles(x, g.indptr, g.indices, hops=(2,))
    np.testing.assert_allclose(two[0], 0.5 * (one[0] + one[1]), rtol=1e-6)
    assert two[0, 2] > 0 and one[0, 2] == 0  # cell 2 is two hops from cell 0


def test_several_scales_are_normalised_so_cosine_is_the_mean_over_scales():
    g = path_graph(6)
    x = np.random.default_rng(0).random((6, 3)).astype(np.float32)
    multi = neighbourhood_profiles(x, g.indptr, g.indices, hops=(1, 3))
    assert multi.shape == (6, 6)
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    singles = [neighbourhood_profiles(x, g.indptr, g.indices, hops=(h,)) for h in (1, 3)]
    expected = np.mean([cos(s[0], s[5]) for s in singles])
    assert cos(multi[0], multi[5]) == pytest.approx(expected, rel=1e-5)


def test_profile_hops_must_be_positive():
    g = path_graph(3)
    with pytest.raises(ValueError, match="positive"):
        neighbourhood_profiles(np.eye(3), g.indptr, g.indices, hops=(0, 1))


def test_cells_within_hops_counts_the_path_exactly():
    # on a 5-cell path: within 1 hop 2,3,3,3,2 cells (mean 2.6); within 2 hops 3,4,5,4,3 (3.8)
    assert cells_within_hops(path_graph(5), 2, n_sample=5) == [2.6, 3.8]


def test_cells_within_hops_stops_growing_on_a_small_component():
    assert cells_within_hops(path_graph(2), 3, n_sample=2) == [2.0, 2.0, 2.0]


def test_scale_record_and_its_lines():
    config = TrainConfig(profile_hops=(1, 2), walk_length=3)
    rec = describe_scale(path_graph(10), config, positives_per_cell=12.5, batch_cells=300)
    assert rec["profile_hops"] == [1, 2] and rec["walk_length"] == 3
    assert set(rec["cells_within_hops"]) == {"1", "2", "3"}
    lines = scale_lines(rec)
    assert any("2 hops" in line for line in lines) and any("12.5 positive" in line for line in lines)
    assert scale_lines(None) == []  # runs from before the record


def test_walk_only_strategy_records_no_profile_scale():
    rec = describe_scale(path_graph(10), TrainConfig(strategy="freq"))
    assert rec["profile_hops"] == []
    assert "co-visit" in scale_lines(rec)[-1] and "similar" not in scale_lines(rec)[-1]


def test_a_run_records_its_scale(small_run):
    scale = load_run(small_run, with_weights=False).manifest["scale"]
    assert scale["strategy"] == TrainConfig().strategy
    assert scale["cells_within_hops"]["1"] > 1
    assert scale["positives_per_cell"] > 0


def test_scale_flags_reach_the_training_config():
    from cellniche_core.cli import build_parser, options_from_args

    args = build_parser().parse_args(["fit", "x.h5ad", "--out", "r", "--profile-hops", "2,4",
                                      "--walk-length", "5", "--seeds-per-batch", "256", "--strategy", "sim",
                                      "--similar-share", "0.3", "--projection-head"])
    train = options_from_args(args).train
    assert (train.profile_hops, train.walk_length, train.seeds_per_batch, train.strategy) == ((2, 4), 5, 256, "sim")
    assert train.similar_share == 0.3 and train.projection is True
    defaults = options_from_args(build_parser().parse_args(["fit", "x.h5ad", "--out", "r"])).train
    assert defaults.to_dict() == TrainConfig().to_dict()


@pytest.mark.parametrize("value", ["0", "1", "1.5", "x"])
def test_bad_similar_share_exits_with_a_message(value, capsys, tmp_path):
    from cellniche_core.cli import main

    with pytest.raises(SystemExit):
        main(["fit", str(tmp_path / "x.h5ad"), "--out", str(tmp_path / "r"), "--similar-share", value])
    assert "between 0 and 1" in capsys.readouterr().err


def test_the_similar_share_is_stated_in_the_run_details():
    scale = describe_scale(path_graph(10), TrainConfig(similar_share=0.2))
    assert scale["similar_share"] == 0.2
    assert any("the 20% most similar pairs of a batch" in line for line in scale_lines(scale))
    assert "similar_share" not in describe_scale(path_graph(10), TrainConfig(strategy="freq"))


@pytest.mark.parametrize("value", ["0", "a,b", "", "1,-2"])
def test_bad_profile_hops_exit_with_a_message(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "x.h5ad", "--out", str(tmp_path / "r"), "--profile-hops", value])
    assert exc.value.code == 2
    assert "--profile-hops" in capsys.readouterr().err


def test_umap_compiled_code_is_cached_on_disk():
    from numba.core.caching import FunctionCache

    from cellniche_core.layout import _import_umap

    umap = _import_umap()
    assert isinstance(umap.umap_.smooth_knn_dist._cache, FunctionCache)


def test_training_makes_the_profiles_it_needs_when_none_are_given():
    import torch

    from cellniche_core.graph import build_knn_graph
    from cellniche_core.train import train_model

    rng = np.random.default_rng(0)
    g = build_knn_graph(rng.uniform(0, 100, (300, 2)), n_neighbors=6)
    x = torch.nn.functional.one_hot(torch.from_numpy(rng.integers(0, 4, 300)), 4).float()
    ip, ix = torch.from_numpy(g.indptr), torch.from_numpy(g.indices)
    config = TrainConfig(n_steps=4, seed=0, strategy="or", profile_hops=(1, 2))
    own, hist = train_model(x, ip, ix, config)
    given = torch.from_numpy(neighbourhood_profiles(x.numpy(), g.indptr, g.indices, hops=(1, 2)))
    ref, _ = train_model(x, ip, ix, config, profiles=given)
    for a, b in zip(own.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert hist.mean_positives_per_cell > 0


def test_unnormalised_scales_keep_their_magnitude_and_equal_the_single_scales():
    g = path_graph(6)
    x = np.random.default_rng(1).random((6, 3)).astype(np.float32)
    raw = neighbourhood_profiles(x, g.indptr, g.indices, hops=(1, 3), normalise=False)
    singles = [neighbourhood_profiles(x, g.indptr, g.indices, hops=(h,)) for h in (1, 3)]
    np.testing.assert_allclose(raw, np.concatenate(singles, axis=1), rtol=1e-6)


def test_weighted_profiles_average_over_area_not_over_cells():
    g = path_graph(3)
    x = np.eye(3, dtype=np.float32)
    w = np.array([1.0, 1.0, 4.0], np.float32)  # cell 2 stands for four times the area
    p = neighbourhood_profiles(x, g.indptr, g.indices, weights=w)
    np.testing.assert_allclose(p[1], [1 / 6, 1 / 6, 4 / 6], rtol=1e-6)
    np.testing.assert_allclose(p[0], [1 / 2, 1 / 2, 0], rtol=1e-6)  # cell 2 is not its neighbour
    np.testing.assert_allclose(neighbourhood_profiles(x, g.indptr, g.indices, weights=np.ones(3)),
                               neighbourhood_profiles(x, g.indptr, g.indices), rtol=1e-6)


def test_scale_record_says_whether_means_are_weighted():
    assert describe_scale(path_graph(10), TrainConfig())["area_weights"] is True
    rec = describe_scale(path_graph(10), TrainConfig(area_weights=False))
    assert rec["area_weights"] is False
    assert not any("area" in line for line in scale_lines(rec))
    assert any("area each cell stands for" in line for line in scale_lines(describe_scale(path_graph(10),
                                                                                          TrainConfig())))
