"""Random-walk batches, co-visit positives and 2-hop neighbourhood sampling.

Tensor-only and device-agnostic: every function works on whatever device its CSR tensors
live on, with a ``torch.Generator`` on that device. There is no loop over cells: the only
Python loops run over walk steps and GNN layers.

CSR convention: the neighbours of node ``i`` are ``indices[indptr[i]:indptr[i + 1]]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRATEGIES = ("freq", "sim", "and", "or")


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
    positives
        (m, m) bool, ``positives[i, j]`` when cells ``i`` and ``j`` should embed alike;
        the diagonal is False.
    """

    nodes: torch.Tensor
    positives: torch.Tensor


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
) -> WalkBatch:
    """Random walks from ``seeds`` define a batch and its positive pairs.

    From each seed, ``walks_per_seed`` walks of ``walk_length`` steps are run. A cell joins
    the batch when it is visited by a seed's walks more often than the average cell those
    walks visited (seeds always join). Two batch cells form a positive pair according to
    ``strategy``:

    ``freq``  they occur together in more walks than the average co-occurring pair;
    ``sim``   the cosine similarity of their ``profiles`` exceeds the batch mean by one
              standard deviation;
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
    device = seeds.device
    n = indptr.numel() - 1
    n_seeds = seeds.numel()
    start = seeds.repeat_interleave(walks_per_seed)
    walks = random_walks(indptr, indices, start, walk_length, generator=generator)
    group = torch.arange(n_seeds, device=device).repeat_interleave(walks_per_seed)

    # visit counts per (seed, cell)
    key = group[:, None] * n + walks
    uniq, counts = torch.unique(key.reshape(-1), return_counts=True)
    g = uniq // n
    mean_per_group = torch.zeros(n_seeds, device=device).index_add_(0, g, counts.float())
    mean_per_group /= torch.bincount(g, minlength=n_seeds).clamp_min(1).float()
    frequent = counts.float() > mean_per_group[g]
    nodes = torch.unique(torch.cat([uniq[frequent] % n, seeds]))
    m = nodes.numel()

    # co-occurrence of batch cells within the same walk (each walk counted once per pair)
    local = torch.searchsorted(nodes, walks.clamp_max(n - 1))
    in_batch = nodes[local.clamp_max(m - 1)] == walks
    walk_id = torch.arange(walks.shape[0], device=device)[:, None].expand_as(walks)
    wk = torch.unique(walk_id[in_batch] * m + local[in_batch])  # (walk, cell) once
    w, c = wk // m, wk % m
    # pairs within a walk: join the sorted (walk, cell) list with itself by walk
    starts = torch.searchsorted(w, torch.arange(walks.shape[0] + 1, device=device))
    length = starts[1:] - starts[:-1]
    per_entry = length[w]
    rep = torch.repeat_interleave(torch.arange(w.numel(), device=device), per_entry)
    offset = torch.arange(rep.numel(), device=device) - torch.repeat_interleave(
        torch.cumsum(per_entry, 0) - per_entry, per_entry
    )
    partner = c[starts[w[rep]] + offset]
    co = torch.bincount(c[rep] * m + partner, minlength=m * m).reshape(m, m).float()
    co.fill_diagonal_(0)

    eye = torch.eye(m, dtype=torch.bool, device=device)
    positives = torch.zeros(m, m, dtype=torch.bool, device=device)
    if strategy in ("freq", "and", "or"):
        nz = co[co > 0]
        positives = co > (nz.mean() if nz.numel() else 0.0)
    if strategy != "freq":
        p = torch.nn.functional.normalize(profiles[nodes].float(), dim=1)
        sim = p @ p.T
        off = sim[~eye]
        mu, sd = off.mean(), off.std()
        if strategy == "sim":
            positives = sim > mu + sd
        elif strategy == "and":
            positives = positives & (sim > mu)
        else:
            positives = positives | (sim > mu + sd)
    positives &= ~eye
    return WalkBatch(nodes=nodes, positives=positives)


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
        drawn = (u * degree[:, None]).long()
        slot = torch.where(many[:, None], drawn, slot)
    valid = slot < degree[:, None]
    src = indices[(start[:, None] + slot)[valid]]
    tgt = nodes[:, None].expand_as(slot)[valid]
    if bool(many.any()):
        n = indptr.numel() - 1
        key = torch.unique(tgt * n + src)
        tgt, src = key // n, key % n
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
    n_id = targets
    frontier = targets
    srcs, tgts = [], []
    nodes_per_hop, edges_per_hop = [targets.numel()], []
    for fanout in fanouts:
        src, tgt = sample_neighbours(indptr, indices, frontier, fanout, generator=generator)
        srcs.append(src)
        tgts.append(tgt)
        edges_per_hop.append(src.numel() + (edges_per_hop[-1] if edges_per_hop else 0))
        cand = torch.unique(src)
        frontier = cand[~torch.isin(cand, n_id)]
        n_id = torch.cat([n_id, frontier])
        nodes_per_hop.append(n_id.numel())
    src, tgt = torch.cat(srcs), torch.cat(tgts)
    sorted_ids, perm = torch.sort(n_id)
    relabel = lambda g: perm[torch.searchsorted(sorted_ids, g)]  # noqa: E731
    edge_index = torch.stack([relabel(src), relabel(tgt)])
    return Neighbourhood(n_id=n_id, edge_index=edge_index, n_targets=targets.numel(),
                         nodes_per_hop=tuple(nodes_per_hop), edges_per_hop=tuple(edges_per_hop))
