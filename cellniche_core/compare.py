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

The spatial side (per-cell mixing, border cells, niche adjacency) lives in
:mod:`cellniche_core.transitions` and is re-exported here; :func:`compare_run` computes
every table of a run folder and :func:`write_comparison` writes them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .keys import Keys
from .transitions import (_labels, niche_adjacency, summarise_adjacency,
                          summarise_transitions, transition_scores)

__all__ = [
    "CONSERVED_PATIENT_FRACTION",
    "DOMINANT_SHARE",
    "MIN_EVENNESS",
    "PATTERNS",
    "compare_groups",
    "compare_patients",
    "compare_run",
    "niche_abundance",
    "niche_adjacency",
    "patient_groups",
    "run_graph",
    "run_keys",
    "summarise_adjacency",
    "summarise_niches",
    "summarise_transitions",
    "transition_scores",
    "write_comparison",
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

_NO_SAMPLE = "all"  # slide name used when obs has no slide column


# ------------------------------------------------------------------------------ tallies


@dataclass(frozen=True)
class _Tally:
    """Cell counts of every niche in every slide, and which patient each slide belongs to."""

    niches: list[str]
    samples: list[str]
    patients: list[str]
    sample_patient: np.ndarray  # (S,) patient index of each slide
    counts: np.ndarray  # (S, K) cells of each niche in each slide

    @property
    def sample_cells(self) -> np.ndarray:
        return self.counts.sum(1)

    @property
    def patient_counts(self) -> np.ndarray:
        """(P, K) cells of each niche in each patient, slides pooled."""
        out = np.zeros((len(self.patients), len(self.niches)), dtype=np.int64)
        np.add.at(out, self.sample_patient, self.counts)
        return out

    def abundance(self) -> np.ndarray:
        """(P, K) share of each patient's cells in each niche."""
        counts = self.patient_counts
        return counts / counts.sum(1, keepdims=True)

    def present(self, min_fraction: float, min_cells: int) -> np.ndarray:
        """(S, K) bool: the niche holds at least max(min_cells, min_fraction x slide cells)."""
        needed = np.maximum(min_cells, min_fraction * self.sample_cells)
        return self.counts >= needed[:, None]

    def patient_present(self, min_fraction: float, min_cells: int) -> np.ndarray:
        """(P, K) bool: present in at least one of the patient's slides."""
        out = np.zeros((len(self.patients), len(self.niches)), dtype=bool)
        np.logical_or.at(out, self.sample_patient, self.present(min_fraction, min_cells))
        return out


def _check_presence_rule(min_fraction: float, min_cells: int) -> None:
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction must be between 0 and 1, got {min_fraction}")
    if min_cells < 1:
        raise ValueError(f"min_cells must be at least 1, got {min_cells}")


def _check_bootstrap(n_boot: int, ci: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be between 0 and 1, got {ci}")


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distinct (a, b) rows of two non-negative code arrays, sorted; (m, 2)."""
    width = int(b.max()) + 1 if len(b) else 1
    keys = np.unique(a.astype(np.int64) * width + b)
    return np.stack([keys // width, keys % width], 1)


def _tally(adata, niche_key: str, sample_key: str, patient_key: str) -> _Tally:
    obs = adata.obs
    if niche_key not in obs:
        raise ValueError(f"obs[{niche_key!r}] is missing: no niche labels to compare "
                         f"(obs columns: {list(map(str, obs.columns))})")
    niche, niches = _labels(obs[niche_key])
    if sample_key in obs:
        sample, samples = _labels(obs[sample_key])
    else:
        sample, samples = np.zeros(adata.n_obs, np.int64), [_NO_SAMPLE]
    if patient_key in obs:
        patient, patients = _labels(obs[patient_key])
    else:
        patient, patients = sample, list(samples)
    for codes, key in ((sample, sample_key), (patient, patient_key)):
        if (codes < 0).any():
            raise ValueError(f"obs[{key!r}] is missing (NaN) for {int((codes < 0).sum())} cells; "
                             "every cell needs a slide and a patient")
    keep = niche >= 0
    if not keep.any():
        raise ValueError(f"obs[{niche_key!r}] has no niche label on any cell")
    niche, sample, patient = niche[keep], sample[keep], patient[keep]

    k, s = len(niches), len(samples)
    counts = np.bincount(sample * k + niche, minlength=s * k).reshape(s, k)
    pairs = _unique_pairs(sample, patient)
    if len(np.unique(pairs[:, 0])) != len(pairs):
        mixed = samples[pairs[np.flatnonzero(np.diff(pairs[:, 0]) == 0)[0], 0]]
        raise ValueError(f"slide {mixed!r} (obs[{sample_key!r}]) holds cells of several patients "
                         f"(obs[{patient_key!r}]); a slide must belong to one patient")
    used = np.unique(sample)
    sample_patient = np.full(s, -1)
    sample_patient[pairs[:, 0]] = pairs[:, 1]
    # drop slides and patients left without labelled cells, renumber patients densely
    p_used = np.unique(sample_patient[used])
    p_index = np.full(len(patients), -1)
    p_index[p_used] = np.arange(len(p_used))
    return _Tally(niches=niches, samples=[samples[i] for i in used],
                  patients=[patients[i] for i in p_used],
                  sample_patient=p_index[sample_patient[used]], counts=counts[used])


def _normalised_entropy(weights: np.ndarray, axis: int = 0) -> np.ndarray:
    """Entropy of ``weights`` normalised along ``axis``, divided by log(length); NaN if length < 2."""
    n = weights.shape[axis]
    total = weights.sum(axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, weights / total, 0.0)
        h = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=axis)
    return h / np.log(n) if n > 1 else np.full(h.shape, np.nan)


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, K) means of (n, K) ``values`` over rows resampled with replacement."""
    n = len(values)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)  # (n_boot, n) draws per row
    return weights @ values / n


def _interval(boots: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    return low, high


# ------------------------------------------------------------------------- abundance


def niche_abundance(
    adata,
    *,
    by: str = "patient",
    niche_key: str = Keys.NICHE,
    sample_key: str = Keys.SAMPLE,
    patient_key: str = Keys.PATIENT,
    min_fraction: float = 0.01,
    min_cells: int = 10,
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
    _check_presence_rule(min_fraction, min_cells)
    t = _tally(adata, niche_key, sample_key, patient_key)
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


# --------------------------------------------------------------------------- patterns


def patient_groups(adata, group_key: str, *, patient_key: str = Keys.PATIENT,
                   sample_key: str = Keys.SAMPLE) -> pd.Series:
    """The group of each patient in ``obs[group_key]`` (a patient-level attribute).

    Returns
    -------
    Series
        Indexed by patient id (str), values are group names (str) or NaN for a patient
        whose cells have no group. Ordered by patient.

    Raises
    ------
    ValueError
        The column is missing (the message lists the patient-level columns that could
        serve instead) or differs between cells of one patient.
    """
    obs = adata.obs
    unit = patient_key if patient_key in obs else sample_key
    if group_key not in obs:
        options = _patient_level_columns(adata, unit, exclude=(patient_key, sample_key))
        raise ValueError(f"unknown group key {group_key!r}: obs has no such column; patient-level "
                         f"columns that can be compared: {options or 'none'} "
                         f"(all obs columns: {list(map(str, obs.columns))})")
    if unit not in obs:
        raise ValueError(f"obs has neither {patient_key!r} nor {sample_key!r}: the cohort is one "
                         "slide of one patient and has no groups to compare")
    unit_codes, units = _labels(obs[unit])
    group_codes, names = _labels(obs[group_key])
    known = (group_codes >= 0) & (unit_codes >= 0)
    pairs = _unique_pairs(unit_codes[known], group_codes[known])
    if len(np.unique(pairs[:, 0])) != len(pairs):
        which = pairs[np.flatnonzero(np.diff(pairs[:, 0]) == 0)[0], 0]
        seen = [names[g] for g in pairs[pairs[:, 0] == which, 1]]
        raise ValueError(f"obs[{group_key!r}] differs between cells of patient {units[which]!r} "
                         f"({', '.join(map(repr, seen[:5]))}); a group key must be one value per "
                         "patient, such as response or treatment arm")
    out = pd.Series(np.nan, index=pd.Index(units, name="patient"), dtype=object, name=group_key)
    out.iloc[pairs[:, 0]] = np.asarray(names, dtype=object)[pairs[:, 1]]
    return out


def _patient_level_columns(adata, unit: str, exclude=()) -> list[str]:
    """obs columns with one value per patient (candidate group keys), at most 20."""
    obs = adata.obs
    if unit not in obs:
        return []
    out = []
    for column in obs.columns:
        if column in exclude or column == unit or pd.api.types.is_float_dtype(obs[column]):
            continue
        per_unit = obs.groupby(unit, observed=True)[column].nunique(dropna=True)
        if (per_unit <= 1).all() and obs[column].nunique() > 1:
            out.append(str(column))
        if len(out) == 20:
            break
    return out


def summarise_niches(
    adata,
    *,
    niche_key: str = Keys.NICHE,
    sample_key: str = Keys.SAMPLE,
    patient_key: str = Keys.PATIENT,
    group_key: str | None = None,
    min_fraction: float = 0.01,
    min_cells: int = 10,
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
    _check_presence_rule(min_fraction, min_cells)
    _check_bootstrap(n_boot, ci)
    t = _tally(adata, niche_key, sample_key, patient_key)
    n_patients, n_niches = len(t.patients), len(t.niches)
    abundance = t.abundance()  # (P, K)
    present = t.present(min_fraction, min_cells)
    p_present = t.patient_present(min_fraction, min_cells)
    counts = t.counts

    if n_patients >= 2:
        boots = _bootstrap_means(abundance, n_boot, np.random.default_rng(seed))
        low, high = _interval(boots, ci)
    else:
        low = high = np.full(n_niches, np.nan)
    sample_abundance = counts / counts.sum(1, keepdims=True)
    evenness = _normalised_entropy(sample_abundance, axis=0) + 0.0  # no "-0.0"
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


# ---------------------------------------------------------------------- group tests


def compare_groups(
    adata,
    group_key: str,
    *,
    niche_key: str = Keys.NICHE,
    sample_key: str = Keys.SAMPLE,
    patient_key: str = Keys.PATIENT,
    reference: str | None = None,
    method: str = "welch",
    alpha: float = 0.05,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Does a niche's abundance differ between patient groups? One test per niche.

    The patient is the unit: each patient contributes one abundance per niche (its
    niche cells over its cells, slides pooled). Cells are never the unit — thousands of
    spatially correlated cells from one slide are not independent replicates, and a
    cell-level test would call almost any difference significant.

    Tests (``method``)
        ``"welch"`` (default): Welch's t-test (2 groups) or Welch's one-way ANOVA (3 or
        more) on the arcsine-square-root of the abundance, which stabilises the variance
        of proportions and needs no pseudocount for zeros. Assumes roughly normal
        transformed abundances within groups; unequal group variances are allowed. It can
        reach p < 0.05 with 3 patients per group, which rank tests cannot (the smallest
        exact two-sided Mann-Whitney p for 3 vs 3 is 0.1).
        ``"rank"``: Mann-Whitney U (2 groups) or Kruskal-Wallis (3 or more): no
        distributional assumption, but needs about 4-5 patients per group to be able to
        reach p < 0.05.
        A niche with no spread within any group has no estimable variance: p is NaN.
        q-values: Benjamini-Hochberg over the niches with a p-value
        (``scipy.stats.false_discovery_control``).

    Effect sizes
        Two groups: ``effect`` = mean abundance of the other group minus that of
        ``reference``; more groups: mean of the group with the highest mean minus the mean
        of all other patients (``comparison`` says which). ``log2_fold_change`` is the
        same ratio with a pseudocount of half a cell of the median patient.
        ``hedges_g``: standardised difference of the transformed abundances (same pair),
        small-sample corrected. ``effect_ci_low`` / ``effect_ci_high``: percentile
        interval of ``effect`` over ``n_boot`` bootstrap resamples of the patients within
        each group.

    Parameters
    ----------
    adata
        Annotated cohort; not modified.
    group_key
        Patient-level ``obs`` column (e.g. ``response``). Patients without a value are
        left out.
    niche_key, sample_key, patient_key
        ``obs`` columns of the niche label, slide id and patient id.
    reference
        Group the others are compared against; default the first group (category order
        for a categorical column, else natural sort), as in R's factor levels.
    method
        ``"welch"`` or ``"rank"`` (see above).
    alpha
        ``significant`` is ``q_value < alpha``.
    n_boot, ci, seed
        Bootstrap of the effect interval.

    Returns
    -------
    DataFrame
        One row per niche: ``niche``, ``test``, ``comparison``, ``enriched_in`` (group
        with the highest mean abundance), ``effect``, ``effect_ci_low``,
        ``effect_ci_high``, ``log2_fold_change``, ``hedges_g``, ``statistic``,
        ``p_value``, ``q_value``, ``significant``, then ``mean_<group>`` and
        ``n_patients_<group>`` for every group. ``attrs["excluded_patients"]`` lists
        patients left out for a missing group.

    Raises
    ------
    ValueError
        Unknown or not patient-level ``group_key``; fewer than 2 groups; a group with
        fewer than 2 patients; unknown ``reference`` or ``method``.
    """
    if method not in ("welch", "rank"):
        raise ValueError(f"method must be 'welch' or 'rank', got {method!r}")
    _check_bootstrap(n_boot, ci)
    t = _tally(adata, niche_key, sample_key, patient_key)
    groups = patient_groups(adata, group_key, patient_key=patient_key,
                            sample_key=sample_key).reindex(t.patients)
    excluded = groups.index[groups.isna()].tolist()
    _, order = _labels(adata.obs[group_key])
    names = [g for g in order if (groups == g).any()]
    sizes = {g: int((groups == g).sum()) for g in names}
    _check_groups(group_key, names, sizes, excluded)
    if reference is None:
        reference = names[0]
    elif str(reference) not in names:
        raise ValueError(f"reference group {reference!r} is not a group of obs[{group_key!r}] "
                         f"(groups: {names})")
    reference = str(reference)

    counts = t.patient_counts
    abundance = counts / counts.sum(1, keepdims=True)
    member = {g: np.flatnonzero((groups == g).to_numpy()) for g in names}
    values = {g: abundance[member[g]] for g in names}
    transformed = {g: np.arcsin(np.sqrt(v)) for g, v in values.items()}
    means = {g: v.mean(0) for g, v in values.items()}
    pseudo = 0.5 / float(np.median(counts.sum(1)))

    if len(names) == 2:
        other = names[1] if reference == names[0] else names[0]
        high_group = np.array([other] * len(t.niches), dtype=object)
        comparison = f"{other} - {reference}"
        test_name = "Welch t-test (arcsine-sqrt)" if method == "welch" else "Mann-Whitney U"
    else:
        top = np.argmax(np.stack([means[g] for g in names]), axis=0)
        high_group = np.asarray(names, dtype=object)[top]
        comparison = None
        test_name = "Welch ANOVA (arcsine-sqrt)" if method == "welch" else "Kruskal-Wallis"

    statistic, p_value = _group_test([transformed[g] for g in names], method)
    # compare each niche's chosen group with the rest (2 groups: other vs reference)
    effect, g_hedges, fold = (np.empty(len(t.niches)) for _ in range(3))
    rng = np.random.default_rng(seed)
    boots = {g: _bootstrap_means(values[g], n_boot, rng) for g in names}
    effect_low, effect_high = np.empty(len(t.niches)), np.empty(len(t.niches))
    for k in range(len(t.niches)):
        hi = high_group[k]
        rest = [reference] if len(names) == 2 else [g for g in names if g != hi]
        a = np.concatenate([values[g][:, k] for g in rest])
        effect[k] = means[hi][k] - a.mean()
        fold[k] = np.log2((means[hi][k] + pseudo) / (a.mean() + pseudo))
        g_hedges[k] = _hedges_g(transformed[hi][:, k],
                                np.concatenate([transformed[g][:, k] for g in rest]))
        rest_boot = sum(boots[g][:, k] * sizes[g] for g in rest) / sum(sizes[g] for g in rest)
        effect_low[k], effect_high[k] = _interval(boots[hi][:, k] - rest_boot, ci)

    q_value = np.full(len(p_value), np.nan)
    finite = np.isfinite(p_value)
    if finite.any():
        q_value[finite] = stats.false_discovery_control(p_value[finite], method="bh")
    table = pd.DataFrame({
        "niche": t.niches,
        "test": test_name,
        "comparison": comparison if comparison else [f"{g} - rest" for g in high_group],
        "enriched_in": np.asarray(names, dtype=object)[
            np.argmax(np.stack([means[g] for g in names]), axis=0)],
        "effect": effect,
        "effect_ci_low": effect_low,
        "effect_ci_high": effect_high,
        "log2_fold_change": fold,
        "hedges_g": g_hedges,
        "statistic": statistic,
        "p_value": p_value,
        "q_value": q_value,
        "significant": q_value < alpha,
    })
    for g in names:
        table[f"mean_{g}"] = means[g]
    for g in names:
        table[f"n_patients_{g}"] = sizes[g]
    table.attrs["excluded_patients"] = excluded
    table.attrs["group_key"] = group_key
    table.attrs["reference"] = reference
    return table


def _check_groups(group_key: str, names: list[str], sizes: dict, excluded: list[str]) -> None:
    note = f" ({len(excluded)} patient(s) without a value left out)" if excluded else ""
    if len(names) < 2:
        raise ValueError(
            f"group key {group_key!r} has {len(names)} group(s) among the patients "
            f"({', '.join(map(repr, names)) or 'none'}){note}; comparing groups needs at least 2")
    small = {g: n for g, n in sizes.items() if n < 2}
    if small:
        listed = ", ".join(f"{g!r}: {n} patient" for g, n in small.items())
        raise ValueError(
            f"group key {group_key!r}: every group needs at least 2 patients, but {listed}{note}. "
            "The test compares patients (each patient is one observation), and with a single "
            "patient a group's patient-to-patient variation cannot be estimated, so no p-value "
            "can be computed; group patients differently or collect more")


def _group_test(samples: list[np.ndarray], method: str) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised over niches (columns); NaN where no group has any spread."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "welch" and len(samples) == 2:
            res = stats.ttest_ind(samples[1], samples[0], equal_var=False, axis=0)
        elif method == "welch":
            res = stats.f_oneway(*samples, equal_var=False, axis=0)
        elif len(samples) == 2:
            res = stats.mannwhitneyu(samples[1], samples[0], alternative="two-sided", axis=0)
        else:
            res = stats.kruskal(*samples, axis=0)
    statistic = np.atleast_1d(np.asarray(res.statistic, dtype=float))
    p_value = np.atleast_1d(np.asarray(res.pvalue, dtype=float))
    if method == "welch":
        spread = sum(np.var(s, axis=0) for s in samples)
        no_spread = spread <= 1e-12 * np.maximum(sum(np.mean(s, 0) ** 2 for s in samples), 1e-300)
        statistic[no_spread] = np.nan
        p_value[no_spread] = np.nan
    return statistic, p_value


def _hedges_g(x: np.ndarray, y: np.ndarray) -> float:
    nx, ny = len(x), len(y)
    pooled = ((nx - 1) * x.var(ddof=1) + (ny - 1) * y.var(ddof=1)) / (nx + ny - 2)
    if not pooled > 0:
        return np.nan
    correction = 1 - 3 / (4 * (nx + ny) - 9)
    return float((x.mean() - y.mean()) / np.sqrt(pooled) * correction)


# --------------------------------------------------------------------- two patients


def compare_patients(
    adata,
    patient_a: str,
    patient_b: str,
    *,
    niche_key: str = Keys.NICHE,
    sample_key: str = Keys.SAMPLE,
    patient_key: str = Keys.PATIENT,
    min_fraction: float = 0.01,
    min_cells: int = 10,
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
        half a cell of the smaller patient), ``presence`` (``"both"``, ``"only <a>"``,
        ``"only <b>"`` or ``"neither"``), ``cohort_mean`` and ``cohort_sd`` (over patients).
        ``attrs`` holds ``patient_a``, ``patient_b`` and their cell counts.
    """
    _check_presence_rule(min_fraction, min_cells)
    t = _tally(adata, niche_key, sample_key, patient_key)
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
        "log2_ratio": np.log2((abundance[ib] + pseudo) / (abundance[ia] + pseudo)),
        "presence": presence,
        "cohort_mean": abundance.mean(0),
        "cohort_sd": abundance.std(0, ddof=1) if len(t.patients) > 1 else np.nan,
    })
    table.attrs.update(patient_a=a, patient_b=b, n_cells_a=int(totals[ia]),
                       n_cells_b=int(totals[ib]))
    return table


# ------------------------------------------------------------------------- run level


def run_keys(run) -> dict[str, str]:
    """The ``obs`` / ``obsm`` keys a run was made with (from its manifest)."""
    params = run.manifest.get("params", {})
    keys = params.get("keys", {})
    return {
        "niche_key": Keys.NICHE,
        "sample_key": keys.get("sample_key", Keys.SAMPLE),
        "patient_key": params.get("patient_key", Keys.PATIENT),
        "spatial_key": keys.get("spatial_key", Keys.SPATIAL),
    }


def run_graph(run):
    """Rebuild the spatial graph a run was trained on (same settings and keys)."""
    from .cellniche import InputKeys, spatial_graph
    from .graph import GraphSettings

    return spatial_graph(run.adata, GraphSettings(**run.model_config["graph"]),
                         InputKeys(**run.model_config["keys"]))


def compare_run(
    run,
    *,
    group_key: str | None = None,
    reference: str | None = None,
    niche_key: str | None = None,
    min_fraction: float = 0.01,
    min_cells: int = 10,
    border_threshold: float = 0.25,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Every comparison table of a loaded run (:class:`~cellniche_core.io.Run`).

    Keys come from the run's manifest and the graph is rebuilt with the run's settings.
    ``group_key`` is checked first, so a bad one fails before any other work.

    Returns
    -------
    dict
        ``niches`` (:func:`summarise_niches`), ``patient_abundance``
        (:func:`niche_abundance`), ``group_tests`` (:func:`compare_groups`, only with
        ``group_key``), ``adjacency`` (:func:`niche_adjacency`, per slide),
        ``adjacency_cohort`` (:func:`summarise_adjacency`) and ``transitions``
        (:func:`summarise_transitions`).
    """
    keys = run_keys(run)
    if niche_key is not None:
        keys["niche_key"] = niche_key
    adata = run.adata
    table_keys = {k: keys[k] for k in ("niche_key", "sample_key", "patient_key")}
    tables: dict[str, pd.DataFrame] = {}
    if group_key is not None:
        tables["group_tests"] = compare_groups(adata, group_key, reference=reference,
                                               n_boot=n_boot, seed=seed, **table_keys)
    tables["niches"] = summarise_niches(adata, group_key=group_key, min_fraction=min_fraction,
                                        min_cells=min_cells, n_boot=n_boot, seed=seed, **table_keys)
    tables["patient_abundance"] = niche_abundance(adata, min_fraction=min_fraction,
                                                  min_cells=min_cells, **table_keys)
    graph = run_graph(run)
    tables["adjacency"] = niche_adjacency(adata, graph, **table_keys)
    tables["adjacency_cohort"] = summarise_adjacency(tables["adjacency"])
    scores = transition_scores(adata, graph, niche_key=keys["niche_key"],
                               border_threshold=border_threshold)
    tables["transitions"] = summarise_transitions(scores)
    return {name: tables[name] for name in _TABLE_ORDER if name in tables}


_TABLE_ORDER = ("niches", "patient_abundance", "group_tests", "adjacency", "adjacency_cohort",
                "transitions")


def write_comparison(tables: Mapping[str, pd.DataFrame], out: str | os.PathLike, *,
                     params: Mapping | None = None, overwrite: bool = False) -> Path:
    """Write ``<name>.csv`` for every table (and ``compare.json``) into ``out``, atomically.

    The files are written into a hidden sibling folder that is then renamed to ``out``:
    ``out`` appears complete or not at all, and with ``overwrite`` an existing ``out`` is
    replaced as a whole (no stale table from an earlier comparison survives).

    Raises
    ------
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    """
    from .io import _move_into_place, to_plain

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
        summary = {"tables": [f"{name}.csv" for name in tables], "params": dict(params or {})}
        (tmp / "compare.json").write_text(json.dumps(to_plain(summary), indent=2))
        _move_into_place(tmp, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
