import numpy as np
import torch

from cellniche_core.graph import build_radius_graph
from cellniche_core.sampling import random_walks, sample_neighbourhood, sample_neighbours, sample_walk_batch


def csr(edges, n):
    """CSR tensors of an undirected edge list."""
    adj = [set() for _ in range(n)]
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    indptr = np.cumsum([0] + [len(s) for s in adj])
    indices = np.concatenate([sorted(s) for s in adj]) if indptr[-1] else np.zeros(0)
    return torch.tensor(indptr, dtype=torch.long), torch.tensor(indices, dtype=torch.long)


# path 0 - 1 - 2 - 3 ,  plus an isolated cell 4
PATH = [(0, 1), (1, 2), (2, 3)]


def test_walks_follow_edges_and_isolated_cells_stay(device):
    indptr, indices = (t.to(device) for t in csr(PATH, 5))
    gen = torch.Generator(device=device).manual_seed(0)
    start = torch.tensor([0, 1, 2, 3, 4] * 20, device=device)
    walks = random_walks(indptr, indices, start, 7, generator=gen).cpu().numpy()
    assert walks.shape == (100, 8)
    steps = np.abs(np.diff(walks[walks[:, 0] != 4], axis=1))
    assert np.all(steps == 1)  # on a path every step moves to an adjacent id
    assert np.all(walks[walks[:, 0] == 4] == 4)
    # from cell 0 the first step must be to 1
    assert np.all(walks[walks[:, 0] == 0, 1] == 1)


def test_walk_steps_are_uniform_over_neighbours():
    indptr, indices = csr([(0, 1), (0, 2), (0, 3)], 4)  # a star
    gen = torch.Generator().manual_seed(0)
    walks = random_walks(indptr, indices, torch.zeros(30_000, dtype=torch.long), 1, generator=gen)
    freq = np.bincount(walks[:, 1].numpy(), minlength=4)[1:] / 30_000
    np.testing.assert_allclose(freq, 1 / 3, atol=0.015)


def test_walks_are_reproducible_per_seed():
    indptr, indices = csr(PATH, 5)
    a = random_walks(indptr, indices, torch.tensor([1, 2]), 10, generator=torch.Generator().manual_seed(5))
    b = random_walks(indptr, indices, torch.tensor([1, 2]), 10, generator=torch.Generator().manual_seed(5))
    c = random_walks(indptr, indices, torch.tensor([1, 2]), 10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def two_cliques():
    """Two 5-cliques {0..4} and {5..9} joined by the single edge 4 - 5."""
    edges = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    edges += [(i + 5, j + 5) for i, j in edges] + [(4, 5)]
    return csr(edges, 10)


def test_walk_positives_stay_within_a_clique(device):
    indptr, indices = (t.to(device) for t in two_cliques())
    gen = torch.Generator(device=device).manual_seed(0)
    batch = sample_walk_batch(indptr, indices, torch.tensor([0, 9], device=device), walks_per_seed=50,
                              walk_length=4, generator=gen)
    nodes = batch.nodes.cpu().numpy()
    pos = batch.positives.cpu().numpy()
    assert np.all(np.diff(nodes) > 0) and {0, 9} <= set(nodes.tolist())
    assert pos.any() and not pos.diagonal().any()
    assert (pos == pos.T).all()
    side = nodes >= 5
    # positives are pairs co-visited more than average: walks rarely cross the bridge
    i, j = np.nonzero(pos)
    cross = np.mean(side[i] != side[j])
    assert cross < 0.2


def test_similarity_strategies_filter_and_extend():
    indptr, indices = two_cliques()
    profiles = torch.eye(10)  # every cell unlike every other ...
    profiles[[1, 3, 6, 8]] = torch.eye(10)[1]  # ... but cells 1, 3, 6, 8 look alike, across cliques
    kw = dict(walks_per_seed=50, walk_length=4, profiles=profiles)
    seeds = torch.tensor([0, 9])
    freq = sample_walk_batch(indptr, indices, seeds, generator=torch.Generator().manual_seed(0), **kw)
    both = sample_walk_batch(indptr, indices, seeds, generator=torch.Generator().manual_seed(0),
                             strategy="and", **kw)
    either = sample_walk_batch(indptr, indices, seeds, generator=torch.Generator().manual_seed(0),
                               strategy="or", **kw)
    sim = sample_walk_batch(indptr, indices, seeds, generator=torch.Generator().manual_seed(0),
                            strategy="sim", **kw)
    assert torch.equal(freq.nodes, both.nodes)
    assert (both.positives <= freq.positives).all()  # "and" only removes pairs
    assert (freq.positives <= either.positives).all()  # "or" only adds pairs
    nodes = sim.nodes.tolist()
    alike = {1, 3, 6, 8}
    i, j = np.nonzero(sim.positives.numpy())
    assert len(i) and all(nodes[a] in alike and nodes[b] in alike for a, b in zip(i, j))


def test_sample_neighbours_takes_all_when_degree_allows():
    indptr, indices = two_cliques()
    src, tgt = sample_neighbours(indptr, indices, torch.tensor([4, 7]), 10, generator=None)
    got = sorted(zip(tgt.tolist(), src.tolist()))
    assert got == [(4, 0), (4, 1), (4, 2), (4, 3), (4, 5), (7, 5), (7, 6), (7, 8), (7, 9)]


def test_sample_neighbours_caps_high_degree():
    indptr, indices = csr([(0, i) for i in range(1, 51)], 51)  # star with 50 leaves
    src, tgt = sample_neighbours(indptr, indices, torch.tensor([0]), 5,
                                 generator=torch.Generator().manual_seed(0))
    assert 1 <= len(src) <= 5 and len(set(src.tolist())) == len(src)
    assert set(tgt.tolist()) == {0}


def test_two_hop_neighbourhood_on_a_grid(device):
    xs, ys = np.meshgrid(np.arange(7), np.arange(7))
    g = build_radius_graph(np.stack([xs.ravel(), ys.ravel()], 1).astype(float), radius=1.01)
    indptr = torch.from_numpy(g.indptr).to(device)
    indices = torch.from_numpy(g.indices).to(device)
    centre = 3 * 7 + 3
    hood = sample_neighbourhood(indptr, indices, torch.tensor([centre], device=device), (10, 10),
                                generator=None)
    ids = hood.n_id.cpu().numpy()
    assert ids[0] == centre and hood.n_targets == 1
    # a 4-neighbour grid: 2-hop ball around the centre is a diamond of 1 + 4 + 8 cells
    assert len(ids) == 13 and len(set(ids.tolist())) == 13
    d = np.abs(ids % 7 - 3) + np.abs(ids // 7 - 3)
    assert d.max() == 2
    ei = hood.edge_index.cpu().numpy()
    # every edge is a real grid edge after mapping back to global ids
    gs, gt = ids[ei[0]], ids[ei[1]]
    assert np.all(np.abs(gs % 7 - gt % 7) + np.abs(gs // 7 - gt // 7) == 1)
    # every target of hop 1 and 2 receives all of its grid neighbours that are in the ball
    assert np.sum(ei[1] == 0) == 4
