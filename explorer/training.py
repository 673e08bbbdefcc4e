"""Training new runs from uploaded files, off the page's script thread (no Streamlit).

An upload is held in memory as :class:`Upload` (the name the browser gave and the bytes).
It touches the disk only inside the uploads folder, in a folder of its own with a random
name, and only while it is read: :func:`preview_upload` and :func:`check_cohort` stage the
bytes in a temporary folder removed right after, and a training job stages them in
``uploads/train-<job id>/``, removed when the job ends, whatever the outcome. A staged
file is named after the upload with every character outside ``[A-Za-z0-9_-]`` replaced,
so no name from the browser ever forms a path. Messages name the upload, never the
staging path.

Jobs run :func:`cellniche_core.pipeline.fit_run` in background threads held by a
process-wide :class:`JobRegistry`: at most ``max_running`` train at once and the others
wait in a queue, one active job per session. Cancelling stops a job at its next training
step or stage; ``fit_run`` writes the run folder atomically, so a cancelled job leaves
nothing in the runs folder.
"""

from __future__ import annotations

import atexit
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import anndata as ad
import h5py
import pandas as pd

from cellniche_core.features import FEATURE_MODES, resolve_feature_mode
from cellniche_core.io import CohortError, read_cohort, refuse_outside_data
from cellniche_core.keys import INPUT_UNS_KEY, CohortKeys, Keys
from cellniche_core.pipeline import RunOptions, fit_run
from cellniche_core.train import TrainConfig, steps_for

#: feature modes offered, "auto" first (pheno when there is a cell-type column, else expr)
FEATURES = ("auto", *FEATURE_MODES)
#: longest run name accepted
MAX_RUN_NAME = 64
#: jobs training at the same time in one server process; the others wait
MAX_RUNNING = 1
#: jobs waiting for a free slot, all sessions together; more are refused
MAX_WAITING = 3
#: finished jobs kept per session for the page to show
KEEP_FINISHED = 5
#: rows of ``obs`` shown in an upload's preview
PREVIEW_ROWS = 5
#: prefix of a training job's staging folder inside the uploads folder
JOB_FOLDER_PREFIX = "train-"
#: staging folders older than this are left over from a stopped server (seconds)
STALE_AFTER_S = 24 * 3600
_STAGING_PREFIXES = (JOB_FOLDER_PREFIX, ".preview-", ".check-")

_RUN_NAME = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

# job states
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)

#: share of the progress bar given to each stage of fit_run
_STAGES = {"read": (0.0, 0.04), "graph": (0.04, 0.07), "train": (0.07, 0.80), "embed": (0.80, 0.85),
           "niches": (0.85, 0.90), "umap": (0.90, 0.97), "write": (0.97, 1.0)}


# ----------------------------------------------------------------------------- uploads


@dataclass(frozen=True)
class Upload:
    """An uploaded file: the name the browser gave (shown, never used as a path) and its bytes."""

    name: str
    data: bytes = field(repr=False)

    @property
    def shown(self) -> str:
        """The file name without any folder part."""
        return Path(str(self.name).replace("\\", "/")).name or "upload"


def safe_stem(name: str) -> str:
    """A file stem built from ``name`` holding only ``[A-Za-z0-9_-]`` (at most 64 characters)."""
    stem = _UNSAFE.sub("_", Path(str(name).replace("\\", "/")).stem).strip("_-")
    return stem[:MAX_RUN_NAME] or "upload"


def check_suffix(upload: Upload) -> None:
    """Raise :class:`CohortError` unless the upload is named ``*.h5ad``."""
    suffix = Path(upload.shown).suffix
    if suffix.lower() != ".h5ad":
        raise CohortError(
            f"{upload.shown}: unsupported file type {suffix or '(no extension)'!r}; expected an .h5ad file "
            "(convert a table or a .zarr store to AnnData .h5ad first, or train it with the command line)")


def stage_uploads(uploads: Sequence[Upload], folder: Path) -> list[Path]:
    """Write the uploads into ``folder`` under distinct safe names; their paths, in order.

    A cohort file without a slide column becomes one slide named after its stem, so the
    stems stay as close to the upload names as safety allows.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths, used = [], set()
    for upload in uploads:
        check_suffix(upload)
        stem, n = safe_stem(upload.shown), 1
        while stem.lower() in used:
            n += 1
            stem = f"{safe_stem(upload.shown)[:MAX_RUN_NAME - 4]}-{n}"
        used.add(stem.lower())
        path = folder / f"{stem}.h5ad"
        path.write_bytes(upload.data)
        paths.append(path)
    return paths


def shown_message(exc: BaseException, paths: Sequence[Path], uploads: Sequence[Upload], folder: Path) -> str:
    """The message of ``exc`` naming each upload instead of its staged path."""
    text = str(exc) if isinstance(exc, CohortError) else f"{type(exc).__name__}: {exc}"
    for path, upload in zip(paths, uploads):
        text = text.replace(str(path), upload.shown)
    return text.replace(str(folder), "upload")


def _staging(uploads_dir: Path, prefix: str) -> tempfile.TemporaryDirectory:
    uploads_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=prefix, dir=uploads_dir)


def remove_stale_staging(uploads_dir: Path, *, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove staging folders a stopped server left behind in ``uploads_dir``; those removed."""
    if not uploads_dir.is_dir():
        return []
    limit, removed = time.time() - older_than_s, []
    for path in uploads_dir.iterdir():
        try:
            stale = path.is_dir() and path.name.startswith(_STAGING_PREFIXES) and path.stat().st_mtime < limit
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- preview


@dataclass(frozen=True)
class FilePreview:
    """What the page shows of one upload before its keys are chosen."""

    name: str
    n_obs: int
    n_vars: int
    columns: tuple[str, ...]
    obsm_keys: tuple[str, ...]
    dtypes: pd.DataFrame  # one row per obs column: column, dtype, distinct values
    head: pd.DataFrame  # the first rows of obs


def preview_upload(upload: Upload, uploads_dir: Path, *, rows: int = PREVIEW_ROWS) -> FilePreview:
    """Read an upload's ``obs``, ``obsm`` keys and size (``X`` stays on disk).

    Raises :class:`CohortError` naming the upload. A file that cannot be opened is read
    again by :func:`~cellniche_core.io.read_cohort`, whose message says what is wrong.
    """
    check_suffix(upload)
    with _staging(uploads_dir, ".preview-") as tmp:
        folder = Path(tmp)
        paths = stage_uploads([upload], folder)
        preview = _lazy_preview(paths[0], upload.shown, rows)
        if preview is not None:
            return preview
        try:  # the core explains what is wrong with the file
            adata = read_cohort(paths, features="auto", min_cells_per_sample=1)
        except Exception as exc:  # whatever fails, the message names the upload
            raise CohortError(shown_message(exc, paths, [upload], folder)) from None
        return _describe(adata, upload.shown, rows)


def _lazy_preview(path: Path, name: str, rows: int) -> FilePreview | None:
    """The preview read with ``X`` left on disk, or None when anndata cannot open the file so.

    A file that refers to data outside itself is never opened by anndata here (it could
    make the server read any file); the core's read refuses it with a message.
    """
    try:
        with h5py.File(path, "r") as f:
            refuse_outside_data(f, path)
        adata = ad.read_h5ad(path, backed="r")
    except Exception:  # read again by the core, whose message says what is wrong
        return None
    try:
        return _describe(adata, name, rows)
    finally:
        adata.file.close()


def _describe(adata: ad.AnnData, name: str, rows: int) -> FilePreview:
    obs = adata.obs
    dtypes = pd.DataFrame({"column": [str(c) for c in obs.columns],
                           "dtype": [str(t) for t in obs.dtypes],
                           "distinct values": [int(obs[c].nunique()) for c in obs.columns]})
    return FilePreview(name=name, n_obs=int(adata.n_obs), n_vars=int(adata.n_vars),
                       columns=tuple(str(c) for c in obs.columns),
                       obsm_keys=tuple(str(k) for k in adata.obsm),
                       dtypes=dtypes, head=obs.head(rows).copy())


# ----------------------------------------------------------------------------- keys and checks


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
    with _staging(uploads_dir, ".check-") as tmp:
        folder, paths = Path(tmp), []
        try:
            paths = stage_uploads(uploads, folder)
            adata = read_cohort(paths, features=features, **keys.read_kwargs())
        except Exception as exc:  # whatever fails, the message names the upload
            raise CohortError(shown_message(exc, paths, uploads, folder)) from None
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


def overall_progress(stage: str, fraction: float) -> float:
    """Position on the whole run's progress bar of ``fraction`` of ``stage``."""
    lo, hi = _STAGES.get(stage, (0.0, 1.0))
    return lo + (hi - lo) * min(max(float(fraction), 0.0), 1.0)


# ----------------------------------------------------------------------------- jobs


class JobRefused(Exception):
    """A job cannot be queued now; the message says why."""


class JobCancelled(Exception):
    """Raised inside a job's thread to stop it when it was cancelled."""


@dataclass(frozen=True)
class JobSpec:
    """Everything a training job needs: what to read, how, and where to write."""

    run_name: str
    uploads: tuple[Upload, ...]
    keys: CohortKeys
    options: RunOptions
    runs_dir: Path
    uploads_dir: Path

    @property
    def out(self) -> Path:
        return self.runs_dir / self.run_name


class Job:
    """One training job; its thread writes the progress fields, pages only read them."""

    def __init__(self, spec: JobSpec, session: str):
        self.id = secrets.token_hex(8)
        self.session = session
        self.spec = spec
        self.run_name = spec.run_name
        self.file_names = tuple(u.shown for u in spec.uploads)
        self.status = QUEUED
        self.progress = 0.0
        self.stage = ""
        self.message = "waiting for a free training slot"
        self.error: str | None = None
        self.run_path: Path | None = None
        self.submitted = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def staging(self) -> Path:
        """The folder the job's uploads are staged in while it runs."""
        return self.spec.uploads_dir / f"{JOB_FOLDER_PREFIX}{self.id}"

    @property
    def seconds(self) -> float:
        """Time spent training so far (or in all, once finished)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    def cancel(self) -> None:
        """Ask the job to stop: a queued job never starts, a running one stops at its next step."""
        self._cancel.set()
        if self.status == RUNNING:
            self.message = "cancelling…"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished; False on timeout."""
        return self._done.wait(timeout)

    def run(self) -> None:
        """Stage the uploads, train and write the run; the staged files are gone before it ends."""
        if self._cancel.is_set():
            status, message = CANCELLED, "cancelled before it started"
        else:
            self.status, self.started, self.message = RUNNING, time.time(), "starting"
            try:
                status, message = self._train()
            finally:
                shutil.rmtree(self.staging, ignore_errors=True)
        self.spec = replace(self.spec, uploads=())  # the bytes are no longer needed
        self._finish(status, message)

    def _train(self) -> tuple[str, str]:
        paths: list[Path] = []
        try:
            paths = stage_uploads(self.spec.uploads, self.staging)
            self.run_path = fit_run(paths, self.spec.out, self.spec.options, group_keys=self.spec.keys.groups,
                                    on_stage=self._on_stage, should_stop=self._cancel.is_set,
                                    input_names=[f"upload: {u.name}" for u in self.spec.uploads])
        except JobCancelled:
            return CANCELLED, "cancelled; nothing was written"
        except Exception as exc:  # shown on the page: a bad input or a failed run is a message
            self.error = shown_message(exc, paths, self.spec.uploads, self.staging)
            return FAILED, "failed"
        if self._cancel.is_set():
            return DONE, "the run was already being written when the cancel came"
        return DONE, "ready"

    def _on_stage(self, stage: str, fraction: float, message: str) -> None:
        # a run being written is let finish: write_run is atomic, but it cannot be stopped
        if self._cancel.is_set() and not (stage == "write" and fraction >= 1.0):
            raise JobCancelled
        self.progress = overall_progress(stage, fraction)
        self.stage, self.message = stage, message

    def _finish(self, status: str, message: str) -> None:
        self.finished = time.time()
        self.message = message
        if status == DONE:
            self.progress = 1.0
        self.status = status
        self._done.set()


class JobRegistry:
    """The server's training jobs: a FIFO queue served by ``max_running`` daemon threads.

    Shared by every session (the page holds one with ``st.cache_resource``); each job
    belongs to the session that submitted it, and a session sees and cancels only its own.
    """

    def __init__(self, *, max_running: int = MAX_RUNNING, max_waiting: int = MAX_WAITING,
                 keep_finished: int = KEEP_FINISHED):
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.keep_finished = keep_finished
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job] = queue.Queue()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        # a job left running at exit would be frozen inside h5py or torch, holding their locks
        atexit.register(self.shutdown)

    def submit(self, session: str, spec: JobSpec) -> Job:
        """Queue a job; raises :class:`JobRefused` with a message when it cannot be."""
        with self._lock:
            active = [j for j in self._jobs.values() if j.active]
            if any(j.session == session for j in active):
                raise JobRefused("You already have a training job; wait for it to finish or cancel it.")
            taken = {j.run_name for j in active if j.spec.runs_dir == spec.runs_dir}
            problem = run_name_problem(spec.run_name, spec.runs_dir, taken)
            if problem:
                raise JobRefused(problem)
            if sum(j.status == QUEUED for j in active) >= self.max_waiting:
                raise JobRefused(f"The server is busy: {self.max_waiting} job(s) are already waiting. "
                                 "Try again later.")
            job = Job(spec, session)
            self._jobs[job.id] = job
            self._prune(session)
            self._start_workers()
            self._queue.put(job)
        return job

    def jobs(self, session: str) -> list[Job]:
        """The session's jobs, oldest first."""
        with self._lock:
            return sorted((j for j in self._jobs.values() if j.session == session), key=lambda j: j.submitted)

    def get(self, session: str, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.session == session else None

    def cancel(self, session: str, job_id: str) -> None:
        """Cancel one of the session's jobs (another session's job id does nothing)."""
        job = self.get(session, job_id)
        if job is not None:
            job.cancel()

    def dismiss(self, session: str, job_id: str) -> None:
        """Forget one of the session's finished jobs."""
        with self._lock:
            job = self.get(session, job_id)
            if job is not None and not job.active:
                del self._jobs[job_id]

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Cancel every job and wait up to ``timeout`` s for them to end; True when they did."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.active]
        for job in jobs:
            job.cancel()
        deadline = time.monotonic() + timeout  # a cancelled queued job ends as soon as a worker takes it
        return all(job.wait(max(deadline - time.monotonic(), 0.0)) for job in jobs)

    def position(self, job: Job) -> int:
        """1 for the next job to start, 2 for the one after, ...; 0 when not waiting."""
        if job.status != QUEUED:
            return 0
        with self._lock:
            waiting = [i for _, i in sorted((j.submitted, j.id) for j in self._jobs.values() if j.status == QUEUED)]
        # the job may have started between the two looks
        return 1 + waiting.index(job.id) if job.id in waiting else 0

    def taken(self, runs_dir: Path) -> set[str]:
        """Names of the runs that active jobs will write into ``runs_dir``."""
        return {j.run_name for j in list(self._jobs.values()) if j.active and j.spec.runs_dir == runs_dir}

    def running(self) -> int:
        """Jobs training now, all sessions together."""
        return sum(j.status == RUNNING for j in list(self._jobs.values()))

    def _prune(self, session: str) -> None:
        # a session keeps its latest finished jobs; a day-old finished job of any session goes
        finished = sorted((j for j in self._jobs.values() if j.session == session and not j.active),
                          key=lambda j: j.submitted)
        old = time.time() - STALE_AFTER_S
        gone = finished[:max(len(finished) - self.keep_finished, 0)]
        gone += [j for j in self._jobs.values() if not j.active and (j.finished or time.time()) < old]
        for job in gone:
            self._jobs.pop(job.id, None)

    def _start_workers(self) -> None:
        self._workers = [t for t in self._workers if t.is_alive()]
        while len(self._workers) < self.max_running:
            worker = threading.Thread(target=self._work, name=f"cellniche-train-{len(self._workers)}",
                                      daemon=True)
            worker.start()
            self._workers.append(worker)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job.run()
            except BaseException as exc:  # never leave a job looking active, never lose the worker
                job.error = f"{type(exc).__name__}: {exc}"
                job._finish(FAILED, "failed")
            finally:
                self._queue.task_done()
