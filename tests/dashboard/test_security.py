"""Hardening: no link or upload reaches outside its folder; weights never run code.

- Query parameters only ever select among listed names (``explorer/view.py``); traversal
  attempts through ``?run=``, ``?page=`` and the transfer page's ``?query=`` fall back with
  a warning and read nothing outside the runs / data folder.
- Paths built from user-given names go through :func:`cellniche_core.io.safe_child`.
- Model weights are loaded with ``torch.load(..., weights_only=True)`` everywhere, and a
  weights file carrying a pickled object is refused before the object can run.
- ``.streamlit/config.toml`` keeps XSRF protection on.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest
import tomllib
import torch
from apptest_support import APP, query, run_entrypoint_always
from malformed import CASES
from streamlit.testing.v1 import AppTest
from tiny_run import TINY

from cellniche_core import io
from cellniche_core.io import CohortError, load_run, load_weights, safe_child
from cellniche_core.keys import RUN_WEIGHTS
from explorer import state, transfer, transfer_state

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def folders(tmp_path, tiny_run, monkeypatch):
    """``data/runs/tiny`` as the dashboard's runs folder, and a run and a file outside it."""
    runs = tmp_path / "data" / "runs"
    runs.mkdir(parents=True)
    (runs / TINY).symlink_to(tiny_run, target_is_directory=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").symlink_to(tiny_run, target_is_directory=True)
    shutil.copy(tiny_run.parent.parent / "tiny_cohort.h5ad", outside / "secret.h5ad")
    monkeypatch.setenv(state.RUNS_DIR_ENV, str(runs))
    return runs, outside


@pytest.fixture
def loaded_paths(monkeypatch) -> list[Path]:
    """Every run folder the dashboard loads during the test (cached loads are not repeated)."""
    seen: list[Path] = []
    original = state.load_run

    def recording(path, **kwargs):
        seen.append(Path(path))
        return original(path, **kwargs)

    monkeypatch.setattr(state, "load_run", recording)
    return seen


# ----------------------------------------------------------------------------- safe_child


@pytest.mark.parametrize("name", ["run_1", "P1-s2.h5ad", "%2e%2e", "run%2F..%2F..%2Fetc", "runs…ü"])
def test_safe_child_keeps_plain_names_inside(tmp_path, name):
    child = safe_child(tmp_path, name)
    assert child == tmp_path / name
    assert child.parent == tmp_path


@pytest.mark.parametrize("name, problem", [
    ("", "empty"),
    ("..", "parent"),
    (".", "parent"),
    ("../outside", "separator"),
    ("a/../../b", "separator"),
    ("/etc/passwd", "separator"),
    ("..\\..\\windows", "separator"),
    ("run\x00.h5ad", "NUL"),
    (".hidden", "hidden"),
])
def test_safe_child_refuses_traversal(tmp_path, name, problem):
    with pytest.raises(ValueError, match=problem):
        safe_child(tmp_path, name)


def test_safe_child_refuses_a_symlink_leading_outside(tmp_path):
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "escape").symlink_to(outside, target_is_directory=True)
    (base / "inner").symlink_to(base / "real", target_is_directory=True)
    with pytest.raises(ValueError, match="symbolic link leading outside"):
        safe_child(base, "escape")
    assert safe_child(base, "inner") == base / "inner"


# ----------------------------------------------------------------------------- links


def open_app(params: dict) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(params)
    return at.run()


@pytest.mark.parametrize("value", [
    "../outside/secret",
    "..%2Foutside%2Fsecret",
    "%2e%2e%2foutside%2fsecret",
    "../../../../etc",
    "/etc/passwd",
    "ABSOLUTE",
    "tiny\x00",
    "tiny/../../outside/secret",
])
def test_run_link_cannot_leave_the_runs_folder(folders, loaded_paths, monkeypatch, value):
    runs, outside = folders
    run_entrypoint_always(monkeypatch)
    value = str(outside / "secret") if value == "ABSOLUTE" else value

    at = open_app({"run": value})

    assert not at.exception
    assert any("Unknown run" in w.value for w in at.warning)
    assert at.sidebar.selectbox[0].options == [TINY]
    assert at.sidebar.selectbox[0].value == TINY
    assert query(at, "run") == [TINY]  # the URL is corrected
    assert all(p.parent == runs for p in loaded_paths), loaded_paths


def test_page_link_cannot_name_a_file(folders, monkeypatch):
    run_entrypoint_always(monkeypatch)
    at = open_app({"page": "../../etc/passwd"})
    assert not at.exception
    assert any("Unknown page" in w.value for w in at.warning)
    assert at.title[0].value == "Cohort overview"


@pytest.mark.parametrize("value", ["../outside/secret.h5ad", "ABSOLUTE", "runs/tiny/cohort.h5ad",
                                   "%2e%2e/outside/secret.h5ad"])
def test_transfer_query_link_cannot_leave_the_data_folder(folders, monkeypatch, value):
    _, outside = folders
    run_entrypoint_always(monkeypatch)
    value = str(outside / "secret.h5ad") if value == "ABSOLUTE" else value
    read = []
    monkeypatch.setattr(transfer, "read_query", lambda *a, **k: read.append(a) or 1 / 0)

    at = open_app({"page": "transfer", "query": value})

    assert not at.exception
    assert at.title[0].value == "Label transfer"
    assert any("Unknown query file" in w.value for w in at.warning)
    assert at.selectbox(key="_w_transfer:query").value == "upload"
    assert read == []  # nothing was read: the page waits for an upload


# ----------------------------------------------------------------------------- uploads


def test_uploads_are_staged_inside_the_data_folder(folders):
    runs, _ = folders
    assert transfer_state.upload_dir().resolve().parent == runs.parent.resolve()


@pytest.mark.parametrize("name", ["../../evil.h5ad", "/tmp/evil.h5ad", "..\\..\\evil.h5ad",
                                  "evil\x00.h5ad", ".h5ad", "....h5ad"])
def test_an_upload_name_cannot_place_the_file_outside(tmp_path, tiny_run, monkeypatch, name):
    staged = []
    original = transfer.read_query

    def recording(run, path):
        staged.append(Path(path))
        return original(run, path)

    monkeypatch.setattr(transfer, "read_query", recording)
    uploads = tmp_path / "data" / "uploads"
    bad = next(c for c in CASES if c.name == "random-bytes").write(tmp_path / "bytes").read_bytes()
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(CohortError) as info:
        transfer.annotate_upload(load_run(tiny_run, with_weights=False), bad, name,
                                      upload_dir=uploads, label_key="niche")

    (path,) = staged
    assert path.resolve().parent.parent == uploads.resolve()  # uploads/<temporary folder>/<name>
    assert str(path.parent) not in str(info.value)  # the message names the upload, not the disk
    assert list(uploads.iterdir()) == []  # the temporary folder is gone
    assert sorted(tmp_path.rglob("*")) == sorted([*before, uploads.parent, uploads])


# ----------------------------------------------------------------------------- weights


def _torch_load_calls() -> list[tuple[str, int, ast.Call]]:
    calls = []
    # the shipped code (tests load only what they saved, and one test loads a payload on purpose)
    files = [ROOT / "app.py", *(p for folder in ("cellniche_core", "explorer", "pages", "bench", "scripts")
                                for p in sorted((ROOT / folder).rglob("*.py")))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                calls.append((str(path.relative_to(ROOT)), node.lineno, node))
    return calls


def test_every_torch_load_is_weights_only():
    calls = _torch_load_calls()
    assert any(where == "cellniche_core/io/runs.py" for where, _, _ in calls)
    unsafe = [f"{where}:{line}" for where, line, call in calls
              if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                         and k.value.value is True for k in call.keywords)]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: stands for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_weights_holding_a_pickled_object_are_refused_not_run(tmp_path, tiny_run):
    run_dir = tmp_path / "tampered"
    shutil.copytree(tiny_run, run_dir)
    marker = tmp_path / "pwned"
    torch.save({"encoder.weight": torch.zeros(2), "hook": _Payload(marker)}, run_dir / RUN_WEIGHTS)

    with pytest.raises(ValueError, match="refused to load the model weights") as info:
        load_run(run_dir)
    assert str(run_dir / RUN_WEIGHTS) in str(info.value)
    with pytest.raises(ValueError, match="refused"):
        transfer.with_weights(load_run(run_dir, with_weights=False))  # the transfer page's path
    assert not marker.exists()

    # the payload is live: an unrestricted load would have run it
    torch.load(run_dir / RUN_WEIGHTS, weights_only=False)
    assert marker.exists()


def test_unreadable_weights_are_a_clear_error(tmp_path):
    path = tmp_path / RUN_WEIGHTS
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a readable model weights file"):
        load_weights(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="not a state_dict"):
        load_weights(path)


# ----------------------------------------------------------------------------- server config


def test_streamlit_config_keeps_xsrf_protection_and_an_upload_limit():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["enableXsrfProtection"] is True
    assert server.get("enableCORS", True) is True
    assert 0 < server["maxUploadSize"] <= 4096  # MB
    assert ".streamlit/secrets.toml" in (ROOT / ".gitignore").read_text().splitlines()


def test_list_runs_skips_hidden_and_stray_entries(folders):
    runs, _ = folders
    (runs / ".demo.123.tmp").mkdir()
    (runs / "notes.txt").write_text("x")
    assert [p.name for p in io.list_runs(runs)] == [TINY]
    assert list(state.find_runs(runs)) == [TINY]
    assert os.path.realpath(runs / TINY) != str(runs / TINY)  # a run linked in by the admin is kept
