"""Core engine benchmark: graph, sampler, training, embedding, niches, UMAP and the whole run.

Each cohort size runs in its own subprocess so that peak memory (RSS) is its own.

    python bench/bench_core.py                 # 10k and 100k cells
    python bench/bench_core.py --sizes 10000 100000 1000000 --device cuda

Prints one table row per size: wall time per stage, sampler batches/s (the sampler alone),
training steps/s, the sampler's time per step inside training and its share of training,
embedding cells/s and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(n_cells: int, device: str, steps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from cellniche_core.cellniche import CellNiche, spatial_graph
    from cellniche_core.embed import embed_nodes
    from cellniche_core.features import fit_features, make_features
    from cellniche_core.layout import compute_umap
    from cellniche_core.metrics import agreement
    from cellniche_core.niches import call_niches
    from cellniche_core.sampling import sample_batch
    from cellniche_core.simulate import simulate_cohort
    from cellniche_core.train import TrainConfig, resolve_device

    dev = resolve_device(device)
    out: dict = {"cells": n_cells, "device": str(dev), "threads": threads}
    n_patients = max(2, min(40, n_cells // 3000))
    slides = 1
    per_slide = n_cells // n_patients
    t = time.perf_counter()
    adata = simulate_cohort(n_patients=n_patients, cells_per_slide=per_slide, slides_per_patient=slides, seed=0)
    out["simulate_s"] = time.perf_counter() - t
    out["cells"] = adata.n_obs

    model = CellNiche(config=TrainConfig(n_steps=steps, seed=0))
    t = time.perf_counter()
    graph = spatial_graph(adata, model.graph, model.keys)
    out["graph_s"] = time.perf_counter() - t

    spec = fit_features(adata, mode="pheno", cell_type_key="cell_type")
    x_np, _ = make_features(adata, spec, cell_type_key="cell_type")
    indptr = torch.from_numpy(graph.indptr).to(dev)
    indices = torch.from_numpy(graph.indices).to(dev)
    cfg = model.config
    gen = torch.Generator(device=dev).manual_seed(0)
    n = adata.n_obs

    def one_batch():
        seeds = torch.randint(0, n, (cfg.seeds_per_batch,), generator=gen, device=dev)
        return sample_batch(indptr, indices, seeds, walks_per_seed=cfg.walks_per_seed,
                            walk_length=cfg.walk_length, fanouts=cfg.fanouts, generator=gen)[1]

    for _ in range(3):
        one_batch()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    n_batches = 50
    for _ in range(n_batches):
        one_batch()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out["sampler_batches_per_s"] = n_batches / (time.perf_counter() - t)

    t = time.perf_counter()
    model.fit(adata, device=str(dev))
    out["train_s"] = time.perf_counter() - t
    out["train_steps_per_s"] = steps / model.history.seconds
    out["train_sample_ms"] = 1e3 * model.history.sample_seconds / max(model.history.steps, 1)
    out["train_sample_share"] = 100 * model.history.sample_seconds / model.history.seconds

    encoder = model.model.encoder.to(dev)
    x = torch.from_numpy(x_np).to(dev)
    t = time.perf_counter()
    emb = embed_nodes(encoder, x, indptr, indices)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out["embed_s"] = time.perf_counter() - t
    out["embed_cells_per_s"] = n / out["embed_s"]

    k = adata.obs["true_niche"].nunique()
    t = time.perf_counter()
    labels, _ = call_niches(emb, k, seed=0)
    out["niches_s"] = time.perf_counter() - t
    out["ari"] = agreement(adata.obs["true_niche"], labels)["ari"]
    t = time.perf_counter()
    compute_umap(emb, seed=0)
    out["umap_s"] = time.perf_counter() - t
    out["end_to_end_s"] = out["graph_s"] + out["train_s"] + out["embed_s"] + out["niches_s"] + out["umap_s"]
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    if dev.type == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


COLUMNS = [("cells", "cells", "{:,}"), ("graph_s", "graph s", "{:.1f}"),
           ("sampler_batches_per_s", "sampler batch/s", "{:.0f}"), ("train_steps_per_s", "train step/s", "{:.1f}"),
           ("train_sample_ms", "sampler ms/step in training", "{:.2f}"),
           ("train_sample_share", "sampler % of training", "{:.1f}"),
           ("train_s", "train s", "{:.1f}"), ("embed_cells_per_s", "embed cells/s", "{:,.0f}"),
           ("niches_s", "niches s", "{:.1f}"), ("umap_s", "UMAP s", "{:.1f}"),
           ("end_to_end_s", "total s", "{:.1f}"), ("peak_rss_gb", "peak RSS GB", "{:.2f}"), ("ari", "ARI", "{:.2f}")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the library's default)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        from cellniche_core.train import steps_for

        print(json.dumps(measure(args.one, args.device, args.steps or steps_for(args.one), args.threads)))
        return
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(size), "--device", args.device, "--threads", str(args.threads)]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        # ours first, then what the caller set (e.g. packages installed outside the venv)
        path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
        env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=str(args.threads))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            sys.exit(res.returncode)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"device: {rows[0]['device']}, torch threads: {rows[0]['threads']}")
    print("| " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(f.format(r[k]) for k, _, f in COLUMNS) + " |")


if __name__ == "__main__":
    main()
