"""Every malformed input of ``tests/malformed.py`` stops with its own clear CohortError.

Through the core (``read_cohort``, as the pipeline calls it, and ``validate_cohort`` on an
upload already in memory) and through the command line: one line on stderr naming the
file, exit code 2, no traceback, no run folder, and the input left byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from malformed import BAD_ARGUMENTS, CASES, N_CELLS, Case, make_adata, valid_file

from cellniche_core.cli import EXIT_BAD_INPUT, main
from cellniche_core.io import INPUT_UNS_KEY, CohortError, read_cohort, validate_cohort

ROOT = Path(__file__).resolve().parents[2]
BY_NAME = {case.name: case for case in CASES}


def digest(path: Path) -> str:
    """sha256 of a file, or of every file (relative names and bytes) under a directory."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path)).encode() if path.is_dir() else b"")
        h.update(f.read_bytes())
    return h.hexdigest()


def read_error(case: Case, directory: Path) -> tuple[Path, str]:
    """Write the case, read it as the pipeline does; the path and the error message."""
    path = case.write(directory)
    with pytest.raises(CohortError) as info:
        read_cohort([path], features=case.features)
    return path, str(info.value)


def test_the_catalogue_is_broad_and_its_fragments_are_distinct():
    assert len(CASES) >= 16
    fragments = [case.message for case in CASES]
    assert all(f == f.lower() for f in fragments)
    assert len(set(fragments)) == len(fragments)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_read_cohort_names_the_file_and_the_problem(case, tmp_path):
    path = case.write(tmp_path)
    before = digest(path)

    with pytest.raises(CohortError) as info:  # CohortError only: anything else fails here
        read_cohort([path], features=case.features)

    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert case.message in message.lower(), message
    assert "\n" not in message
    assert "Traceback" not in message
    assert digest(path) == before  # read-only


def test_every_case_has_its_own_message(tmp_path):
    messages = {}
    for case in CASES:
        path, message = read_error(case, tmp_path / case.name)
        messages[case.name] = message.removeprefix(f"{path}: ")
    repeated = {m for m in messages.values() if list(messages.values()).count(m) > 1}
    assert not repeated, {n: m for n, m in messages.items() if m in repeated}


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.filename.endswith(".h5ad") and c.name in {
        "spatial-missing", "spatial-nan", "spatial-inf", "spatial-all-same-point", "zero-cells",
        "single-cell", "sample-nan", "cell-type-missing", "cell-type-all-nan", "x-nan", "x-inf",
        "x-text", "spatial-one-column", "spatial-text", "spatial-sparse"}],
    ids=lambda c: c.name,
)
def test_validate_cohort_on_an_upload_in_memory(case, tmp_path):
    # the dashboard validates an uploaded AnnData before writing or training anything
    import anndata as ad

    adata = ad.read_h5ad(case.write(tmp_path))
    with pytest.raises(CohortError) as info:
        validate_cohort(adata, source="upload.h5ad", features=case.features)
    message = str(info.value)
    assert message.startswith("upload.h5ad: ")
    assert case.message in message.lower(), message


def fit_args(case: Case, path: Path, out: Path) -> list[str]:
    return ["fit", str(path), "--out", str(out), "--features", case.features, "--device", "cpu",
            "--quiet"]


def assert_one_line(case: Case, path: Path, stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {path}: ")
    assert case.message in lines[0].lower()
    assert "Traceback" not in stderr


@pytest.mark.parametrize("name", ["spatial-wrong-length", "non-utf8-column-name", "single-cell",
                                  "x-inf", "zarr-junk"])
def test_cli_fit_reports_one_line_and_writes_nothing(name, tmp_path, capsys):
    case = BY_NAME[name]
    path = case.write(tmp_path / "in")
    before = digest(path)

    code = main(fit_args(case, path, tmp_path / "runs" / "r1"))

    assert code == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert_one_line(case, path, captured.err)
    assert captured.out == ""
    assert not (tmp_path / "runs").exists()
    assert digest(path) == before


def test_cli_process_exits_2_without_traceback(tmp_path):
    case = BY_NAME["csv-renamed-h5ad"]
    path = case.write(tmp_path / "in")
    before = digest(path)

    done = subprocess.run(
        [sys.executable, "-m", "cellniche_core", *fit_args(case, path, tmp_path / "runs" / "r1")],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=120, check=False,
    )

    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert_one_line(case, path, done.stderr)  # no warning either
    assert done.stdout == ""
    assert not (tmp_path / "runs").exists()
    assert digest(path) == before


# ------------------------------------------------------------------- handled, not errors


def test_duplicate_obs_names_are_made_unique_with_a_note(tmp_path):
    adata = make_adata()
    adata.obs_names = ["cell"] * N_CELLS
    path = valid_file(tmp_path / "dups.h5ad", adata)
    before = digest(path)

    out = read_cohort([path])

    assert out.obs_names.is_unique
    assert out.uns[INPUT_UNS_KEY]["n_renamed_obs"] == N_CELLS - 1
    assert any("duplicate obs names" in note for note in out.uns[INPUT_UNS_KEY]["notes"])
    assert digest(path) == before


def test_negative_intensities_and_long_column_names_are_accepted(tmp_path):
    # background-subtracted intensities go negative; some exporters write very long names
    adata = make_adata()
    adata.X = adata.X - 0.5
    adata.obs["é" * 300] = np.arange(N_CELLS)
    out = read_cohort([valid_file(tmp_path / "ok.h5ad", adata)], features="pheno_expr")
    assert out.n_obs == N_CELLS
    assert (out.X < 0).any()


def test_a_file_pointing_outside_itself_is_never_read(tmp_path):
    """An .h5ad whose obs column is stored in another file must not show that file's bytes."""
    from explorer.uploads import Upload, preview_upload

    case = next(c for c in CASES if c.name == "external-storage")
    path = case.write(tmp_path)
    secret = (tmp_path / "elsewhere.bin").read_bytes()
    with pytest.raises(CohortError, match="stores its data in another file") as err:
        preview_upload(Upload(path.name, path.read_bytes()), tmp_path / "uploads")
    assert secret.hex() not in str(err.value)


# ----------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("bad", BAD_ARGUMENTS, ids=lambda b: b.name)
def test_cli_fit_refuses_a_key_or_niche_count_the_data_lacks(bad, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    path = valid_file(tmp_path / "in" / "tumour.h5ad")
    before = digest(path)
    code = main(["fit", str(path), "--out", str(tmp_path / "runs" / "r1"), "--device", "cpu", "--quiet",
                 *bad.args])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert bad.message in lines[0].lower()
    if bad.names_columns:  # what the file does have, so the fix is one look away
        assert "cell_type" in lines[0] or "spatial" in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "runs").exists()
    assert digest(path) == before


def test_a_named_cell_type_column_is_required_also_with_auto_features(tmp_path):
    path = valid_file(tmp_path / "tumour.h5ad")
    with pytest.raises(CohortError, match=r"obs\['celltype_typo'\] is missing.*found obs columns: \['cell_type'"):
        read_cohort([path], cell_type_key="celltype_typo", features="auto")
    # with expression features a cell-type column is not needed, named or not
    adata = read_cohort([path], cell_type_key="celltype_typo", features="expr")
    assert adata.n_obs == N_CELLS


def test_auto_features_refuse_files_that_disagree_on_cell_types(tmp_path):
    # with auto features the file lacking the column would train as cells of no type
    typed = valid_file(tmp_path / "typed.h5ad")
    bare = make_adata()
    bare.obs = bare.obs.drop(columns="cell_type")
    bare.obs["sample"] = "other"
    untyped = valid_file(tmp_path / "untyped.h5ad", bare)
    for paths in ([typed, untyped], [untyped, typed]):
        with pytest.raises(CohortError, match=r"typed\.h5ad has obs\['cell_type'\].*untyped\.h5ad does not"):
            read_cohort(paths, features="auto")
    # asked for expression, both are usable
    assert read_cohort([typed, untyped], features="expr").n_obs == 2 * N_CELLS


@pytest.mark.parametrize("change, args, message", [
    ("one-type", (), "holds one cell type (['t'])"),
    ("radius-below-spacing", ("--radius", "0.01"), "the spatial graph has no edge"),
])
def test_cli_fit_refuses_inputs_that_cannot_make_niches(change, args, message, tmp_path, capsys):
    adata = make_adata()
    if change == "one-type":
        adata.obs["cell_type"] = "T"
    path = valid_file(tmp_path / "in.h5ad", adata)
    before = digest(path)
    code = main(["fit", str(path), "--out", str(tmp_path / "runs" / "r1"), "--steps", "2", "--n-niches", "2",
                 "--no-umap", "--quiet", *args])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and message in captured.err.lower() and "Traceback" not in captured.err
    assert not (tmp_path / "runs" / "r1").exists() and digest(path) == before


def test_coordinates_left_in_obs_columns_are_pointed_to(tmp_path):
    adata = make_adata()
    adata.obs["X"], adata.obs["Y"] = adata.obsm["spatial"][:, 0], adata.obsm["spatial"][:, 1]
    del adata.obsm["spatial"]
    with pytest.raises(CohortError, match=r"and obs columns \['X', 'Y'\].*adata\.obsm\['spatial'\] = "
                                          r"adata\.obs\[\['X', 'Y'\]\]\.to_numpy\(\)"):
        read_cohort([valid_file(tmp_path / "xy.h5ad", adata)])


def test_cli_fit_names_what_is_in_the_way_of_its_output(tmp_path, capsys):
    path = valid_file(tmp_path / "in.h5ad")
    (tmp_path / "taken").write_text("notes")
    code = main(["fit", str(path), "--out", str(tmp_path / "taken"), "--steps", "2", "--n-niches", "2", "--no-umap",
                 "--quiet"])
    assert code == EXIT_BAD_INPUT
    assert "taken: a file already exists there (pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "notes"


def test_cli_fit_shows_the_notes_of_reading_the_cohort(tmp_path, capsys):
    adata = make_adata()
    adata.obsm["spatial"] = np.column_stack([adata.obsm["spatial"], np.arange(N_CELLS)])  # an (x, y, z) export
    path = valid_file(tmp_path / "stack.h5ad", adata)
    code = main(["fit", str(path), "--out", str(tmp_path / "r"), "--steps", "2", "--n-niches", "2", "--no-umap",
                 "--device", "cpu"])
    assert code == 0
    assert "stack.h5ad: obsm['spatial'] has 3 columns; the first 2 (x, y) are used" in capsys.readouterr().err
