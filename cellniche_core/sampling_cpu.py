"""Compiled CPU kernels for the sampler (numba), used when the graph lives on the CPU.

On a GPU the vectorised torch code in :mod:`cellniche_core.sampling` is fast: each
operation covers the whole batch. On a CPU the same code pays for many full passes over
intermediate tensors and for sorting; these kernels do the work in one or two passes per
stage, with lookup tables and bit masks instead of sorts. What is left is bound by random
memory reads, so the kernels run on a copy of the graph renumbered for locality
(:meth:`Scratch.graph`) with compact scratch tables. They implement the same rules as the
torch code (tests check identical co-visit counts on the same walks, and the
neighbourhood against a cell-by-cell reference), and draw their random numbers from a
small xorshift generator seeded from the caller's ``torch.Generator``, so a seeded run is
reproducible.

Every kernel compiles on first use (a few seconds, cached on disk afterwards).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
from numba import njit


@njit(cache=True, inline="always")
def _xorshift(x):
    """The next state of a xorshift64* generator (``x`` nonzero uint64).

    Kernels hold the state in a local variable (loaded from their ``state`` array once,
    stored back at the end), so the compiler can keep it in a register across draws
    instead of storing and reloading it around the kernel's other array writes.
    """
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    return x


@njit(cache=True, inline="always")
def _below(x, bound):
    """An integer in [0, bound) from generator state ``x``: the 32 high bits of the
    xorshift64* output, mapped to the range by multiply-shift."""
    r = (x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(32)
    return np.int64((r * np.uint64(bound)) >> np.uint64(32))


@njit(cache=True)
def _insertion_sort(a, lo, hi):
    """Sort ``a[lo:hi]`` in place; for the few entries of one cell, faster than a library sort."""
    for i in range(lo + 1, hi):
        v = a[i]
        j = i - 1
        while j >= lo and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@njit(cache=True)
def walks_kernel(indptr, indices, start, walk_length, state):
    """(len(start), walk_length + 1) uniform random walks; a cell without neighbours is kept.

    All walks advance one step before any takes the next, so the memory reads of
    different walks overlap instead of waiting on each other.
    """
    n_walks = start.shape[0]
    out = np.empty((n_walks, walk_length + 1), dtype=np.int64)
    out[:, 0] = start
    x = state[0]
    for step in range(1, walk_length + 1):
        for w in range(n_walks):
            cur = out[w, step - 1]
            first = indptr[cur]
            degree = indptr[cur + 1] - first
            if degree > 0:
                x = _xorshift(x)
                cur = indices[first + _below(x, degree)]
            out[w, step] = cur
    state[0] = x
    return out


@njit(cache=True)
def co_visits_kernel(walks, seeds, count, local):
    """Batch cells and co-visit counts; the rules of :func:`sampling.co_visits`.

    ``count`` (zeros, wide enough for one seed's visits) and ``local`` (int32, -1) are
    scratch arrays with one entry per graph cell; they are left as they were found.

    Returns (nodes, first, second, shared): the batch cell ids in the order they joined,
    and for every pair of batch cells sharing a walk their local ids (first < second) and
    the number of walks they share, pairs grouped by first.
    """
    n_seeds = seeds.shape[0]
    per_seed = walks.shape[0] // max(n_seeds, 1)
    cols = walks.shape[1]
    visits = per_seed * cols  # of each seed's walks
    members = np.empty(n_seeds * (visits + 1), dtype=np.int64)
    distinct = np.empty(visits, dtype=np.int64)
    m = 0
    # Branch-free: whether a cell is new or joins is data, not control flow (the outcomes
    # are random, so branches on them are mispredicted about half the time). A cell is
    # written at ``members[m]`` / ``distinct[k]`` always and kept when the index advances.
    for s in range(n_seeds):
        seed = seeds[s]
        joins = np.int32(local[seed] == -1)  # seeds may repeat
        members[m] = seed
        m += joins
        local[seed] += joins  # -1 -> 0: a member; its number comes below
        k = 0
        for i in range(s * per_seed, (s + 1) * per_seed):
            for j in range(cols):
                c = walks[i, j]
                distinct[k] = c
                k += np.int64(count[c] == 0)
                count[c] += 1
        # visited more often than the mean cell (visits / k), compared in integers
        for q in range(k):
            c = distinct[q]
            joins = np.int32((np.int64(count[c]) * k > visits) & (local[c] == -1))
            members[m] = c
            m += joins
            local[c] += joins
            count[c] = 0
    nodes = members[:m].copy()  # in the order they joined: sorting them bought nothing
    if m == 0:  # no seeds: no pairs (and the tables below would have no room)
        return nodes, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    for i in range(m):
        local[nodes[i]] = i

    # pairs within each walk (each once per walk), counted by their first cell as they
    # are listed, then bucketed by it
    n_walks = walks.shape[0]
    max_pairs = n_walks * cols * (cols - 1) // 2
    pair_lo = np.empty(max_pairs, dtype=np.int32)
    pair_hi = np.empty(max_pairs, dtype=np.int32)
    start = np.zeros(m + 1, dtype=np.int64)
    cells = np.zeros(cols, dtype=np.int32)
    p = 0
    for w in range(n_walks):
        k = 0  # the walk's distinct batch cells go to cells[:k]
        for j in range(cols):
            c = local[walks[w, j]]
            skip = c < 0
            for q in range(j):  # j, not k: a fixed trip count the branch predictor learns
                skip |= (q < k) & (cells[q] == c)
            cells[k] = max(c, 0)
            k += np.int64(not skip)
        for a in range(cols):  # every slot pair, kept when both slots are filled
            for b in range(a + 1, cols):
                keep = np.int64(b < k)
                lo, hi = min(cells[a], cells[b]), max(cells[a], cells[b])
                pair_lo[p] = lo
                pair_hi[p] = hi
                start[lo + 1] += keep
                p += keep
    for i in range(m):
        start[i + 1] += start[i]
    fill = start[:-1].copy()
    bucket = np.empty(p, dtype=np.int32)
    for i in range(p):
        lo = pair_lo[i]
        bucket[fill[lo]] = pair_hi[i]
        fill[lo] += 1
    first = np.empty(p, dtype=np.int64)
    second = np.empty(p, dtype=np.int64)
    shared = np.zeros(p, dtype=np.int64)
    # count each bucket's repeats through two small tables: where each second cell was
    # last seen (``mark``) and at which output row (``row``); no sorting, no branches
    mark = np.full(m, -1, dtype=np.int32)
    row = np.zeros(m, dtype=np.int64)
    out = 0
    for lo in range(m):
        for q in range(start[lo], start[lo + 1]):
            hi = bucket[q]
            new = np.int64(mark[hi] != lo)
            at = row[hi] + new * (out - row[hi])  # a new row, or the pair's row
            mark[hi] = lo
            row[hi] = at
            first[out] = lo  # kept when new (``out`` advances past it)
            second[out] = hi
            shared[at] += 1
            out += new
    for i in range(m):
        local[nodes[i]] = -1
    return nodes, first[:out], second[:out], shared[:out]


@njit(cache=True)
def walk_batch_kernel(indptr, indices, seeds, walks_per_seed, walk_length, count, local, state):
    """:func:`walks_kernel` from every seed, then :func:`co_visits_kernel`, in one call."""
    walks = walks_kernel(indptr, indices, np.repeat(seeds, walks_per_seed), walk_length, state)
    return co_visits_kernel(walks, seeds, count, local)


@njit(cache=True)
def frequent_pairs(first, second, shared):
    """(2, q) the pairs sharing more walks than the mean pair (compared in integers)."""
    total = 0
    for i in range(shared.shape[0]):
        total += shared[i]
    keep = 0
    for i in range(shared.shape[0]):
        keep += shared[i] * shared.shape[0] > total
    pairs = np.empty((2, keep), dtype=np.int64)
    q = 0
    for i in range(shared.shape[0]):
        if shared[i] * shared.shape[0] > total:
            pairs[0, q] = first[i]
            pairs[1, q] = second[i]
            q += 1
    return pairs


@njit(cache=True)
def batch_kernel(indptr, indices, order, rank, seeds, walks_per_seed, walk_length, fanouts, count, local,
                 capacity, state):
    """A whole training batch in one call: :func:`walk_batch_kernel`, the ``freq`` positive
    pairs, then :func:`neighbourhood_kernel` around the batch cells, on a graph relabelled
    as :meth:`Scratch.graph` makes it (``seeds`` and the returned ids are the caller's).

    Returns (nodes, pairs, n_id, edges, nodes_per_hop, edges_per_hop).
    """
    nodes, first, second, shared = walk_batch_kernel(indptr, indices, to_inner(rank, seeds), walks_per_seed,
                                                     walk_length, count, local, state)
    n_id, edges, nodes_per_hop, edges_per_hop = neighbourhood_kernel(indptr, indices, nodes, fanouts, local,
                                                                      capacity, state)
    for i in range(nodes.shape[0]):
        nodes[i] = order[nodes[i]]
    for i in range(n_id.shape[0]):
        n_id[i] = order[n_id[i]]
    return nodes, frequent_pairs(first, second, shared), n_id, edges, nodes_per_hop, edges_per_hop


@njit(cache=True)
def to_inner(rank, ids):
    """``rank[ids]``: the caller's cell ids in the kernels' order, refused when out of range."""
    out = np.empty(ids.shape[0], dtype=np.int64)
    for i in range(ids.shape[0]):
        c = ids[i]
        if c < 0 or c >= rank.shape[0]:
            raise ValueError("not a cell id of the graph: ids run from 0 to the number of cells - 1")
        out[i] = rank[c]
    return out


@njit(cache=True)
def relabel(indptr, indices, order, rank):
    """The CSR graph with cell ``order[i]`` renamed ``i`` (int32 when the edges fit)."""
    n = order.shape[0]
    new_indptr = np.empty(n + 1, dtype=indptr.dtype)
    new_indptr[0] = 0
    for i in range(n):
        c = order[i]
        new_indptr[i + 1] = new_indptr[i] + indptr[c + 1] - indptr[c]
    new_indices = np.empty(indices.shape[0], dtype=indices.dtype)
    for i in range(n):
        c = order[i]
        at = new_indptr[i]
        for j in range(indptr[c], indptr[c + 1]):
            new_indices[at] = rank[indices[j]]
            at += 1
    return new_indptr, new_indices


@njit(cache=True)
def neighbourhood_kernel(indptr, indices, targets, fanouts, local, capacity, state):
    """Multi-hop neighbourhood sampling; the rules of :func:`sampling.sample_neighbourhood`.

    ``targets`` must be distinct. ``local`` (int32, -1, one entry per graph cell) is
    scratch space, left as it was found. ``capacity`` is a guess of the number of edges
    (the buffers grow past it when needed). Returns (n_id, edges, nodes_per_hop,
    edges_per_hop), ``edges`` relabelled to positions in ``n_id`` with row 0 the sources.

    Each hop runs in two passes. The first lists the sampled neighbours of every frontier
    cell: a cell with more than ``fanout`` neighbours draws ``fanout`` slots with
    replacement, marked in a bit mask, so repeats drop out and the kept slots come out in
    order without sorting (cells with over 64 neighbours sort their draws instead). The
    second numbers the cells not seen before, in order of first appearance. Keeping the
    lookups of the second pass out of the first lets the processor overlap the first
    pass's memory reads; the two passes take about half the time of one mixed pass.
    """
    n_hops = fanouts.shape[0]
    n_nodes = indptr.shape[0] - 1
    n_targets = targets.shape[0]
    for i in range(n_targets):
        t = targets[i]
        if t < 0 or t >= n_nodes or local[t] != -1:
            for j in range(i):
                local[targets[j]] = -1
            raise ValueError("targets must be distinct cell ids of the graph")
        local[t] = i
    capacity = max(capacity, 16 * n_targets)
    edges = np.empty((2, capacity), dtype=np.int64)
    found = np.empty(capacity, dtype=indices.dtype)  # pass 1's neighbour ids
    n_id = np.empty(capacity + n_targets, dtype=np.int64)
    n_id[:n_targets] = targets
    size = n_targets
    nodes_per_hop = np.empty(n_hops + 1, dtype=np.int64)
    edges_per_hop = np.empty(n_hops, dtype=np.int64)
    nodes_per_hop[0] = size
    widest = 1
    for h in range(n_hops):
        widest = max(widest, fanouts[h])
    drawn = np.empty(widest, dtype=np.int64)
    lo, hi, e = 0, size, 0
    x = state[0]
    for h in range(n_hops):
        fanout = fanouts[h]
        bound = 0  # edges this hop can add: every neighbour of the frontier at most
        for i in range(lo, hi):
            bound += indptr[n_id[i] + 1] - indptr[n_id[i]]
        if e + bound > edges.shape[1]:
            grown = np.empty((2, 2 * (e + bound)), dtype=np.int64)
            grown[:, :e] = edges[:, :e]
            edges = grown
            found = np.empty(edges.shape[1], dtype=indices.dtype)
        if size + bound > n_id.shape[0]:
            grown_ids = np.empty(2 * (size + bound), dtype=np.int64)
            grown_ids[:size] = n_id[:size]
            n_id = grown_ids
        e0 = e
        for i in range(lo, hi):
            node = n_id[i]
            first = indptr[node]
            degree = indptr[node + 1] - first
            if fanout <= 0 or degree <= fanout:
                for j in range(degree):
                    found[e + j] = indices[first + j]
                    edges[1, e + j] = i
                e += degree
            elif degree <= 64:
                mask = np.uint64(0)
                for j in range(fanout):
                    x = _xorshift(x)
                    mask |= np.uint64(1) << np.uint64(_below(x, degree))
                for j in range(degree):  # written always, kept (e advances) only when drawn
                    found[e] = indices[first + j]
                    edges[1, e] = i
                    e += np.int64((mask >> np.uint64(j)) & np.uint64(1))
            else:
                for j in range(fanout):
                    x = _xorshift(x)
                    drawn[j] = _below(x, degree)
                _insertion_sort(drawn, 0, fanout)
                for j in range(fanout):
                    if j == 0 or drawn[j] != drawn[j - 1]:
                        found[e] = indices[first + drawn[j]]
                        edges[1, e] = i
                        e += 1
        for q in range(e0, e):
            nb = found[q]
            at = local[nb]
            new = at == -1
            if new:
                at = size
            local[nb] = at
            n_id[size] = nb  # kept only when new: size advances past it
            size += np.int64(new)
            edges[0, q] = at
        edges_per_hop[h] = e
        nodes_per_hop[h + 1] = size
        lo, hi = hi, size
    state[0] = x
    for i in range(size):
        local[n_id[i]] = -1
    return n_id[:size], edges[:, :e], nodes_per_hop, edges_per_hop


class Scratch(threading.local):
    """Per-thread scratch arrays sized to the graph (kernels leave them clean)."""

    def arrays(self, n_nodes: int, visits: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(count, local): zeros and int32 -1, one entry per graph cell.

        Both kernels share ``local``; small types keep the tables the kernels read at
        random (with the graph) in the processor's caches. ``count`` is uint16, or int64
        (made once) when one seed's walks make more ``visits`` than uint16 holds.
        """
        if getattr(self, "n_nodes", None) != n_nodes:
            self.n_nodes = n_nodes
            self.count = np.zeros(n_nodes, dtype=np.uint16)
            self.wide_count = None
            self.local = np.full(n_nodes, -1, dtype=np.int32)
            self.hood_edges = 0  # edges of the last neighbourhood: the next one's buffer size
        if visits > np.iinfo(np.uint16).max:
            if self.wide_count is None:
                self.wide_count = np.zeros(n_nodes, dtype=np.int64)
            return self.wide_count, self.local
        return self.count, self.local

    def edge_guess(self) -> int:
        """A buffer size for the next neighbourhood: a quarter more than the last one used."""
        return getattr(self, "hood_edges", 0) * 5 // 4

    def graph(self, indptr, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, indices, order, rank): the CSR graph for the kernels, made once per graph
        (kept while the same two tensors are passed).

        The copy is int32 when the ids fit, and its cells are renumbered in reverse
        Cuthill-McKee order (``order[i]`` is the caller's id of cell ``i``, ``rank`` the
        inverse): neighbours get nearby numbers, so a batch's cells and their rows share
        cache lines and memory pages. It makes sampling about a sixth faster; it costs
        0.4 s once for a million cells.
        """
        cached = getattr(self, "_graph", None)
        if cached is None or cached[0]() is not indptr or cached[1]() is not indices:
            ip, ix = indptr.numpy(), indices.numpy()
            if ix.size < 2**31 - 1:
                ip, ix = ip.astype(np.int32), ix.astype(np.int32)
            n = ip.size - 1
            matrix = scipy.sparse.csr_matrix((np.ones(ix.size, dtype=np.int8), ix, ip), shape=(n, n))
            order = scipy.sparse.csgraph.reverse_cuthill_mckee(matrix, symmetric_mode=True).astype(np.int64)
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(n)
            cached = (weakref.ref(indptr), weakref.ref(indices), *relabel(ip, ix, order, rank), order, rank)
            self._graph = cached
        return cached[2:]


SCRATCH = Scratch()


def rng_state(generator) -> np.ndarray:
    """A kernel generator state drawn from a torch generator (so seeded runs repeat)."""
    import torch

    seed = int(torch.randint(1, 2**62, (1,), generator=generator))
    # one splitmix64 step spreads the seed's bits; the state must not be zero
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return np.array([(z ^ (z >> 31)) or 1], dtype=np.uint64)
