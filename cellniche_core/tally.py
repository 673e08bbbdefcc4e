"""Cell counts of every niche in every slide and patient, the presence rule, and the
patient-level bootstrap shared by the comparison tables.

The patient is the statistical unit: a patient's abundance of a niche is the share of its
cells (all of its slides pooled) in the niche, and every interval resamples patients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .labels import label_codes

#: presence rule: a niche is present in a slide when it holds at least
#: ``max(MIN_CELLS, MIN_FRACTION x the slide's cells)`` cells
MIN_FRACTION = 0.01
MIN_CELLS = 10
NO_SAMPLE = "all"  # slide name used when obs has no slide column


def presence_threshold(total_cells: np.ndarray, min_fraction: float = MIN_FRACTION,
                       min_cells: int = MIN_CELLS) -> np.ndarray:
    """Cells a niche needs in a slide of ``total_cells`` cells to be present there (the presence rule)."""
    return np.maximum(min_cells, min_fraction * np.asarray(total_cells, dtype=float))


@dataclass(frozen=True)
class NicheTally:
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
        return self.counts >= presence_threshold(self.sample_cells, min_fraction, min_cells)[:, None]

    def patient_present(self, min_fraction: float, min_cells: int) -> np.ndarray:
        """(P, K) bool: present in at least one of the patient's slides."""
        out = np.zeros((len(self.patients), len(self.niches)), dtype=bool)
        np.logical_or.at(out, self.sample_patient, self.present(min_fraction, min_cells))
        return out


def check_presence_rule(min_fraction: float, min_cells: int) -> None:
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction must be between 0 and 1, got {min_fraction}")
    if min_cells < 1:
        raise ValueError(f"min_cells must be at least 1, got {min_cells}")


def check_bootstrap(n_boot: int, ci: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be between 0 and 1, got {ci}")


def unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distinct (a, b) rows of two non-negative code arrays, sorted; (m, 2)."""
    width = int(b.max()) + 1 if len(b) else 1
    keys = np.unique(a.astype(np.int64) * width + b)
    return np.stack([keys // width, keys % width], 1)


def tally_niches(adata, niche_key: str, sample_key: str, patient_key: str) -> NicheTally:
    obs = adata.obs
    if niche_key not in obs:
        raise ValueError(f"obs[{niche_key!r}] is missing: no niche labels to compare "
                         f"(obs columns: {list(map(str, obs.columns))})")
    niche, niches = label_codes(obs[niche_key])
    if sample_key in obs:
        sample, samples = label_codes(obs[sample_key])
    else:
        sample, samples = np.zeros(adata.n_obs, np.int64), [NO_SAMPLE]
    if patient_key in obs:
        patient, patients = label_codes(obs[patient_key])
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
    pairs = unique_pairs(sample, patient)
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
    return NicheTally(niches=niches, samples=[samples[i] for i in used],
                  patients=[patients[i] for i in p_used],
                  sample_patient=p_index[sample_patient[used]], counts=counts[used])


def normalised_entropy(weights: np.ndarray, axis: int = 0) -> np.ndarray:
    """Entropy of ``weights`` normalised along ``axis``, divided by log(length); NaN if length < 2."""
    n = weights.shape[axis]
    total = weights.sum(axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, weights / total, 0.0)
        h = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=axis)
    return h / np.log(n) if n > 1 else np.full(h.shape, np.nan)


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, K) means of (n, K) ``values`` over rows resampled with replacement."""
    n = len(values)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)  # (n_boot, n) draws per row
    return weights @ values / n


def percentile_interval(boots: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    return low, high

