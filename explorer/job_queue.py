"""The training job queue: jobs run :func:`cellniche_core.pipeline.fit_run` in background
threads held by a process-wide :class:`JobRegistry` (no Streamlit).

At most ``max_running`` jobs train at once and the others wait in a queue, one active job
per session. Cancelling stops a job at its next training step or stage; ``fit_run`` writes
the run folder atomically, so a cancelled job leaves nothing in the runs folder. A job
stages its uploads in ``uploads/train-<job id>/`` and removes them when it ends.
"""

from __future__ import annotations

import atexit
import queue
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cellniche_core.keys import CohortKeys
from cellniche_core.pipeline import STAGE_WEIGHTS, STAGES, RunOptions, fit_run, overall_progress  # noqa: F401

from .train import run_name_problem
from .uploads import JOB_FOLDER_PREFIX, STALE_AFTER_S, Upload, shown_message, stage_uploads

#: jobs training at the same time in one server process; the others wait
MAX_RUNNING = 1
#: jobs waiting for a free slot, all sessions together; more are refused
MAX_WAITING = 3
#: finished jobs kept per session for the page to show
KEEP_FINISHED = 5

# job states
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)

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
