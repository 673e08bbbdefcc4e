"""Random-walk batches, co-visit positives and 2-hop neighbourhood sampling.

Tensor-only and device-agnostic: every function works on whatever device its CSR tensors
live on, with a ``torch.Generator`` on that device. There is no loop over cells: the only
Python loops run over walk steps and GNN layers. On a CPU, :func:`sample_walk_batch`,
:func:`sample_neighbourhood` and :func:`sample_batch` (both at once, as training uses
them) run compiled kernels (:mod:`cellniche_core.sampling_cpu`) that apply the same rules
several times faster; set ``CELLNICHE_SAMPLER=torch`` to use the torch code there too.

CSR convention: the neighbours of node ``i`` are ``indices[indptr[i]:indptr[i + 1]]``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

STRATEGIES = ("freq", "sim", "and", "or")
#: share of a batch's cell pairs, the most similar, that the similarity strategies make
#: positive. A share, not a similarity above the mean by some standard deviations: the
#: spread of the similarities depends on the inputs (one-hot cell types or expression PCs)
#: and on how skewed the niche sizes are, and a rule in standard deviations gave from 1 to
#: 100 positives per cell on the same tissue as it moved from 0.5 to 2 sd (DLPFC), while a
#: share fixes how many pairs are pulled together whatever the shape.
SIMILAR_SHARE = 0.15


_KERNELS: object = False  # the compiled kernels' module once imported; None without numba


def _kernels(device: torch.device):
    """The compiled CPU kernels' module for tensors on ``device``, or None (torch code)."""
    global _KERNELS
    if device.type != "cpu" or os.environ.get("CELLNICHE_SAMPLER", "auto") == "torch":
        return None
    if _KERNELS is False:  # imported once: an import statement per batch costs ~10 us
        try:
            from . import sampling_cpu
        except ImportError:  # numba missing: the torch code does the same work
            sampling_cpu = None
        _KERNELS = sampling_cpu
    return _KERNELS


def compiled_kernels(device: torch.device) -> bool:
    """Whether the sampler runs the compiled CPU kernels for tensors on ``device``."""
    return _kernels(device) is not None


def random_walks(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    start: torch.Tensor,
    walk_length: int,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """Uniform random walks, all advanced together one step at a time.

    Returns
    -------
    (len(start), walk_length + 1) int64 tensor of node ids; column 0 is ``start``. A walk
    that reaches a node without neighbours stays there.
    """
    n_edges = indices.numel()
    cur = start
    steps = [cur]
    for _ in range(walk_length):
        first = indptr[cur]
        d = indptr[cur + 1] - first  # degrees of the walkers' cells only: O(walkers), not O(cells)
        u = torch.rand(cur.shape, generator=generator, device=cur.device)
        offset = torch.minimum((u * d).long(), (d - 1).clamp_min(0))
        nxt = indices[(first + offset).clamp_max(max(n_edges - 1, 0))] if n_edges else cur
        cur = torch.where(d > 0, nxt, cur)
        steps.append(cur)
    return torch.stack(steps, dim=1)


@dataclass
class WalkBatch:
    """A training batch defined by random walks.

    Attributes
    ----------
    nodes
        (m,) global ids of the batch cells.
    pairs
        (2, p) local ids (into ``nodes``, first < second) of the positive pairs: cells
        that should embed alike.
    """

    nodes: torch.Tensor
    pairs: torch.Tensor

    @property
    def positives(self) -> torch.Tensor:
        """(m, m) bool, ``positives[i, j]`` for a positive pair (symmetric, False diagonal)."""
        m = self.nodes.numel()
        dense = torch.zeros(m, m, dtype=torch.bool, device=self.nodes.device)
        dense[self.pairs[0], self.pairs[1]] = True
        dense[self.pairs[1], self.pairs[0]] = True
        return dense


@dataclass
class CoVisits:
    """Batch cells and their co-visits, from the walks of a batch.

    Attributes
    ----------
    nodes
        (m,) distinct global ids of the batch cells: sorted on the torch path, in the
        order they joined on the compiled CPU path.
    first, second
        (p,) local ids (into ``nodes``, ``first < second``) of every pair of batch cells
        that share at least one walk.
    walks
        (p,) number of walks each pair shares (a walk counts once per pair).
    """

    nodes: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    walks: torch.Tensor


def co_visits(walks: torch.Tensor, seeds: torch.Tensor, n_nodes: int) -> CoVisits:
    """Batch membership and co-visit counts of ``walks`` started from ``seeds``.

    ``walks`` is (len(seeds) * r, l) with the ``r`` walks of each seed in consecutive rows,
    as :func:`sample_walk_batch` makes them. A cell joins the batch when a seed's walks
    visit it more often than the average cell they visit; seeds always join. The pair
    list is built from the column pairs of the walk matrix, so its cost grows with the
    number of walks, never with the square of the batch size.
    """
    device = seeds.device
    n, n_seeds = n_nodes, seeds.numel()
    group = torch.arange(n_seeds, device=device).repeat_interleave(walks.shape[0] // max(n_seeds, 1))

    # visit counts per (seed, cell)
    uniq, counts = torch.unique((group[:, None] * n + walks).reshape(-1), return_counts=True)
    g = uniq // n
    mean_per_group = torch.zeros(n_seeds, device=device).index_add_(0, g, counts.float())
    mean_per_group /= torch.bincount(g, minlength=n_seeds).clamp_min(1).float()
    nodes = torch.unique(torch.cat([uniq[counts.float() > mean_per_group[g]] % n, seeds]))
    m = nodes.numel()

    # local id of every visited cell through a lookup table (m marks a cell outside the
    # batch); only the visited entries are written and read, so it is never cleared
    table = torch.empty(n, dtype=torch.long, device=device)
    table[walks.reshape(-1)] = m
    table[nodes] = torch.arange(m, device=device)
    local = table[walks]
    a, b = torch.triu_indices(walks.shape[1], walks.shape[1], offset=1, device=device)
    ca, cb = local[:, a].reshape(-1), local[:, b].reshape(-1)
    keep = (ca < m) & (cb < m) & (ca != cb)
    walk_id = torch.arange(walks.shape[0], device=device).repeat_interleave(a.numel())[keep]
    lo, hi = torch.minimum(ca, cb)[keep], torch.maximum(ca, cb)[keep]
    once_per_walk = torch.unique(walk_id * (m * m) + lo * m + hi) % (m * m)
    pairs, shared = torch.unique(once_per_walk, return_counts=True)
    return CoVisits(nodes=nodes, first=pairs // m, second=pairs % m, walks=shared)


def sample_walk_batch(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    seeds: torch.Tensor,
    *,
    walks_per_seed: int,
    walk_length: int,
    generator: torch.Generator,
    strategy: str = "freq",
    profiles: torch.Tensor | None = None,
    share: float = SIMILAR_SHARE,
) -> WalkBatch:
    """Random walks from ``seeds`` define a batch and its positive pairs.

    From each seed, ``walks_per_seed`` walks of ``walk_length`` steps are run. A cell joins
    the batch when it is visited by a seed's walks more often than the average cell those
    walks visited (seeds always join). Two batch cells form a positive pair according to
    ``strategy``:

    ``freq``  they occur together in more walks than the average co-occurring pair;
    ``sim``   the cosine similarity of their ``profiles`` is among the top ``share`` of the
              batch's pairs (default 15 %; ties at the cut are left out, unless nothing
              is above it);
    ``and``   ``freq`` pairs whose similarity is above the batch mean (a filter);
    ``or``    ``freq`` pairs plus ``sim`` pairs.

    Parameters
    ----------
    seeds
        (s,) global ids of the seed cells.
    profiles
        (n, f) per-cell profiles for the similarity strategies (e.g. expression averaged
        over each cell's spatial neighbours); only rows of batch cells are read.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "freq" and profiles is None:
        raise ValueError(f"strategy {strategy!r} needs expression profiles")
    k = _kernels(seeds.device)
    if k is not None:
        ip, ix, order, rank, count, local = _kernel_inputs(k, indptr, indices, walks_per_seed, walk_length)
        nodes, first, second, shared = k.walk_batch_kernel(ip, ix, k.to_inner(rank, seeds.numpy()), walks_per_seed,
                                                           walk_length, count, local, k.rng_state(generator))
        nodes = order[nodes]
        if strategy == "freq":
            return WalkBatch(nodes=torch.from_numpy(nodes), pairs=torch.from_numpy(k.frequent_pairs(first, second,
                                                                                                    shared)))
        co = CoVisits(*(torch.from_numpy(a) for a in (nodes, first, second, shared)))
    else:
        walks = random_walks(indptr, indices, seeds.repeat_interleave(walks_per_seed), walk_length, generator=generator)
        co = co_visits(walks, seeds, indptr.numel() - 1)
    nodes, m, device = co.nodes, co.nodes.numel(), seeds.device

    frequent = torch.zeros(0, dtype=torch.bool, device=device)
    if strategy in ("freq", "and", "or"):  # shared by more walks than the mean pair (exact in integers)
        frequent = co.walks * co.walks.numel() > co.walks.sum()
    if strategy == "freq":
        return WalkBatch(nodes=nodes, pairs=torch.stack([co.first[frequent], co.second[frequent]]))

    if k is not None:  # numpy: a tenth of torch's per-call cost on a few hundred cells
        pairs = similar_pairs_numpy(profiles.numpy()[nodes.numpy()], co.first.numpy(), co.second.numpy(),
                                    frequent.numpy(), strategy, share)
        return WalkBatch(nodes=nodes, pairs=torch.from_numpy(pairs))
    return WalkBatch(nodes=nodes, pairs=similar_pairs(profiles[nodes], co.first, co.second, frequent, strategy, share))


def _cut_rank(n_pairs: int, share: float) -> int:
    """1-based rank, from the least similar, of the last pair left out by the top ``share``."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"similar_share must be between 0 and 1, got {share}")
    return n_pairs - math.ceil(share * n_pairs - 1e-9)


def similar_pairs(profiles: torch.Tensor, first: torch.Tensor, second: torch.Tensor, frequent: torch.Tensor,
                  strategy: str, share: float = SIMILAR_SHARE) -> torch.Tensor:
    """(2, p) positive pairs ``i < j`` of the ``sim`` / ``and`` / ``or`` rules (see :func:`sample_walk_batch`).

    ``profiles`` are the batch cells' rows (m, f); ``first``, ``second`` their co-visited
    pairs and ``frequent`` which of those are frequent.
    """
    m, device = profiles.shape[0], profiles.device
    p = torch.nn.functional.normalize(profiles.float(), dim=1)
    sim = p @ p.T
    upper_i, upper_j = torch.triu_indices(m, m, offset=1, device=device)
    similar = sim[upper_i, upper_j]
    if strategy == "and":
        keep = similar > similar.mean()
    else:
        rank = _cut_rank(similar.numel(), share)
        cut = similar.kthvalue(rank).values if rank >= 1 else similar.new_tensor(-float("inf"))
        keep = similar > cut if bool((similar > cut).any()) else similar >= cut
    if strategy != "sim":
        walked = torch.zeros(m, m, dtype=torch.bool, device=device)
        walked[first[frequent], second[frequent]] = True
        walked = walked[upper_i, upper_j]
        keep = walked & keep if strategy == "and" else walked | keep
    return torch.stack([upper_i[keep], upper_j[keep]])


def similar_pairs_numpy(profiles: np.ndarray, first: np.ndarray, second: np.ndarray, frequent: np.ndarray,
                        strategy: str, share: float = SIMILAR_SHARE) -> np.ndarray:
    """:func:`similar_pairs` in numpy, for the CPU: the same rule, the same pair order."""
    m = len(profiles)
    p = profiles.astype(np.float32, copy=False)
    p = torch.from_numpy(np.ascontiguousarray(p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)))
    # the product by torch, not numpy: numpy's BLAS threads and torch's, taking turns at
    # every training step, kept each other waiting and made training 3.5x slower on 2 cores
    sim = (p @ p.T).numpy()
    # the upper triangle, row-major; its (i, j) pairs are found for the kept pairs only (a
    # cache of every batch size's pairs held ~50 MB at 64 seeds per batch, GBs at 512)
    mask = np.triu(np.ones((m, m), dtype=bool), 1)
    similar = sim[mask]
    if strategy == "and":
        keep = similar > similar.mean(dtype=np.float64)
    else:
        rank = _cut_rank(len(similar), share)
        cut = np.partition(similar, rank - 1)[rank - 1] if rank >= 1 else -np.inf
        keep = similar > cut
        if not keep.any():
            keep = similar >= cut
    if strategy != "sim":
        a, b = first[frequent], second[frequent]
        a, b = a[a < b], b[a < b]
        walked = np.zeros(len(similar), dtype=bool)
        walked[a * m - a * (a + 1) // 2 + (b - a - 1)] = True  # row-major index of (a, b) in the triangle
        keep = walked & keep if strategy == "and" else walked | keep
    kept = np.zeros((m, m), dtype=bool)
    kept[mask] = keep
    return np.stack(np.nonzero(kept)).astype(np.int64)


@dataclass
class Neighbourhood:
    """A sampled multi-hop neighbourhood, relabelled to local ids.

    Attributes
    ----------
    n_id
        (k,) global ids, ordered by hop: the targets first (in the order given), then the
        cells first reached at hop 1, hop 2, ...
    edge_index
        (2, e) local (source, target) pairs: messages flow from row 0 to row 1. Edges
        are ordered by hop: those into the targets first.
    n_targets
        Number of target cells.
    nodes_per_hop
        ``nodes_per_hop[h]``: number of cells within ``h`` hops (``[0]`` = ``n_targets``).
    edges_per_hop
        ``edges_per_hop[h]``: number of edges whose target is within ``h`` hops.
    """

    n_id: torch.Tensor
    edge_index: torch.Tensor
    n_targets: int
    nodes_per_hop: tuple[int, ...] = ()
    edges_per_hop: tuple[int, ...] = ()


def sample_neighbours(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    nodes: torch.Tensor,
    fanout: int,
    *,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``fanout`` neighbours of each node: all of them when the degree allows.

    Cells with more than ``fanout`` neighbours draw ``fanout`` of them uniformly with
    replacement (repeats are dropped), so the result is exact for k-NN graphs whose
    degree is below ``fanout``. ``fanout <= 0`` takes every neighbour.

    Returns
    -------
    (source, target) global ids of the sampled edges, target in ``nodes``.
    """
    device = nodes.device
    start = indptr[nodes]
    degree = indptr[nodes + 1] - start
    if fanout <= 0:
        tgt = torch.repeat_interleave(nodes, degree)
        first = torch.repeat_interleave(torch.cumsum(degree, 0) - degree, degree)
        pos = torch.arange(tgt.numel(), device=device) - first
        return indices[torch.repeat_interleave(start, degree) + pos], tgt
    slot = torch.arange(fanout, device=device).expand(nodes.numel(), fanout)
    many = degree > fanout
    if bool(many.any()):
        if generator is None:
            raise ValueError("a generator is needed to sample from high-degree nodes")
        u = torch.rand(nodes.numel(), fanout, generator=generator, device=device)
        drawn = (u * degree[:, None]).long().sort(dim=1).values
        # a slot drawn twice for the same node is kept once: mark it past the degree
        repeat = torch.zeros_like(drawn, dtype=torch.bool)
        repeat[:, 1:] = drawn[:, 1:] == drawn[:, :-1]
        drawn = drawn.masked_fill(repeat, torch.iinfo(drawn.dtype).max)
        slot = torch.where(many[:, None], drawn, slot)
    valid = slot < degree[:, None]
    src = indices[(start[:, None] + slot)[valid]]
    tgt = nodes[:, None].expand_as(slot)[valid]
    return src, tgt


def sample_neighbourhood(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    targets: torch.Tensor,
    fanouts: tuple[int, ...],
    *,
    generator: torch.Generator | None,
) -> Neighbourhood:
    """Sample the ``len(fanouts)``-hop neighbourhood of ``targets`` for a GNN.

    Hop ``h`` takes up to ``fanouts[h]`` neighbours of every node reached in hop ``h - 1``.
    All sampled edges are returned together, so running a ``len(fanouts)``-layer GNN on
    the subgraph gives the targets exactly the receptive field that was sampled.
    """
    k = _kernels(targets.device)
    if k is not None and (generator is not None or all(f <= 0 for f in fanouts)):
        state = k.rng_state(generator) if generator is not None else np.ones(1, dtype=np.uint64)
        ip, ix, order, rank, _, local = _kernel_inputs(k, indptr, indices)
        n_id, edges, nodes_per_hop, edges_per_hop = k.neighbourhood_kernel(
            ip, ix, k.to_inner(rank, targets.numpy()), np.asarray(fanouts, dtype=np.int64), local,
            k.SCRATCH.edge_guess(), state)
        return _neighbourhood(k, order[n_id], edges, nodes_per_hop, edges_per_hop)
    n = indptr.numel() - 1
    device = targets.device
    reached = torch.zeros(n, dtype=torch.bool, device=device)
    reached[targets] = True
    n_id = targets
    frontier = targets
    srcs, tgts = [], []
    nodes_per_hop, edges_per_hop = [targets.numel()], []
    for fanout in fanouts:
        src, tgt = sample_neighbours(indptr, indices, frontier, fanout, generator=generator)
        srcs.append(src)
        tgts.append(tgt)
        edges_per_hop.append(src.numel() + (edges_per_hop[-1] if edges_per_hop else 0))
        # cells first reached at this hop, in id order, without sorting the edge list
        new = torch.zeros(n, dtype=torch.bool, device=device)
        new[src] = True
        new &= ~reached
        frontier = new.nonzero().squeeze(1)
        reached |= new
        n_id = torch.cat([n_id, frontier])
        nodes_per_hop.append(n_id.numel())
    src, tgt = torch.cat(srcs), torch.cat(tgts)
    # relabel through a lookup table: only the entries of n_id are written and read
    local = torch.empty(n, dtype=torch.long, device=device)
    local[n_id] = torch.arange(n_id.numel(), device=device)
    edge_index = torch.stack([local[src], local[tgt]])
    return Neighbourhood(n_id=n_id, edge_index=edge_index, n_targets=targets.numel(),
                         nodes_per_hop=tuple(nodes_per_hop), edges_per_hop=tuple(edges_per_hop))


def sample_batch(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    seeds: torch.Tensor,
    *,
    walks_per_seed: int,
    walk_length: int,
    fanouts: tuple[int, ...],
    generator: torch.Generator,
    strategy: str = "freq",
    profiles: torch.Tensor | None = None,
    share: float = SIMILAR_SHARE,
) -> tuple[WalkBatch, Neighbourhood]:
    """A training batch: :func:`sample_walk_batch` from ``seeds``, then
    :func:`sample_neighbourhood` of the batch cells, with the same rules.

    On a CPU with the ``freq`` strategy both run in one compiled call, which saves the
    per-call costs that dominate small batches.
    """
    k = _kernels(seeds.device)
    if k is None or strategy != "freq":
        batch = sample_walk_batch(indptr, indices, seeds, walks_per_seed=walks_per_seed, walk_length=walk_length,
                                  generator=generator, strategy=strategy, profiles=profiles, share=share)
        return batch, sample_neighbourhood(indptr, indices, batch.nodes, fanouts, generator=generator)
    ip, ix, order, rank, count, local = _kernel_inputs(k, indptr, indices, walks_per_seed, walk_length)
    nodes, pairs, *hood = k.batch_kernel(ip, ix, order, rank, seeds.numpy(), walks_per_seed, walk_length,
                                         np.asarray(fanouts, dtype=np.int64), count, local,
                                         k.SCRATCH.edge_guess(), k.rng_state(generator))
    return WalkBatch(nodes=torch.from_numpy(nodes), pairs=torch.from_numpy(pairs)), _neighbourhood(k, *hood)


def _kernel_inputs(k, indptr: torch.Tensor, indices: torch.Tensor, walks_per_seed: int = 0, walk_length: int = 0):
    """(indptr, indices, order, rank, count, local) for the compiled kernels: the graph in
    their own cell order (see :meth:`sampling_cpu.Scratch.graph`) and their scratch tables."""
    count, local = k.SCRATCH.arrays(indptr.numel() - 1, visits=walks_per_seed * (walk_length + 1))
    return (*k.SCRATCH.graph(indptr, indices), count, local)


def _neighbourhood(k, n_id: np.ndarray, edges: np.ndarray, nodes_per_hop: np.ndarray,
                   edges_per_hop: np.ndarray) -> Neighbourhood:
    """A :class:`Neighbourhood` from the neighbourhood kernel's arrays."""
    k.SCRATCH.hood_edges = edges.shape[1]
    return Neighbourhood(n_id=torch.from_numpy(n_id), edge_index=torch.from_numpy(edges),
                         n_targets=int(nodes_per_hop[0]), nodes_per_hop=tuple(nodes_per_hop.tolist()),
                         edges_per_hop=tuple(edges_per_hop.tolist()))
