import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from cellniche_core.keys import Keys
from cellniche_core.simulate import (
    CELL_TYPES,
    DEMO_NICHES,
    MARKERS,
    PLANTED,
    RESPONSE_KEY,
    planted_niches,
    simulate_cohort,
)


@pytest.fixture(scope="module")
def cohort():
    """The default demo cohort (6 patients, 8 slides, ~24k cells)."""
    return simulate_cohort(seed=0)


def _small(seed=3, **kwargs):
    return simulate_cohort(n_patients=2, cells_per_slide=800, seed=seed, **kwargs)


def _fractions(adata, by, of):
    """Row-normalised table: fraction of each `of` category within each `by` group."""
    return pd.crosstab(adata.obs[by], adata.obs[of], normalize="index")


def _same_niche_among_neighbours(adata, labels, k=10):
    """Per cell, the fraction of its k nearest neighbours (same slide) sharing its label."""
    out = np.empty(adata.n_obs)
    for sample in adata.obs[Keys.SAMPLE].cat.categories:
        rows = np.flatnonzero(adata.obs[Keys.SAMPLE].to_numpy() == sample)
        xy = adata.obsm[Keys.SPATIAL][rows]
        _, nbrs = cKDTree(xy).query(xy, k=k + 1)
        lab = labels[rows]
        out[rows] = (lab[nbrs[:, 1:]] == lab[:, None]).mean(axis=1)
    return out


def test_same_seed_same_cohort_other_seed_other_cohort():
    a, b, c = _small(seed=3), _small(seed=3), _small(seed=4)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.obsm[Keys.SPATIAL], b.obsm[Keys.SPATIAL])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert a.uns["simulation"] == b.uns["simulation"]

    assert a.n_obs != c.n_obs or not np.array_equal(a.obsm[Keys.SPATIAL],
                                                     c.obsm[Keys.SPATIAL])
    assert not np.array_equal(a.X[:100], c.X[:100])


def test_keys_dtypes_and_shapes(cohort):
    n = cohort.n_obs
    assert 20_000 <= n <= 28_000
    assert cohort.X.dtype == np.float32 and isinstance(cohort.X, np.ndarray)
    assert cohort.X.shape == (n, len(MARKERS))
    assert (cohort.X >= 0).all()
    assert list(cohort.var_names) == list(MARKERS)
    assert cohort.obs_names.is_unique

    xy = cohort.obsm[Keys.SPATIAL]
    assert xy.dtype == np.float32 and xy.shape == (n, 2)
    assert np.isfinite(xy).all()

    for key in (Keys.SAMPLE, Keys.PATIENT, RESPONSE_KEY, Keys.CELL_TYPE, Keys.TRUE_NICHE):
        assert isinstance(cohort.obs[key].dtype, pd.CategoricalDtype), key
    assert list(cohort.obs[Keys.TRUE_NICHE].cat.categories) == list(DEMO_NICHES)
    assert set(cohort.obs[Keys.CELL_TYPE].cat.categories) == set(CELL_TYPES)
    assert len(CELL_TYPES) == 14

    slides = cohort.obs.groupby(Keys.SAMPLE, observed=True)[Keys.PATIENT].first()
    assert list(slides.index) == ["P1_s1", "P1_s2", "P2_s1", "P2_s2",
                                  "P3_s1", "P4_s1", "P5_s1", "P6_s1"]
    assert slides.value_counts().to_dict() == {"P1": 2, "P2": 2, "P3": 1, "P4": 1,
                                               "P5": 1, "P6": 1}
    response = cohort.obs.groupby(Keys.PATIENT, observed=True)[RESPONSE_KEY].agg(
        lambda s: s.unique().tolist())
    assert all(len(v) == 1 for v in response)  # one response per patient
    assert sorted(v[0] for v in response) == ["non-responder"] * 3 + ["responder"] * 3

    sim = cohort.uns["simulation"]
    assert sim["params"]["seed"] == 0
    assert sim["params"]["slides_per_patient"] == [2, 2, 1, 1, 1, 1]
    assert set(sim["composition_percent"]) == set(DEMO_NICHES)
    assert sum(sim["cells_per_niche"].values()) == n
    assert sim["planted"]["patient_specific"] == PLANTED["patient_specific"]


def test_planted_niches_sit_exactly_where_planted(cohort):
    frac = _fractions(cohort, Keys.SAMPLE, Keys.TRUE_NICHE)
    slide_info = cohort.obs.groupby(Keys.SAMPLE, observed=True)[
        [Keys.PATIENT, RESPONSE_KEY]].first()

    for niche in PLANTED["conserved"]:
        assert (frac[niche] >= 0.03).all(), frac[niche]

    (niche, (key, value)), = PLANTED["group_linked"].items()
    in_group = slide_info[key] == value
    assert in_group.sum() == 4 and (~in_group).sum() == 4
    assert (frac.loc[in_group, niche] >= 0.03).all(), frac[niche]
    assert (frac.loc[~in_group, niche] == 0).all(), frac[niche]

    (niche, patient), = PLANTED["patient_specific"].items()
    own = slide_info[Keys.PATIENT] == patient
    assert (frac.loc[own, niche] >= 0.05).all(), frac[niche]
    assert (frac.loc[~own, niche] == 0).all(), frac[niche]


def test_niches_are_spatially_coherent_regions(cohort):
    labels = cohort.obs[Keys.TRUE_NICHE].cat.codes.to_numpy()
    same = _same_niche_among_neighbours(cohort, labels)
    assert same.mean() > 0.8
    per_niche = pd.Series(same).groupby(labels).mean()
    assert (per_niche > 0.6).all(), per_niche

    # The same score on scrambled labels is low, so the bar above means something.
    shuffled = np.random.default_rng(0).permutation(labels)
    assert _same_niche_among_neighbours(cohort, shuffled).mean() < 0.4


def test_cell_spacing_and_slide_size_are_tissue_like(cohort):
    for sample in cohort.obs[Keys.SAMPLE].cat.categories:
        xy = cohort.obsm[Keys.SPATIAL][(cohort.obs[Keys.SAMPLE] == sample).to_numpy()]
        dist, _ = cKDTree(xy).query(xy, k=2)
        assert 8.0 <= np.median(dist[:, 1]) <= 14.0
        assert dist[:, 1].min() >= 4.0  # no stacked nuclei
        extent = xy.max(axis=0) - xy.min(axis=0)
        assert (extent > 500).all() and (extent < 1100).all()


def test_compositions_differ_between_niches(cohort):
    frac = _fractions(cohort, Keys.TRUE_NICHE, Keys.CELL_TYPE)
    tumour = frac["Tumour"] + frac["Tumour (Ki67+)"]
    assert tumour["tumour_core"] > 0.7 > 0.1 > tumour["stroma"]
    assert tumour["tumour_core"] > tumour["immune_margin"] > tumour["stroma"]
    assert frac.loc["immune_margin", "CD8 T"] > 3 * max(frac.loc["tumour_core", "CD8 T"],
                                                      frac.loc["stroma", "CD8 T"])
    assert frac.loc["stroma", "CAF"] > 0.4
    assert frac.loc["vascular", "Endothelial"] > 3 * frac.loc["stroma", "Endothelial"]
    assert frac.loc["tls", "B cell"] > 0.3
    assert (frac["B cell"].drop("tls") < 0.05).all()
    assert frac.loc["necrotic", "Neutrophil"] > 0.3
    # every pair of niches is far apart in composition (total variation distance)
    tv = 0.5 * np.abs(frac.to_numpy()[:, None, :] - frac.to_numpy()[None]).sum(axis=-1)
    assert tv[~np.eye(len(tv), dtype=bool)].min() > 0.3


def test_markers_follow_cell_types(cohort):
    means = pd.DataFrame(cohort.X, columns=cohort.var_names).groupby(
        cohort.obs[Keys.CELL_TYPE].to_numpy()).mean()
    for cell_type, marker in [("Tumour", "PanCK"), ("CD8 T", "CD8"), ("B cell", "CD20"),
                              ("Treg", "FOXP3"), ("M2 macrophage", "CD163"),
                              ("Endothelial", "CD31"), ("Neutrophil", "MPO"),
                              ("NK cell", "CD56"), ("Plasma cell", "CD138")]:
        others = means[marker].drop(cell_type)
        assert means.loc[cell_type, marker] > 3 * others.median(), (cell_type, marker)
    assert means.loc["Tumour (Ki67+)", "Ki67"] > 4 * means.loc["Tumour", "Ki67"]


def test_slides_carry_their_own_batch_shift(cohort):
    # Same cell type on every slide, so differences come from the slide, not the mix.
    caf = (cohort.obs[Keys.CELL_TYPE] == "CAF").to_numpy()
    medians = pd.DataFrame(cohort.X[caf], columns=cohort.var_names).groupby(
        cohort.obs[Keys.SAMPLE].to_numpy()[caf]).median()
    spread = medians.std() / medians.mean()
    assert (spread > 0.08).mean() > 0.8, spread
    # two slides of one patient differ as well
    ratio = medians.loc["P1_s1", ["aSMA", "Vimentin", "Collagen"]] / medians.loc[
        "P1_s2", ["aSMA", "Vimentin", "Collagen"]]
    assert (np.abs(np.log(ratio)) > 0.02).any()


def test_small_slides_still_hold_every_niche():
    adata = simulate_cohort(n_patients=2, cells_per_slide=600, slides_per_patient=1,
                            seed=5)
    present = adata.obs.groupby(Keys.SAMPLE, observed=True)[Keys.TRUE_NICHE].agg(
        lambda s: set(s.unique()))
    conserved = set(planted_niches(2)["conserved"])
    assert present["P1_s1"] == conserved | {"tls"}
    assert present["P2_s1"] == conserved | {"necrotic"}


def test_arguments_shape_the_cohort():
    adata = simulate_cohort(n_patients=3, cells_per_slide=500, slides_per_patient=[1, 2, 1],
                            n_genes=12, seed=2)
    assert list(adata.var_names) == list(MARKERS[:12])
    assert list(adata.obs[Keys.SAMPLE].cat.categories) == ["P1_s1", "P2_s1", "P2_s2",
                                                           "P3_s1"]
    assert planted_niches(3)["patient_specific"] == {"necrotic": "P3"}
    assert set(adata.obs.loc[adata.obs[Keys.TRUE_NICHE] == "necrotic", Keys.PATIENT]) == {"P3"}

    with pytest.raises(ValueError):
        simulate_cohort(n_genes=len(MARKERS) + 1)
    with pytest.raises(ValueError):
        simulate_cohort(n_patients=2, slides_per_patient=[1, 1, 1])
    with pytest.raises(TypeError):
        simulate_cohort(2)  # keyword-only


def test_round_trips_through_h5ad(tmp_path):
    adata = _small()
    adata.write_h5ad(tmp_path / "demo.h5ad")
    back = ad.read_h5ad(tmp_path / "demo.h5ad")
    np.testing.assert_array_equal(back.X, adata.X)
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    np.testing.assert_equal(back.uns["simulation"], adata.uns["simulation"])
