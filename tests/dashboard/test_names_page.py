"""The Niche names page (AppTest on a copy of the small run): renaming, CSV, refusals."""

import shutil

import pytest
from apptest_support import assert_clean, open_app

from cellniche_core.keys import RUN_ADATA
from cellniche_core.names import read_names
from explorer import state


@pytest.fixture
def dashboard(tmp_path, small_run, monkeypatch):
    """A runs folder holding a copy of the small run (names are written into it)."""
    copy = tmp_path / "dash" / "small"
    shutil.copytree(small_run, copy)
    monkeypatch.setenv(state.RUNS_DIR_ENV, str(copy.parent))
    return copy


def name_box(at, niche: str):
    return next(t for t in at.text_input if t.label == f"Name of {niche}")


def test_rename_on_the_page_shows_everywhere_and_to_other_sessions(dashboard):
    before = (dashboard / RUN_ADATA).read_bytes()
    at = open_app({"page": "names"})
    assert_clean(at)
    assert at.title[0].value == "Niche names"
    assert len(at.text_input) == 6 and name_box(at, "N2").value == ""
    name_box(at, "N2").input("tumour core")
    at.button[0].click().run()  # the form's Save button
    assert_clean(at)
    assert read_names(dashboard) == {"N2": "tumour core"}
    assert (dashboard / RUN_ADATA).read_bytes() == before  # the cohort file is never rewritten
    assert any("Saved the names" in s.value for s in at.success)
    assert name_box(at, "N2").value == "tumour core"
    assert "N2 · tumour core" in at.dataframe[-1].value["shown as"].tolist()

    other = open_app({"page": "maps", "niche": "N2"})  # a collaborator's link, opened after the rename
    assert_clean(other)
    assert not other.warning
    assert other.selectbox(key="_w_niche").value == "N2 · tumour core"
    legend = "\n".join(m.value for m in other.markdown)
    assert "N2 · tumour core" in legend
    other.switch_page("pages/composition.py").run()
    assert_clean(other)
    assert any("N2 · tumour core" in str(t.value) for t in other.dataframe)

    name_box(at, "N2").input("")  # back to the automatic name
    at.button[0].click().run()
    assert read_names(dashboard) == {}


def test_names_page_refuses_a_bad_name_with_a_message(dashboard):
    at = open_app({"page": "names"})
    name_box(at, "N1").input("bad\x00name")
    at.button[0].click().run()
    assert not at.exception
    assert any("not saved" in e.value and "control characters" in e.value for e in at.error)
    assert read_names(dashboard) == {}


def test_names_page_takes_a_csv(dashboard):
    at = open_app({"page": "names"})
    at.file_uploader[0].set_value(("names.csv", b"niche,name\nN3,stroma\n", "text/csv")).run()
    next(b for b in at.button if b.label == "Use these names").click().run()
    assert_clean(at)
    assert read_names(dashboard) == {"N3": "stroma"}
    assert any("Saved 1 name(s) from names.csv" in s.value for s in at.success)

    at.file_uploader[0].set_value(("bad.csv", b"niche,name\nN77,x\n", "text/csv")).run()
    next(b for b in at.button if b.label == "Use these names").click().run()
    assert not at.exception
    assert any("bad.csv" in e.value and "unknown niche(s) 'N77'" in e.value for e in at.error)
    assert read_names(dashboard) == {"N3": "stroma"}
