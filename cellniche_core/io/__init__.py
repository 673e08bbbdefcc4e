"""Read, validate and concatenate spatial cohorts; write and load run folders.

===============  ===========================================================
``read``         :func:`read_cohort`: files to one validated AnnData
``validate``     :func:`validate_cohort`: every check of an in-memory cohort
``runs``         :class:`Run`, :func:`write_run`, :func:`load_run`, :func:`list_runs`
``files``        atomic files and folders, :func:`safe_child` for user-given names
``plain``        :func:`to_plain`: manifests as plain JSON
``errors``       :class:`CohortError` and the phrases its messages share
===============  ===========================================================

Every problem with an input raises :class:`CohortError` whose message starts with the
file it comes from. A run folder is written atomically: it appears complete or not at all.
"""

from ..keys import INPUT_UNS_KEY
from .errors import CohortError
from .files import atomic_folder, check_output, safe_child, write_h5ad, write_h5ad_atomic
from .plain import to_plain
from .read import read_cohort, refuse_outside_data
from .runs import Run, list_runs, load_run, load_weights, write_run
from .validate import validate_cohort

__all__ = [
    "INPUT_UNS_KEY",
    "CohortError",
    "Run",
    "atomic_folder",
    "check_output",
    "list_runs",
    "load_run",
    "load_weights",
    "read_cohort",
    "refuse_outside_data",
    "safe_child",
    "to_plain",
    "validate_cohort",
    "write_h5ad",
    "write_h5ad_atomic",
    "write_run",
]
