"""Cohort comparison of niches: conserved vs sample-specific, group differences, patient pairs.

Everything here takes an annotated cohort (``obs[niche_key]``, ``obs[sample_key]``,
``obs[patient_key]``), leaves it untouched and returns DataFrames. The patient is the
statistical unit throughout: a patient's abundance of a niche is the share of the
patient's cells (all of its slides pooled) that belong to the niche, and every interval
and test resamples or compares patients, never cells — cells of one slide are not
independent observations.

Cells without a niche label (NaN) are left out of every count. Where ``obs`` has no
patient column, each slide is its own patient; where it has no slide column, the cohort
is one slide.

Counts and the presence rule live in :mod:`cellniche_core.tally`, group tests in
:mod:`cellniche_core.groups` and the spatial side (per-cell mixing, border cells, niche
adjacency) in :mod:`cellniche_core.transitions`; all are re-exported here.
:func:`cellniche_core.run_compare.compare_run` computes every table of a run folder and
:func:`~cellniche_core.run_compare.write_comparison` writes them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .groups import compare_groups, patient_groups
from .keys import Keys
from .tally import (MIN_CELLS, MIN_FRACTION, bootstrap_means, check_bootstrap, check_presence_rule,
                    normalised_entropy, percentile_interval, tally_niches)
from .transitions import niche_adjacency, summarise_adjacency, summarise_transitions, transition_scores

__all__ = [
    "CONSERVED_PATIENT_FRACTION",
    "DOMINANT_SHARE",
    "MIN_CELLS",
    "MIN_EVENNESS",
    "MIN_FRACTION",
    "PATTERNS",
    "compare_groups",
    "compare_patients",
    "niche_abundance",
    "niche_adjacency",
    "patient_groups",
    "summarise_adjacency",
    "summarise_niches",
    "summarise_transitions",
    "transition_scores",
]

#: a niche present in at least this fraction of patients (rounded up) can be "conserved"
CONSERVED_PATIENT_FRACTION = 2 / 3
#: ... provided its abundance is spread this evenly across slides (normalised entropy)
MIN_EVENNESS = 0.5
#: a niche whose top patient holds this share of its size-adjusted abundance is "sample-specific"
DOMINANT_SHARE = 0.9
#: every value ``pattern`` takes
PATTERNS = ("conserved", "variable", "group-enriched", "partial", "sample-specific", "rare",
            "undetermined")


# ------------------------------------------------------------------------- abundance


def niche_abundance(
    adata,
    *,
    by: str = "patient",
    niche_key: str = Keys.NICHE,
    sample_key: str = Keys.SAMPLE,
    patient_key: str = Keys.PATIENT,
    min_fraction: float = MIN_FRACTION,
    min_cells: int = MIN_CELLS,
) -> pd.DataFrame:
    """Abundance of every niche in every patient (or slide), as a long table.

    Parameters
    ----------
    adata
        Annotated cohort; not modified.
    by
        ``"patient"`` (slides of a patient pooled) or ``"sample"`` (one row per slide).
    niche_key, sample_key, patient_key
        ``obs`` columns of the niche label, slide id and patient id.
    min_fraction, min_cells
        Presence rule, as in :func:`summarise_niches`.

    Returns
    -------
    DataFrame
        One row per (patient, niche) — or (sample, patient, niche) — with ``n_cells``
        (cells of the niche), ``total_cells`` (labelled cells of the patient / slide),
        ``abundance`` (``n_cells / total_cells``) and ``present`` (bool; for a patient:
        present in at least one of its slides).
    """
    if by not in ("patient", "sample"):
        raise ValueError(f"by must be 'patient' or 'sample', got {by!r}")
    check_presence_rule(min_fraction, min_cells)
    t = tally_niches(adata, niche_key, sample_key, patient_key)
    k = len(t.niches)
    if by == "patient":
        counts = t.patient_counts
        present = t.patient_present(min_fraction, min_cells)
        index = {"patient": np.repeat(t.patients, k)}
    else:
        counts = t.counts
        present = t.present(min_fraction, min_cells)
        index = {"sample": np.repeat(t.samples, k),
                 "patient": np.repeat(np.asarray(t.patients, dtype=object)[t.sample_patient], k)}
    totals = counts.sum(1)
    return pd.DataFrame({
        **index,
        "niche": np.tile(t.niches, len(counts)),
        "n_cells": counts.ravel(),
        "total_cells": np.repeat(totals, k),
        "abundance": (counts / totals[:, None]).ravel(),
        "present": present.ravel(),
    })



def summarise_niches(
    adata,
    *,
    niche_key: str = Keys.NICHE,
    sample_key: str = Keys.SAMPLE,
    patient_key: str = Keys.PATIENT,
    group_key: str | None = None,
    min_fraction: float = MIN_FRACTION,
    min_cells: int = MIN_CELLS,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Conserved vs sample-specific: one row per niche with its spread over the cohort.

    Presence rule
        A niche is *present in a slide* when it holds at least
        ``max(min_cells, min_fraction x the slide's cells)`` cells (default 10 cells and
        1 %): a stray handful of cells in a big slide is label noise, not a niche. It is
        present in a patient when present in at least one of the patient's slides. (A rule
        relative to the niche's cohort share would call noise "present" for rare niches.)

    Pattern rules (first match wins; P = patients in the cohort)
        ``undetermined``: the cohort has one patient — there is nothing to compare.
        ``rare``: present in no slide.
        ``sample-specific``: present in exactly one patient, or one patient holds
        ``DOMINANT_SHARE`` (90 %) or more of its size-adjusted abundance
        (``dominant_patient_share``) — essentially one patient's tumour.
        ``conserved``: present in at least ``ceil(2/3 x P)`` patients and ``evenness`` at
        least ``MIN_EVENNESS`` (0.5). With 2 patients that means both, with 3 two of them.
        ``variable``: present in that many patients but with uneven abundance.
        ``group-enriched`` (only with ``group_key``): present in two or more patients,
        all of them in one group.
        ``partial``: present in two or more patients, but fewer than ``ceil(2/3 x P)``.

    Parameters
    ----------
    adata
        Annotated cohort; not modified.
    niche_key, sample_key, patient_key
        ``obs`` columns of the niche label, slide id and patient id.
    group_key
        Optional patient-level ``obs`` column (e.g. ``response``) enabling the
        ``group-enriched`` pattern; patients without a group are ignored for it.
    min_fraction, min_cells
        Presence threshold (see above).
    n_boot, ci
        Patient-level bootstrap: ``n_boot`` resamples of the patients with replacement,
        ``ci`` percentile interval of ``abundance``. NaN with fewer than 2 patients.
    seed
        Seed of the bootstrap.

    Returns
    -------
    DataFrame
        One row per niche, in label order:
        ``niche``; ``n_cells``; ``share`` (of all labelled cells); ``abundance`` (mean
        over patients of the patient's abundance, each patient weighted equally) with
        ``abundance_ci_low`` / ``abundance_ci_high``; ``n_samples_present`` /
        ``n_samples``; ``n_patients_present`` / ``n_patients``; ``patients_present``
        (";"-joined ids); ``evenness`` (normalised entropy of the niche's abundance
        across slides: 1 = same abundance in every slide, 0 = one slide; NaN for a
        one-slide cohort); ``dominant_sample`` and ``dominant_sample_share`` (share of the
        niche's cells in that slide); ``dominant_patient`` and ``dominant_patient_share``
        (the patient's abundance over the sum of all patients' abundances, i.e. its share
        of the niche's cells had every patient as many cells); ``pattern``.
    """
    check_presence_rule(min_fraction, min_cells)
    check_bootstrap(n_boot, ci)
    t = tally_niches(adata, niche_key, sample_key, patient_key)
    n_patients, n_niches = len(t.patients), len(t.niches)
    abundance = t.abundance()  # (P, K)
    present = t.present(min_fraction, min_cells)
    p_present = t.patient_present(min_fraction, min_cells)
    counts = t.counts

    if n_patients >= 2:
        boots = bootstrap_means(abundance, n_boot, np.random.default_rng(seed))
        low, high = percentile_interval(boots, ci)
    else:
        low = high = np.full(n_niches, np.nan)
    sample_abundance = counts / counts.sum(1, keepdims=True)
    evenness = normalised_entropy(sample_abundance, axis=0) + 0.0  # no "-0.0"
    top_sample = counts.argmax(0)
    top_patient = abundance.argmax(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dominant_patient_share = abundance.max(0) / abundance.sum(0)
    patients = np.asarray(t.patients, dtype=object)

    groups = None
    if group_key is not None:
        groups = patient_groups(adata, group_key, patient_key=patient_key,
                                sample_key=sample_key).reindex(t.patients).to_numpy()

    n_conserved = math.ceil(CONSERVED_PATIENT_FRACTION * n_patients)
    rows = []
    for k, niche in enumerate(t.niches):
        n_in = int(p_present[:, k].sum())
        rows.append({
            "niche": niche,
            "n_cells": int(counts[:, k].sum()),
            "share": counts[:, k].sum() / counts.sum(),
            "abundance": abundance[:, k].mean(),
            "abundance_ci_low": low[k],
            "abundance_ci_high": high[k],
            "n_samples_present": int(present[:, k].sum()),
            "n_samples": len(t.samples),
            "n_patients_present": n_in,
            "n_patients": n_patients,
            "patients_present": ";".join(patients[p_present[:, k]]),
            "evenness": evenness[k],
            "dominant_sample": t.samples[top_sample[k]],
            "dominant_sample_share": counts[top_sample[k], k] / counts[:, k].sum(),
            "dominant_patient": t.patients[top_patient[k]],
            "dominant_patient_share": dominant_patient_share[k],
            "pattern": _pattern(n_in, n_patients, n_conserved, evenness[k],
                                dominant_patient_share[k],
                                None if groups is None else groups[p_present[:, k]]),
        })
    return pd.DataFrame(rows)


def _pattern(n_in: int, n_patients: int, n_conserved: int, evenness: float, dominant: float,
             groups_present: np.ndarray | None) -> str:
    if n_patients < 2:
        return "undetermined"
    if n_in == 0:
        return "rare"
    if n_in == 1 or dominant >= DOMINANT_SHARE:
        return "sample-specific"
    if n_in >= n_conserved:
        # a one-slide cohort (evenness NaN) cannot have 2 patients, so evenness is defined here
        return "conserved" if evenness >= MIN_EVENNESS else "variable"
    if groups_present is not None:
        known = pd.Series(groups_present).dropna()
        if len(known) >= 2 and known.nunique() == 1 and len(known) == len(groups_present):
            return "group-enriched"
    return "partial"


# --------------------------------------------------------------------- two patients


def compare_patients(
    adata,
    patient_a: str,
    patient_b: str,
    *,
    niche_key: str = Keys.NICHE,
    sample_key: str = Keys.SAMPLE,
    patient_key: str = Keys.PATIENT,
    min_fraction: float = MIN_FRACTION,
    min_cells: int = MIN_CELLS,
) -> pd.DataFrame:
    """Niche abundances of two patients side by side.

    No p-value is given: with one patient on each side the only replicates are cells,
    which are not independent. ``cohort_sd`` (the spread of the niche's abundance over
    all patients) tells whether a difference is large for this cohort.

    Parameters
    ----------
    adata
        Annotated cohort; not modified.
    patient_a, patient_b
        Patient ids (``obs[patient_key]``; slide ids when there is no patient column).
    niche_key, sample_key, patient_key
        ``obs`` columns.
    min_fraction, min_cells
        Presence rule, as in :func:`summarise_niches`.

    Returns
    -------
    DataFrame
        One row per niche: ``niche``, ``n_cells_a``, ``n_cells_b``, ``abundance_a``,
        ``abundance_b``, ``difference`` (b - a), ``log2_ratio`` (b over a, pseudocount of
        half a cell of the smaller patient; NaN where the niche is present in neither, as
        the ratio of a few stray cells, 0 against 2 read as a 5-fold change, would mislead),
        ``presence`` (``"both"``, ``"only <a>"``,
        ``"only <b>"`` or ``"neither"``), ``cohort_mean`` and ``cohort_sd`` (over patients).
        ``attrs`` holds ``patient_a``, ``patient_b`` and their cell counts.
    """
    check_presence_rule(min_fraction, min_cells)
    t = tally_niches(adata, niche_key, sample_key, patient_key)
    a, b = str(patient_a), str(patient_b)
    for p in (a, b):
        if p not in t.patients:
            raise ValueError(f"unknown patient {p!r} (patients: {t.patients})")
    if a == b:
        raise ValueError(f"pick two different patients (both are {a!r})")
    ia, ib = t.patients.index(a), t.patients.index(b)
    counts = t.patient_counts
    abundance = t.abundance()
    present = t.patient_present(min_fraction, min_cells)
    totals = counts.sum(1)
    pseudo = 0.5 / min(totals[ia], totals[ib])
    presence = np.where(present[ia] & present[ib], "both",
                        np.where(present[ia], f"only {a}", np.where(present[ib], f"only {b}", "neither")))
    table = pd.DataFrame({
        "niche": t.niches,
        "n_cells_a": counts[ia],
        "n_cells_b": counts[ib],
        "abundance_a": abundance[ia],
        "abundance_b": abundance[ib],
        "difference": abundance[ib] - abundance[ia],
        "log2_ratio": np.where(present[ia] | present[ib],
                               np.log2((abundance[ib] + pseudo) / (abundance[ia] + pseudo)), np.nan),
        "presence": presence,
        "cohort_mean": abundance.mean(0),
        "cohort_sd": abundance.std(0, ddof=1) if len(t.patients) > 1 else np.nan,
    })
    table.attrs.update(patient_a=a, patient_b=b, n_cells_a=int(totals[ia]),
                       n_cells_b=int(totals[ib]))
    return table
