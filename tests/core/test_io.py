"""Tests for cellniche_core.io: reading cohorts, validation messages, run folders."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from malformed import valid_file

from cellniche_core import io
from cellniche_core.io import CohortError, list_runs, load_run, read_cohort, validate_cohort
from cellniche_core.io import write_run
from cellniche_core.keys import RUN_ADATA, RUN_MANIFEST, RUN_MODEL_CONFIG, RUN_WEIGHTS, Keys

N = 24  # cells per tiny slide; above the default min_cells_per_sample=20


def make_adata(
    n: int = N, *, prefix: str = "c", genes=("g0", "g1", "g2"), seed: int = 0, **obs
) -> ad.AnnData:
    """A tiny valid cohort: n cells on a line, two cell types, a few genes."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"cell_type": pd.Categorical(["T", "B"] * (n // 2) + ["T"] * (n % 2)), **obs},
        index=[f"{prefix}{i}" for i in range(n)],
    )
    adata = ad.AnnData(
        rng.random((n, len(genes))).astype(np.float32),
        obs=frame,
        var=pd.DataFrame(index=list(genes)),
    )
    adata.obsm["spatial"] = np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
    return adata


def write(adata: ad.AnnData, path: Path) -> Path:
    return valid_file(path, adata)  # .h5ad or .zarr by suffix


def digest(path: Path) -> str:
    """Hash of a file, or of every file (names and bytes) under a directory."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- reading


def test_two_files_keep_all_cells_and_make_names_unique(tmp_path):
    # both files name their cells c0..c23
    a = write(make_adata(genes=("g0", "g1", "g2")), tmp_path / "left.h5ad")
    b = write(make_adata(genes=("g1", "g2", "g3"), seed=1), tmp_path / "right.h5ad")

    adata = read_cohort([a, b])

    assert adata.n_obs == 2 * N
    assert adata.obs_names.is_unique
    assert adata.obs_names[N] == "c0-1"
    assert list(adata.var_names) == ["g1", "g2"]  # inner join of the panels
    assert adata.obsm["spatial"].shape == (2 * N, 2)
    assert adata.uns[io.INPUT_UNS_KEY]["n_renamed_obs"] == N


def test_sample_from_file_stem_and_patient_defaults_to_sample(tmp_path):
    a = write(make_adata(), tmp_path / "tumour_A.h5ad")
    b = write(make_adata(prefix="d"), tmp_path / "tumour_B.h5ad")

    adata = read_cohort([a, b])

    assert isinstance(adata.obs["sample"].dtype, pd.CategoricalDtype)
    assert adata.obs["sample"].value_counts().to_dict() == {"tumour_A": N, "tumour_B": N}
    assert (adata.obs["patient"].astype(str) == adata.obs["sample"].astype(str)).all()
    assert adata.uns[io.INPUT_UNS_KEY]["derived"] == {
        "sample": ["tumour_A.h5ad", "tumour_B.h5ad"],
        "patient": ["tumour_A.h5ad", "tumour_B.h5ad"],
    }


def test_single_file_is_one_slide_named_after_stem(tmp_path):
    adata = read_cohort(write(make_adata(), tmp_path / "slide7.h5ad"))
    assert set(adata.obs["sample"]) == {"slide7"}
    assert set(adata.obs["patient"]) == {"slide7"}


def test_existing_columns_are_kept_and_obs_columns_are_united(tmp_path):
    a = make_adata(sample=["s1"] * N, patient=[3] * N, response=["yes"] * N)
    b = make_adata(prefix="d", sample=["s2"] * N, patient=[4] * N)
    adata = read_cohort([write(a, tmp_path / "a.h5ad"), write(b, tmp_path / "b.h5ad")])

    assert set(adata.obs["sample"]) == {"s1", "s2"}
    assert set(adata.obs["patient"]) == {"3", "4"}  # stored as strings
    assert adata.obs["response"].isna().sum() == N  # absent from b.h5ad
    assert adata.uns[io.INPUT_UNS_KEY]["derived"] == {}


def test_zarr_store_and_sparse_x(tmp_path):
    adata = make_adata()
    adata.X = sp.csr_matrix(adata.X)
    path = write(adata, tmp_path / "store.zarr")

    out = read_cohort(path, features="pheno_expr")

    assert out.n_obs == N
    assert sp.issparse(out.X)  # never densified
    assert set(out.obs["sample"]) == {"store"}


def test_three_column_coordinates_keep_xy_with_a_note(tmp_path):
    adata = make_adata()
    adata.obsm["spatial"] = np.column_stack([adata.obsm["spatial"], np.ones(N)])
    out = read_cohort(write(adata, tmp_path / "3d.h5ad"))
    assert out.obsm["spatial"].shape == (N, 2)
    assert any("3 columns" in note for note in out.uns[io.INPUT_UNS_KEY]["notes"])


def test_input_files_are_not_modified(tmp_path):
    adata = make_adata()
    adata.obs_names = ["same"] * N  # forces in-memory renaming
    paths = [write(adata, tmp_path / "a.h5ad"), write(make_adata(), tmp_path / "b.zarr")]
    before = [digest(p) for p in paths]

    read_cohort(paths)

    assert [digest(p) for p in paths] == before


def test_read_cohort_result_can_be_saved(tmp_path):
    a = write(make_adata(flag=[True] * N), tmp_path / "a.h5ad")
    b = write(make_adata(prefix="d"), tmp_path / "b.h5ad")
    adata = read_cohort([a, b])
    adata.write_h5ad(tmp_path / "out.h5ad")  # union columns and uns must serialise
    assert ad.read_h5ad(tmp_path / "out.h5ad").n_obs == 2 * N


# ------------------------------------------------------------------------- bad inputs


def _set_obsm(path: Path, value: np.ndarray) -> None:
    # bypass AnnData's own checks to build a malformed file
    with h5py.File(path, "r+") as f:
        del f["obsm/spatial"]
        f["obsm/spatial"] = value
        f["obsm/spatial"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


def _nan_cells(adata):
    adata.obsm["spatial"][[2, 5], 0] = np.nan


def _with(*changes):
    """A builder: a valid AnnData, then each ``change(adata)`` applied in place."""

    def build():
        adata = make_adata()
        for change in changes:
            change(adata)
        return adata

    return build


def _drop_obsm(adata):
    del adata.obsm["spatial"]
    adata.obsm["X_pca"] = np.zeros((N, 2))


def _obs(column, values):
    def change(adata):
        adata.obs[column] = values

    return change


def _obsm(value):
    def change(adata):
        adata.obsm["spatial"] = value

    return change


def _object_x(adata):
    adata.X = np.full(adata.shape, "high", dtype=object)


def _nan_x(adata):
    adata.X[3, 1] = np.inf


def _drop_ct(adata):
    del adata.obs["cell_type"]


# (case id, builder, read_cohort kwargs, word the message must contain)
BAD_ADATAS = [
    ("zero-cells", lambda: make_adata()[:0].copy(), {}, "zero cells"),
    ("spatial-missing", _with(_drop_obsm), {}, "X_pca"),
    ("spatial-one-column", _with(_obsm(np.zeros((N, 1)))), {}, "1 column"),
    ("spatial-four-columns", _with(_obsm(np.zeros((N, 4)))), {}, "4 column"),
    ("spatial-3d-array", _with(_obsm(np.zeros((N, 2, 2)))), {}, "2-D"),
    ("spatial-strings", _with(_obsm(np.full((N, 2), "a"))), {}, "numeric"),
    ("spatial-nan", _with(_nan_cells), {}, "2 cells"),
    ("cell-type-missing", _with(_drop_ct), {}, "cell_type_key"),
    ("cell-type-all-nan", _with(_obs("cell_type", pd.Categorical([None] * N))), {}, "empty"),
    ("cell-type-some-nan", _with(_obs("cell_type", [None] + ["T"] * (N - 1))), {}, "1 of"),
    ("group-missing", _with(), {"group_keys": ["response"]}, "response"),
    ("named-sample-missing", _with(), {"sample_key": "slide"}, "slide"),
    ("named-patient-missing", _with(), {"patient_key": "donor"}, "donor"),
    ("sample-nan", _with(_obs("sample", [None] + ["s1"] * (N - 1))), {}, "slide id"),
    (
        "small-slide",
        _with(_obs("sample", ["big"] * (N - 5) + ["tiny"] * 5)),
        {"min_cells_per_sample": 10},
        "1 slide(s) in obs['sample'] have fewer than min_cells_per_sample=10 cells: 'tiny' (5",
    ),
    ("small-derived-slide", _with(), {"min_cells_per_sample": N + 1}, "min_cells_per_sample"),
    ("x-object", _with(_object_x), {"features": "expr"}, "numeric"),
    ("x-nan", _with(_nan_x), {"features": "pheno_expr"}, "c3"),
    ("x-no-columns", lambda: make_adata(genes=()), {"features": "expr"}, "zero columns"),
]


@pytest.mark.parametrize(
    ("build", "kwargs", "word"), [c[1:] for c in BAD_ADATAS], ids=[c[0] for c in BAD_ADATAS]
)
def test_bad_cohort_raises_naming_file_and_problem(tmp_path, build, kwargs, word):
    path = write(build(), tmp_path / "tumour.h5ad")
    with pytest.raises(CohortError) as info:
        read_cohort(path, **kwargs)
    message = str(info.value)
    assert "tumour.h5ad" in message
    assert word in message


def _write_bytes(data: bytes):
    def build(path: Path):
        path.write_bytes(data)

    return build


def _truncated(path: Path):
    write(make_adata(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _plain_hdf5(path: Path):
    with h5py.File(path, "w") as f:
        f["values"] = np.arange(3)


def _wrong_rows(path: Path):
    write(make_adata(), path)
    _set_obsm(path, np.zeros((N - 1, 2)))


# (case id, file name, writer, word the message must contain)
BAD_FILES = [
    ("missing", "tumour.h5ad", None, "does not exist"),
    ("empty", "tumour.h5ad", _write_bytes(b""), "empty"),
    ("garbage", "tumour.h5ad", _write_bytes(b"not hdf5 " * 50), "not an HDF5 file"),
    ("truncated", "tumour.h5ad", _truncated, "truncated"),
    ("hdf5-not-anndata", "tumour.h5ad", _plain_hdf5, "not an AnnData"),
    ("wrong-rows", "tumour.h5ad", _wrong_rows, "spatial"),
    ("extension", "tumour.csv", _write_bytes(b"x,y\n1,2\n"), "unsupported"),
    ("empty-zarr", "tumour.zarr", lambda p: p.mkdir(), "empty"),
    ("junk-zarr", "tumour.zarr", lambda p: (p.mkdir(), (p / "f").write_text("x")), "zarr"),
]


@pytest.mark.parametrize(
    ("name", "writer", "word"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_file_raises_naming_file_and_problem(tmp_path, name, writer, word):
    path = tmp_path / name
    if writer is not None:
        writer(path)
    with pytest.raises(CohortError) as info:
        read_cohort(path)
    message = str(info.value)
    assert name in message
    assert word in message
    if "readable" in message:
        assert "is not a readable" in message


def test_shared_slide_id_across_files_is_an_error(tmp_path):
    a = write(make_adata(sample=["s1"] * N), tmp_path / "a.h5ad")
    b = write(make_adata(sample=["s1"] * N), tmp_path / "b.h5ad")
    with pytest.raises(CohortError, match=r"b\.h5ad: slide 's1'.*also in .*a\.h5ad"):
        read_cohort([a, b])


def test_empty_panel_intersection_is_an_error_only_for_expression(tmp_path):
    a = write(make_adata(genes=("CD3", "CD8")), tmp_path / "a.h5ad")
    b = write(make_adata(genes=("PanCK", "CD68")), tmp_path / "b.h5ad")
    with pytest.raises(CohortError, match="a.h5ad.*b.h5ad.*intersection is empty"):
        read_cohort([a, b], features="expr")
    assert read_cohort([a, b], features="pheno").n_vars == 0


def test_no_paths_and_unknown_features():
    with pytest.raises(CohortError, match="no input files"):
        read_cohort([])
    with pytest.raises(ValueError, match="features"):
        validate_cohort(make_adata(), features="morphology")


def test_validate_cohort_in_memory_names_source():
    adata = make_adata()
    validate_cohort(adata, features="pheno_expr")  # valid: no sample column = one slide
    adata.obsm["spatial"][0, 1] = np.inf
    with pytest.raises(CohortError, match=r"^upload\.h5ad: obsm\['spatial'\].*\['c0'\]"):
        validate_cohort(adata, source="upload.h5ad")


def test_sparse_x_nan_is_found_without_densifying():
    adata = make_adata()
    x = sp.csr_matrix(adata.X)
    x.data[4] = np.nan  # row 1 (3 stored values per row)
    adata.X = x
    with pytest.raises(CohortError, match=r"1 cell \(first: \['c1'\]\)"):
        validate_cohort(adata, features="expr")
    adata.X = x.tocsc()
    with pytest.raises(CohortError, match=r"\['c1'\]"):
        validate_cohort(adata, features="expr")


# ------------------------------------------------------------------------- run folders


def run_parts(seed: int = 0) -> dict:
    adata = make_adata(sample=["s1"] * N)
    adata.obsm[Keys.EMBEDDING] = np.ones((N, 4), dtype=np.float32)
    return dict(
        adata=adata,
        state_dict={"lin.weight": torch.full((2, 3), float(seed)), "lin.bias": torch.zeros(2)},
        model_config={"in_channels": 3, "hidden_channels": (8, 8), "dropout": None},
        manifest={
            "seed": seed,
            "params": {"radius": np.float32(30.0), "walks": (10, 5), "device": torch.device("cpu")},
            "metrics": {"ari": None},
            "history": [{"epoch": 0, "loss": 1.5}],  # list of dicts: h5ad cannot hold it as is
            "path": Path("/data/x.h5ad"),
        },
    )


def test_write_and_load_run_round_trip(tmp_path):
    parts = run_parts(seed=3)
    run_dir = write_run(tmp_path / "runs" / "run1", **parts)

    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        [RUN_ADATA, RUN_WEIGHTS, RUN_MODEL_CONFIG, RUN_MANIFEST]
    )
    assert Keys.UNS not in parts["adata"].uns  # the caller's object is left as it was

    run = load_run(run_dir)
    assert run.path == run_dir
    assert torch.equal(run.state_dict["lin.weight"], torch.full((2, 3), 3.0))
    assert run.model_config == {"in_channels": 3, "hidden_channels": [8, 8], "dropout": None}
    assert run.manifest["params"] == {"radius": 30.0, "walks": [10, 5], "device": "cpu"}
    assert run.manifest["history"] == [{"epoch": 0, "loss": 1.5}]
    assert run.adata.uns[Keys.UNS] == run.manifest
    embedding = parts["adata"].obsm[Keys.EMBEDDING]
    np.testing.assert_array_equal(run.adata.obsm[Keys.EMBEDDING], embedding)

    # the h5ad alone also carries the manifest, for users who open it without load_run
    stored = ad.read_h5ad(run_dir / RUN_ADATA).uns[Keys.UNS]
    assert stored["seed"] == 3
    assert stored["params"]["walks"].tolist() == [10, 5]

    light = load_run(run_dir, with_weights=False)
    assert light.state_dict is None


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_write_run_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_run(tmp_path / "run1", **run_parts())
    assert not (tmp_path / "run1").exists()
    assert _leftovers(tmp_path) == []


def test_write_run_interrupt_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io.files, "move_into_place", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_run(tmp_path / "run1", **run_parts())
    assert list(tmp_path.iterdir()) == []


def test_write_run_rejects_weights_that_do_not_load_safely(tmp_path):
    parts = run_parts()
    parts["state_dict"] = {"weight": torch.zeros(2), "extra": object()}
    with pytest.raises(ValueError, match="weights_only=True"):
        write_run(tmp_path / "run1", **parts)
    assert list(tmp_path.iterdir()) == []


def test_write_run_overwrite(tmp_path):
    run_dir = write_run(tmp_path / "run1", **run_parts(seed=1))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_run(run_dir, **run_parts(seed=2))
    assert load_run(run_dir).manifest["seed"] == 1

    write_run(run_dir, overwrite=True, **run_parts(seed=2))
    assert load_run(run_dir).manifest["seed"] == 2
    assert _leftovers(tmp_path) == []


def test_failed_overwrite_keeps_the_old_run(tmp_path, monkeypatch):
    run_dir = write_run(tmp_path / "run1", **run_parts(seed=1))

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_run(run_dir, overwrite=True, **run_parts(seed=2))
    monkeypatch.undo()
    assert load_run(run_dir).manifest["seed"] == 1
    assert _leftovers(tmp_path) == []


def test_load_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        load_run(tmp_path / "nope")
    run_dir = write_run(tmp_path / "run1", **run_parts())
    (run_dir / RUN_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {RUN_WEIGHTS}"):
        load_run(run_dir)
    assert load_run(run_dir, with_weights=False).state_dict is None


def test_list_runs_ignores_hidden_and_incomplete_folders(tmp_path):
    for name in ("b_run", "a_run"):
        write_run(tmp_path / name, **run_parts())
    shutil.copytree(tmp_path / "a_run", tmp_path / ".a_run.123.tmp")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / RUN_ADATA).write_bytes(b"")
    (tmp_path / RUN_MANIFEST).write_text("{}")  # a stray file, not a folder

    assert list_runs(tmp_path) == [tmp_path / "a_run", tmp_path / "b_run"]
    assert list_runs(tmp_path / "missing") == []


def test_to_plain_rejects_unknown_types():
    assert io.to_plain({"a": (1, np.int64(2)), "b": {3}}) == {"a": [1, 2], "b": [3]}
    with pytest.raises(TypeError, match="object"):
        io.to_plain({"model": object()})


def test_run_keeps_its_graph_and_an_older_run_gets_it_rebuilt(small_run):
    from cellniche_core.keys import Keys

    run = load_run(small_run, with_weights=False)
    assert Keys.GRAPH in run.adata.obsp
    stored = run.graph()
    assert stored.n_nodes == run.adata.n_obs and stored.n_edges > 0
    assert stored.indptr.dtype == stored.indices.dtype == np.int64
    del run.adata.obsp[Keys.GRAPH]  # a run written before the graph was kept with it
    rebuilt = run.graph()
    np.testing.assert_array_equal(rebuilt.indptr, stored.indptr)
    np.testing.assert_array_equal(rebuilt.indices, stored.indices)


def test_run_keys_come_from_the_manifest(small_run):
    run = load_run(small_run, with_weights=False)
    keys = run.keys
    assert (keys.sample, keys.patient, keys.spatial, keys.niche) == ("sample", "patient", "spatial", "niche")
    assert keys.table_kwargs() == {"niche_key": "niche", "sample_key": "sample", "patient_key": "patient"}
    assert run.niche_names == {}


def test_text_in_pandas_string_dtype_is_written(tmp_path):
    """pandas 3 reads text into its string dtype, which anndata writes only when told to."""
    parts = run_parts()
    adata = parts["adata"]
    adata.obs["note"] = pd.array([f"n{i % 3}" for i in range(N)], dtype="string")
    adata.obs_names = pd.Index([f"cell{i}" for i in range(N)], dtype="string")
    run = load_run(write_run(tmp_path / "run1", **parts))
    assert run.adata.obs["note"].astype(str).tolist() == [f"n{i % 3}" for i in range(N)]
    assert run.adata.obs_names.tolist() == [f"cell{i}" for i in range(N)]
    out = io.write_h5ad_atomic(adata, tmp_path / "copy.h5ad")
    assert ad.read_h5ad(out).obs["note"].astype(str).tolist() == adata.obs["note"].astype(str).tolist()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_uns_mappings_keyed_by_labels_with_slashes_survive_the_file(tmp_path):
    import json
    import warnings

    from cellniche_core.io import write_h5ad

    adata = ad.AnnData(np.zeros((3, 2), dtype=np.float32))
    adata.uns["transfer"] = {"counts": {"L2/3": 5, "L4": 2}, "params": {"quantile": 0.99}, "rows": np.arange(3)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # anndata warns that "/" in keys will be refused
        write_h5ad(adata, tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad").uns["transfer"]
    # h5 would have split "L2/3" into a group "L2" holding "3"; it is stored as JSON text instead
    assert json.loads(back["counts"]) == {"L2/3": 5, "L4": 2}
    assert back["params"] == {"quantile": 0.99} and list(back["rows"]) == [0, 1, 2]
    assert adata.uns["transfer"]["counts"] == {"L2/3": 5, "L4": 2}  # the object written is unchanged
    view = adata[:2]
    write_h5ad(view, tmp_path / "v.h5ad")
    assert view.is_view and json.loads(ad.read_h5ad(tmp_path / "v.h5ad").uns["transfer"]["counts"])["L2/3"] == 5
