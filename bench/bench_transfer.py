"""Label-transfer accuracy on the demo cohort, leaving one patient out.

    python bench/bench_transfer.py [--held-out P6 P1] [--seeds 0 1 2] [--device cpu]

For each held-out patient and seed: the default demo cohort (``simulate_cohort()``, six
patients; P6 alone carries the ``necrotic`` niche, P1/P3/P5 carry TLS) is split into a
reference (every other patient) and a query (the held-out one). The reference is trained
with ``TrainConfig(walk_length=3, seed=seed)`` and its niches called with its true number
of niches; the query is embedded by the frozen reference encoder and the reference
``niche`` column is transferred to it (:func:`cellniche_core.transfer.annotate_query`,
default rule). Each reference niche is mapped to the true niche holding most of its cells.

Prints, per run: ``acc_known`` (query cells whose true niche the reference has, labelled
with a niche mapping to it; unknown counts as wrong), ``unk_known`` (their unknown rate),
``unk_novel`` (unknown rate of the query's niches absent from the reference: necrotic for
P6), the far / ambiguous counts, the median distance to the reference of known and novel
cells against the median per-label threshold, and the times. About 30 s per run on one
CPU thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cellniche_core.io import Run  # noqa: E402
from cellniche_core.keys import Keys  # noqa: E402
from cellniche_core.metrics import transfer_accuracy  # noqa: E402
from cellniche_core.pipeline import RunOptions, analyse_cohort  # noqa: E402
from cellniche_core.train import TrainConfig  # noqa: E402
from cellniche_core.transfer import annotate_query  # noqa: E402


def leave_one_patient_out(cohort, held_out: str, *, seed: int = 0, device: str = "cpu") -> dict:
    """Train on every patient but ``held_out``, transfer ``niche`` to it, score against truth."""
    patient = cohort.obs[Keys.PATIENT].astype(str)
    reference = cohort[patient != held_out].copy()
    query = cohort[patient == held_out].copy()
    truth = query.obs[Keys.TRUE_NICHE].astype(str).to_numpy()
    del query.obs[Keys.TRUE_NICHE]  # the transfer must not see it

    t = time.perf_counter()
    options = RunOptions(n_niches=int(reference.obs[Keys.TRUE_NICHE].nunique()), umap=False, device=device,
                         train=TrainConfig(walk_length=3, seed=seed))
    model, manifest = analyse_cohort(reference, options)
    train_s = time.perf_counter() - t

    run = Run(Path(f"<reference without {held_out}>"), reference, model.state_dict(), model.model_config(),
              manifest)
    t = time.perf_counter()
    report = annotate_query(run, query, device=device)
    transfer_s = time.perf_counter() - t

    labels = query.obs[Keys.TRANSFERRED].astype(str).to_numpy()
    score = transfer_accuracy(reference.obs[Keys.NICHE], reference.obs[Keys.TRUE_NICHE], labels, truth)
    distance = query.obs[Keys.TRANSFER_DISTANCE].to_numpy()
    novel = ~np.isin(truth, reference.obs[Keys.TRUE_NICHE].astype(str).unique())
    return {
        **score,
        "held_out": held_out,
        "seed": seed,
        "reference_ari": manifest["metrics"]["vs_true_niche"]["ari"],
        "n_far": report["n_far"],
        "n_ambiguous": report["n_ambiguous"],
        "median_distance_known": float(np.median(distance[~novel])),
        "median_distance_novel": float(np.median(distance[novel])) if novel.any() else float("nan"),
        "median_threshold": float(np.median(list(report["calibration"]["thresholds"].values()))),
        "train_s": train_s,
        "transfer_s": transfer_s,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", nargs="+", default=["P6", "P1"], metavar="PATIENT")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from cellniche_core.simulate import simulate_cohort

    cohort = simulate_cohort()
    print(f"demo cohort: {cohort.n_obs:,} cells, {cohort.obs[Keys.PATIENT].nunique()} patients; "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'held':>4} {'seed':>4} {'ref_ari':>7} {'acc_known':>9} {'unk_known':>9} {'unk_novel':>14} "
          f"{'far':>4} {'amb':>4} {'d_known':>7} {'d_novel':>7} {'thresh':>6} {'train_s':>7} {'xfer_s':>6}")
    rows = []
    for held_out in args.held_out:
        for seed in args.seeds:
            r = leave_one_patient_out(cohort, held_out, seed=seed, device=args.device)
            rows.append(r)
            novel = ", ".join(f"{k} {v:.3f}" for k, v in r["unknown_novel"].items()) or "-"
            print(f"{held_out:>4} {seed:>4} {r['reference_ari']:7.3f} {r['accuracy_known']:9.3f} "
                  f"{r['unknown_known']:9.3f} {novel:>14} {r['n_far']:4d} {r['n_ambiguous']:4d} "
                  f"{r['median_distance_known']:7.4f} {r['median_distance_novel']:7.4f} "
                  f"{r['median_threshold']:6.4f} {r['train_s']:7.1f} {r['transfer_s']:6.1f}", flush=True)
    for held_out in args.held_out:
        mine = [r for r in rows if r["held_out"] == held_out]
        acc = [r["accuracy_known"] for r in mine]
        line = f"{held_out}: acc_known mean {np.mean(acc):.3f} (min {np.min(acc):.3f})"
        novel = [v for r in mine for v in r["unknown_novel"].values()]
        if novel:
            line += f", unknown on novel niche mean {np.mean(novel):.3f} (min {np.min(novel):.3f})"
        print(line)


if __name__ == "__main__":
    main()
