"""Our sampler against a straightforward per-cell Python implementation.

Both do the same work on the same graph and the same seed cells: random walks from every
seed, batch membership by visit frequency, co-visit positives, then the 2-hop
neighbourhood of the batch. Ours is :func:`sample_batch`, as training calls it (compiled
kernels on a CPU, torch on a GPU). Batches run back to back with the garbage collector
paused (as ``timeit`` does); the table gives the median time per batch and the speed ratio.

Training calls the sampler thousands of times in a row, so ours is timed in that steady
state: before its timed batches it runs on fresh seed sets for ``--warm-up`` seconds. After
~15 ms spent elsewhere (a sleep, a busy Python loop, a collector pass) its first batch runs
2-4x slower and the next twenty or so stay slower while they recover. The loop, bound by
the interpreter, gets two warm-up batches; its time per batch does not drift. The timed
batches are split into rounds, each timing ours then the loop on the same seeds, so that
changes in the machine's load hit both.

Training draws 32 seeds per batch (``TrainConfig.seeds_per_batch``); the larger batches
show how the cost grows with the batch.

    python bench/bench_sampler.py [--cells 100000] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere, as the other benches

from cellniche_core.graph import build_knn_graph  # noqa: E402
from cellniche_core.sampling import sample_batch  # noqa: E402
from cellniche_core.train import TrainConfig, resolve_device  # noqa: E402


def loop_sampler(adj: list[list[int]], seeds: list[int], cfg: TrainConfig, rng: random.Random):
    """The same sampling written cell by cell with Python lists and dicts."""
    walks = []
    for s in seeds:
        for _ in range(cfg.walks_per_seed):
            cur, walk = s, [s]
            for _ in range(cfg.walk_length):
                if adj[cur]:
                    cur = adj[cur][int(rng.random() * len(adj[cur]))]
                walk.append(cur)
            walks.append(walk)
    batch = set(seeds)
    r = cfg.walks_per_seed
    for s_i in range(len(seeds)):  # the walks of seed s_i are rows s_i * r ... s_i * r + r - 1
        counts = Counter(c for w in walks[s_i * r:(s_i + 1) * r] for c in w)
        mean = sum(counts.values()) / len(counts)
        batch.update(c for c, k in counts.items() if k > mean)
    co = Counter()
    for w in walks:
        cells = sorted({c for c in w if c in batch})
        for i, a in enumerate(cells):
            for b in cells[i + 1:]:
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
    p.add_argument("--seeds", type=int, nargs="+", default=[32, 64, 256, 1024, 4096],
                   help=f"seed cells per batch (training uses {TrainConfig().seeds_per_batch})")
    p.add_argument("--repeats", type=int, default=25, help="timed batches per size")
    p.add_argument("--rounds", type=int, default=5, help="rounds the timed batches are split into")
    p.add_argument("--warm-up", type=float, default=0.25,
                   help="seconds our sampler runs before it is timed, in each round")
    args = p.parse_args()
    dev = resolve_device(args.device)
    rng_np = np.random.default_rng(0)
    side = np.sqrt(args.cells) * 12.0
    g = build_knn_graph(rng_np.uniform(0, side, (args.cells, 2)))
    cfg = TrainConfig()
    adj = [g.indices[g.indptr[i]:g.indptr[i + 1]].tolist() for i in range(g.n_nodes)]
    indptr, indices = torch.from_numpy(g.indptr).to(dev), torch.from_numpy(g.indices).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    def ours(seeds: np.ndarray):
        b, h = sample_batch(indptr, indices, torch.from_numpy(seeds).to(dev), walks_per_seed=cfg.walks_per_seed,
                            walk_length=cfg.walk_length, fanouts=cfg.fanouts, generator=gen)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return b, h

    def timed(run, batches, offset: int = 0) -> tuple[list[float], object]:
        """Seconds per batch over ``batches`` run back to back, and the last result."""
        times = []
        gc.disable()
        try:
            for i, seeds in enumerate(batches):
                t = time.perf_counter()
                out = run(offset + i, seeds)
                times.append(time.perf_counter() - t)
        finally:
            gc.enable()
        return times, out

    def loop(i: int, seeds: np.ndarray):
        return loop_sampler(adj, seeds.tolist(), cfg, random.Random(i))

    rounds = max(1, min(args.rounds, args.repeats))
    print(f"graph: {args.cells:,} cells, {g.n_edges:,} directed edges; device {dev}; torch threads "
          f"{torch.get_num_threads()}; {cfg.walks_per_seed} walks x {cfg.walk_length} steps per seed, "
          f"fanouts {cfg.fanouts}; medians over {args.repeats} batches in {rounds} rounds, ours after "
          f"{args.warm_up:g} s of warm-up on other seeds in each round")
    print("| seeds per batch | batch cells (ours / loop) | 2-hop cells (ours / loop) | ours ms | "
          "per-cell loop ms | speed ratio |")
    print("|---|---|---|---|---|---|")
    warm_rng = np.random.default_rng(1)  # its own: the timed batches do not depend on the warm-up's length
    for n_seeds in args.seeds:
        batches = [rng_np.choice(args.cells, n_seeds, replace=False) for _ in range(args.repeats)]
        gc.collect()  # here, not between our warm-up and its timing: a long pause slows the next batches
        timed(loop, [rng_np.choice(args.cells, n_seeds, replace=False) for _ in range(2)])  # warm-up
        ours(batches[0])  # compilation (or loading the compiled kernels), outside the warm-up time
        t_ours, t_loop = [], []
        for r in range(rounds):  # both samplers in every round: load changes on the machine hit both
            part = batches[r::rounds]
            until = time.perf_counter() + args.warm_up
            while time.perf_counter() < until:  # first-touch buffers, then caches; fresh seeds each
                ours(warm_rng.integers(0, args.cells, n_seeds))  # time, drawn as training draws them
            times, (b, h) = timed(lambda i, s: ours(s), part)
            t_ours += times
            times, (batch, _, hood) = timed(loop, part, offset=r * len(batches))
            t_loop += times
        m_ours, m_loop = statistics.median(t_ours), statistics.median(t_loop)
        print(f"| {n_seeds:,} | {b.nodes.numel():,} / {len(batch):,} | {h.n_id.numel():,} / {len(hood):,} | "
              f"{m_ours * 1e3:.2f} | {m_loop * 1e3:.1f} | {m_loop / m_ours:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
