"""Our vectorised sampler against a straightforward per-cell Python implementation.

Both do the same work on the same graph and seeds: random walks from every seed,
batch membership by visit frequency, co-visit positives, then the 2-hop neighbourhood
of the batch. Prints the time of each and the speed ratio.

    python bench/bench_sampler.py [--cells 100000] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter

import numpy as np
import torch

from cellniche_core.graph import build_knn_graph
from cellniche_core.sampling import sample_neighbourhood, sample_walk_batch
from cellniche_core.train import TrainConfig, resolve_device


def loop_sampler(adj: list[list[int]], seeds: list[int], cfg: TrainConfig, rng: random.Random):
    """The same sampling written cell by cell with Python lists and dicts."""
    walks, walk_seed = [], []
    for s_i, s in enumerate(seeds):
        for _ in range(cfg.walks_per_seed):
            cur, walk = s, [s]
            for _ in range(cfg.walk_length):
                if adj[cur]:
                    cur = adj[cur][int(rng.random() * len(adj[cur]))]
                walk.append(cur)
            walks.append(walk)
            walk_seed.append(s_i)
    batch = set(seeds)
    for s_i in range(len(seeds)):
        counts = Counter(c for w, g in zip(walks, walk_seed) if g == s_i for c in w)
        mean = sum(counts.values()) / len(counts)
        batch.update(c for c, k in counts.items() if k > mean)
    co = Counter()
    for w in walks:
        cells = sorted(set(c for c in w if c in batch))
        for a in cells:
            for b in cells:
                if a != b:
                    co[(a, b)] += 1
    mean_co = sum(co.values()) / max(len(co), 1)
    positives = {pair for pair, k in co.items() if k > mean_co}
    hood, frontier = set(batch), set(batch)
    for fanout in cfg.fanouts:
        nxt = set()
        for c in frontier:
            nbrs = adj[c] if len(adj[c]) <= fanout else [adj[c][int(rng.random() * len(adj[c]))] for _ in range(fanout)]
            nxt.update(nbrs)
        frontier = nxt - hood
        hood |= nxt
    return batch, positives, hood


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    dev = resolve_device(args.device)
    rng_np = np.random.default_rng(0)
    side = np.sqrt(args.cells) * 12.0
    g = build_knn_graph(rng_np.uniform(0, side, (args.cells, 2)))
    cfg = TrainConfig()
    adj = [g.indices[g.indptr[i]:g.indptr[i + 1]].tolist() for i in range(g.n_nodes)]
    indptr, indices = torch.from_numpy(g.indptr).to(dev), torch.from_numpy(g.indices).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    ours, loop, sizes = [], [], []
    for r in range(args.repeats):
        seeds = rng_np.choice(args.cells, cfg.seeds_per_batch, replace=False)
        t = time.perf_counter()
        b = sample_walk_batch(indptr, indices, torch.from_numpy(seeds).to(dev), walks_per_seed=cfg.walks_per_seed,
                              walk_length=cfg.walk_length, generator=gen)
        h = sample_neighbourhood(indptr, indices, b.nodes, cfg.fanouts, generator=gen)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        batch, positives, hood = loop_sampler(adj, seeds.tolist(), cfg, random.Random(r))
        loop.append(time.perf_counter() - t)
        sizes.append((b.nodes.numel(), len(batch), h.n_id.numel(), len(hood)))
    o, l_ = statistics.median(ours), statistics.median(loop)
    print(f"graph: {args.cells:,} cells, {g.n_edges:,} directed edges; device {dev}; "
          f"{cfg.seeds_per_batch} seeds x {cfg.walks_per_seed} walks x {cfg.walk_length} steps, fanouts {cfg.fanouts}")
    print(f"batch cells (ours / loop): {sizes[-1][0]} / {sizes[-1][1]}; "
          f"2-hop cells: {sizes[-1][2]} / {sizes[-1][3]}")
    print("| sampler | median ms per batch |\n|---|---|")
    print(f"| vectorised torch ({dev}) | {o * 1e3:.2f} |\n| per-cell Python loop | {l_ * 1e3:.2f} |")
    print(f"speed ratio: {l_ / o:.1f}x")


if __name__ == "__main__":
    main()
