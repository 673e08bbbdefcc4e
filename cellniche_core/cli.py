"""Command line: ``python -m cellniche_core {fit,demo} ...``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .graph import DEFAULT_KNN, GraphSettings
from .keys import Keys
from .sampling import STRATEGIES
from .train import TrainConfig

EXIT_BAD_INPUT = 2


def _n_niches(value: str):
    if value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    return k


def _radius(value: str):
    if value == "auto":
        return value
    try:
        r = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {value!r}")
    if not r > 0:
        raise argparse.ArgumentTypeError(f"radius must be positive, got {value!r}")
    return r


def _positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return v


class TerminalProgress:
    """Stage lines plus a progress bar for training, on stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.t0 = time.perf_counter()

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        if stage == "train":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=100, desc="train", unit="%", file=sys.stderr,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
            self.bar.n = int(round(fraction * 100))
            self.bar.set_postfix_str(message, refresh=True)
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if fraction == 0.0 or stage in ("read", "write"):
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {stage}: {message}", file=sys.stderr)


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cohort keys")
    g.add_argument("--sample-key", default=Keys.SAMPLE,
                   help="obs column with the slide id; one spatial graph per slide (default: %(default)s; "
                        "if absent, each file is one slide)")
    g.add_argument("--patient-key", default=Keys.PATIENT,
                   help="obs column with the patient id (default: %(default)s; if absent, = sample)")
    g.add_argument("--cell-type-key", default=Keys.CELL_TYPE,
                   help="obs column with cell-type labels, used by the pheno modes (default: %(default)s)")
    g.add_argument("--spatial-key", default=Keys.SPATIAL,
                   help="obsm key of the (n, 2) coordinates (default: %(default)s)")
    g.add_argument("--group-key", action="append", default=[], metavar="KEY",
                   help="clinical obs column that must be present (e.g. response); repeatable")
    m = p.add_argument_group("method")
    m.add_argument("--features", choices=("auto", "pheno", "expr", "pheno_expr"), default="auto",
                   help="encoder input: one-hot cell type (pheno), expression in X (expr) or both; "
                        "auto = pheno when the cell-type column exists, else expr (default: %(default)s)")
    m.add_argument("--n-niches", type=_n_niches, default="auto", metavar="K|auto",
                   help="number of niches, or auto: the largest k whose clustering is stable across "
                        "subsamples (default: %(default)s)")
    graph = m.add_mutually_exclusive_group()
    graph.add_argument("--radius", type=_radius, metavar="R|auto",
                       help="radius graph linking cells closer than R (unit of the coordinates); auto = 2.5x "
                            "each slide's median neighbour spacing")
    graph.add_argument("--knn", type=_positive_int, metavar="K",
                       help=f"k-nearest-neighbour graph (default: k={DEFAULT_KNN}; edges longer than 4x the "
                            "slide's median neighbour spacing are cut)")
    m.add_argument("--strategy", choices=STRATEGIES, default="freq",
                   help="positive pairs: co-visited by random walks (freq), similar neighbourhood expression "
                        "(sim), both (and) or either (or) (default: %(default)s)")
    m.add_argument("--hard-weight", type=float, default=0.0, metavar="BETA",
                   help="weight hard negatives by exp(BETA * similarity); 0 = plain InfoNCE (default: 0)")
    m.add_argument("--steps", type=_positive_int, default=None,
                   help="training steps (default: grows with the number of cells, ~400 at 10k cells)")
    m.add_argument("--dim", type=_positive_int, default=32, help="embedding dimension (default: %(default)s)")
    m.add_argument("--seed", type=int, default=0, help="random seed; same seed, same run on CPU (default: 0)")
    m.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = CUDA when available, else CPU (default: %(default)s)")
    m.add_argument("--no-umap", action="store_true", help="skip the UMAP layout")
    p.add_argument("--overwrite", action="store_true", help="replace RUN_DIR if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cellniche_core",
        description="CellNiche: learn cell-microenvironment embeddings on spatial omics cohorts and call niches.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train on a cohort and write a run folder",
                         description="Train on all slides of a cohort, embed every cell, call niches and write "
                                     "RUN_DIR (cohort.h5ad, model.pt, model.json, manifest.json) atomically.")
    fit.add_argument("inputs", nargs="+", metavar="INPUT", help=".h5ad files or .zarr stores (concatenated)")
    fit.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    _add_fit_options(fit)

    demo = sub.add_parser("demo", help="build the demo cohort and its run",
                          description="Simulate the demo tumour cohort (ground-truth niches in obs['true_niche']) "
                                      "into DIR/demo_cohort.h5ad and train its run into DIR/runs/demo.")
    demo.add_argument("--out", required=True, metavar="DIR", help="folder for the cohort and runs/")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation and the training")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--overwrite", action="store_true", help="rebuild if present")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def options_from_args(args) -> "RunOptions":
    from .cellniche import InputKeys
    from .pipeline import RunOptions

    graph = GraphSettings(n_neighbors=args.knn or DEFAULT_KNN, radius=args.radius)
    train = TrainConfig(strategy=args.strategy, hard_weight=args.hard_weight, n_steps=args.steps,
                        out_channels=args.dim, seed=args.seed)
    keys = InputKeys(spatial_key=args.spatial_key, sample_key=args.sample_key, cell_type_key=args.cell_type_key)
    return RunOptions(features=args.features, n_niches=args.n_niches, graph=graph, train=train, keys=keys,
                      patient_key=args.patient_key, device=args.device, umap=not args.no_umap)


def build_demo(out: str | Path, *, seed: int = 0, device: str = "auto", overwrite: bool = False,
               on_stage=None) -> Path:
    """Write ``out/demo_cohort.h5ad`` and the run ``out/runs/demo``; returns the run path."""
    from .pipeline import RunOptions, fit_run
    from .simulate import simulate_cohort

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cohort = out / "demo_cohort.h5ad"
    if overwrite or not cohort.exists():
        tmp = out / ".demo_cohort.h5ad.tmp"
        simulate_cohort(seed=seed).write_h5ad(tmp)
        os.replace(tmp, cohort)
    options = RunOptions(train=TrainConfig(seed=seed), device=device)
    return fit_run([cohort], out / "runs" / "demo", options, group_keys=("response",),
                   overwrite=overwrite, on_stage=on_stage)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .io import CohortError

    progress = TerminalProgress(enabled=not args.quiet)
    try:
        if args.command == "fit":
            from .pipeline import fit_run

            path = fit_run(args.inputs, args.out, options_from_args(args), group_keys=args.group_key,
                           overwrite=args.overwrite, on_stage=progress)
        else:
            path = build_demo(args.out, seed=args.seed, device=args.device, overwrite=args.overwrite,
                              on_stage=progress)
    except (CohortError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print(path)
    return 0
