"""Embedding with a trained run from a backed .h5ad / .zarr, the expression read in chunks."""

import hashlib

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellniche_core.io import CohortError, load_run
from cellniche_core.keys import Keys
from cellniche_core.lazy import embed_file, open_backed
from cellniche_core.metrics import agreement


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def expr_run(tmp_path_factory):
    """A tiny expression-mode run and its cohort stored with a sparse X."""
    from cellniche_core.pipeline import RunOptions, fit_run
    from cellniche_core.simulate import simulate_cohort
    from cellniche_core.train import TrainConfig

    root = tmp_path_factory.mktemp("lazy")
    cohort = simulate_cohort(n_patients=2, cells_per_slide=600, seed=5)
    cohort.X = sp.csr_matrix(cohort.X)
    path = root / "cohort.h5ad"
    cohort.write_h5ad(path)
    options = RunOptions(features="expr", n_niches=4, train=TrainConfig(n_steps=15, seed=0), device="cpu",
                         umap=False)
    return fit_run([path], root / "run", options), path


def test_backed_h5ad_embeds_like_the_run_and_is_left_unchanged(small_run, small_cohort_path, tmp_path):
    before = _sha(small_cohort_path)
    out, report = embed_file(small_run, small_cohort_path, tmp_path / "embedded.h5ad", device="cpu")
    assert _sha(small_cohort_path) == before
    run = load_run(small_run, with_weights=False)
    got = ad.read_h5ad(out)
    assert got.X is None and got.n_obs == run.adata.n_obs
    np.testing.assert_allclose(got.obsm[Keys.EMBEDDING], run.adata.obsm[Keys.EMBEDDING], atol=1e-5)
    # nearest niche centre reproduces the run's clustering for nearly every cell
    assert agreement(run.adata.obs[Keys.NICHE], got.obs[Keys.NICHE])["ari"] > 0.8
    assert set(got.obs[Keys.NICHE].cat.categories) == set(run.adata.obs[Keys.NICHE].cat.categories)
    assert report["n_cells"] == got.n_obs and "embed" in report["timings_s"]


@pytest.mark.parametrize("store", ["h5ad", "zarr"])
def test_expression_is_read_in_chunks_from_sparse_and_zarr(expr_run, tmp_path, store):
    run_dir, path = expr_run
    if store == "zarr":
        zpath = tmp_path / "cohort.zarr"
        ad.read_h5ad(path).write_zarr(zpath)
        path = zpath
    with open_backed(path) as (cells, X):
        assert cells.X is None and X is not None and X.shape == (cells.n_obs, cells.n_vars)
        assert not isinstance(X, np.ndarray)  # still on disk
    out, _ = embed_file(run_dir, path, tmp_path / "out.h5ad", device="cpu", chunk_size=97)
    run = load_run(run_dir, with_weights=False)
    np.testing.assert_allclose(ad.read_h5ad(out).obsm[Keys.EMBEDDING], run.adata.obsm[Keys.EMBEDDING], atol=1e-5)


def test_bad_inputs_are_refused_before_anything_is_written(small_run, small_cohort_path, tmp_path):
    bad = ad.read_h5ad(small_cohort_path)
    del bad.obsm[Keys.SPATIAL]
    bad.write_h5ad(tmp_path / "nospatial.h5ad")
    with pytest.raises(CohortError, match=r"obsm\['spatial'\] is missing"):
        embed_file(small_run, tmp_path / "nospatial.h5ad", tmp_path / "o.h5ad")
    (tmp_path / "junk.h5ad").write_bytes(b"not hdf5 at all")
    with pytest.raises(CohortError, match="cannot be opened as an HDF5"):
        embed_file(small_run, tmp_path / "junk.h5ad", tmp_path / "o.h5ad")
    with pytest.raises(ValueError, match="would overwrite the input"):
        embed_file(small_run, small_cohort_path, small_cohort_path)
    assert not (tmp_path / "o.h5ad").exists()
    assert not list(tmp_path.glob(".o.h5ad*"))


def test_embed_command(small_run, small_cohort_path, tmp_path, capsys):
    from cellniche_core.cli import main

    out = tmp_path / "e.h5ad"
    assert main(["embed", str(small_run), str(small_cohort_path), "--out", str(out), "--chunk-size", "500",
                 "--device", "cpu", "--quiet"]) == 0
    assert ad.read_h5ad(out).obsm[Keys.EMBEDDING].shape[0] == ad.read_h5ad(small_cohort_path).n_obs
    assert capsys.readouterr().err == ""  # the same features as the run: nothing to report
    assert main(["embed", str(small_run), str(small_cohort_path), "--out", str(out), "--quiet"]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert main(["embed", str(small_run), str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "f.h5ad")]) == 2
    assert not (tmp_path / "f.h5ad").exists()

    # a slide with a cell type the run never saw: said on stderr even when quiet, as transfer does
    slide = ad.read_h5ad(small_cohort_path)
    first = slide.obs[Keys.CELL_TYPE].astype(str).iloc[0]
    slide.obs[Keys.CELL_TYPE] = slide.obs[Keys.CELL_TYPE].astype(str).replace(first, "Unseen cell")
    slide.write_h5ad(tmp_path / "renamed.h5ad")
    assert main(["embed", str(small_run), str(tmp_path / "renamed.h5ad"), "--out", str(tmp_path / "r.h5ad"),
                 "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "alignment: 1 cell type(s) not in the reference" in err and "Unseen cell" in err
