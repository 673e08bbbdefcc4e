"""Training with PyTorch DDP: 2 CPU processes with gloo, as torchrun runs them."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cellniche_core.graph import build_knn_graph
from cellniche_core.keys import RUN_MANIFEST
from cellniche_core.train import TrainConfig, train_model

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_rank(rank: int, world_size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    rng = np.random.default_rng(0)  # same data on every rank
    g = build_knn_graph(rng.uniform(0, 100, (400, 2)), n_neighbors=6)
    x = torch.nn.functional.one_hot(torch.from_numpy(rng.integers(0, 5, 400)), 5).float()
    seen = []
    model, _ = train_model(x, torch.from_numpy(g.indptr), torch.from_numpy(g.indices),
                           TrainConfig(n_steps=6, seed=0), rank=rank, world_size=world_size,
                           progress=lambda s, n, loss: seen.append(loss))
    torch.save({"state": model.state_dict(), "losses": seen}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_end_with_the_same_weights(tmp_path):
    mp.spawn(_train_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name, value in r0["state"].items():
        torch.testing.assert_close(value, r1["state"][name], msg=name)
    # the ranks drew different seed cells, so their batch losses differ
    assert r0["losses"] != r1["losses"]
    # and training moved the weights away from the shared initialisation
    torch.manual_seed(0)
    from cellniche_core.train import NicheModel

    init = NicheModel(5, TrainConfig()).state_dict()
    assert any(not torch.equal(init[k], r0["state"][k]) for k in init)


@pytest.mark.slow
def test_torchrun_fit_writes_the_run_once(tmp_path, small_cohort_path):
    out = tmp_path / "runs" / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "cellniche_core", "fit", str(small_cohort_path), "--out", str(out),
           "--steps", "10", "--n-niches", "4", "--no-umap", "--device", "cpu", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines() == [str(out)]  # rank 0 alone reports
    manifest = json.loads((out / RUN_MANIFEST).read_text())
    assert manifest["processes"] == 2 and manifest["training"]["steps"] == 10
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]  # written once, no temp left


def test_ranks_leave_the_group_before_rank0_goes_on(monkeypatch):
    """Rank 0's embedding, clustering and UMAP can take longer than NCCL lets a barrier
    wait, so every rank leaves the process group as soon as training ends."""
    import cellniche_core.pipeline as pipeline
    from cellniche_core.cellniche import CellNiche
    from cellniche_core.distributed import Context
    from cellniche_core.simulate import simulate_cohort

    events = []
    monkeypatch.setattr(pipeline, "start", lambda context, device: events.append("start") or "cpu")
    monkeypatch.setattr(pipeline, "stop", lambda: events.append("stop"))
    fit, embed = CellNiche.fit, CellNiche.embed
    def one_process_fit(self, *a, **k):  # no process group here: train as one process
        events.append("fit")
        return fit(self, *a, **{**k, "world_size": 1})

    monkeypatch.setattr(CellNiche, "fit", one_process_fit)
    monkeypatch.setattr(CellNiche, "embed", lambda self, *a, **k: events.append("embed") or embed(self, *a, **k))
    adata = simulate_cohort(n_patients=2, cells_per_slide=300, seed=0)
    options = pipeline.RunOptions(train=TrainConfig(n_steps=3, seed=0), n_niches=3, umap=False, device="cpu")
    _, manifest = pipeline.analyse_cohort(adata, options, context=Context(rank=0, world_size=2))
    assert events == ["start", "fit", "stop", "embed"] and manifest["processes"] == 2
    events.clear()
    adata = simulate_cohort(n_patients=2, cells_per_slide=300, seed=0)
    model, manifest = pipeline.analyse_cohort(adata, options, context=Context(rank=1, world_size=2))
    assert events == ["start", "fit", "stop"] and manifest is None and model.model is not None
