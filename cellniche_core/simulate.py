"""Synthetic tumour cohort with planted niches: the embedded demo of CellNiche Explorer.

Each slide is a rectangular field of view (a CODEX/IMC region of interest, ~0.5 mm² for
3,000 cells) with a wavy tissue edge. Its niches are regions drawn on a 4 µm raster and
read off at every cell:

- ``tumour_core``: one or two irregular tumour masses (a thresholded sum of perturbed
  elliptical bumps and smooth noise);
- ``immune_margin``: the invasive margin, a band of ~80 µm (±20 %) straddling the tumour
  boundary, about a third inside the tumour and two thirds outside;
- ``stroma``: the rest of the tissue;
- ``vascular``: a curved vessel-rich stromal tract, 110-140 µm wide;
- ``tls``: round tertiary lymphoid structures (radius 75-115 µm) in the stroma, in
  responders' slides only;
- ``necrotic``: the necrotic centre of the tumour mass, behind a >= 60 µm viable rim,
  in one patient only.

Cells sit on a jittered, randomly rotated hexagonal lattice thinned at random (~5,500
cells / mm², 10 µm to the nearest neighbour, never closer than 5 µm; denser in TLS and
tumour, sparser in necrosis). Each cell draws its type from its niche's composition,
perturbed per patient. Intensities follow per-type marker profiles with log-normal
noise, a little lateral spillover from neighbours, a few niche effects (PD-L1 at the
margin, cleaved caspase-3 in necrosis) and a per-slide gain and offset.

Coordinates are in µm; nothing else in the output depends on that unit. Slides of
fewer than ~2,500 cells shrink their structures with them so that every niche still
fits; recovery benchmarks should use full-size slides.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from .keys import Keys
from .tissue import DEMO_NICHES, NECROTIC, simulate_slide

__all__ = [
    "CELL_TYPES",
    "COMPOSITION",
    "DEMO_NICHES",
    "MARKERS",
    "PLANTED",
    "RESPONSE_KEY",
    "planted_niches",
    "simulate_cohort",
]

RESPONSE_KEY = Keys.RESPONSE  # obs, "responder" / "non-responder" per patient
RESPONDER, NON_RESPONDER = "responder", "non-responder"

CELL_TYPES = (
    "Tumour",
    "Tumour (Ki67+)",
    "CAF",
    "Endothelial",
    "CD8 T",
    "CD4 T",
    "Treg",
    "B cell",
    "Plasma cell",
    "M1 macrophage",
    "M2 macrophage",
    "Dendritic cell",
    "Neutrophil",
    "NK cell",
)

# Percent of each niche's cells per cell type (rows sum to 100). Neighbouring niches
# share types (tumour cells in the margin, CAFs everywhere) but every row has its own
# signature: tumour / T cells + macrophages / CAFs / endothelium / B-cell follicle /
# neutrophils.
COMPOSITION: dict[str, dict[str, float]] = {
    "tumour_core": {
        "Tumour": 68, "Tumour (Ki67+)": 18, "CAF": 3, "Endothelial": 3, "CD8 T": 1.5,
        "CD4 T": 0.5, "Treg": 0.5, "B cell": 0, "Plasma cell": 0, "M1 macrophage": 2,
        "M2 macrophage": 2.5, "Dendritic cell": 0.5, "Neutrophil": 0.5, "NK cell": 0,
    },
    "immune_margin": {
        "Tumour": 15, "Tumour (Ki67+)": 4, "CAF": 6, "Endothelial": 3, "CD8 T": 22,
        "CD4 T": 14, "Treg": 6, "B cell": 2, "Plasma cell": 1, "M1 macrophage": 11,
        "M2 macrophage": 9, "Dendritic cell": 4, "Neutrophil": 2, "NK cell": 1,
    },
    "stroma": {
        "Tumour": 2, "Tumour (Ki67+)": 0.5, "CAF": 58, "Endothelial": 8, "CD8 T": 5,
        "CD4 T": 6, "Treg": 1.5, "B cell": 1.5, "Plasma cell": 4, "M1 macrophage": 2,
        "M2 macrophage": 8, "Dendritic cell": 1.5, "Neutrophil": 0.5, "NK cell": 1.5,
    },
    "vascular": {
        "Tumour": 1, "Tumour (Ki67+)": 0, "CAF": 14, "Endothelial": 45, "CD8 T": 4,
        "CD4 T": 4, "Treg": 1, "B cell": 1, "Plasma cell": 4, "M1 macrophage": 3,
        "M2 macrophage": 14, "Dendritic cell": 1, "Neutrophil": 6, "NK cell": 2,
    },
    "tls": {
        "Tumour": 0, "Tumour (Ki67+)": 0, "CAF": 4, "Endothelial": 5, "CD8 T": 7,
        "CD4 T": 22, "Treg": 4, "B cell": 45, "Plasma cell": 3, "M1 macrophage": 1,
        "M2 macrophage": 2, "Dendritic cell": 6, "Neutrophil": 0, "NK cell": 1,
    },
    "necrotic": {
        "Tumour": 20, "Tumour (Ki67+)": 1, "CAF": 2, "Endothelial": 1, "CD8 T": 2,
        "CD4 T": 1, "Treg": 0.5, "B cell": 0, "Plasma cell": 0, "M1 macrophage": 16,
        "M2 macrophage": 6, "Dendritic cell": 0.5, "Neutrophil": 50, "NK cell": 0,
    },
}


# Ordered so that the first 16 markers already separate every cell type; a shorter panel
# (n_genes < 30) keeps the head of this list.
MARKERS = (
    "PanCK", "Ki67", "CD45", "CD3", "CD8", "CD4", "FOXP3", "CD20", "CD138", "CD68",
    "CD163", "CD11c", "aSMA", "CD31", "MPO", "CD56", "Vimentin", "Collagen", "HLA-DR",
    "PD-1", "PD-L1", "GZMB", "E-cadherin", "CD79a", "CD206", "CD11b", "CD15", "CD21",
    "Cleaved-Casp3", "Histone-H3",
)

# Mean intensity of each type's expressed markers (IMC-like mean counts per cell);
# markers not listed sit at background.
_PROFILES: dict[str, dict[str, float]] = {
    "Tumour": {"PanCK": 6, "E-cadherin": 5, "Ki67": 0.5, "PD-L1": 1, "HLA-DR": 0.8,
               "Vimentin": 0.5, "Histone-H3": 4},
    "Tumour (Ki67+)": {"PanCK": 6, "E-cadherin": 4.5, "Ki67": 5, "PD-L1": 1,
                       "HLA-DR": 0.8, "Vimentin": 0.5, "Histone-H3": 6},
    "CAF": {"aSMA": 5, "Vimentin": 6, "Collagen": 4, "PD-L1": 0.4},
    "Endothelial": {"CD31": 6, "Vimentin": 3, "Collagen": 2, "HLA-DR": 1},
    "CD8 T": {"CD45": 5, "CD3": 5, "CD8": 5, "GZMB": 2, "PD-1": 1.5, "Ki67": 0.8},
    "CD4 T": {"CD45": 5, "CD3": 5, "CD4": 4, "PD-1": 1, "Ki67": 0.6},
    "Treg": {"CD45": 5, "CD3": 5, "CD4": 4, "FOXP3": 5, "PD-1": 0.8},
    "B cell": {"CD45": 5, "CD20": 6, "CD79a": 4, "HLA-DR": 5, "CD21": 2, "Ki67": 0.8},
    "Plasma cell": {"CD138": 6, "CD79a": 3, "CD45": 2},
    "M1 macrophage": {"CD45": 4, "CD68": 6, "CD11b": 3, "CD11c": 2, "HLA-DR": 5,
                      "PD-L1": 2},
    "M2 macrophage": {"CD45": 4, "CD68": 5, "CD163": 6, "CD206": 5, "CD11b": 2,
                      "HLA-DR": 2},
    "Dendritic cell": {"CD45": 4, "CD11c": 6, "HLA-DR": 6, "CD21": 1},
    "Neutrophil": {"CD45": 4, "MPO": 6, "CD15": 6, "CD11b": 5},
    "NK cell": {"CD45": 5, "CD56": 6, "GZMB": 4},
}
_NUCLEAR_MARKER = ("Histone-H3", 3.0)  # every nucleated cell stains
_BACKGROUND = 0.2

# Context effects on top of the cell-type profile: (niche, marker, fold change).
_NICHE_EFFECTS = (
    ("immune_margin", "PD-L1", 2.0),  # interferon-driven PD-L1 at the invasive front
    ("tls", "HLA-DR", 1.5),
    ("necrotic", "Cleaved-Casp3", 8.0),
)
_NECROTIC_DIMMING = 0.7  # dying cells stain weaker overall

_PATIENT_COMPOSITION_SD = 0.15  # log-normal spread of compositions between patients


def planted_niches(n_patients: int = 6) -> dict:
    """Which niches are shared, group-linked and patient-specific in a simulated cohort.

    Parameters
    ----------
    n_patients
        Number of patients in the cohort (the patient-specific niche goes to the last).

    Returns
    -------
    ``{"conserved": [...], "group_linked": {niche: (obs_key, value)},
    "patient_specific": {niche: patient}}``.
    """
    return {
        "conserved": ["tumour_core", "immune_margin", "stroma", "vascular"],
        "group_linked": {"tls": (RESPONSE_KEY, RESPONDER)},
        "patient_specific": {"necrotic": f"P{n_patients}"},
    }


#: Planted structure of the default cohort (6 patients): ``tumour_core``,
#: ``immune_margin``, ``stroma`` and ``vascular`` in every slide; ``tls`` in responders'
#: slides only (P1, P3, P5); ``necrotic`` in patient P6's slide only.
PLANTED = planted_niches(6)


def simulate_cohort(
    *,
    n_patients: int = 6,
    cells_per_slide: int = 3000,
    slides_per_patient: int | Sequence[int] | None = None,
    n_genes: int = 30,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate a spatial-proteomics tumour cohort with known niches.

    Parameters
    ----------
    n_patients
        Number of patients ``P1 .. Pn``. Odd-numbered patients are responders, even
        ones non-responders; the last patient carries the ``necrotic`` niche.
    cells_per_slide
        Mean number of cells per slide; each slide varies by up to ±15 %.
    slides_per_patient
        Slides per patient: an int for all, a sequence of length ``n_patients``, or
        ``None`` for two slides for P1 and P2 and one for the others.
    n_genes
        Number of panel markers (``var``), the first ``n_genes`` of :data:`MARKERS`
        (at most 30).
    seed
        Seed of the random generator; the same seed gives an identical cohort.

    Returns
    -------
    AnnData with
        ``X``: float32 (n_cells, n_genes), non-negative marker intensities;
        ``var_names``: marker names;
        ``obs_names``: ``"<sample>_c<index>"``;
        ``obsm["spatial"]``: float32 (n_cells, 2), coordinates in µm;
        ``obs["sample"]``: slide id, e.g. ``"P1_s1"`` (categorical);
        ``obs["patient"]``: ``"P1" .. "Pn"`` (categorical);
        ``obs["response"]``: ``"responder"`` / ``"non-responder"`` (categorical);
        ``obs["cell_type"]``: one of :data:`CELL_TYPES` (categorical);
        ``obs["true_niche"]``: one of :data:`DEMO_NICHES` (categorical);
        ``uns["simulation"]``: ``params`` (the resolved arguments, seed included),
        ``planted`` (as :func:`planted_niches`), ``composition_percent`` (niche ->
        cell type -> percent, before the per-patient perturbation) and
        ``cells_per_niche``.

    Examples
    --------
    >>> adata = simulate_cohort(n_patients=2, cells_per_slide=1000, seed=1)
    >>> adata.obs["true_niche"].cat.categories.tolist()[:3]
    ['tumour_core', 'immune_margin', 'stroma']
    """
    if n_patients < 1:
        raise ValueError("n_patients must be at least 1")
    if not 1 <= n_genes <= len(MARKERS):
        raise ValueError(f"n_genes must be between 1 and {len(MARKERS)}")
    if cells_per_slide < 200:
        raise ValueError("cells_per_slide must be at least 200 to hold every niche")
    slide_counts = _resolve_slides(slides_per_patient, n_patients)
    rng = np.random.default_rng(seed)

    markers = MARKERS[:n_genes]
    type_profiles = _type_profiles(markers)
    base_comp = np.array(
        [[COMPOSITION[niche][t] for t in CELL_TYPES] for niche in DEMO_NICHES]
    )
    base_comp = base_comp / base_comp.sum(axis=1, keepdims=True)

    slides = []  # one dict of per-cell arrays per slide
    for p, n_slides in enumerate(slide_counts, start=1):
        responder = p % 2 == 1
        # Patients differ a little in how their niches are populated.
        comp = base_comp * rng.lognormal(0.0, _PATIENT_COMPOSITION_SD, base_comp.shape)
        comp /= comp.sum(axis=1, keepdims=True)
        for s in range(1, n_slides + 1):
            n_cells = int(round(cells_per_slide * rng.uniform(0.85, 1.15)))
            xy, niche = simulate_slide(rng, n_cells, with_tls=responder,
                                        with_necrosis=p == n_patients)
            cell_type = _draw_types(rng, comp[niche])
            slides.append({
                "xy": xy, "niche": niche, "cell_type": cell_type,
                "X": _simulate_intensities(rng, xy, niche, cell_type, type_profiles,
                                           markers),
                "sample": np.full(n_cells, f"P{p}_s{s}"),
                "patient": np.full(n_cells, f"P{p}"),
                "response": np.full(n_cells, RESPONDER if responder else NON_RESPONDER),
                "index": np.arange(n_cells),
            })
    cells = {k: np.concatenate([slide[k] for slide in slides]) for k in slides[0]}

    obs_names = np.char.add(np.char.add(cells["sample"], "_c"),
                            cells["index"].astype(str))
    obs = pd.DataFrame(
        {
            Keys.SAMPLE: pd.Categorical(cells["sample"],
                                        categories=[sl["sample"][0] for sl in slides]),
            Keys.PATIENT: pd.Categorical(cells["patient"],
                                         categories=[f"P{p}" for p in
                                                     range(1, n_patients + 1)]),
            RESPONSE_KEY: pd.Categorical(cells["response"],
                                         categories=[RESPONDER, NON_RESPONDER]),
            Keys.CELL_TYPE: pd.Categorical.from_codes(cells["cell_type"],
                                                      categories=CELL_TYPES),
            Keys.TRUE_NICHE: pd.Categorical.from_codes(cells["niche"],
                                                       categories=DEMO_NICHES),
        },
        index=pd.Index(obs_names.tolist(), dtype=str),
    )
    adata = ad.AnnData(X=cells["X"].astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=list(markers)))
    adata.obsm[Keys.SPATIAL] = cells["xy"].astype(np.float32)

    planted = planted_niches(n_patients)
    counts = np.bincount(cells["niche"], minlength=len(DEMO_NICHES))
    adata.uns[Keys.SIMULATION_UNS] = {
        "params": {
            "n_patients": n_patients,
            "cells_per_slide": cells_per_slide,
            "slides_per_patient": [int(k) for k in slide_counts],
            "n_genes": n_genes,
            "seed": seed,
            "spatial_unit": "um",
            "patient_composition_lognormal_sd": _PATIENT_COMPOSITION_SD,
        },
        "planted": {
            "conserved": list(planted["conserved"]),
            "group_linked": {k: list(v) for k, v in planted["group_linked"].items()},
            "patient_specific": dict(planted["patient_specific"]),
        },
        "composition_percent": {k: dict(v) for k, v in COMPOSITION.items()},
        "cells_per_niche": {n: int(c) for n, c in zip(DEMO_NICHES, counts)},
    }
    return adata


def simulate_query_patient(*, patient: str = "P7", cells_per_slide: int = 3000, n_genes: int = 30,
                           seed: int = 0) -> ad.AnnData:
    """One slide of a new patient, for label transfer against a run of :func:`simulate_cohort`.

    Simulated like the cohort's patients (same cell types, markers and niches; a
    responder, so with TLS, and with the necrotic niche) but from its own random draws,
    so no cell of it is in the cohort. Keys as in :func:`simulate_cohort`; the slide is
    ``"<patient>_s1"``.
    """
    adata = simulate_cohort(n_patients=1, cells_per_slide=cells_per_slide, slides_per_patient=1,
                            n_genes=n_genes, seed=seed + 104_729)
    sample = f"{patient}_s1"
    adata.obs[Keys.PATIENT] = pd.Categorical([patient] * adata.n_obs)
    adata.obs[Keys.SAMPLE] = pd.Categorical([sample] * adata.n_obs)
    adata.obs_names = [name.replace("P1_s1", sample, 1) for name in adata.obs_names]
    adata.uns["simulation"]["params"]["query_patient"] = patient
    return adata


def _resolve_slides(slides_per_patient, n_patients: int) -> list[int]:
    if slides_per_patient is None:
        return [2 if p < 2 else 1 for p in range(n_patients)]
    if isinstance(slides_per_patient, (int, np.integer)):
        counts = [int(slides_per_patient)] * n_patients
    else:
        counts = [int(k) for k in slides_per_patient]
        if len(counts) != n_patients:
            raise ValueError("slides_per_patient needs one entry per patient")
    if min(counts) < 1:
        raise ValueError("every patient needs at least one slide")
    return counts


# ------------------------------------------------------------------- cells and markers


def _draw_types(rng: np.random.Generator, comp_per_cell: np.ndarray) -> np.ndarray:
    """Sample one type per cell from its row of (n_cells, n_types) probabilities."""
    cdf = np.cumsum(comp_per_cell, axis=1)
    u = rng.uniform(size=(len(cdf), 1)) * cdf[:, -1:]
    return np.minimum((u >= cdf).sum(axis=1), cdf.shape[1] - 1)


def _type_profiles(markers: Sequence[str]) -> np.ndarray:
    """(n_types, n_markers) mean intensities."""
    profiles = np.full((len(CELL_TYPES), len(markers)), _BACKGROUND)
    col = {m: j for j, m in enumerate(markers)}
    for i, cell_type in enumerate(CELL_TYPES):
        entries = {_NUCLEAR_MARKER[0]: _NUCLEAR_MARKER[1], **_PROFILES[cell_type]}
        for marker, level in entries.items():
            if marker in col:
                profiles[i, col[marker]] = level
    return profiles


def _simulate_intensities(rng: np.random.Generator, xy: np.ndarray, niche: np.ndarray,
                          cell_type: np.ndarray, profiles: np.ndarray,
                          markers: Sequence[str]) -> np.ndarray:
    """Per-cell intensities of one slide, (n_cells, n_markers), non-negative."""
    n, m = len(cell_type), profiles.shape[1]
    col = {mk: j for j, mk in enumerate(markers)}
    mean = profiles[cell_type].copy()
    for niche_name, marker, fold in _NICHE_EFFECTS:
        if marker in col:
            mean[niche == DEMO_NICHES.index(niche_name), col[marker]] *= fold
    mean[niche == NECROTIC] *= _NECROTIC_DIMMING

    size_factor = rng.lognormal(0.0, 0.2, size=(n, 1))  # cell size / segmentation
    signal = mean * size_factor * rng.lognormal(0.0, 0.35, size=(n, m))

    # Lateral spillover: segmentation picks up a little of the neighbours' signal.
    _, nbrs = cKDTree(xy).query(xy, k=7)
    signal = 0.92 * signal + 0.08 * signal[nbrs[:, 1:]].mean(axis=1)

    # Slide batch effect: per-marker gain (staining / acquisition) and offset.
    gain = rng.lognormal(0.0, 0.25, size=m)
    offset = rng.uniform(0.0, 0.15, size=m)
    observed = gain * signal + offset + rng.normal(0.0, 0.05, size=(n, m))
    return np.clip(observed, 0.0, None)
