"""Compiled CPU kernels for the sampler (numba), used when the graph lives on the CPU.

On a GPU the vectorised torch code in :mod:`cellniche_core.sampling` is fast: each
operation covers the whole batch. On a CPU the same code pays for many full passes over
intermediate tensors and for sorting; these kernels do the work in one pass per stage,
with lookup tables instead of sorts. They implement the same rules as the torch code (a
test checks that both give identical co-visit results on the same walks), and draw their
random numbers from a small xorshift generator seeded from the caller's
``torch.Generator``, so a seeded run is reproducible.

Every kernel compiles on first use (a few seconds, cached on disk afterwards).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _uniform_below(state, bound):
    """An integer in [0, bound) from a xorshift64* generator whose state is ``state[0]``.

    A few cycles per draw, against ~8 ns for numba's Mersenne Twister: the draws are a
    large part of the sampler's work. Multiply-shift maps the 32 high bits to the range.
    """
    x = state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[0] = x
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
    for step in range(1, walk_length + 1):
        for w in range(n_walks):
            cur = out[w, step - 1]
            first = indptr[cur]
            degree = indptr[cur + 1] - first
            if degree > 0:
                cur = indices[first + _uniform_below(state, degree)]
            out[w, step] = cur
    return out


@njit(cache=True)
def co_visits_kernel(walks, seeds, count, local):
    """Batch cells and co-visit counts; the rules of :func:`sampling.co_visits`.

    ``count`` (int32 zeros) and ``local`` (int64, -1) are scratch arrays with one entry
    per graph cell; they are left as they were found.

    Returns (nodes, first, second, shared): sorted batch cell ids, and for every pair of
    batch cells sharing a walk their local ids (first < second) and the number of walks
    they share, pairs ordered by (first, second).
    """
    n_seeds = seeds.shape[0]
    per_seed = walks.shape[0] // max(n_seeds, 1)
    cols = walks.shape[1]
    members = np.empty(n_seeds * (per_seed * cols + 1), dtype=np.int64)
    m = 0
    for s in range(n_seeds):
        if local[seeds[s]] == -1:
            local[seeds[s]] = 0
            members[m] = seeds[s]
            m += 1
        rows = walks[s * per_seed:(s + 1) * per_seed]
        distinct = 0
        for i in range(rows.shape[0]):
            for j in range(cols):
                c = rows[i, j]
                if count[c] == 0:
                    distinct += 1
                count[c] += 1
        mean = rows.shape[0] * cols / max(distinct, 1)
        for i in range(rows.shape[0]):
            for j in range(cols):
                c = rows[i, j]
                if count[c] > mean and local[c] == -1:
                    local[c] = 0
                    members[m] = c
                    m += 1
        for i in range(rows.shape[0]):
            for j in range(cols):
                count[rows[i, j]] = 0
    nodes = np.sort(members[:m])
    for i in range(m):
        local[nodes[i]] = i

    # pairs within each walk (each once per walk), bucketed by their first cell
    n_walks = walks.shape[0]
    max_pairs = n_walks * cols * (cols - 1) // 2
    pair_lo = np.empty(max_pairs, dtype=np.int64)
    pair_hi = np.empty(max_pairs, dtype=np.int64)
    cells = np.empty(cols, dtype=np.int64)
    p = 0
    for w in range(n_walks):
        k = 0
        for j in range(cols):
            c = local[walks[w, j]]
            if c < 0:
                continue
            seen = False
            for q in range(k):
                if cells[q] == c:
                    seen = True
                    break
            if not seen:
                cells[k] = c
                k += 1
        for a in range(k):
            for b in range(a + 1, k):
                lo, hi = min(cells[a], cells[b]), max(cells[a], cells[b])
                pair_lo[p] = lo
                pair_hi[p] = hi
                p += 1
    start = np.zeros(m + 1, dtype=np.int64)
    for i in range(p):
        start[pair_lo[i] + 1] += 1
    for i in range(m):
        start[i + 1] += start[i]
    fill = start[:-1].copy()
    bucket = np.empty(p, dtype=np.int64)
    for i in range(p):
        bucket[fill[pair_lo[i]]] = pair_hi[i]
        fill[pair_lo[i]] += 1
    first = np.empty(p, dtype=np.int64)
    second = np.empty(p, dtype=np.int64)
    shared = np.empty(p, dtype=np.int64)
    out = 0
    for lo in range(m):
        _insertion_sort(bucket, start[lo], start[lo + 1])
        i, end = start[lo], start[lo + 1]
        while i < end:
            j = i
            while j < end and bucket[j] == bucket[i]:
                j += 1
            first[out] = lo
            second[out] = bucket[i]
            shared[out] = j - i
            out += 1
            i = j
    for i in range(m):
        local[nodes[i]] = -1
    return nodes, first[:out], second[:out], shared[:out]


@njit(cache=True)
def neighbourhood_kernel(indptr, indices, targets, fanouts, local, n_id, edges, state):
    """Multi-hop neighbourhood sampling; the rules of :func:`sampling.sample_neighbourhood`.

    ``targets`` must be distinct. ``local`` (int64, -1) and ``n_id`` (int64) have one
    entry per graph cell and ``edges`` is a (2, capacity) int64 buffer: scratch space,
    reused from call to call (``local`` is left as it was found). Returns (n_id, edges,
    nodes_per_hop, edges_per_hop, buffer): copies of the used parts, ``edges`` relabelled
    to positions in ``n_id`` with row 0 the sources, and the edge buffer (a larger one
    when it had to grow) for the next call.
    """
    n_hops = fanouts.shape[0]
    n_nodes = indptr.shape[0] - 1
    for i in range(targets.shape[0]):
        t = targets[i]
        if t < 0 or t >= n_nodes or local[t] != -1:
            for j in range(i):
                local[targets[j]] = -1
            raise ValueError("targets must be distinct cell ids of the graph")
        n_id[i] = t
        local[t] = i
    size = targets.shape[0]
    nodes_per_hop = np.empty(n_hops + 1, dtype=np.int64)
    edges_per_hop = np.empty(n_hops, dtype=np.int64)
    nodes_per_hop[0] = size
    lo, hi = 0, size
    e = 0
    widest = 1
    for h in range(n_hops):
        widest = max(widest, fanouts[h])
    drawn = np.empty(widest, dtype=np.int64)
    for h in range(n_hops):
        fanout = fanouts[h]
        if fanout > 0:  # each cell gives at most fanout edges: no counting pass needed
            bound = (hi - lo) * fanout
        else:
            bound = 0
            for i in range(lo, hi):
                bound += indptr[n_id[i] + 1] - indptr[n_id[i]]
        if e + bound > edges.shape[1]:
            grown = np.empty((2, 2 * (e + bound)), dtype=np.int64)
            grown[:, :e] = edges[:, :e]
            edges = grown
        # the edge-adding lines are written out in both branches: a helper function, even
        # inlined by numba, made this loop about 2.5x slower
        for i in range(lo, hi):
            node = n_id[i]
            first = indptr[node]
            degree = indptr[node + 1] - first
            if fanout <= 0 or degree <= fanout:
                for j in range(degree):
                    nb = indices[first + j]
                    if local[nb] == -1:
                        local[nb] = size
                        n_id[size] = nb
                        size += 1
                    edges[0, e] = local[nb]
                    edges[1, e] = i
                    e += 1
            else:
                for j in range(fanout):
                    drawn[j] = _uniform_below(state, degree)
                _insertion_sort(drawn, 0, fanout)
                for j in range(fanout):
                    if j > 0 and drawn[j] == drawn[j - 1]:
                        continue
                    nb = indices[first + drawn[j]]
                    if local[nb] == -1:
                        local[nb] = size
                        n_id[size] = nb
                        size += 1
                    edges[0, e] = local[nb]
                    edges[1, e] = i
                    e += 1
        edges_per_hop[h] = e
        nodes_per_hop[h + 1] = size
        lo, hi = hi, size
    for i in range(size):
        local[n_id[i]] = -1
    return n_id[:size].copy(), edges[:, :e].copy(), nodes_per_hop, edges_per_hop, edges


class Scratch(threading.local):
    """Per-thread scratch arrays sized to the graph (kernels leave them clean)."""

    def arrays(self, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
        """(count, local): int32 zeros and int64 -1, one entry per graph cell."""
        if getattr(self, "n_nodes", None) != n_nodes:
            self.n_nodes = n_nodes
            self.count = np.zeros(n_nodes, dtype=np.int32)
            self.local = np.full(n_nodes, -1, dtype=np.int64)
            # the neighbourhood kernel's tables: int32 halves the memory its random reads touch
            self.local32 = np.full(n_nodes, -1, dtype=np.int32)
            self.n_id = np.empty(n_nodes, dtype=np.int32)
            self.edges = np.empty((2, 1 << 16), dtype=np.int64)
        return self.count, self.local

    def graph(self, indptr, indices) -> tuple[np.ndarray, np.ndarray]:
        """The CSR graph as numpy arrays for the kernels: an int32 copy, made once per graph
        (kept while the same two tensors are passed), when the ids fit in int32."""
        if indices.numel() >= 2**31 - 1:
            return indptr.numpy(), indices.numpy()
        cached = getattr(self, "_graph", None)
        if cached is None or cached[0]() is not indptr or cached[1]() is not indices:
            cached = (weakref.ref(indptr), weakref.ref(indices),
                      indptr.numpy().astype(np.int32), indices.numpy().astype(np.int32))
            self._graph = cached
        return cached[2], cached[3]


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
