"""Fixtures of the dashboard's AppTest tests."""

import pytest
from apptest_support import link_runs_dir, run_entrypoint_always


@pytest.fixture
def legacy_pages_mode():
    """AppTest as it is: page runs after the first take the legacy path (see apptest_support)."""


@pytest.fixture(autouse=True)
def _entrypoint_always_runs(request, monkeypatch):
    if "legacy_pages_mode" not in request.fixturenames:
        run_entrypoint_always(monkeypatch)


@pytest.fixture
def runs_dir(tmp_path, small_run, monkeypatch):
    """A runs folder holding the small run as ``small``, set as the dashboard's runs folder."""
    return link_runs_dir(tmp_path, small_run, monkeypatch)
