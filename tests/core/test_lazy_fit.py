"""Fitting one .h5ad file with its expression matrix left on disk (anndata's backed mode)."""

import hashlib

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from cellniche_core import features
from cellniche_core.io import CohortError, load_run, read_cohort
from cellniche_core.keys import Keys


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cohort(kind: str):
    from cellniche_core.simulate import simulate_cohort

    cohort = simulate_cohort(n_patients=2, cells_per_slide=500, seed=3)
    counts = np.asarray(cohort.X, dtype=np.float32)
    cohort.layers["counts"] = counts.copy()
    cohort.raw = cohort.copy()
    cohort.X = sp.csr_matrix(counts) if kind == "csr" else counts
    return cohort


@pytest.mark.parametrize("kind", ["dense", "csr"])
def test_fit_of_one_file_reads_x_from_disk_and_copies_it_into_the_run(kind, tmp_path):
    from cellniche_core.pipeline import RunOptions, fit_run
    from cellniche_core.train import TrainConfig

    cohort = _cohort(kind)
    path = tmp_path / "cohort.h5ad"
    cohort.write_h5ad(path)
    before = _sha(path)
    options = RunOptions(features="expr", n_niches=4, train=TrainConfig(n_steps=12, seed=0), device="cpu",
                         umap=False)
    run_dir = fit_run([path], tmp_path / "run", options)
    assert _sha(path) == before  # the input is only read
    # the same cohort from a .zarr store is read whole into memory: the run must not differ
    zpath = tmp_path / "cohort.zarr"
    ad.read_h5ad(path).write_zarr(zpath)
    whole = load_run(fit_run([zpath], tmp_path / "run_whole", options), with_weights=False).adata
    run = load_run(run_dir, with_weights=False).adata

    assert not run.isbacked and sp.issparse(run.X) == (kind == "csr")
    got = run.X.toarray() if sp.issparse(run.X) else run.X
    np.testing.assert_array_equal(got, np.asarray(cohort.layers["counts"]))
    assert run.X.dtype == np.float32
    np.testing.assert_array_equal(run.raw.X, cohort.raw.X)
    np.testing.assert_array_equal(run.layers["counts"], cohort.layers["counts"])
    np.testing.assert_allclose(run.obsm[Keys.EMBEDDING], whole.obsm[Keys.EMBEDDING], atol=1e-5)
    assert (run.obs[Keys.NICHE].astype(str) == whole.obs[Keys.NICHE].astype(str)).all()
    assert run.obs.columns.tolist() == whole.obs.columns.tolist()
    assert run.uns["cellniche"]["n_niches"] == 4


@pytest.mark.parametrize("kind", ["dense", "csr"])
def test_backed_read_still_refuses_non_finite_expression_and_closes_the_file(kind, tmp_path):
    cohort = _cohort(kind)
    x = cohort.X.copy()
    if sp.issparse(x):
        x.data[7] = np.nan
        bad_row = int(np.searchsorted(x.indptr, 7, side="right") - 1)
    else:
        x[321, 4] = np.inf
        bad_row = 321
    cohort.X = x
    path = tmp_path / "bad.h5ad"
    cohort.write_h5ad(path)
    with pytest.raises(CohortError, match=rf"X has .*first: \['{cohort.obs_names[bad_row]}'\]"):
        read_cohort(path, features="expr", backed=True)
    with h5py.File(path, "r+"):  # HDF5 refuses this while the failed read still holds the file
        pass


def test_backed_read_leaves_x_on_disk_for_one_h5ad_only(tmp_path):
    cohort = _cohort("dense")
    slides = [cohort[cohort.obs[Keys.SAMPLE] == s].copy() for s in cohort.obs[Keys.SAMPLE].unique()[:2]]
    paths = []
    for i, slide in enumerate(slides):
        paths.append(tmp_path / f"s{i}.h5ad")
        slide.write_h5ad(paths[-1])
    one = read_cohort(paths[0], features="expr", backed=True)
    try:
        assert one.isbacked and not isinstance(one.X, np.ndarray)
        np.testing.assert_array_equal(one.X[:5], slides[0].X[:5])
    finally:
        one.file.close()
    two = read_cohort(paths, features="expr", backed=True)  # concatenated: read whole
    assert not two.isbacked and two.n_obs == sum(s.n_obs for s in slides)
    zpath = tmp_path / "s0.zarr"
    slides[0].write_zarr(zpath)
    assert not read_cohort(zpath, features="expr", backed=True).isbacked


@pytest.mark.parametrize("kind", ["dense", "csr"])
def test_rows_and_totals_read_from_disk_in_blocks_match_memory(kind, tmp_path, monkeypatch):
    cohort = _cohort(kind)
    path = tmp_path / "c.h5ad"
    cohort.write_h5ad(path)
    monkeypatch.setattr(features, "CHUNK_BYTES", 8 * cohort.n_vars * 37)  # blocks of 37 rows
    rows = np.array([0, 36, 37, 38, 200, 511, cohort.n_obs - 1])
    dense = np.asarray(cohort.layers["counts"], dtype=np.float64)
    backed = ad.read_h5ad(path, backed="r")
    try:
        assert features.on_disk(backed.X) and not features.on_disk(cohort.X)
        np.testing.assert_array_equal(features._dense_rows(backed.X, rows), dense[rows])
        np.testing.assert_allclose(features.row_totals(backed.X), dense.sum(1), rtol=1e-6)
        spec = features.fit_features(backed, mode="expr", cell_type_key=Keys.CELL_TYPE)
    finally:
        backed.file.close()
    assert spec.to_dict() == features.fit_features(cohort, mode="expr", cell_type_key=Keys.CELL_TYPE).to_dict()
