"""Progress of long jobs: stage lines and a training bar on a terminal, or a small JSON
file another process polls (the dashboard's first-visit build of the demo)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


class TerminalProgress:
    """Stage lines plus a progress bar for training, on stderr.

    ``bar``: draw tqdm's bar (redrawn in place with carriage returns); by default only
    when stderr is a terminal. Otherwise (a job's log file, a pipe) training is a plain
    line at each tenth of the steps: a redrawn bar writes every step into a log (48 kB of
    one line for a million cells' 800 steps).
    """

    def __init__(self, enabled: bool = True, *, bar: bool | None = None):
        self.enabled = enabled
        self.use_bar = _is_terminal(sys.stderr) if bar is None else bar
        self.bar = None
        self.tenth = -1
        self.t0 = time.perf_counter()

    def _line(self, stage: str, message: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {stage}: {message}", file=sys.stderr, flush=True)

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        if stage == "train" and not self.use_bar:
            tenth = int(fraction * 10 + 1e-9)
            if tenth > self.tenth:
                self.tenth = tenth
                self._line(stage, f"{tenth * 10:3d}% {message}")
            return
        if stage == "train":
            if self.bar is None:
                from tqdm import tqdm

                # the message as the description: tqdm prints a postfix after ", "
                self.bar = tqdm(total=100, unit="%", file=sys.stderr,
                                bar_format="train: {percentage:3.0f}%|{bar}| {desc}")
            self.bar.n = int(round(fraction * 100))
            self.bar.set_description_str(message, refresh=True)
            return
        self.tenth = -1  # a later training counts its tenths afresh
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if fraction == 0.0 or stage in ("read", "graph", "write"):
            self._line(stage, message)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class ProgressFile:
    """Progress written to a small JSON file for another process: ``{"stage", "fraction",
    "message", "share"}``, ``share`` being the whole job's share done over ``stages``
    (:func:`cellniche_core.pipeline.overall_progress`).

    Each write replaces the file atomically; within a stage, writes are at most every
    ``every_s`` seconds, so a training loop reporting every step costs nothing.
    """

    def __init__(self, path: str | Path, stages=None, every_s: float = 0.25):
        from .pipeline import STAGES

        self.path = Path(path)
        self.stages = tuple(stages or STAGES)
        self.every_s = every_s
        self._last = (None, 0.0)

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        last_stage, last_time = self._last
        if stage == last_stage and fraction < 1.0 and now - last_time < self.every_s:
            return
        self._last = (stage, now)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            from .pipeline import overall_progress

            share = overall_progress(stage, fraction, self.stages)
            tmp.write_text(json.dumps({"stage": stage, "fraction": float(fraction), "message": message,
                                       "share": share}))
            os.replace(tmp, self.path)
        except OSError:  # progress is best effort; the build itself goes on
            pass
