"""The first visit: an empty runs folder, the demo run built by a child process shared by all sessions."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from apptest_support import assert_clean, open_app
from explorer import startup, state


@pytest.fixture(autouse=True)
def _fresh_builds():
    startup.demo_build.clear()
    yield
    startup.demo_build.clear()


FAKE_BUILD = """
import json, os, shutil, sys
from pathlib import Path
out, progress, small, calls = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(calls, "a") as f:
    f.write(str(out) + "\\n")
for stage in ("simulate", "train", "umap", "write"):
    progress.write_text(json.dumps({"stage": stage, "fraction": 0.5, "message": stage + " half way", "share": 0.5}))
(out / "runs").mkdir(parents=True, exist_ok=True)
shutil.copytree(small, out / "runs" / "demo")
"""


def fake_builder(monkeypatch, small_run: Path, calls: Path):
    def command(out, progress_file):
        return [sys.executable, "-c", FAKE_BUILD, str(out), str(progress_file), str(small_run), str(calls)]
    monkeypatch.setattr(startup, "demo_command", command)


def test_first_launch_builds_the_demo_once(tmp_path, small_run, monkeypatch):
    runs = tmp_path / "data" / "runs"
    monkeypatch.setenv(state.RUNS_DIR_ENV, str(runs))
    calls = tmp_path / "calls.txt"
    fake_builder(monkeypatch, small_run, calls)
    at = open_app()
    assert_clean(at)
    assert calls.read_text().split() == [str(runs.parent)]
    assert state.find_runs(runs).keys() == {"demo"}
    assert at.sidebar.selectbox[0].value == "demo"
    assert at.title[0].value == "Cohort overview"
    assert not (runs / ".demo-progress.json").exists()
    open_app()  # a second session finds the run on disk
    assert len(calls.read_text().split()) == 1
    shutil.rmtree(runs / "demo")  # removed while the server runs: the next visit builds it again
    at = open_app()
    assert_clean(at)
    assert len(calls.read_text().split()) == 2 and state.find_runs(runs).keys() == {"demo"}


def test_demo_in_a_runs_folder_with_another_name(tmp_path, small_run, monkeypatch):
    runs = tmp_path / "my-runs"
    monkeypatch.setenv(state.RUNS_DIR_ENV, str(runs))
    fake_builder(monkeypatch, small_run, tmp_path / "calls.txt")
    at = open_app()
    assert_clean(at)
    assert state.find_runs(runs).keys() == {"demo"}
    assert (tmp_path / "calls.txt").read_text().split() == [str(runs / ".demo")]


def test_failed_demo_build_is_an_error_message(tmp_path, monkeypatch):
    monkeypatch.setenv(state.RUNS_DIR_ENV, str(tmp_path / "runs"))
    monkeypatch.setattr(startup, "demo_command", lambda out, progress: [
        sys.executable, "-c", "import sys; print('error: disk full', file=sys.stderr); sys.exit(2)"])
    at = open_app()
    assert not at.exception
    assert at.title[0].value == "CellNiche Explorer"
    assert any("disk full" in e.value for e in at.error)
    assert at.button[0].label == "Try again"
    at.switch_page("pages/maps.py").run()
    assert not at.exception
    assert any("disk full" in e.value for e in at.error)


def test_the_page_reads_the_share_the_build_writes(tmp_path):
    from cellniche_core.progress import ProgressFile
    from cellniche_core.pipeline import DEMO_STAGES, overall_progress

    path = tmp_path / "progress.json"
    assert startup.read_progress(path) == (0.0, "starting: loading the library")
    ProgressFile(path, DEMO_STAGES)("train", 0.5, "step 10")
    share, text = startup.read_progress(path)
    assert share == pytest.approx(overall_progress("train", 0.5, DEMO_STAGES)) and text == "train: step 10"
    assert 0.0 < share < 1.0
    path.write_text("{not json")
    assert startup.read_progress(path)[0] == 0.0


def test_cli_progress_file_is_replaced_atomically(tmp_path):
    from cellniche_core.progress import ProgressFile
    from cellniche_core.pipeline import overall_progress

    path = tmp_path / "p.json"
    report = ProgressFile(path, ("train", "embed"), every_s=3600)
    report("train", 0.1, "a")
    report("train", 0.2, "b")  # within every_s of the last write: skipped
    assert json.loads(path.read_text())["message"] == "a"
    report("embed", 0.0, "c")  # a new stage is always written
    written = json.loads(path.read_text())
    assert {k: written[k] for k in ("stage", "fraction", "message")} == {"stage": "embed", "fraction": 0.0,
                                                                         "message": "c"}
    assert written["share"] == pytest.approx(overall_progress("embed", 0.0, ("train", "embed")))
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_has_runs_needs_a_manifest(tmp_path):
    assert not startup.has_runs(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "manifest.json").write_text("{}")
    assert not startup.has_runs(tmp_path)
    (tmp_path / "half" / "manifest.json").write_text("{}")
    assert startup.has_runs(tmp_path)


def test_served_app_watches_no_files():
    import tomllib

    config = tomllib.loads((Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "none"
