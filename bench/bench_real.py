"""Niche recovery, speed and label transfer on real tissue with expert labels.

    python bench/bench_real.py DATA_DIR [--seeds 0 1 2] [--threads 2] [--skip-transfer]
    python bench/bench_real.py DATA_DIR --dataset other.h5ad:region:pheno,expr

Each dataset is run through ``python -m cellniche_core fit`` in its own process, as a
user would: default settings, only the keys and the true number of labels given
(``--n-niches K``), one run per seed; plus one run with ``--n-niches auto`` (the default)
to report the k it picks. The script prints, per dataset and encoder input:

- ARI and NMI against the expert label (cells labelled ``NA`` left out), per slide and
  their mean (one clustering of all slides, scored slide by slide), median over seeds;
- the same for simple baselines computed here: (a) the inputs (one-hot cell type,
  or 30 PCs of log-normalised expression) averaged over each cell's 30 nearest cells,
  KMeans; (b) per slide, 0.2 x own + 0.8 x the mean of the 6 nearest cells' inputs,
  Gaussian mixture with full covariances; (c) no encoder: our own inputs' surroundings,
  the profiles the similar pairs compare in training, called into niches by our own
  niche caller (what the encoder adds over its training target);
- wall time and peak RSS of each ``fit`` process (UMAP included).

Label transfer (unless ``--skip-transfer``; alone with ``--transfer-only``), on every
dataset: the reference is one side of a split (several slides: the first half of the
slides; one slide: the cells below the median of the axis that cuts across the labels,
see :func:`transfer_split`) without one label (``--unseen``; for the known datasets
``UNSEEN``, otherwise the most self-contained label, see :func:`_edge_label`), fitted
with defaults and the first input mode; the query is the other side, embedded by the reference's encoder and given the
expert label. It prints accuracy on labels the reference knows (``unknown`` counted
wrong), the share of those cells called ``unknown``, the share of the unseen label called
``unknown``, over the calibration quantile (the rule's knob), for the full rule and for the
embedding alone (its vote and its distance), the full rule at the default without each
slide's shift taken off, beside a 15-NN baseline on the baseline (a) features
(for expression, also with its scaling and PCs fitted on the reference alone). A dataset of
several slides is also split within its first and its last slide (one slide's rule, the
reference then one slide: :func:`one_slide`), as a single section is left to right.

Datasets known by file name (their label column and inputs) are listed in ``KNOWN``; any
other is given with ``--dataset FILE:LABEL_KEY:FEATURES``. Nothing in the library knows
these names: they only tell this script what to score.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: evaluation settings of the datasets this script knows by file name
KNOWN = {
    "starmap_BY3_1k.h5ad": ("domain", ("pheno", "expr")),
    "dlpfc_151673-6.h5ad": ("layer", ("expr",)),
}
#: the region each known dataset's transfer reference lacks: white matter (the corpus
#: callosum in the mouse cortex), a compact region beside the layers
UNSEEN = {"starmap_BY3_1k.h5ad": "cc", "dlpfc_151673-6.h5ad": "WM"}
UNLABELLED = ("NA", "nan", "")
BASELINE_NEIGHBOURS = 30


@dataclass
class Dataset:
    path: Path
    label_key: str
    features: tuple[str, ...]
    adata: object = None
    truth: object = None
    slides: object = None
    labelled: object = None
    extras: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def k(self) -> int:
        return len(set(self.truth[self.labelled]))


def _load(spec: Dataset) -> Dataset:
    import anndata as ad
    import numpy as np

    adata = ad.read_h5ad(spec.path)
    if spec.label_key not in adata.obs:
        raise SystemExit(f"{spec.path}: no obs column {spec.label_key!r} (columns: {list(adata.obs.columns)})")
    spec.adata = adata
    spec.truth = adata.obs[spec.label_key].astype(str).to_numpy()
    spec.labelled = ~np.isin(spec.truth, UNLABELLED)
    spec.slides = (adata.obs["sample"].astype(str).to_numpy() if "sample" in adata.obs
                   else np.zeros(adata.n_obs, dtype=object).astype(str))
    return spec


# ------------------------------------------------------------------------ scoring


def score(ds: Dataset, labels) -> dict:
    """Mean over slides of ARI / NMI of ``labels`` against the expert label (labelled cells)."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels).astype(str)
    per = {}
    for s in sorted(set(ds.slides)):
        m = ds.labelled & (ds.slides == s)
        per[s] = (adjusted_rand_score(ds.truth[m], labels[m]), normalized_mutual_info_score(ds.truth[m], labels[m]))
    return {"ari": float(np.mean([v[0] for v in per.values()])),
            "nmi": float(np.mean([v[1] for v in per.values()])),
            "per_slide_ari": {s: round(v[0], 3) for s, v in per.items()}}


# ------------------------------------------------------------------------ baselines


def baseline_inputs(adata, features: str, *, n_pcs: int = 30, fit_rows=None):
    """One-hot cell types (pheno) or 30 PCs of log-normalised, scaled expression (expr).

    The scaling and the PCs are fitted on every cell, or on ``fit_rows`` (a mask) alone.
    """
    import numpy as np
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    if features == "pheno":
        codes = adata.obs["cell_type"].astype("category").cat.codes.to_numpy()
        return np.eye(codes.max() + 1, dtype=np.float32)[codes]
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X, dtype=float)
    totals = x.sum(1, keepdims=True)
    x = np.log1p(x / np.maximum(totals, 1) * np.median(totals))
    fit = x if fit_rows is None else x[fit_rows]
    x = (x - fit.mean(0)) / np.maximum(fit.std(0), 1e-8)
    pca = PCA(n_components=min(n_pcs, x.shape[1] - 1), random_state=0)
    if fit_rows is None:
        return pca.fit_transform(x).astype(np.float32)
    return pca.fit(x[fit_rows]).transform(x).astype(np.float32)


def neighbour_mean(x, coords, slides, k: int, *, own: float = 0.0):
    """``own x x_i + (1 - own) x mean of the k nearest cells of the same slide``."""
    import numpy as np
    from scipy.spatial import cKDTree

    out = np.empty_like(x)
    for s in set(slides):
        idx = np.flatnonzero(slides == s)
        kk = min(k, len(idx) - 1)
        _, nbr = cKDTree(coords[idx]).query(coords[idx], k=kk + 1)
        out[idx] = own * x[idx] + (1 - own) * x[idx][nbr[:, 1:]].mean(1)
    return out


def baselines(ds: Dataset, features: str, seeds) -> dict:
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    x = baseline_inputs(ds.adata, features)
    coords = np.asarray(ds.adata.obsm["spatial"], dtype=float)[:, :2]
    smooth = neighbour_mean(x, coords, ds.slides, BASELINE_NEIGHBOURS)
    ds.extras[f"baseline_{features}"] = smooth
    out = {"mean30_kmeans": [], "own_mean6_gmm": []}
    mixed = neighbour_mean(x, coords, ds.slides, 6, own=0.2)
    for seed in seeds:
        out["mean30_kmeans"].append(score(ds, KMeans(ds.k, n_init=10, random_state=seed).fit_predict(smooth)))
        labels = np.empty(ds.adata.n_obs, dtype=object)
        for s in set(ds.slides):
            idx = np.flatnonzero(ds.slides == s)
            z = PCA(n_components=min(15, x.shape[1] - 1), random_state=seed).fit_transform(mixed[idx])
            gm = GaussianMixture(ds.k, covariance_type="full", random_state=seed, reg_covar=1e-4).fit(z)
            labels[idx] = [f"{s}:{c}" for c in gm.predict(z)]
        out["own_mean6_gmm"].append(score(ds, labels))
    out["surroundings"] = [score(ds, labels) for labels in surroundings_niches(ds, features, seeds)]
    return out


def surroundings_niches(ds: Dataset, features: str, seeds) -> list:
    """Baseline (c): the niches of the default run without its encoder, one per seed.

    The inputs ``fit`` would build, averaged over the default ``profile_hops`` with the
    default area weights (the surroundings the similar pairs compare), clustered by
    :func:`call_niches` at the expert number of labels.
    """
    from cellniche_core.cellniche import cell_positions, spatial_graph
    from cellniche_core.features import fit_features, make_features, neighbourhood_profiles
    from cellniche_core.graph import GraphSettings, cell_areas
    from cellniche_core.keys import InputKeys
    from cellniche_core.niches import call_niches
    from cellniche_core.train import TrainConfig

    keys = InputKeys()
    spec = fit_features(ds.adata, mode=features, cell_type_key=keys.cell_type_key)
    x, _ = make_features(ds.adata, spec, cell_type_key=keys.cell_type_key)
    graph = spatial_graph(ds.adata, GraphSettings(), keys)
    weights = cell_areas(*cell_positions(ds.adata, keys)) if TrainConfig().area_weights else None
    profiles = neighbourhood_profiles(x, graph.indptr, graph.indices, TrainConfig().profile_hops, weights=weights)
    return [call_niches(profiles, ds.k, seed=seed)[0] for seed in seeds]


# ------------------------------------------------------------------------ runs


def run_fit(inputs, out: Path, args: list[str], threads: int) -> dict:
    """``python -m cellniche_core fit`` in its own process: its wall time and peak RSS."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               NUMBA_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "cellniche_core", "fit", *map(str, inputs), "--out", str(out), "--quiet", *args]
    t = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as err:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        message = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"fit failed: {' '.join(cmd)}\n{message}")
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss / 2**20}


def read_run(out: Path):
    import anndata as ad

    adata = ad.read_h5ad(out / "cohort.h5ad")
    manifest = json.loads((out / "manifest.json").read_text())
    return adata, manifest


def fit_args(ds: Dataset, features: str, k, seed: int) -> list[str]:
    args = ["--features", features, "--n-niches", str(k), "--seed", str(seed)]
    if "sample" not in ds.adata.obs:
        args += ["--sample-key", "sample"]
    return args


def median(values):
    import numpy as np

    return float(np.median(values)) if len(values) else float("nan")


def fmt(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows]
    return f"{median(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})"


def niche_benchmark(ds: Dataset, seeds, threads: int, work: Path) -> list[str]:
    lines = []
    for features in ds.features:
        base = baselines(ds, features, seeds)
        ours, times, chosen = [], [], None
        for seed in seeds:
            out = work / f"{ds.name}_{features}_{seed}"
            cost = run_fit([ds.path], out, fit_args(ds, features, ds.k, seed), threads)
            adata, manifest = read_run(out)
            ours.append(score(ds, adata.obs["niche"].to_numpy()))
            times.append({**cost, "timings": manifest["timings_s"], "scale": manifest.get("scale")})
            shutil.rmtree(out)
        out = work / f"{ds.name}_{features}_auto"
        auto_cost = run_fit([ds.path], out, fit_args(ds, features, "auto", seeds[0]), threads)
        adata, manifest = read_run(out)
        chosen = (manifest["n_niches"], score(ds, adata.obs["niche"].to_numpy()))
        shutil.rmtree(out)
        lines.append(f"| {ds.name} | {features} | {ds.adata.n_obs:,} | {len(set(ds.slides))} | "
                     f"**{fmt(ours, 'ari')}** | {fmt(ours, 'nmi')} | {fmt(base['mean30_kmeans'], 'ari')} | "
                     f"{fmt(base['own_mean6_gmm'], 'ari')} | {fmt(base['surroundings'], 'ari')} | "
                     f"{chosen[0]} of {ds.k} ({chosen[1]['ari']:.3f}) | "
                     f"{median([t['wall_s'] for t in times]):.1f} s | "
                     f"{max(t['peak_rss_gb'] for t in times):.2f} GB |")
        print(f"  {ds.name} {features}: per-seed ARI {[round(r['ari'], 3) for r in ours]}, "
              f"per slide (seed {seeds[0]}) {ours[0]['per_slide_ari']}", flush=True)
        print(f"    baseline mean30+KMeans {[round(r['ari'], 3) for r in base['mean30_kmeans']]}, "
              f"own+mean6+GMM {[round(r['ari'], 3) for r in base['own_mean6_gmm']]}, "
              f"surroundings without the encoder {[round(r['ari'], 3) for r in base['surroundings']]}", flush=True)
        print(f"    timings (seed {seeds[0]}): {times[0]['timings']}", flush=True)
        print(f"    scale chosen: {json.dumps(times[0]['scale'])}", flush=True)
        print(f"    auto: k={chosen[0]} ({auto_cost['wall_s']:.1f} s)", flush=True)
    return lines


# ------------------------------------------------------------------------ transfer


def one_slide(ds: Dataset, slide: str) -> Dataset:
    """The cells of one slide of ``ds``, as a dataset of their own (named ``<name>_<slide>``)."""
    keep = ds.slides == slide
    part = Dataset(ds.path.with_name(f"{ds.name}_{slide}{ds.path.suffix}"), ds.label_key, ds.features)
    part.adata, part.truth = ds.adata[keep].copy(), ds.truth[keep]
    part.slides, part.labelled = ds.slides[keep], ds.labelled[keep]
    return part


def transfer_split(ds: Dataset):
    """Boolean masks (reference side, query side) of the cells, and a description.

    Several slides: the first half of the slides (sorted) against the rest. One slide: the
    cells below the median of the coordinate along which the two halves hold the most
    similar label mix (so that a layered tissue is cut across its layers, not between
    them) against the cells above it.
    """
    import numpy as np

    slides = sorted(set(ds.slides))
    if len(slides) >= 2:
        ref_slides = slides[: len(slides) // 2]
        side = np.isin(ds.slides, ref_slides)
        return side, ~side, f"slides {ref_slides} -> {[s for s in slides if s not in ref_slides]}"
    coords = np.asarray(ds.adata.obsm["spatial"], dtype=float)[:, :2]
    labels = sorted(set(ds.truth[ds.labelled]))

    def mismatch(axis: int) -> float:
        low = coords[:, axis] < np.median(coords[:, axis])
        mix = [np.array([np.mean(ds.truth[m & ds.labelled] == lab) for lab in labels]) for m in (low, ~low)]
        return float(np.abs(mix[0] - mix[1]).sum())

    axis = min((0, 1), key=mismatch)
    low = coords[:, axis] < np.median(coords[:, axis])
    return low, ~low, f"cells below the median {'xy'[axis]} -> cells above it"


def _transfer_scores(called, truth, known, novel) -> dict:
    import numpy as np

    return {"accuracy": float(np.mean(called[known] == truth[known])),
            "unknown_known": float(np.mean(called[known] == "unknown")),
            "unknown_novel": float(np.mean(called[novel] == "unknown")) if novel.any() else float("nan")}


QUANTILES = (0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def transfer_benchmark(ds: Dataset, unseen: str, seed: int, threads: int, work: Path) -> list[str]:
    """Reference side without ``unseen``, fitted with defaults; the query side annotated.

    Prints accuracy on labels the reference knows (``unknown`` counted wrong), the share of
    them called ``unknown``, the share of ``unseen`` called ``unknown``, over the
    calibration quantile, for the full rule (votes of the embedding's, the inputs' and the
    reference's discriminants' neighbours, cast again with each slide's shift taken off;
    embedding and input distances, each averaged over the query cell and its spatial
    neighbours) and for the embedding alone (its vote and the cell's own distance); the full
    rule at the default without the shifts taken off; and a 15-NN baseline on the inputs
    averaged over the 30 nearest cells (no unknown call).
    """
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    from cellniche_core.cellniche import CellNiche, spatial_graph
    from cellniche_core.io import load_run, write_h5ad
    from cellniche_core.novelty import INPUT_HOPS, model_input_profiles, next_hop
    from cellniche_core.agreement import transfer_agreement
    from cellniche_core.transfer import annotate_query, transfer_labels

    ref_side, query_side, how = transfer_split(ds)
    in_ref = ref_side & (ds.truth != unseen) & ds.labelled
    ref = ds.adata[in_ref].copy()
    ref_path = work / f"{ds.name}_reference.h5ad"
    write_h5ad(ref, ref_path)
    features = ds.features[0]
    out = work / f"{ds.name}_reference_run"
    k = len(set(ref.obs[ds.label_key].astype(str)))
    cost = run_fit([ref_path], out, ["--features", features, "--n-niches", str(k), "--seed", str(seed),
                                     "--no-umap"], threads)
    run = load_run(out)
    query = ds.adata[query_side].copy()
    truth = ds.truth[query_side]
    known = (truth != unseen) & ds.labelled[query_side]
    novel = truth == unseen
    report = annotate_query(run, query, label_key=ds.label_key, device="cpu")
    per_label = transfer_agreement(query, ds.label_key)["per_label"].set_index("label")  # at the defaults
    cal = report["calibration"]
    model = CellNiche.from_state(run.model_config, run.state_dict)
    graph = spatial_graph(query, model.graph, model.keys)
    ref_graph = spatial_graph(run.adata, model.graph, model.keys)
    profiles = (model_input_profiles(model, run.adata, graph=ref_graph),
                model_input_profiles(model, query, graph=graph))
    wider = tuple(next_hop(p, g.indptr, g.indices, len(INPUT_HOPS)) for p, g in zip(profiles, (ref_graph, graph)))
    keys = run.keys
    lines = [f"{how}; reference without {unseen!r}: {ref.n_obs:,} cells, `fit --features {features} "
             f"--n-niches {k}` {cost['wall_s']:.1f} s; query {query.n_obs:,} cells "
             f"({int(known.sum()):,} of known labels, {int(novel.sum()):,} {unseen!r}); calibration held out by "
             f"{cal['held_out_by']}", "",
             "| calibration quantile | accuracy on known labels | known called unknown | unseen called unknown | "
             "embedding alone: accuracy | known unknown | unseen unknown |",
             "|---|---|---|---|---|---|---|"]
    for q in QUANTILES:
        row = []
        for with_inputs in (True, False):
            transfer_labels(run.adata, query, label_key=ds.label_key, quantile=q, seed=0,
                            calibration_keys=(keys.patient, keys.sample), spatial_key=keys.spatial,
                            slide_key=keys.sample,
                            profiles=profiles if with_inputs else None, profile_scales=len(INPUT_HOPS),
                            wider_profiles=wider if with_inputs else None,
                            query_graph=(graph.indptr, graph.indices) if with_inputs else None)
            r = _transfer_scores(query.obs["transferred_label"].astype(str).to_numpy(), truth, known, novel)
            row += [f"{r['accuracy']:.3f}", f"{r['unknown_known']:.1%}", f"{r['unknown_novel']:.1%}"]
        mark = " (default)" if q == 0.99 else ""
        lines.append(f"| {q}{mark} | " + " | ".join(row) + " |")
    transfer_labels(run.adata, query, label_key=ds.label_key, seed=0, calibration_keys=(keys.patient, keys.sample),
                    spatial_key=keys.spatial, slide_key=keys.sample, profiles=profiles, profile_scales=len(INPUT_HOPS),
                    wider_profiles=wider, query_graph=(graph.indptr, graph.indices), align=False)
    r = _transfer_scores(query.obs["transferred_label"].astype(str).to_numpy(), truth, known, novel)
    lines += ["", f"without each slide's shift taken off (default quantile): accuracy on known labels "
              f"{r['accuracy']:.3f}, {r['unknown_known']:.1%} of them unknown"]
    coords = np.asarray(ds.adata.obsm["spatial"], dtype=float)[:, :2]
    x = ds.extras.get(f"baseline_{features}")
    if x is None:
        x = neighbour_mean(baseline_inputs(ds.adata, features), coords, ds.slides, BASELINE_NEIGHBOURS)
    knn = KNeighborsClassifier(n_neighbors=15).fit(x[in_ref], ds.truth[in_ref])
    pred = knn.predict(x[query_side])
    lines += ["", f"baseline: 15-NN vote on the inputs averaged over the {BASELINE_NEIGHBOURS} nearest cells "
              f"(no unknown call): accuracy on known labels {np.mean(pred[known] == truth[known]):.3f}"]
    shown = [lab for lab in per_label.index if per_label.loc[lab, "in_reference"]]
    lines.append("per label at the default, ours / baseline: " + ", ".join(
        f"{lab} {per_label.loc[lab, 'agreement']:.3f} / {np.mean(pred[known & (truth == lab)] == lab):.3f}"
        for lab in shown))
    if features != "pheno":  # the scaling and PCs fitted on the reference alone, as our encoder's inputs are
        x = neighbour_mean(baseline_inputs(ds.adata, features, fit_rows=in_ref), coords, ds.slides,
                           BASELINE_NEIGHBOURS)
        pred = KNeighborsClassifier(n_neighbors=15).fit(x[in_ref], ds.truth[in_ref]).predict(x[query_side])
        lines.append(f"the same with its scaling and PCs fitted on the reference alone: "
                     f"{np.mean(pred[known] == truth[known]):.3f}")
    shutil.rmtree(out)
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", type=Path, help="folder with the real datasets (.h5ad)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataset", action="append", default=[], metavar="FILE:LABEL_KEY:FEATURES",
                   help="another dataset: file (in DATA_DIR or a path), label column, inputs (pheno,expr)")
    p.add_argument("--only", nargs="+", default=None, help="run only these dataset names (file stems)")
    p.add_argument("--skip-transfer", action="store_true")
    p.add_argument("--transfer-only", action="store_true", help="only the label transfer part")
    p.add_argument("--unseen", default=None, help="label left out of the transfer reference (default: the label whose "
                                                  "cells have the fewest neighbours of other labels)")
    args = p.parse_args()

    specs = []
    for name, (label, feats) in KNOWN.items():
        if (args.data_dir / name).exists():
            specs.append(Dataset(args.data_dir / name, label, feats))
    for extra in args.dataset:
        file, label, feats = extra.split(":")
        path = Path(file) if Path(file).exists() else args.data_dir / file
        specs.append(Dataset(path, label, tuple(feats.split(","))))
    if args.only:
        specs = [s for s in specs if s.name in args.only]
    if not specs:
        raise SystemExit(f"no dataset found in {args.data_dir} (known: {list(KNOWN)}; or use --dataset)")

    work = Path(tempfile.mkdtemp(prefix="bench_real_"))
    try:
        table = ["| dataset | input | cells | slides | ours: ARI, median (range) | NMI | "
                 "baseline (a) mean of 30 nearest + KMeans | "
                 "baseline (b) own + mean of 6, GMM per slide | (c) surroundings without the encoder | auto k (ARI) | "
                 "wall time per fit | peak RSS |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        transfer = []
        for spec in specs:
            ds = _load(spec)
            print(f"{ds.name}: {ds.adata.n_obs:,} cells, {len(set(ds.slides))} slides, {ds.k} labels", flush=True)
            if not args.transfer_only:
                table += niche_benchmark(ds, args.seeds, args.threads, work)
            if not args.skip_transfer:
                unseen = args.unseen or UNSEEN.get(ds.path.name) or _edge_label(ds)
                transfer += [f"### {ds.name}: transfer, {unseen!r} unseen", ""]
                transfer += transfer_benchmark(ds, unseen, args.seeds[0], args.threads, work) + [""]
                slides = sorted(set(ds.slides))
                for slide in (slides[0], slides[-1]) if len(slides) > 1 else ():
                    transfer += [f"### {ds.name}, slide {slide} alone: transfer, {unseen!r} unseen", ""]
                    transfer += transfer_benchmark(one_slide(ds, slide), unseen, args.seeds[0], args.threads,
                                                   work) + [""]
        if not args.transfer_only:
            print("\n" + "\n".join(table))
        if transfer:
            print("\n" + "\n".join(transfer))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _edge_label(ds: Dataset) -> str:
    """The label whose cells have the fewest neighbours of other labels (a compact region
    that a reference can lack entirely, like white matter below the cortex)."""
    import numpy as np
    from scipy.spatial import cKDTree

    coords = np.asarray(ds.adata.obsm["spatial"], dtype=float)[:, :2]
    mixing = {}
    for s in set(ds.slides):
        idx = np.flatnonzero((ds.slides == s) & ds.labelled)
        _, nbr = cKDTree(coords[idx]).query(coords[idx], k=7)
        same = ds.truth[idx][nbr[:, 1:]] == ds.truth[idx][:, None]
        for lab in set(ds.truth[idx]):
            mixing.setdefault(lab, []).append(float(same[ds.truth[idx] == lab].mean()))
    return max(mixing, key=lambda lab: np.mean(mixing[lab]))


if __name__ == "__main__":
    raise SystemExit(main())
