"""Shared pieces of the dashboard's AppTest tests."""

import json
from pathlib import Path

import streamlit.testing.v1.app_test as app_test_module
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

from explorer import state

APP = str(Path(__file__).resolve().parents[2] / "app.py")


class NavigationPagesManager(PagesManager):
    """AppTest work-around: run the entrypoint on every run, as the server does.

    AppTest makes a fresh PagesManager per run, which sees the ``pages/`` folder and takes
    the legacy multipage path: after the first run it executes the page file alone,
    skipping ``app.py`` (sidebar, run picker, URL sync). The server stops doing that once
    ``st.navigation`` has run; so do we.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        PagesManager.uses_pages_directory = False


def run_entrypoint_always(monkeypatch) -> None:
    monkeypatch.setattr(app_test_module, "PagesManager", NavigationPagesManager)


def link_runs_dir(root: Path, small_run: Path, monkeypatch) -> Path:
    """``root/runs`` holding the small run as ``small``, set as the dashboard's runs folder."""
    runs = root / "runs"
    runs.mkdir()
    (runs / "small").symlink_to(small_run, target_is_directory=True)
    monkeypatch.setenv(state.RUNS_DIR_ENV, str(runs))
    return runs


def open_app(query: dict | None = None, *, page: str | None = None, timeout: int = 180) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout)
    if page:
        at.query_params["page"] = page
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def decks(at: AppTest) -> list[dict]:
    return [json.loads(d.proto.json) for d in at.get("deck_gl_json_chart")]


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def query(at: AppTest, name: str) -> list[str]:
    """A query parameter's values (AppTest gives one value as a plain string)."""
    value = at.query_params.get(name)
    return [] if value is None else [value] if isinstance(value, str) else list(value)
