"""What the dashboard draws before anything heavy is imported: the first visit.

``app.py`` imports this module (Streamlit and the standard library only) before the
library, so a visitor sees the title, the navigation and, while the demo run is being
built, a progress bar within a second or two of opening any page, on a fresh server too.

The demo run is built in a separate process (``python -m cellniche_core demo``), shared
by every session of the server: it holds no lock the server needs (numba's compiler and
the training loop would otherwise keep the server's own Python thread waiting), and it
reports its stage through a small JSON file that every session's page polls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import streamlit as st

APP_DIR = Path(__file__).resolve().parent.parent
DEFAULT_RUNS_DIR = APP_DIR / "data" / "runs"
RUNS_DIR_ENV = "CELLNICHE_RUNS_DIR"
DEMO_RUN = "demo"
#: a run folder holds this file (see ``cellniche_core.keys.RUN_MANIFEST``)
RUN_MANIFEST = "manifest.json"

#: session-state keys shared with :mod:`explorer.view`
GOTO = "_view_goto"
ENTERED = "_view_entered"


def enter_page(page_name: str) -> None:
    """Call first in every page file, before its other imports: make sure ``app.py`` ran first.

    Until some session has called ``st.navigation``, Streamlit serves a ``pages/`` folder
    the legacy way and runs a deep-linked page file on its own, without the entrypoint
    (no title, run picker or URL sync). Such a run is sent back through ``app.py``, which
    then switches to ``page_name`` with the query string kept.
    """
    if st.session_state.pop(ENTERED, False):
        return
    st.session_state[GOTO] = page_name
    st.switch_page("app.py", query_params={k: st.query_params.get_all(k) for k in st.query_params})


_preload_lock = threading.Lock()
_preloading: list[threading.Thread] = []


def preload_library() -> None:
    """Import the library and the dashboard's helpers in a background thread, once per server.

    The first visitor's page then finds them (mostly) imported instead of waiting seconds
    for torch, anndata and the rest; a script that needs them meanwhile waits on Python's
    import lock for what is left.
    """
    def load() -> None:
        import explorer.state  # noqa: F401
        import explorer.view  # noqa: F401

    with _preload_lock:
        if not _preloading and not library_ready():
            thread = threading.Thread(target=load, name="cellniche-preload", daemon=True)
            _preloading.append(thread)
            thread.start()


def library_ready() -> bool:
    """Whether the library and the dashboard's helpers are imported (not merely being imported)."""
    module = sys.modules.get("explorer.view")
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


def runs_dir() -> Path:
    """The runs folder: ``$CELLNICHE_RUNS_DIR``, else ``data/runs`` next to ``app.py``."""
    value = os.environ.get(RUNS_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_RUNS_DIR


def has_runs(directory: Path) -> bool:
    """Whether ``directory`` holds at least one run folder (a non-hidden folder with a manifest)."""
    try:
        return any(p.is_dir() and not p.name.startswith(".") and (p / RUN_MANIFEST).is_file()
                   for p in Path(directory).iterdir())
    except OSError:
        return False


def read_progress(path: Path) -> tuple[float, str]:
    """(share done, "stage: message") from a progress file (written by
    ``cellniche_core.progress.ProgressFile``); (0, "starting") when unreadable."""
    try:
        data = json.loads(Path(path).read_text())
        share = min(max(float(data["share"]), 0.0), 1.0)
        return share, f"{data['stage']}: {data.get('message', '')}"
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0, "starting: loading the library"


def demo_command(out: Path, progress_file: Path) -> list[str]:
    """The command that builds the demo cohort and run under ``out`` (replaced in tests)."""
    return [sys.executable, "-m", "cellniche_core", "demo", "--out", str(out), "--quiet",
            "--progress-file", str(progress_file)]


class DemoBuild:
    """The demo run being built by a child process, shared by every session of the server.

    The build runs outside any script run, so a user who clicks or navigates meanwhile
    does not interrupt it; every session only reads its progress.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._progress_file: Path | None = None
        self.error: str | None = None
        self.done = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the build unless it is running, finished or has failed (see :meth:`retry`)."""
        with self._lock:
            if self.done and not has_runs(self.directory):
                self.done = False  # built once, then removed from the runs folder: build again
            if self.running or self.error is not None or self.done:
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            self._progress_file = self.directory / ".demo-progress.json"
            self._progress_file.unlink(missing_ok=True)
            self._thread = threading.Thread(target=self._run, name="cellniche-demo-build", daemon=True)
            self._thread.start()

    def retry(self) -> None:
        """Forget a failed build so that :meth:`start` tries again."""
        with self._lock:
            if not self.running:
                self._thread, self.error, self.done = None, None, False

    def progress(self) -> tuple[float, str]:
        if self.done:
            return 1.0, "demo run ready"
        if self._progress_file is None:
            return 0.0, "starting: loading the library"
        return read_progress(self._progress_file)

    def _run(self) -> None:
        # data/runs -> the cohort goes to data/demo_cohort.h5ad; another runs folder keeps it hidden
        out = self.directory.parent if self.directory.name == "runs" else self.directory / ".demo"
        target = self.directory / DEMO_RUN
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(APP_DIR),
                                                                         os.environ.get("PYTHONPATH")])))
        # One thread: the server and its visitors' pages share the cores with the build. A
        # training step is small (a few thousand cells), so a second thread gains ~30 % on
        # an idle 2-core machine, and costs 3-5x when another process keeps a core busy
        # (torch's threads wait on each other at every operation).
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            with tempfile.TemporaryFile() as log:
                code = subprocess.run(demo_command(out, self._progress_file), cwd=APP_DIR, env=env,
                                      stdout=subprocess.DEVNULL, stderr=log, check=False).returncode
                log.seek(0)
                message = log.read().decode(errors="replace").strip().splitlines()
            built = out / "runs" / DEMO_RUN
            if code != 0 and not (built / RUN_MANIFEST).is_file() and not has_runs(self.directory):
                self.error = message[-1] if message else f"the build stopped with exit code {code}"
                return
            if built.resolve() != target.resolve() and not target.exists():
                os.replace(built, target)
            self.done = True
        except Exception as exc:  # reported to every session by wait_for_demo
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self._progress_file is not None:
                self._progress_file.unlink(missing_ok=True)


@st.cache_resource
def demo_build(directory: str) -> DemoBuild:
    # one build per runs folder for the whole server
    return DemoBuild(Path(directory))


def wait_for_demo(directory: Path, *, poll_s: float = 0.5) -> None:
    """Build the demo run into an empty runs folder, showing a progress bar until it is there.

    Reruns the script when the run exists; on failure shows the error, a button to try
    again, and stops the script.
    """
    build = demo_build(str(Path(directory).resolve()))
    build.start()
    st.title("CellNiche Explorer")
    if build.error is None:
        st.info(f"No run found in `{directory}`: building the demo run once (about half a minute on a "
                "laptop CPU). It is kept on disk for next time; every page opens when it is ready.")
        bar = st.progress(0.0, text="starting")
        while build.running:
            share, text = build.progress()
            bar.progress(share, text=f"{text} · {share:.0%}")
            time.sleep(poll_s)
    if build.error is not None:
        st.error(f"Building the demo run failed: {build.error}")
        if st.button("Try again"):
            build.retry()
            st.rerun()
        st.stop()
    if has_runs(directory):
        st.rerun()  # a clean page, without the finished progress bar
    st.error(f"No run to show: no run folder was found in `{directory}`.")
    st.stop()
