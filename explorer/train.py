"""Checks and settings of a new run from uploaded files, for the Train page (no Streamlit).

Uploads and their staging live in :mod:`explorer.uploads`, the job queue that trains them
in :mod:`explorer.job_queue`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cellniche_core.features import FEATURE_MODES, resolve_feature_mode
from cellniche_core.io import read_cohort
from cellniche_core.keys import INPUT_UNS_KEY, CohortKeys, Keys
from cellniche_core.pipeline import RunOptions
from cellniche_core.train import TrainConfig, steps_for

from .uploads import CHECK_PREFIX, FilePreview, Upload, check_suffix, read_staged, safe_stem

#: feature modes offered, "auto" first (pheno when there is a cell-type column, else expr)
FEATURES = ("auto", *FEATURE_MODES)
#: longest run name accepted
MAX_RUN_NAME = 64

_RUN_NAME = re.compile(r"[A-Za-z0-9_-]+")


def column_union(previews: Iterable[FilePreview]) -> list[str]:
    """Every obs column of the uploads, in order of first appearance."""
    return list(dict.fromkeys(c for p in previews for c in p.columns))


def obsm_union(previews: Iterable[FilePreview]) -> list[str]:
    """Every obsm key of the uploads, in order of first appearance."""
    return list(dict.fromkeys(k for p in previews for k in p.obsm_keys))


def spatial_options(obsm_keys: Sequence[str]) -> tuple[list[str], str]:
    """The coordinate keys to offer and the one chosen first.

    The default key if present, else the first key naming "spatial". Without either, the
    default key is offered (and chosen) although absent, so that the check names the keys
    found and the user picks one: an embedding such as ``X_pca`` is never taken for
    coordinates unasked.
    """
    keys = list(obsm_keys)
    named = [k for k in keys if "spatial" in k.lower()]
    if Keys.SPATIAL in keys or named:
        return keys, Keys.SPATIAL if Keys.SPATIAL in keys else named[0]
    return [Keys.SPATIAL, *keys], Keys.SPATIAL


@dataclass(frozen=True)
class CohortCheck:
    """A cohort that :func:`~cellniche_core.io.read_cohort` accepted, summarised."""

    n_cells: int
    n_slides: int
    n_patients: int
    features: str  # the resolved mode
    default_steps: int  # the library's number of training steps for this many cells
    slides: tuple[str, ...]
    notes: tuple[str, ...]


def check_cohort(uploads: Sequence[Upload], uploads_dir: Path, keys: CohortKeys, *,
                 features: str = "auto") -> CohortCheck:
    """Read the uploads exactly as a training job will; raises :class:`CohortError` naming the upload."""
    for upload in uploads:
        check_suffix(upload)
    adata = read_staged(uploads, uploads_dir, CHECK_PREFIX,
                        lambda paths: read_cohort(paths, features=features, **keys.read_kwargs()))
    info = adata.uns.get(INPUT_UNS_KEY, {})
    derived = info.get("derived", {})
    notes = [*info.get("notes", ())]
    for column, files in derived.items():
        what = "slide" if column == keys.sample else "patient"
        notes.append(f"obs[{column!r}] was missing in {len(files)} file(s): each file is one {what}")
    slides = adata.obs[keys.sample].astype(str)
    return CohortCheck(
        n_cells=int(adata.n_obs), n_slides=int(slides.nunique()),
        n_patients=int(adata.obs[keys.patient].nunique()),
        features=resolve_feature_mode(features, adata.obs.columns, keys.cell_type),
        default_steps=steps_for(adata.n_obs),
        slides=tuple(dict.fromkeys(slides)), notes=tuple(notes))


def run_name_problem(name: str, runs_dir: Path, taken: Collection[str] = ()) -> str | None:
    """Why ``name`` cannot name a new run folder in ``runs_dir``, or None when it can.

    ``taken``: names of runs that jobs are training now.
    """
    if not name:
        return "Give the run a name."
    if len(name) > MAX_RUN_NAME:
        return f"A run name has at most {MAX_RUN_NAME} characters (this one has {len(name)})."
    if not _RUN_NAME.fullmatch(name):
        return ("A run name may only hold letters, digits, '_' and '-' (no spaces, dots, slashes "
                "or other characters).")
    path = runs_dir / name
    if path.parent != runs_dir or path.name != name:  # cannot happen with the pattern above
        return "A run name must name a folder directly inside the runs folder."
    if path.exists() or path.is_symlink():
        return f"A run named {name!r} already exists; choose another name."
    if name in taken:
        return f"A job is already training a run named {name!r}; choose another name."
    return None


def default_run_name(uploads: Sequence[Upload], runs_dir: Path, taken: Collection[str] = (), *,
                     now: float | None = None) -> str:
    """``<first upload's stem>_<date>-<time>``, made unique in ``runs_dir`` and among ``taken``."""
    stamp = time.strftime("%Y%m%d-%H%M", time.localtime(now))
    stem = safe_stem(uploads[0].shown if uploads else "run")[:MAX_RUN_NAME - len(stamp) - 4]
    name, n = f"{stem}_{stamp}", 1
    while run_name_problem(name, runs_dir, taken) is not None:
        n += 1
        name = f"{stem}_{stamp}-{n}"
    return name


def run_options(keys: CohortKeys, *, features: str = "auto", n_niches: int | None = None,
                n_steps: int | None = None, seed: int = 0, umap: bool = True) -> RunOptions:
    """The pipeline's options; None for ``n_niches`` / ``n_steps`` means the library's choice."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    return RunOptions(features=features, n_niches="auto" if n_niches is None else int(n_niches),
                      train=TrainConfig(n_steps=None if n_steps is None else int(n_steps), seed=int(seed)),
                      keys=keys.input_keys(),
                      patient_key=keys.patient, umap=umap)
