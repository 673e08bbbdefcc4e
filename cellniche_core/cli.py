"""Command line: ``python -m cellniche_core {fit,demo,compare,transfer} ...``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .graph import DEFAULT_KNN, GraphSettings
from .keys import DEMO_COHORT, DEMO_QUERY, Keys
from .progress import ProgressFile, TerminalProgress
from .sampling import STRATEGIES
from .tally import MIN_CELLS, MIN_FRACTION
from .train import PRECISIONS, TrainConfig
from .transitions import BORDER_THRESHOLD

if TYPE_CHECKING:
    from .pipeline import RunOptions

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


def _hops(value) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return value
    try:
        hops = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {value!r}")
    if not hops or min(hops) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {value!r}")
    return hops


def _share(value) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value!r}")
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {value!r}")
    return v


def _positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return v


def _both(*callbacks):
    def call(stage: str, fraction: float, message: str) -> None:
        for callback in callbacks:
            callback(stage, fraction, message)
    return call


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
                   help="number of niches, or auto: the largest k in 3..15 whose clustering is as stable "
                        "across subsamples as the most stable k's (default: %(default)s)")
    graph = m.add_mutually_exclusive_group()
    graph.add_argument("--radius", type=_radius, metavar="R|auto",
                       help="radius graph linking cells closer than R (unit of the coordinates); auto = 2.5x "
                            "each slide's median neighbour spacing")
    graph.add_argument("--knn", type=_positive_int, metavar="K",
                       help=f"k-nearest-neighbour graph (default: k={DEFAULT_KNN}; edges longer than 4x the "
                            "slide's median neighbour spacing are cut)")
    defaults = TrainConfig()
    m.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy,
                   help="positive pairs: co-visited by random walks (freq), similar surroundings at the "
                        "--profile-hops scales (sim), both (and) or either (or) (default: %(default)s)")
    m.add_argument("--profile-hops", type=_hops, default=defaults.profile_hops, metavar="H[,H...]",
                   help="scales, in graph hops, at which surroundings are compared by the sim/and/or "
                        "strategies (default: %s)" % ",".join(map(str, defaults.profile_hops)))
    m.add_argument("--area-weights", action=argparse.BooleanOptionalAction, default=defaults.area_weights,
                   help="weigh each cell in neighbour means by the area it stands for (from its 6 nearest "
                        "cells), so a dense band does not take in a sparse one's border (default: %(default)s)")
    m.add_argument("--similar-share", type=_share, default=defaults.similar_share, metavar="F",
                   help="share of each batch's cell pairs, the most similar surroundings, that the sim/or "
                        "strategies make positive (default: %(default)s)")
    m.add_argument("--walk-length", type=_positive_int, default=defaults.walk_length,
                   help="steps of each random walk (default: %(default)s = encoder layers + 1)")
    m.add_argument("--seeds-per-batch", type=_positive_int, default=defaults.seeds_per_batch,
                   help="seed cells whose walks make one training batch (default: %(default)s)")
    m.add_argument("--hard-weight", type=float, default=0.0, metavar="BETA",
                   help="weight hard negatives by exp(BETA * similarity); 0 = plain InfoNCE (default: 0)")
    m.add_argument("--steps", type=_positive_int, default=None,
                   help="training steps (default: grows with the number of cells, ~400 at 10k cells)")
    m.add_argument("--dim", type=_positive_int, default=32, help="embedding dimension (default: %(default)s)")
    m.add_argument("--projection-head", action="store_true",
                   help="put a 2-layer projection head between the embedding and the loss, as in SimCLR; on "
                        "real tissue the niches came out less distinct with it (default: the loss on the "
                        "embedding itself)")
    m.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = bfloat16 mixed precision on CUDA GPUs that support it, float32 on CPUs "
                        "(default: %(default)s)")
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
    fit.add_argument("inputs", nargs="+", metavar="INPUT",
                     help=".h5ad files or .zarr stores, concatenated in memory; one .h5ad is read with its "
                          "expression matrix left on disk (dense or CSR), a block of rows at a time")
    fit.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    _add_fit_options(fit)

    demo = sub.add_parser("demo", help="build the demo cohort and its run",
                          description="Simulate the demo tumour cohort (ground-truth niches in obs['true_niche']) "
                                      "into DIR/demo_cohort.h5ad and train its run into DIR/runs/demo "
                                      "with the planted number of niches.")
    demo.add_argument("--out", required=True, metavar="DIR", help="folder for the cohort and runs/")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation and the training")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--overwrite", action="store_true", help="rebuild if present")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.add_argument("--progress-file", metavar="FILE", help=argparse.SUPPRESS)  # for the dashboard
    _add_compare_parser(sub)
    _add_transfer_parser(sub)
    _add_embed_parser(sub)
    _add_names_parser(sub)
    return parser


def _add_compare_parser(sub) -> None:
    compare = sub.add_parser(
        "compare", help="compare niches across the patients of a run",
        description="Conserved vs sample-specific niches, patient-group differences and transition zones "
                    "of a run folder. Writes DIR/niches.csv, patient_abundance.csv, adjacency.csv (per slide), "
                    "adjacency_cohort.csv, transitions.csv, group_tests.csv (with --group-key) and "
                    "compare.json (parameters), all at once: DIR appears complete or not at all.")
    compare.add_argument("run", metavar="RUN_DIR", help="run folder written by 'fit' or 'demo'")
    compare.add_argument("--out", required=True, metavar="DIR", help="folder to write the tables into")
    compare.add_argument("--group-key", metavar="KEY",
                         help="patient-level obs column (e.g. response) whose groups are compared; every group "
                              "needs at least 2 patients, since the patient is the unit of the test")
    compare.add_argument("--reference", metavar="GROUP",
                         help="group the others are compared against (effect = other - reference); default: "
                              "the first group")
    compare.add_argument("--niche-key", default=Keys.NICHE, metavar="KEY",
                         help="obs column of the niche labels (default: %(default)s)")
    compare.add_argument("--min-fraction", type=float, default=MIN_FRACTION, metavar="F",
                         help="a niche is present in a slide when it holds at least max(MIN_CELLS, F x the "
                              "slide's cells) cells (default: %(default)s)")
    compare.add_argument("--min-cells", type=int, default=MIN_CELLS, metavar="N",
                         help="see --min-fraction (default: %(default)s)")
    compare.add_argument("--border-threshold", type=float, default=BORDER_THRESHOLD, metavar="T",
                         help="a cell is a border cell when at least this fraction of its spatial neighbours lie "
                              "in other niches (default: %(default)s)")
    compare.add_argument("--n-boot", type=_positive_int, default=1000, metavar="N",
                         help="patient bootstrap resamples for the confidence intervals (default: %(default)s)")
    compare.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: %(default)s)")
    compare.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    compare.add_argument("--quiet", action="store_true", help="no summary on stderr")


def run_compare(args) -> Path:
    """The ``compare`` command: load the run, compute every table, write them atomically."""
    from .run_compare import compare_run, write_comparison
    from .io import load_run

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    t0 = time.perf_counter()
    from .names import named_run

    run = named_run(load_run(args.run, with_weights=False), niche_key=args.niche_key)
    tables = compare_run(run, group_key=args.group_key, reference=args.reference, niche_key=args.niche_key,
                         min_fraction=args.min_fraction, min_cells=args.min_cells,
                         border_threshold=args.border_threshold, n_boot=args.n_boot, seed=args.seed)
    params = {k: v for k, v in vars(args).items() if k not in ("command", "quiet", "overwrite")}
    params["run"] = str(Path(args.run).resolve())
    path = write_comparison(tables, out, params=params, overwrite=args.overwrite)
    if not args.quiet:
        patterns = tables["niches"]["pattern"].value_counts()
        print(f"[{time.perf_counter() - t0:7.1f}s] compare: {len(tables['niches'])} niches: "
              + ", ".join(f"{n} {p}" for p, n in patterns.items()), file=sys.stderr)
        if "group_tests" in tables:
            hits = tables["group_tests"].query("significant")["niche"].tolist()
            print(f"[{time.perf_counter() - t0:7.1f}s] compare: {len(hits)} niche(s) differ between "
                  f"{args.group_key} groups (BH q < 0.05){': ' + ', '.join(hits) if hits else ''}",
                  file=sys.stderr)
    return path


def _add_transfer_parser(sub) -> None:
    transfer = sub.add_parser(
        "transfer", help="annotate a new slide from a reference run (label transfer)",
        description="Embed QUERY with the frozen encoder of RUN_DIR (its features aligned to the reference's: "
                    "missing genes or cell types are reported, extra ones dropped; its graph built with the "
                    "reference's settings), transfer a categorical obs column of the reference by a neighbour "
                    "vote and call 'unknown' where no reference label fits: cells whose neighbourhood-averaged "
                    "inputs are farther from the reference than the --quantile of reference cells held out by "
                    "patient (and the edges of such regions), and, when --min-confidence is given, cells whose "
                    "winning label holds less of the vote. Writes OUT with obs['transferred_label'], "
                    "obs['transfer_confidence'], obs['transfer_distance'], obsm['X_cellniche'] and "
                    "uns['cellniche_transfer']; the query file is only read.")
    transfer.add_argument("run", metavar="RUN_DIR", help="reference run folder written by 'fit' or 'demo'")
    transfer.add_argument("query", metavar="QUERY", help="query .h5ad file or .zarr store (one or more slides)")
    transfer.add_argument("--out", required=True, metavar="OUT.h5ad", help="annotated query to write")
    transfer.add_argument("--label-key", default=Keys.NICHE, metavar="KEY",
                          help="categorical obs column of the reference to transfer: its niches or an expert "
                               "annotation (default: %(default)s)")
    transfer.add_argument("--n-neighbors", type=_positive_int, default=15, metavar="K",
                          help="twice this many reference cells vote for each query cell, in the embedding, in the "
                               "neighbourhood-averaged inputs and (a reference of several patients or slides) along "
                               "its discriminants of them, each alike, then again with each slide's shift from "
                               "the reference taken off, and the unknown rule reads the mean "
                               "input distance to as many; obs['transfer_distance'] is the mean embedding distance "
                               "to this many (default: %(default)s)")
    transfer.add_argument("--quantile", type=float, default=0.99, metavar="Q",
                          help="a query cell whose inputs are farther from the reference than this quantile of "
                               "held-out reference cells is unknown, as are the cells joined to it above the "
                               "quantile with 5x the tail; about 1-Q of a known-like slide is called unknown "
                               "(default: %(default)s)")
    transfer.add_argument("--min-confidence", type=float, default=0.0, metavar="C",
                          help="a cell whose winning label has less than this share of the vote is unknown too "
                               "(e.g. 0.5: no majority); by default a cell of split vote keeps its plurality label "
                               "and obs['transfer_confidence'] shows the split (default: %(default)s)")
    transfer.add_argument("--no-slide-shift", dest="align", action="store_false",
                          help="vote once, without taking each slide's shift from the reference off and voting "
                               "again: about half the time on a large query, labels a little less accurate on real "
                               "tissue (README, Label transfer)")
    transfer.add_argument("--truth-key", default=None, metavar="KEY",
                          help="obs column of the query holding its own labels, named as the reference's: the "
                               "transfer is scored against it (agreement on labels the reference knows, share of "
                               "the others called unknown) on stderr and in uns['cellniche_transfer']['agreement'] "
                               "(default: the query's --label-key column, when it has one)")
    transfer.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                          help="embedding and neighbour search; auto = CUDA when available (default: %(default)s)")
    transfer.add_argument("--seed", type=int, default=0,
                          help="seed of the reference subsample and calibration draw (default: %(default)s)")
    transfer.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    transfer.add_argument("--quiet", action="store_true", help="no progress lines (alignment warnings still show)")


def _stage_lines(quiet: bool):
    """An on_stage callback printing "[seconds] stage: message" lines on stderr (nothing when quiet)."""
    t0 = time.perf_counter()

    def say(stage: str, message: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - t0:7.1f}s] {stage}: {message}", file=sys.stderr)

    return say


def run_transfer(args) -> Path:
    """The ``transfer`` command: annotate the query, report alignment and outcome on stderr."""
    from .agreement import describe_agreement
    from .transfer import describe_alignment, transfer_file

    say = _stage_lines(args.quiet)

    options = {"n_neighbors": args.n_neighbors, "quantile": args.quantile, "min_confidence": args.min_confidence,
               "align": args.align}
    path, report = transfer_file(args.run, args.query, args.out, label_key=args.label_key, device=args.device,
                                 overwrite=args.overwrite, truth_key=args.truth_key, on_stage=say, seed=args.seed,
                                 **options)
    lines = describe_alignment(report["alignment"]) or ["the query has every reference feature, nothing extra"]
    for line in lines:
        print(f"alignment: {line}", file=sys.stderr)
    counts = report["counts"]
    shares = ", ".join(f"{name} {n / max(report['n_cells'], 1):.1%}" for name, n in counts.items() if n)
    print(f"transfer: {report['n_cells']:,} cells: {shares}", file=sys.stderr)
    split = (f", {report['n_ambiguous']:,} with a confidence below {args.min_confidence:g}"
             if args.min_confidence > 0 else "")
    print(f"transfer: {report['n_unknown']:,} unknown ({report['n_far']:,} far from every reference label{split}); "
          f"mean confidence {report['mean_confidence']:.2f}", file=sys.stderr)
    for line in describe_agreement(report["agreement"]) if "agreement" in report else []:
        print(f"agreement: {line}", file=sys.stderr)
    return path


def _add_names_parser(sub) -> None:
    names = sub.add_parser(
        "names", help="show or set the names of a run's niches",
        description="Print each niche's id, automatic name (its most enriched cell types, or top markers) "
                    "and the name given to it. --from sets names from a CSV with the header 'niche,name' "
                    "(niches not listed keep theirs; an empty name goes back to the automatic one). Names "
                    "are kept in RUN_DIR/niche_names.json; cohort.h5ad is not modified.")
    names.add_argument("run", metavar="RUN_DIR", help="run folder written by 'fit' or 'demo'")
    names.add_argument("--from", dest="from_csv", metavar="CSV", help="columns niche,name (empty: automatic)")
    names.add_argument("--reset", action="store_true", help="forget every name given (back to automatic names)")


def run_names(args) -> Path:
    """The ``names`` command: set names from a CSV, then print the table of niches."""
    import csv

    from . import names as niche_names
    from .io import load_run
    from .niches import niche_categories

    run = load_run(args.run, with_weights=False)
    obs = run.adata.obs
    niche_key = run.keys.niche
    if niche_key not in obs:
        raise ValueError(f"{args.run}: the run has no obs[{niche_key!r}] niches")
    niches = niche_categories(obs[niche_key])
    current = {} if args.reset else niche_names.read_names(run.path)
    if args.from_csv:
        current.update(niche_names.read_names_csv(args.from_csv, niches))
    if args.reset or args.from_csv:
        niche_names.write_names(run.path, current, niches=niches)
    auto = niche_names.auto_names_for(run.adata, niche_key=niche_key,
                                      cell_type_key=run.keys.cell_type)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["niche", "auto_name", "name", "label"])
    for niche in niches:
        name = current.get(niche, "")
        writer.writerow([niche, auto.get(niche, ""), name, niche_names.label(niche, name or auto.get(niche))])
    return run.path / niche_names.NAMES_FILE


def _add_embed_parser(sub) -> None:
    embed = sub.add_parser(
        "embed", help="embed a cohort with a trained run, reading it lazily (larger than memory)",
        description="Embed every cell of INPUT with the model of RUN_DIR and give it the niche of the run whose "
                    "centre is nearest. INPUT's expression matrix is read from disk --chunk-size rows at a time "
                    "(backed .h5ad or .zarr), so cohorts larger than memory fit. Writes OUT with INPUT's obs plus "
                    "obs['niche'], obs['niche_similarity'], obsm['X_cellniche'] and the coordinates (not X); "
                    "INPUT is only read.")
    embed.add_argument("run", metavar="RUN_DIR", help="run folder written by 'fit' or 'demo'")
    embed.add_argument("input", metavar="INPUT", help=".h5ad file or .zarr store")
    embed.add_argument("--out", required=True, metavar="OUT.h5ad", help="file to write")
    embed.add_argument("--chunk-size", type=_positive_int, default=65_536, metavar="CELLS",
                       help="cells embedded at a time (X itself is read in blocks of ~256 MB; "
                            "default: %(default)s)")
    embed.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto = CUDA when available (default: %(default)s)")
    embed.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    embed.add_argument("--quiet", action="store_true", help="no progress lines")


def run_embed(args) -> Path:
    """The ``embed`` command."""
    from .lazy import embed_file

    t0 = time.perf_counter()
    say = _stage_lines(args.quiet)

    path, report = embed_file(args.run, args.input, args.out, device=args.device, chunk_size=args.chunk_size,
                              overwrite=args.overwrite, on_stage=say)
    from .features import describe_alignment

    for line in describe_alignment(report.get("alignment") or {}):  # shown even when quiet, as transfer does
        print(f"alignment: {line}", file=sys.stderr)
    if not args.quiet:
        print(f"embed: {report['n_cells']:,} cells in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def options_from_args(args) -> RunOptions:
    from .cellniche import InputKeys
    from .pipeline import RunOptions

    graph = GraphSettings(n_neighbors=args.knn or DEFAULT_KNN, radius=args.radius)
    train = TrainConfig(strategy=args.strategy, profile_hops=args.profile_hops, similar_share=args.similar_share,
                        walk_length=args.walk_length, area_weights=args.area_weights,
                        seeds_per_batch=args.seeds_per_batch, hard_weight=args.hard_weight, n_steps=args.steps,
                        out_channels=args.dim, projection=args.projection_head, seed=args.seed,
                        precision=args.precision)
    keys = InputKeys(spatial_key=args.spatial_key, sample_key=args.sample_key, cell_type_key=args.cell_type_key)
    return RunOptions(features=args.features, n_niches=args.n_niches, graph=graph, train=train, keys=keys,
                      patient_key=args.patient_key, device=args.device, umap=not args.no_umap)


def build_demo(out: str | Path, *, seed: int = 0, device: str = "auto", overwrite: bool = False,
               on_stage=None) -> Path:
    """Write ``out/demo_cohort.h5ad``, the run ``out/runs/demo`` and a query slide; returns the run path.

    The query, ``out/demo_query.h5ad``, is one more patient simulated like the cohort's but
    left out of the run (:data:`DEMO_QUERY`): a new slide to try label transfer on.
    """
    from .io import write_h5ad_atomic
    from .pipeline import RunOptions, fit_run
    from .simulate import simulate_cohort, simulate_query_patient

    say = on_stage or (lambda stage, fraction, message: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cohort = out / DEMO_COHORT
    if overwrite or not cohort.exists():
        say("simulate", 0.0, "simulating the demo cohort")
        write_h5ad_atomic(simulate_cohort(seed=seed), cohort)
    query = out / DEMO_QUERY
    if overwrite or not query.exists():
        say("simulate", 0.8, "simulating a query patient left out of the run")
        write_h5ad_atomic(simulate_query_patient(seed=seed), query)
    say("simulate", 1.0, "demo cohort ready")
    # the planted number of niches: the demo shows the method at the true k (auto may
    # split a niche whose two sides differ, see the README)
    from .simulate import DEMO_NICHES

    options = RunOptions(n_niches=len(DEMO_NICHES), train=TrainConfig(seed=seed), device=device)
    return fit_run([cohort], out / "runs" / "demo", options, group_keys=("response",),
                   overwrite=overwrite, on_stage=on_stage)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .distributed import from_environment
    from .io import CohortError

    is_main = from_environment().is_main  # under torchrun only rank 0 reports
    progress = TerminalProgress(enabled=not getattr(args, "quiet", False) and is_main)
    try:
        if args.command == "fit":
            from .pipeline import fit_run

            path = fit_run(args.inputs, args.out, options_from_args(args), group_keys=args.group_key,
                           overwrite=args.overwrite, on_stage=progress)
        elif args.command == "compare":
            path = run_compare(args)
        elif args.command == "transfer":
            path = run_transfer(args)
        elif args.command == "embed":
            path = run_embed(args)
        elif args.command == "names":
            run_names(args)
            return 0
        else:
            from .pipeline import DEMO_STAGES

            on_stage = (_both(progress, ProgressFile(args.progress_file, DEMO_STAGES)) if args.progress_file
                        else progress)
            path = build_demo(args.out, seed=args.seed, device=args.device, overwrite=args.overwrite,
                              on_stage=on_stage)
    except (CohortError, FileExistsError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    if is_main:
        print(path)
    return 0
