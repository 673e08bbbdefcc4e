"""Encoder inputs from expression: counts normalised alike whatever the query's panel."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellniche_core.features import fit_features, make_features
from cellniche_core.io import CohortError


def _counts(n: int = 400, genes: int = 40, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 5.0, genes)  # some genes far more expressed than others
    depth = rng.uniform(0.5, 2.0, (n, 1))  # cells captured more or less deeply
    x = rng.poisson(rates * depth).astype(np.float32)
    return ad.AnnData(x, var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]),
                      obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))


def test_a_query_lacking_genes_is_normalised_by_its_whole_panel_total():
    cohort = _counts()
    spec = fit_features(cohort, mode="expr", cell_type_key="cell_type")
    assert spec.transform == "log1p_norm" and not spec.components  # 40 genes: inputs are the genes' z-scores
    assert len(spec.count_share) == 40 and sum(spec.count_share) == pytest.approx(1.0)
    full, report = make_features(cohort, spec, cell_type_key="cell_type")
    assert "panel_count_share" not in report

    kept = [f"g{i}" for i in range(0, 40, 2)]  # half the panel
    half, report = make_features(cohort[:, kept].copy(), spec, cell_type_key="cell_type")
    shared = np.arange(0, 40, 2)
    share = report["panel_count_share"]
    assert share == pytest.approx(float(np.sum(np.asarray(spec.count_share)[shared])))
    assert 0.2 < share < 0.8
    # the genes the query has read as in the whole panel: no shift of about log(1 / share)
    shift = float(np.mean(half[:, shared] - full[:, shared]))
    assert abs(shift) < 0.1
    assert np.corrcoef(half[:, shared].ravel(), full[:, shared].ravel())[0, 1] > 0.9
    assert np.all(half[:, 1::2] == 0)  # a missing gene sits at the training mean

    # without the share (a model fitted before it was recorded) the half panel reads high
    spec.count_share = []
    old, report = make_features(cohort[:, kept].copy(), spec, cell_type_key="cell_type")
    assert "panel_count_share" not in report
    assert float(np.mean(old[:, shared] - full[:, shared])) > 3 * abs(shift) + 0.2


def test_negative_values_against_a_counts_model_are_refused():
    cohort = _counts()
    spec = fit_features(cohort, mode="expr", cell_type_key="cell_type")
    scaled = cohort.copy()
    scaled.X = (scaled.X - scaled.X.mean(0)) / scaled.X.std(0)  # z-scored, as a scaled export is
    with pytest.raises(CohortError, match="X has negative values, but the model's expression inputs are counts"):
        make_features(scaled, spec, cell_type_key="cell_type")
    # intensities fitted as they are (no log of counts) may go negative
    scaled_spec = fit_features(scaled, mode="expr", cell_type_key="cell_type")
    assert scaled_spec.transform == "none" and not scaled_spec.count_share
    x, _ = make_features(scaled, scaled_spec, cell_type_key="cell_type")
    assert np.isfinite(x).all()


def test_a_panel_too_wide_for_the_fit_budget_is_fitted_on_its_most_variable_genes(monkeypatch, tmp_path):
    import scipy.sparse as sp

    from cellniche_core import features

    cohort = _counts(n=600, genes=300, seed=1)
    narrow = fit_features(cohort, mode="expr", cell_type_key="cell_type")
    assert narrow.pca_genes is None and len(narrow.components) == 50
    monkeypatch.setattr(features, "FIT_BYTES", 600 * 120 * 8)  # room for 120 of the 300 genes
    monkeypatch.setattr(features, "CHUNK_BYTES", 8 * 300 * 64)  # blocks of 64 rows
    cohort.X = sp.csr_matrix(cohort.X)
    wide = fit_features(cohort, mode="expr", cell_type_key="cell_type")
    assert len(wide.pca_genes) == 120 and np.shape(wide.components) == (50, 120)
    # the scaling of every gene and the count shares are those of the whole sample, read by blocks
    np.testing.assert_allclose(wide.mean, narrow.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(wide.scale, narrow.scale, rtol=1e-6)
    np.testing.assert_allclose(wide.count_share, narrow.count_share, rtol=1e-9)
    # the PCA's genes are the 120 of highest variance
    variance = np.square(np.asarray(narrow.scale))
    assert set(wide.pca_genes) == set(np.argsort(-variance)[:120].tolist())
    x, _ = make_features(cohort, wide, cell_type_key="cell_type")
    z = np.clip((features._transform(cohort.X, wide) - wide.mean) / wide.scale, -10, 10)
    np.testing.assert_allclose(x, z[:, wide.pca_genes] @ np.asarray(wide.components).T, rtol=1e-5, atol=1e-5)
    # the same from a dense X left on disk (a backed .h5ad), read a block of rows at a time
    cohort.X = cohort.X.toarray()
    cohort.write_h5ad(tmp_path / "c.h5ad")
    backed = ad.read_h5ad(tmp_path / "c.h5ad", backed="r")
    try:
        on_disk = fit_features(backed, mode="expr", cell_type_key="cell_type")
    finally:
        backed.file.close()
    assert on_disk.pca_genes == wide.pca_genes
    np.testing.assert_allclose(on_disk.components, wide.components, atol=1e-6)
    # a stored spec reads back, and one from before the field (no pca_genes) still loads
    assert features.FeatureSpec.from_dict(wide.to_dict()) == wide
    old = narrow.to_dict()
    assert "pca_genes" not in old  # written as before the field, so that older releases read it
    assert features.FeatureSpec.from_dict(old).pca_genes is None


def test_most_variable_takes_the_highest_variances_and_never_a_constant_gene():
    from cellniche_core.features import most_variable

    var = np.array([0.5, 0.0, 2.0, 0.1, 1.0])
    assert most_variable(var, 2).tolist() == [2, 4]
    assert most_variable(var, 4).tolist() == [0, 2, 3, 4]  # a constant gene only when too few vary


def test_a_wide_panel_with_fewer_varying_genes_than_components_still_fits(monkeypatch):
    import scipy.sparse as sp

    from cellniche_core import features

    x = np.zeros((300, 200), dtype=np.float32)
    x[:, :10] = np.random.default_rng(0).poisson(3.0, (300, 10))
    cohort = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(index=[f"c{i}" for i in range(300)]),
                        var=pd.DataFrame(index=[f"g{i}" for i in range(200)]))
    monkeypatch.setattr(features, "FIT_BYTES", 300 * 60 * 8)  # 60 of the 200 genes
    spec = fit_features(cohort, mode="expr", cell_type_key="cell_type")
    assert len(spec.pca_genes) == 60 and set(range(10)) <= set(spec.pca_genes)
    inputs, _ = make_features(cohort, spec, cell_type_key="cell_type")
    assert inputs.shape == (300, 50) and np.isfinite(inputs).all()
    assert spec.input_genes == [f"g{i}" for i in spec.pca_genes]
    assert "pca_genes" not in fit_features(cohort[:, :40].copy(), mode="expr", cell_type_key="cell_type").to_dict()


def test_the_inputs_are_described_in_words(monkeypatch):
    from cellniche_core import features
    from cellniche_core.features import describe_inputs

    cohort = _counts(n=300, genes=80)
    assert describe_inputs(fit_features(cohort, mode="expr", cell_type_key="cell_type")) == (
        "expression of 80 genes (counts: log of counts per cell, z-scored; 50 principal components of all)")
    monkeypatch.setattr(features, "FIT_BYTES", 300 * 60 * 8)
    assert describe_inputs(fit_features(cohort, mode="expr", cell_type_key="cell_type")).endswith(
        "50 principal components of the 60 most variable)")
    cohort.obs["cell_type"] = ["T", "B", "tumour"] * 100
    both = fit_features(cohort[:, :20].copy(), mode="pheno_expr", cell_type_key="cell_type")
    assert describe_inputs(both) == ("cell type (3 types) + expression of 20 genes "
                                     "(counts: log of counts per cell, z-scored)")


@pytest.mark.parametrize("wide", [False, True])
def test_a_constant_channel_is_not_scaled_by_its_rounding_error(wide, monkeypatch):
    from cellniche_core import features

    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 1.0, (500, 60))
    x[:, 3] = 2.7  # a channel constant in the reference, e.g. a stain that failed
    if wide:  # the spread summed by blocks, the PCA on the 55 most variable channels
        monkeypatch.setattr(features, "FIT_BYTES", 500 * 55 * 8)
    spec = fit_features(ad.AnnData(x), mode="expr", cell_type_key="cell_type")
    assert spec.transform == "none" and spec.scale[3] == 1.0
    assert (spec.pca_genes is not None) == wide and 3 not in (spec.pca_genes or [])
    query = x[:5].copy()
    query[:, 3] = 2.8
    one = features.FeatureSpec(mode="expr", genes=spec.genes, mean=spec.mean, scale=spec.scale)  # no PCA
    inputs, _ = make_features(ad.AnnData(query), one, cell_type_key="cell_type")
    np.testing.assert_allclose(inputs[:, 3], 0.1, atol=1e-6)  # 0.1 above the reference, not z = 10
