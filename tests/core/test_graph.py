import numpy as np
import pytest

from cellniche_core.graph import (GraphSettings, build_graph, build_knn_graph, build_radius_graph, cell_areas,
                                  typical_spacing)


def grid(nx, ny, step=1.0):
    """Cells on a regular grid, id = y * nx + x:

    10 11 12 13 14
     5  6  7  8  9
     0  1  2  3  4
    """
    xs, ys = np.meshgrid(np.arange(nx), np.arange(ny))
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(float) * step


def neighbours(g, i):
    return set(g.indices[g.indptr[i]:g.indptr[i + 1]].tolist())


def test_radius_graph_on_grid_links_the_four_adjacent_cells():
    g = build_radius_graph(grid(5, 3), radius=1.01)
    assert neighbours(g, 7) == {2, 6, 8, 12}
    assert neighbours(g, 0) == {1, 5}
    assert neighbours(g, 14) == {9, 13}
    # 5x3 grid: 4*3 horizontal + 5*2 vertical edges, both directions
    assert g.n_edges == 2 * (4 * 3 + 5 * 2)


def test_radius_with_diagonals():
    g = build_radius_graph(grid(5, 3), radius=1.5)
    assert neighbours(g, 7) == {1, 2, 3, 6, 8, 11, 12, 13}


def test_csr_is_symmetric_sorted_without_self_loops():
    rng = np.random.default_rng(1)
    g = build_knn_graph(rng.uniform(0, 100, (300, 2)), n_neighbors=5)
    src, dst = g.edge_index()
    assert not np.any(src == dst)
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert all((d, s) in pairs for s, d in pairs)
    for i in range(g.n_nodes):
        row = g.indices[g.indptr[i]:g.indptr[i + 1]]
        assert np.all(np.diff(row) > 0)
    # knn symmetrised: every cell has at least k neighbours
    assert g.degree.min() >= 5


def test_slides_are_never_linked():
    xy = grid(4, 4)
    coords = np.concatenate([xy, xy + 0.1])  # two slides nearly on top of each other
    samples = np.array(["a"] * 16 + ["b"] * 16)
    for g in (build_knn_graph(coords, samples, n_neighbors=6), build_radius_graph(coords, samples, radius=2)):
        src, dst = g.edge_index()
        assert np.all(samples[src] == samples[dst])
        assert g.n_edges > 0


def test_knn_cuts_edges_across_a_tissue_gap():
    # two clumps 1000 spacings apart: k-NN with k larger than a clump must not bridge them
    a = grid(3, 3)
    coords = np.concatenate([a, a + 1000.0])
    g = build_knn_graph(coords, n_neighbors=12)
    src, dst = g.edge_index()
    assert np.all((src < 9) == (dst < 9))


@pytest.mark.parametrize("scale", [1.0, 0.37, 2000.0])
def test_defaults_are_scale_free(scale):
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 30, (400, 2))
    base = build_graph(xy, None, GraphSettings())
    scaled = build_graph(xy * scale, None, GraphSettings())
    np.testing.assert_array_equal(base.indices, scaled.indices)
    auto_base = build_graph(xy, None, GraphSettings(radius="auto"))
    auto_scaled = build_graph(xy * scale, None, GraphSettings(radius="auto"))
    np.testing.assert_array_equal(auto_base.indices, auto_scaled.indices)
    assert typical_spacing(xy * scale) == pytest.approx(typical_spacing(xy) * scale)


def test_radius_must_be_positive():
    with pytest.raises(ValueError, match="radius"):
        build_radius_graph(grid(2, 2), radius=0)


def test_cell_areas_are_larger_where_cells_are_sparser_and_relative_to_each_slide():
    rng = np.random.default_rng(0)
    dense = rng.uniform(0, 10, (400, 2))  # 4 cells per unit area
    sparse = rng.uniform(10, 30, (400, 2))  # 1 per unit area
    coords = np.concatenate([dense, sparse])
    area = cell_areas(coords)
    assert area.dtype == np.float32 and np.median(area) == pytest.approx(1.0, rel=0.05)
    # away from the border between the two halves, the sparse half's cells stand for ~4x the area
    inner_dense, inner_sparse = coords[:, 0] < 8, coords[:, 0] > 12
    assert 2.5 < np.median(area[inner_sparse]) / np.median(area[inner_dense]) < 6
    # the same slide in other units, beside another slide: the same relative areas
    both = cell_areas(np.concatenate([coords, coords * 1000.0]), np.repeat(["a", "b"], len(coords)))
    np.testing.assert_allclose(both[:len(coords)], area, rtol=1e-5)
    np.testing.assert_allclose(both[len(coords):], area, rtol=1e-5)


def test_cell_areas_of_stacked_cells_are_never_zero():
    coords = np.concatenate([grid(6, 6), np.zeros((8, 2))])  # 9 cells at (0, 0): their 6 nearest at distance 0
    area = cell_areas(coords)
    assert np.all(area > 0) and np.all(np.isfinite(area))
    assert np.all(cell_areas(np.zeros((2, 2))) == 1.0)  # too few cells: every weight 1


def test_knn_graph_measures_the_same_cell_areas_on_the_way():
    rng = np.random.default_rng(3)
    coords = np.concatenate([rng.uniform(0, 10, (300, 2)), rng.uniform(0, 40, (200, 2)), [[5.0, 5.0]] * 2])
    slides = np.array(["a"] * 300 + ["b"] * 200 + ["c"] * 2)  # "c": too few cells, every weight 1
    g = build_knn_graph(coords, slides, n_neighbors=15)
    np.testing.assert_array_equal(g.cell_area, cell_areas(coords, slides))
    assert build_knn_graph(coords, slides, n_neighbors=4).cell_area is None  # 4 neighbours do not cover 6
    assert build_graph(coords, slides, GraphSettings(radius="auto")).cell_area is None
