"""A whole run: cohort → model → embeddings → niches → UMAP → run folder.

Shared by the command line and the dashboard, which follow it through ``on_stage``
(stage name, fraction done of that stage, message).
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import torch

from .cellniche import CellNiche, InputKeys, spatial_graph, store_graph
from .distributed import Context, from_environment, start, stop
from .graph import GraphSettings
from .keys import INPUT_UNS_KEY, Keys
from .layout import compute_umap
from .metrics import agreement, batch_mixing
from .niches import call_niches, niche_categories
from .scale import describe_scale
from .train import TrainConfig, resolve_device

#: on_stage callback: (stage, fraction of that stage done, message)
StageCallback = Callable[[str, float, str], None]

STAGES = ("read", "graph", "train", "embed", "niches", "umap", "write")
#: the stages of building the demo (:func:`cellniche_core.cli.build_demo` simulates its cohort first)
DEMO_STAGES = ("simulate", *STAGES)

#: relative share of a progress bar given to each stage of a run (building the demo
#: simulates its cohort first)
STAGE_WEIGHTS = {"simulate": 3, "read": 3, "graph": 3, "train": 73, "embed": 5, "niches": 5, "umap": 7,
                 "write": 3}


def overall_progress(stage: str, fraction: float, stages=STAGES) -> float:
    """Position on the progress bar of a run made of ``stages`` of ``fraction`` of ``stage``.

    Each stage gets its share of ``STAGE_WEIGHTS``; an unknown stage spans the whole bar.
    """
    weights = [STAGE_WEIGHTS.get(s, 1) for s in stages]
    if stage not in stages:
        lo, hi = 0.0, 1.0
    else:
        i, total = list(stages).index(stage), sum(weights)
        lo, hi = sum(weights[:i]) / total, sum(weights[:i + 1]) / total
    return lo + (hi - lo) * min(max(float(fraction), 0.0), 1.0)

_PACKAGES = ("torch", "torch-geometric", "anndata", "numpy", "scipy", "scikit-learn", "pandas",
             "umap-learn")


def package_versions() -> dict:
    """Versions of Python and the packages a run depends on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class RunOptions:
    """Everything a run is made from besides the data."""

    features: str = "auto"
    n_niches: int | str = "auto"
    graph: GraphSettings = field(default_factory=GraphSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    keys: InputKeys = field(default_factory=InputKeys)
    patient_key: str = Keys.PATIENT
    device: str = "auto"
    umap: bool = True


def _quiet(stage: str, fraction: float, message: str) -> None:
    pass


def analyse_cohort(adata: ad.AnnData, options: RunOptions, *, on_stage: StageCallback | None = None,
                   should_stop=None, context: Context | None = None) -> tuple[CellNiche, dict | None]:
    """Fit a model on ``adata`` and annotate it in place.

    Writes ``obsm["X_cellniche"]``, ``obs["niche"]`` (categorical), ``obsm["X_umap"]``,
    ``obsp["spatial_connectivities"]`` (the spatial graph) and ``uns["cellniche"]`` (the
    manifest, also returned). Under ``torchrun`` (``context``
    with several processes) every rank trains, then all leave the process group; only
    rank 0 goes on to annotate ``adata``, the others return ``(model, None)``.
    """
    on_stage = on_stage or _quiet
    context = context or Context()
    device = resolve_device(start(context, options.device))
    timings: dict[str, float] = {}

    model = CellNiche(features=options.features, graph=options.graph, config=options.train,
                      keys=options.keys)
    on_stage("graph", 0.0, "building the spatial graphs")
    t = time.perf_counter()
    graph = spatial_graph(adata, options.graph, options.keys)  # once, for training and embedding
    timings["graph"] = time.perf_counter() - t
    on_stage("graph", 1.0, f"{graph.n_edges:,} edges")
    t = time.perf_counter()
    model.fit(adata, device=str(device), should_stop=should_stop, rank=context.rank,
              world_size=context.world_size, graph=graph, keep_inputs=True,
              progress=lambda s, n, loss: on_stage("train", s / n, f"step {s}/{n}, loss {loss:.3f}"))
    timings["train"] = time.perf_counter() - t
    # Training is the only work the ranks share: leave the process group now. Otherwise
    # the other ranks would wait in its closing barrier while rank 0 embeds and clusters,
    # and NCCL ends a wait after 10 minutes by aborting the run.
    stop()
    if not context.is_main:
        return model, None

    on_stage("embed", 0.0, f"embedding {adata.n_obs:,} cells")
    t = time.perf_counter()
    report = model.embed(adata, device=str(device), graph=graph, inputs=model.inputs)
    model.inputs = None
    store_graph(adata, graph)  # kept with the run, so that no later step rebuilds it
    scale = describe_scale(graph, options.train, positives_per_cell=model.history.mean_positives_per_cell,
                           batch_cells=model.history.mean_batch_cells, seed=options.train.seed)
    del graph
    timings["embed"] = time.perf_counter() - t
    on_stage("embed", 1.0, "done")

    on_stage("niches", 0.0, "clustering")
    t = time.perf_counter()
    labels, niche_info = call_niches(adata.obsm[Keys.EMBEDDING], options.n_niches, seed=options.train.seed)
    adata.obs[Keys.NICHE] = pd.Categorical(labels, categories=niche_categories(labels))
    timings["niches"] = time.perf_counter() - t
    on_stage("niches", 1.0, f"{niche_info['n_niches']} niches")

    if options.umap:
        on_stage("umap", 0.0, "UMAP layout")
        t = time.perf_counter()
        adata.obsm[Keys.UMAP] = compute_umap(adata.obsm[Keys.EMBEDDING], seed=options.train.seed, device=device)
        timings["umap"] = time.perf_counter() - t
        on_stage("umap", 1.0, "done")

    metrics: dict = {}
    sample_key = options.keys.sample_key
    if sample_key in adata.obs and adata.obs[sample_key].nunique() > 1:
        t = time.perf_counter()
        mix = batch_mixing(adata.obsm[Keys.EMBEDDING], adata.obs[sample_key], adata.obs[Keys.NICHE],
                           seed=options.train.seed, device=device)
        metrics["batch_mixing_per_niche"] = {str(k): (None if pd.isna(v) else float(v))
                                             for k, v in mix["mixing"].items()}
        timings["mixing"] = time.perf_counter() - t
    if Keys.TRUE_NICHE in adata.obs:
        metrics["vs_true_niche"] = agreement(adata.obs[Keys.TRUE_NICHE], adata.obs[Keys.NICHE])

    hist = model.history
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_cells": int(adata.n_obs),
        "n_samples": int(adata.obs[sample_key].nunique()) if sample_key in adata.obs else 1,
        "features": model.spec.mode,
        "n_niches": niche_info["n_niches"],
        "niche_rule": niche_info["rule"],
        "niche_stability": niche_info.get("stability"),
        "niche_clustering": niche_info.get("clustering"),
        "params": {"graph": options.graph.to_dict(), "train": options.train.to_dict(),
                   "keys": vars(options.keys).copy(), "patient_key": options.patient_key,
                   "n_niches": options.n_niches, "features": options.features},
        "seed": options.train.seed,
        "device": str(device),
        "processes": context.world_size,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": package_versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "training": {"steps": hist.steps, "precision": hist.precision, "seconds": round(hist.seconds, 3),
                     "sampling_seconds": round(hist.sample_seconds, 3),
                     "final_loss": float(np.mean(hist.loss[-20:])) if hist.loss else None,
                     "temperature": hist.temperature, "mean_batch_cells": hist.mean_batch_cells,
                     "mean_positives_per_cell": hist.mean_positives_per_cell,
                     "stopped_early": hist.steps < (options.train.n_steps or hist.steps)},
        "scale": scale,
        "alignment": report,
        "metrics": metrics,
    }
    adata.uns[Keys.UNS] = manifest
    return model, manifest


def fit_run(paths, out: str | Path, options: RunOptions, *, group_keys=(), overwrite: bool = False,
            on_stage: StageCallback | None = None, should_stop=None, input_names=None) -> Path:
    """Read a cohort, analyse it and write the run folder ``out`` atomically.

    ``input_names`` replaces ``paths`` in the manifest's ``inputs`` (e.g. the names of
    uploaded files, when ``paths`` are temporary copies).
    """
    from .io.read import close_backed, read_cohort

    on_stage = on_stage or _quiet
    t0 = time.perf_counter()
    on_stage("read", 0.0, "reading cohort")
    # one .h5ad file: X stays on disk, read a block of rows at a time and copied into the run
    adata = read_cohort(paths, spatial_key=options.keys.spatial_key, sample_key=options.keys.sample_key,
                        patient_key=options.patient_key, cell_type_key=options.keys.cell_type_key,
                        group_keys=tuple(group_keys), features=options.features, backed=True)
    try:
        return _fit_read(adata, paths, out, options, t0=t0, overwrite=overwrite, on_stage=on_stage,
                         should_stop=should_stop, input_names=input_names)
    finally:
        close_backed(adata)


def _fit_read(adata: ad.AnnData, paths, out, options: RunOptions, *, t0: float, overwrite: bool,
              on_stage: StageCallback, should_stop, input_names) -> Path:
    from .io import write_run
    from .niches import check_n_niches

    check_n_niches(options.n_niches, adata.n_obs)  # before any training
    read_s = time.perf_counter() - t0
    notes = adata.uns.get(INPUT_UNS_KEY, {}).get("notes", [])  # e.g. a z dropped, cell names made unique
    on_stage("read", 1.0, f"{adata.n_obs:,} cells" + "".join(f"; {note}" for note in notes))
    context = from_environment()
    try:
        model, manifest = analyse_cohort(adata, options, on_stage=on_stage, should_stop=should_stop,
                                         context=context)
    finally:
        stop()
    if manifest is None:  # a torchrun rank other than 0: rank 0 writes the run
        return Path(out)
    manifest["timings_s"]["read"] = round(read_s, 3)
    shown = input_names if input_names is not None else ([paths] if isinstance(paths, (str, Path)) else paths)
    manifest["inputs"] = [str(p) for p in shown]
    on_stage("write", 0.0, "writing run")
    t = time.perf_counter()
    manifest["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    path = write_run(out, adata=adata, state_dict=model.state_dict(), model_config=model.model_config(),
                     manifest=manifest, overwrite=overwrite)
    on_stage("write", 1.0, f"written in {time.perf_counter() - t:.1f} s")
    return path
