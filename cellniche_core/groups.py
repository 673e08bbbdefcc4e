"""Group differences between patients: which niche is more abundant in which group.

Patients are the observations (see :mod:`cellniche_core.tally`); a group key is a
patient-level ``obs`` column such as response or treatment arm.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from .keys import Keys
from .labels import label_codes
from .tally import bootstrap_means, check_bootstrap, percentile_interval, tally_niches, unique_pairs

__all__ = ["compare_groups", "patient_groups"]


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
    unit_codes, units = label_codes(obs[unit])
    group_codes, names = label_codes(obs[group_key])
    known = (group_codes >= 0) & (unit_codes >= 0)
    pairs = unique_pairs(unit_codes[known], group_codes[known])
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
    check_bootstrap(n_boot, ci)
    t = tally_niches(adata, niche_key, sample_key, patient_key)
    groups = patient_groups(adata, group_key, patient_key=patient_key,
                            sample_key=sample_key).reindex(t.patients)
    excluded = groups.index[groups.isna()].tolist()
    _, order = label_codes(adata.obs[group_key])
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
    boots = {g: bootstrap_means(values[g], n_boot, rng) for g in names}
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
        effect_low[k], effect_high[k] = percentile_interval(boots[hi][:, k] - rest_boot, ci)

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
