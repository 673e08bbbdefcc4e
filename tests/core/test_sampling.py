import numpy as np
import pytest
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
    assert len(set(nodes.tolist())) == len(nodes) and {0, 9} <= set(nodes.tolist())
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


def test_co_visits_match_a_cell_by_cell_count():
    """Batch membership and pair counts against a direct count over the walks."""
    from collections import Counter

    from cellniche_core.sampling import co_visits

    gen = torch.Generator().manual_seed(3)
    n, seeds, r = 40, torch.tensor([3, 17, 29]), 6
    walks = torch.randint(0, n, (len(seeds) * r, 4), generator=gen)
    walks[:, 0] = seeds.repeat_interleave(r)
    co = co_visits(walks, seeds, n)

    batch = set(seeds.tolist())
    for i in range(len(seeds)):
        visits = Counter(walks[i * r:(i + 1) * r].reshape(-1).tolist())
        mean = sum(visits.values()) / len(visits)
        batch |= {c for c, k in visits.items() if k > mean}
    assert co.nodes.tolist() == sorted(batch)

    expected = Counter()
    for w in walks.tolist():
        cells = sorted(set(w) & batch)
        expected.update((a, b) for i, a in enumerate(cells) for b in cells[i + 1:])
    got = {(int(co.nodes[a]), int(co.nodes[b])): int(k) for a, b, k in zip(co.first, co.second, co.walks)}
    assert got == dict(expected)


def test_compiled_and_torch_samplers_agree(monkeypatch):
    """The CPU kernels and the torch code apply the same rules (exact where no draw is involved)."""
    from cellniche_core import sampling_cpu as k
    from cellniche_core.graph import build_knn_graph
    from cellniche_core.sampling import co_visits, compiled_kernels, random_walks

    assert compiled_kernels(torch.device("cpu"))
    g = build_knn_graph(np.random.default_rng(0).uniform(0, 200, (800, 2)))
    indptr, indices = torch.from_numpy(g.indptr), torch.from_numpy(g.indices)
    seeds = torch.tensor([5, 99, 400, 401, 777])
    walks = random_walks(indptr, indices, seeds.repeat_interleave(8), 3, generator=torch.Generator().manual_seed(0))
    ours = co_visits(walks, seeds, 800)
    count, local = k.SCRATCH.arrays(800)
    compiled = k.co_visits_kernel(walks.numpy(), seeds.numpy(), count, local)

    def by_id(nodes, first, second, shared):
        nodes = np.asarray(nodes)
        return {(min(a, b), max(a, b)): int(c) for a, b, c in zip(nodes[first], nodes[second], shared)}

    assert sorted(compiled[0].tolist()) == ours.nodes.tolist()
    assert (compiled[1] < compiled[2]).all() and len(compiled[1]) == len(ours.first)
    assert by_id(*compiled) == by_id(ours.nodes, ours.first, ours.second, ours.walks)
    assert (count == 0).all() and (local == -1).all()  # scratch left clean
    # a seed drawn twice (training draws seeds with replacement) joins once
    seeds = torch.tensor([5, 99, 5])
    walks = random_walks(indptr, indices, seeds.repeat_interleave(8), 3, generator=torch.Generator().manual_seed(1))
    ours, compiled = co_visits(walks, seeds, 800), k.co_visits_kernel(walks.numpy(), seeds.numpy(), count, local)
    assert sorted(compiled[0].tolist()) == ours.nodes.tolist() and compiled[0].tolist().count(5) == 1
    assert by_id(*compiled) == by_id(ours.nodes, ours.first, ours.second, ours.walks)
    # no seeds: nothing, even with walks given
    empty = k.co_visits_kernel(walks.numpy()[:0], seeds.numpy()[:0], count, local)
    assert all(a.size == 0 for a in empty)
    empty = k.co_visits_kernel(walks.numpy(), seeds.numpy()[:0], count, local)
    assert all(a.size == 0 for a in empty)
    assert (count == 0).all() and (local == -1).all()

    # every neighbour taken (fanout 0): both paths reach the same cells by the same edges
    targets = torch.tensor([3, 50, 600])
    fast = sample_neighbourhood(indptr, indices, targets, (0, 0), generator=None)
    monkeypatch.setenv("CELLNICHE_SAMPLER", "torch")
    assert not compiled_kernels(torch.device("cpu"))
    slow = sample_neighbourhood(indptr, indices, targets, (0, 0), generator=None)
    assert fast.nodes_per_hop == slow.nodes_per_hop and fast.edges_per_hop == slow.edges_per_hop

    def edges(h):
        return sorted(zip(h.n_id[h.edge_index[0]].tolist(), h.n_id[h.edge_index[1]].tolist()))

    assert edges(fast) == edges(slow)
    assert fast.n_id.dtype == slow.n_id.dtype == torch.int64
    assert (k.SCRATCH.local == -1).all()
    for h in (fast, slow):
        for hop in range(1, 3):  # each hop's new cells are reached at that hop
            before = set(h.n_id[:h.nodes_per_hop[hop - 1]].tolist())
            reached = set(h.n_id[h.edge_index[0, :h.edges_per_hop[hop - 1]]].tolist())
            assert set(h.n_id[:h.nodes_per_hop[hop]].tolist()) == before | reached


@pytest.mark.parametrize("mode", ["compiled", "torch"])
def test_samplers_draw_capped_distinct_neighbours(monkeypatch, mode):
    """High-degree cells give at most ``fanout`` distinct sampled neighbours, all real edges."""
    if mode == "torch":
        monkeypatch.setenv("CELLNICHE_SAMPLER", "torch")
    g = build_radius_graph(np.random.default_rng(1).uniform(0, 30, (600, 2)), radius=4.0)
    indptr, indices = torch.from_numpy(g.indptr), torch.from_numpy(g.indices)
    targets = torch.arange(0, 600, 7)
    h = sample_neighbourhood(indptr, indices, targets, (5,), generator=torch.Generator().manual_seed(2))
    src, tgt = h.n_id[h.edge_index[0]], h.n_id[h.edge_index[1]]
    pairs = list(zip(src.tolist(), tgt.tolist()))
    assert len(set(pairs)) == len(pairs)
    per_target = np.bincount(tgt.numpy(), minlength=600)[targets.numpy()]
    degree = np.diff(g.indptr)[targets.numpy()]
    assert (per_target <= np.minimum(degree, 5)).all() and (per_target >= 1).all()
    for s, t in pairs:
        assert s in set(g.indices[g.indptr[t]:g.indptr[t + 1]].tolist())


def test_compiled_walk_steps_are_uniform_and_seeded():
    """The kernels' own generator: each neighbour equally likely, same generator seed -> same walks."""
    from cellniche_core import sampling_cpu as k

    # a star: centre 0 linked to cells 1..7
    indptr = np.array([0, 7, 8, 9, 10, 11, 12, 13, 14], dtype=np.int64)
    indices = np.array([1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0], dtype=np.int64)
    start = np.zeros(70_000, dtype=np.int64)
    walks = k.walks_kernel(indptr, indices, start, 1, k.rng_state(torch.Generator().manual_seed(0)))
    counts = np.bincount(walks[:, 1], minlength=8)[1:]
    assert counts.sum() == 70_000 and np.abs(counts / 10_000 - 1).max() < 0.05
    again = k.walks_kernel(indptr, indices, start, 1, k.rng_state(torch.Generator().manual_seed(0)))
    other = k.walks_kernel(indptr, indices, start, 1, k.rng_state(torch.Generator().manual_seed(1)))
    assert (walks == again).all() and not (walks == other).all()


def test_neighbourhood_refuses_repeated_or_unknown_targets():
    from cellniche_core import sampling_cpu as k

    indptr, indices = torch.tensor([0, 1, 2]), torch.tensor([1, 0])
    for bad in ([0, 0], [0, 5], [-1]):
        with pytest.raises(ValueError, match="distinct cell ids|not a cell id"):
            sample_neighbourhood(indptr, indices, torch.tensor(bad), (2,), generator=torch.Generator())
    k.SCRATCH.arrays(2)
    assert (k.SCRATCH.local == -1).all()  # scratch left clean after a refusal
    h = sample_neighbourhood(indptr, indices, torch.tensor([1]), (2,), generator=torch.Generator())
    assert h.n_id.tolist() == [1, 0]


class XorShift:
    """The compiled kernels' generator, written out in Python."""

    def __init__(self, state: int):
        self.x = state

    def below(self, bound: int) -> int:
        m = (1 << 64) - 1
        x = self.x
        x ^= x >> 12
        x = (x ^ (x << 25)) & m
        x ^= x >> 27
        self.x = x
        r = ((x * 0x2545F4914F6CDD1D) & m) >> 32
        return (r * bound) >> 32


def reference_neighbourhood(indptr, indices, targets, fanouts, state: int):
    """The neighbourhood rules cell by cell, with the kernels' draws: a cell with more
    neighbours than the fanout keeps the distinct drawn slots in slot order, and new
    cells are numbered in the order their edges are listed."""
    rng = XorShift(state)
    n_id = list(targets)
    local = {c: i for i, c in enumerate(n_id)}
    edges, lo = [], 0
    for fanout in fanouts:
        hi = len(n_id)
        for i in range(lo, hi):
            row = indices[indptr[n_id[i]]:indptr[n_id[i] + 1]]
            if fanout <= 0 or len(row) <= fanout:
                slots = range(len(row))
            else:
                slots = sorted({rng.below(len(row)) for _ in range(fanout)})
            for j in slots:
                nb = int(row[j])
                if nb not in local:
                    local[nb] = len(n_id)
                    n_id.append(nb)
                edges.append((local[nb], i))
        lo = hi
    return n_id, edges


def test_neighbourhood_kernel_matches_a_cell_by_cell_reference():
    """Same generator state -> exactly the reference's cells and edges, for cells with
    few neighbours (all taken), more than the fanout (bit-mask draws) and over 64 (sorted draws)."""
    from cellniche_core import sampling_cpu as k
    from cellniche_core.graph import build_knn_graph

    g = build_knn_graph(np.random.default_rng(4).uniform(0, 300, (1500, 2)))
    # a hub linked to 150 cells: its degree passes the 64 slots of the bit mask
    hub_links = [(0, int(c)) for c in range(1, 151)]
    edges = [(int(a), int(b)) for a in range(1500) for b in g.indices[g.indptr[a]:g.indptr[a + 1]] if a < b]
    indptr, indices = csr(edges + hub_links, 1500)
    ip, ix = indptr.numpy(), indices.numpy()
    assert np.diff(ip).max() > 64 and np.diff(ip).min() <= 15  # fanout 15 takes some cells whole
    local = np.full(1500, -1, dtype=np.int32)
    targets = np.array([0, 7, 300, 301, 1200], dtype=np.int64)
    for fanouts in ([15, 10], [6, 6, 3], [0, 4]):
        for seed in (1, 99, 2**40 + 3):
            state = np.array([seed], dtype=np.uint64)
            n_id, e, nodes_per_hop, edges_per_hop = k.neighbourhood_kernel(
                ip, ix, targets, np.array(fanouts, dtype=np.int64), local, 0, state)
            want_ids, want_edges = reference_neighbourhood(ip, ix, targets.tolist(), fanouts, seed)
            assert n_id.tolist() == want_ids
            assert list(zip(e[0].tolist(), e[1].tolist())) == want_edges
            assert nodes_per_hop[-1] == len(want_ids) and edges_per_hop[-1] == len(want_edges)
            assert (local == -1).all()


def test_sample_batch_is_a_walk_batch_and_its_neighbourhood(monkeypatch):
    """The fused training call: positives within the batch, the batch cells as the
    neighbourhood's targets, and sampled edges that are real, distinct and capped; on the
    compiled path and the torch path."""
    from cellniche_core.graph import build_knn_graph
    from cellniche_core.sampling import sample_batch

    g = build_knn_graph(np.random.default_rng(5).uniform(0, 400, (3000, 2)))
    indptr, indices = torch.from_numpy(g.indptr), torch.from_numpy(g.indices)
    for mode in ("compiled", "torch"):
        if mode == "torch":
            monkeypatch.setenv("CELLNICHE_SAMPLER", "torch")
        seeds = torch.tensor([10, 500, 501, 2999])
        batch, hood = sample_batch(indptr, indices, seeds, walks_per_seed=10, walk_length=3, fanouts=(15, 5),
                                   generator=torch.Generator().manual_seed(0))
        nodes = batch.nodes.tolist()
        assert set(seeds.tolist()) <= set(nodes) and len(set(nodes)) == len(nodes)
        assert batch.pairs.shape[1] > 0 and (batch.pairs[0] < batch.pairs[1]).all()
        assert int(batch.pairs.max()) < len(nodes)
        assert hood.n_id[:hood.n_targets].tolist() == nodes and hood.n_id.dtype == torch.int64
        src, tgt = hood.n_id[hood.edge_index[0]].tolist(), hood.n_id[hood.edge_index[1]].tolist()
        assert len(set(zip(src, tgt))) == len(src)
        for s, t in zip(src, tgt):
            assert s in g.indices[g.indptr[t]:g.indptr[t + 1]]
        per_target = np.bincount(hood.edge_index[1].numpy())
        assert per_target[:hood.n_targets].max() <= 15 and per_target[hood.n_targets:].max() <= 5


def test_compiled_walk_batch_counts_past_the_scratch_counter():
    """More visits per seed than the 16-bit visit counter holds: counted exactly all the same."""
    # a star: centre 0, leaves 1..3; walks 1 -> 0 -> leaf -> 0 visit the centre twice
    # per walk, more than the mean cell (once per walk), so it joins the batch
    indptr, indices = csr([(0, 1), (0, 2), (0, 3)], 4)
    for _ in range(2):  # the wide counter is kept for the next batch, and left clean
        batch = sample_walk_batch(indptr, indices, torch.tensor([1]), walks_per_seed=40_000, walk_length=3,
                                  generator=torch.Generator().manual_seed(0))
        assert 0 in batch.nodes.tolist()
    from cellniche_core.sampling_cpu import SCRATCH

    assert SCRATCH.wide_count.dtype == np.int64 and not SCRATCH.wide_count.any()


def test_kernel_graph_is_the_same_graph_renumbered():
    """The kernels' copy of the graph: a permutation of the cells, every edge kept, and
    neighbours closer in number than in the caller's order."""
    from cellniche_core import sampling_cpu as k
    from cellniche_core.graph import build_knn_graph

    g = build_knn_graph(np.random.default_rng(6).uniform(0, 500, (4000, 2)))
    indptr, indices = torch.from_numpy(g.indptr), torch.from_numpy(g.indices)
    ip, ix, order, rank = k.Scratch().graph(indptr, indices)
    assert sorted(order.tolist()) == list(range(4000)) and (rank[order] == np.arange(4000)).all()
    for i in range(4000):
        mine = set(order[ix[ip[i]:ip[i + 1]]].tolist())
        assert mine == set(g.indices[g.indptr[order[i]]:g.indptr[order[i] + 1]].tolist())
    spread = lambda p, x: np.median(np.abs(np.repeat(np.arange(4000), np.diff(p)) - x))  # noqa: E731
    assert spread(ip, ix) < spread(g.indptr, g.indices) / 10


def test_compiled_walk_batch_refuses_unknown_seeds():
    indptr, indices = csr(PATH, 5)
    for bad in ([5], [-1]):
        with pytest.raises(ValueError, match="not a cell id of the graph"):
            sample_walk_batch(indptr, indices, torch.tensor(bad), walks_per_seed=2, walk_length=2,
                              generator=torch.Generator())


@pytest.mark.parametrize("strategy", ["sim", "and", "or"])
def test_similarity_pairs_agree_between_numpy_and_torch(strategy):
    from cellniche_core.sampling import similar_pairs, similar_pairs_numpy

    rng = np.random.default_rng(5)
    m = 120
    profiles = rng.integers(0, 4, (m, 6)).astype(np.float32)  # small integers: ties are exact in both
    first, second = np.triu_indices(m, 1)
    pick = rng.random(len(first)) < 0.05
    first, second = first[pick], second[pick]
    frequent = rng.random(len(first)) < 0.5
    ours = similar_pairs_numpy(profiles, first, second, frequent, strategy)
    ref = similar_pairs(torch.from_numpy(profiles), torch.from_numpy(first), torch.from_numpy(second),
                        torch.from_numpy(frequent), strategy).numpy()
    assert ours.shape[1] > 0
    assert set(map(tuple, ours.T)) == set(map(tuple, ref.T))
    assert (ours[0] < ours[1]).all()


def test_similar_pairs_are_the_most_similar_share_of_the_batch():
    from cellniche_core.sampling import similar_pairs, similar_pairs_numpy

    rng = np.random.default_rng(2)
    m = 80
    profiles = rng.random((m, 5)).astype(np.float32)  # continuous: no ties
    none = np.zeros(0, dtype=np.int64)
    n_pairs = m * (m - 1) // 2
    for share in (0.05, 0.15, 0.5):
        pairs = similar_pairs_numpy(profiles, none, none, none.astype(bool), "sim", share)
        assert pairs.shape[1] == int(np.ceil(share * n_pairs))
        # every kept pair is at least as similar as every pair left out
        p = profiles / np.linalg.norm(profiles, axis=1, keepdims=True)
        sim = p @ p.T
        i, j = np.triu_indices(m, 1)
        kept = np.zeros((m, m), dtype=bool)
        kept[pairs[0], pairs[1]] = True
        assert sim[pairs[0], pairs[1]].min() >= sim[i, j][~kept[i, j]].max()
        ref = similar_pairs(torch.from_numpy(profiles), torch.from_numpy(none), torch.from_numpy(none),
                            torch.from_numpy(none.astype(bool)), "sim", share).numpy()
        assert set(map(tuple, pairs.T)) == set(map(tuple, ref.T))
    with pytest.raises(ValueError, match="between 0 and 1"):
        similar_pairs_numpy(profiles, none, none, none.astype(bool), "sim", 1.0)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ties_at_the_cut_neither_flood_nor_empty_the_positives(backend):
    from cellniche_core.sampling import similar_pairs, similar_pairs_numpy

    def pairs(profiles):
        none = np.zeros(0, dtype=np.int64)
        if backend == "numpy":
            return similar_pairs_numpy(profiles, none, none, none.astype(bool), "sim", 0.15)
        return similar_pairs(torch.from_numpy(profiles), *(torch.from_numpy(none),) * 2,
                             torch.from_numpy(none.astype(bool)), "sim", 0.15).numpy()

    # 3 of 20 one-hot cells alike, the rest all unlike (similarity 0, tied below the cut):
    # only the 3 alike pairs, not every tied pair
    onehot = np.eye(20, dtype=np.float32)
    onehot[[4, 9]] = onehot[2]
    assert sorted(map(tuple, pairs(onehot).T)) == [(2, 4), (2, 9), (4, 9)]
    # every cell alike (all tied at the top): every pair, not none
    same = np.ones((6, 3), dtype=np.float32)
    assert pairs(same).shape[1] == 15
