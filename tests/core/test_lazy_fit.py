"""The expression matrix left on disk: fitting one .h5ad file (anndata's backed mode), and a run
loaded without it (as the dashboard loads one), read where markers or a transfer need it."""

import hashlib

import anndata as ad
import h5py
import numpy as np
import pandas as pd
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


@pytest.fixture(scope="module", params=["dense", "csr"])
def fitted(request, tmp_path_factory):
    """An expression cohort in one .h5ad file, its run, and the run of the same cohort read
    whole from a .zarr store."""
    from cellniche_core.pipeline import RunOptions, fit_run
    from cellniche_core.train import TrainConfig

    root = tmp_path_factory.mktemp(f"lazyfit_{request.param}")
    cohort = _cohort(request.param)
    path = root / "cohort.h5ad"
    cohort.write_h5ad(path)
    before = _sha(path)
    options = RunOptions(features="expr", n_niches=4, train=TrainConfig(n_steps=12, seed=0), device="cpu",
                         umap=False)
    run_dir = fit_run([path], root / "run", options)
    assert _sha(path) == before  # the input is only read
    zpath = root / "cohort.zarr"
    ad.read_h5ad(path).write_zarr(zpath)
    return request.param, cohort, path, run_dir, fit_run([zpath], root / "run_whole", options)


def test_fit_of_one_file_reads_x_from_disk_and_copies_it_into_the_run(fitted):
    kind, cohort, _, run_dir, whole_dir = fitted
    whole = load_run(whole_dir, with_weights=False).adata  # read whole: the run must not differ
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


def test_a_run_loaded_without_expression_reads_it_from_disk_where_needed(fitted, monkeypatch):
    from cellniche_core.names import auto_names_for, named_run
    from cellniche_core.niches import marker_scores
    from cellniche_core.transfer import annotate_query

    _, cohort, path, run_dir, _ = fitted
    full, lazy = load_run(run_dir), load_run(run_dir, expression=False)
    assert full.adata.X is not None and lazy.adata.X is None and not lazy.adata.layers
    assert lazy.adata.obs.equals(full.adata.obs) and lazy.adata.var_names.equals(full.adata.var_names)
    monkeypatch.setattr(features, "CHUNK_BYTES", 8 * cohort.n_vars * 101)  # blocks of 101 rows
    key = full.keys.niche
    with lazy.expression() as X:
        assert features.on_disk(X) and X.shape == full.adata.shape
        pd.testing.assert_frame_equal(marker_scores(lazy.adata, niche_key=key, X=X),
                                      marker_scores(full.adata, niche_key=key), atol=1e-9)
        # a run without cell types is named by its markers, read from disk
        assert auto_names_for(lazy.adata, niche_key=key, cell_type_key=None, X=X) == auto_names_for(
            full.adata, niche_key=key, cell_type_key=None)
    with full.expression() as X:
        assert X is full.adata.X
    assert named_run(lazy).adata.obs[key].tolist() == named_run(full).adata.obs[key].tolist()
    query = [ad.read_h5ad(path)[:400].copy() for _ in range(2)]
    for run, q in zip((full, lazy), query):
        annotate_query(run, q, device="cpu")
    assert q.obs["transferred_label"].tolist() == query[0].obs["transferred_label"].tolist()
    np.testing.assert_array_equal(q.obs["transfer_distance"], query[0].obs["transfer_distance"])


def test_a_run_whose_file_is_gone_says_so_when_its_expression_is_needed(fitted, tmp_path):
    import shutil

    run_dir = shutil.copytree(fitted[3], tmp_path / "run")
    lazy = load_run(run_dir, with_weights=False, expression=False)
    cells = ad.read_h5ad(run_dir / "cohort.h5ad")
    (run_dir / "cohort.h5ad").unlink()
    with pytest.raises(FileNotFoundError, match="cohort file cannot be read any more.*deleted or replaced"):
        with lazy.expression():
            pass
    cells[:100].copy().write_h5ad(run_dir / "cohort.h5ad")  # another run's file in its place
    with pytest.raises(FileNotFoundError, match=r"X has shape \(100, .*replaced since it was opened"):
        with lazy.expression():
            pass


def test_marker_scores_read_by_blocks_are_the_z_scores_of_the_niche_means(monkeypatch):
    from cellniche_core.niches import marker_scores

    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, (230, 6)).astype(np.float32)
    x[:, 5] = 3.0  # a constant gene: z 0, not a division by zero
    niche = rng.choice(["A", "B", "C"], 230)
    adata = ad.AnnData(X=x, obs=pd.DataFrame({"niche": niche}, index=[f"c{i}" for i in range(230)]))
    monkeypatch.setattr(features, "CHUNK_BYTES", 8 * 6 * 17)  # blocks of 17 rows
    z = (x - x.mean(0, dtype=np.float64)) / np.where(x.std(0) > 0, x.std(0, dtype=np.float64), 1.0)
    expected = pd.DataFrame(z).groupby(niche).mean()
    for matrix in (x, sp.csr_matrix(x)):
        got = marker_scores(adata, niche_key="niche", X=matrix)
        np.testing.assert_allclose(got.loc[["A", "B", "C"]].to_numpy(), expected.loc[["A", "B", "C"]].to_numpy(),
                                   atol=1e-9)
    assert (got["5"] == 0).all()


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
