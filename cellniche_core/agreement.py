"""How a transfer agrees with labels the query already has.

A query slide often carries an annotation of its own: an expert's regions, a pathologist's
marks, or the cell types of another pipeline. Scoring the transferred label against it is
how a reference is validated before it is trusted on slides without one. Labels are
compared as text, so the query's column must name its labels as the reference does.

A query label the reference lacks is *unseen*: no transfer can get it right, and the
useful question is how much of it was called ``unknown``. Cells without a label (NaN,
"NA", empty: :data:`~cellniche_core.labels.NO_LABEL`) are left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .io import CohortError
from .keys import UNKNOWN, Keys

_SHOW = 8
#: a column with more distinct values holds ids of cells, not an annotation
MAX_LABELS = 1000


def _truth(query, truth_key: str) -> pd.Series:
    """The query's own labels as text, NaN where it has none; refuses a missing or numeric column."""
    from .labels import label_text

    if truth_key not in query.obs.columns:
        raise CohortError(f"the query has no obs[{truth_key!r}] to compare with; its obs columns: "
                          f"{list(map(str, query.obs.columns))[:_SHOW]}")
    column = query.obs[truth_key]
    if pd.api.types.is_float_dtype(column) or pd.api.types.is_complex_dtype(column):
        raise CohortError(f"the query's obs[{truth_key!r}] holds measurements ({column.dtype}), not labels: "
                          "give a categorical or text column")
    return label_text(column)


def transfer_agreement(query, truth_key: str, *, transferred_key: str = Keys.TRANSFERRED) -> dict:
    """Score the transferred labels of an annotated query against its own ``obs[truth_key]``.

    Returns a dict:

    - ``n_labelled``: query cells with a label of their own;
    - ``n_known``, ``accuracy``, ``unknown_known``: the cells whose own label is one the
      reference knows, the share of them given that label (``unknown`` counts as wrong),
      and the share called ``unknown`` (NaN when there are none);
    - ``n_unseen``, ``unknown_unseen``, ``unseen_labels``: the cells of labels the
      reference lacks, and the share of them called ``unknown``;
    - ``per_label``: a DataFrame, one row per own label (the reference's, in its order;
      then the unseen, by size):
      ``label``, ``cells``, ``in_reference``, ``agreement`` (share given the same label;
      NaN when unseen), ``unknown`` (share called unknown), ``most_called``;
    - ``confusion``: counts, own labels (rows, as ``per_label``) × transferred labels.

    Raises :class:`~cellniche_core.io.CohortError` when the column is missing, holds
    numbers or more than :data:`MAX_LABELS` distinct values, or labels no cell.
    """
    if transferred_key not in query.obs.columns:
        raise CohortError(f"the query has no obs[{transferred_key!r}]: annotate it first")
    truth = _truth(query, truth_key)
    called_column = query.obs[transferred_key]
    if isinstance(called_column.dtype, pd.CategoricalDtype):
        reference = [str(c) for c in called_column.cat.categories if str(c) != UNKNOWN]
    else:
        reference = sorted(set(map(str, called_column.dropna().unique())) - {UNKNOWN})
    labelled = truth.notna().to_numpy()
    if not labelled.any():
        raise CohortError(f"no query cell has a label in obs[{truth_key!r}]")
    own = truth.to_numpy()[labelled].astype(str)
    n_distinct = len(set(own))
    if n_distinct > MAX_LABELS:
        raise CohortError(f"the query's obs[{truth_key!r}] holds {n_distinct:,} distinct values, more than "
                          f"{MAX_LABELS:,}: ids of cells, not labels to compare with")
    called = called_column.astype(str).to_numpy()[labelled]
    known = np.isin(own, reference)

    def share(mask: np.ndarray) -> float:
        return float(mask.mean()) if len(mask) else float("nan")

    confusion = pd.crosstab(pd.Series(own, name=truth_key), pd.Series(called, name=transferred_key))
    columns = [c for c in [*reference, UNKNOWN] if c in confusion.columns]
    # the reference's labels in its order (so that agreement is the diagonal), then the unseen by size
    rank = {lab: i for i, lab in enumerate(reference)}
    order = sorted(set(own), key=lambda lab: (rank.get(lab, len(rank)), -int((own == lab).sum()), lab))
    confusion = confusion.reindex(index=order, columns=columns, fill_value=0)
    rows = []
    for lab in order:
        mine = own == lab
        calls = called[mine]
        rows.append({"label": lab, "cells": int(mine.sum()), "in_reference": lab in reference,
                     "agreement": share(calls == lab) if lab in reference else float("nan"),
                     "unknown": share(calls == UNKNOWN),
                     "most_called": pd.Series(calls).value_counts().index[0]})
    unseen = sorted(map(str, set(own[~known])))
    return {"truth_key": truth_key, "n_labelled": int(labelled.sum()),
            "n_known": int(known.sum()), "accuracy": share(called[known] == own[known]),
            "unknown_known": share(called[known] == UNKNOWN),
            "n_unseen": int((~known).sum()), "unknown_unseen": share(called[~known] == UNKNOWN),
            "unseen_labels": unseen,
            "per_label": pd.DataFrame(rows, columns=["label", "cells", "in_reference", "agreement", "unknown",
                                                     "most_called"]),
            "confusion": confusion}


def agreement_summary(agreement: dict) -> dict:
    """The figures of :func:`transfer_agreement` without its tables (plain, for ``uns`` and JSON)."""
    return {k: v for k, v in agreement.items() if k not in ("per_label", "confusion")}


def describe_agreement(agreement: dict) -> list[str]:
    """One or two sentences on how the transfer agrees with the query's own labels."""
    key = agreement["truth_key"]
    lines = []
    if agreement["n_known"]:
        lines.append(f"the query's own obs[{key!r}] agrees with the transferred label for "
                     f"{agreement['accuracy']:.1%} of its {agreement['n_known']:,} cells of labels the reference "
                     f"knows ({agreement['unknown_known']:.1%} of them called unknown)")
    else:  # no name in common: every label would read as unseen, and none called unknown as a failure
        return [f"none of the query's own labels in obs[{key!r}] is a label of the reference, so there is no "
                "agreement to score; compare with a column that names its labels as the reference does, or "
                "transfer the reference's column of that name"]
    if agreement["n_unseen"]:
        names = ", ".join(repr(n) for n in agreement["unseen_labels"][:_SHOW])
        more = f" and {len(agreement['unseen_labels']) - _SHOW} more" if len(agreement["unseen_labels"]) > _SHOW else ""
        lines.append(f"{agreement['n_unseen']:,} cells of labels the reference lacks ({names}{more}): "
                     f"{agreement['unknown_unseen']:.1%} called unknown")
    return lines
