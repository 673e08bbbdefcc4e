"""The view a user is looking at, mirrored in the URL so that a copied link reopens it.

Each view value (run, page, slides, colour, highlighted niche) is kept under
``st.session_state["_view"]``, which outlives page switches (widget state does not), and
written to ``st.query_params`` on every run. The query string a session was opened with
is read once: each value is checked against what the run offers, and an unknown one
falls back to its default with an ``st.warning`` — a query value is only ever compared
with listed options, never used to build a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import streamlit as st

from cellniche_core.io import Run
from cellniche_core.keys import RunKeys
from cellniche_core.names import niche_id

from . import state
from .startup import enter_page  # noqa: F401  (pages call view.enter_page)
from .state import RunRef

_STATE = "_view"
_INITIAL = "_view_initial_query"
_INITIAL_PAGE = "_view_initial_page"
_PAGE = "_view_page"
_RUNS = "_view_runs"
_WARNINGS = "_view_warning_box"
_PENDING = "_view_pending_warnings"
from .startup import ENTERED as _ENTERED, GOTO as _GOTO  # noqa: E402

NO_NICHE = "none"


def start(page_name: str, pages: dict) -> None:
    """Call on every run of ``app.py`` after ``st.navigation``.

    The first run of a session records the query string it was opened with; a ``page``
    parameter naming another page switches to it (keeping the other parameters), and so
    does a page that was sent back here by :func:`enter_page`.
    """
    ss = st.session_state
    wanted = ss.pop(_GOTO, None)
    if _INITIAL not in ss:
        ss[_INITIAL] = {k: st.query_params.get_all(k) for k in st.query_params}
        ss[_STATE] = {}
        from_link = (ss[_INITIAL].pop("page", None) or [None])[0]
        wanted = wanted or from_link
        ss[_INITIAL_PAGE] = wanted if wanted in pages else page_name
    if wanted is not None and wanted != page_name:
        if wanted in pages:
            st.switch_page(pages[wanted], query_params=_query_items())
        ss.setdefault(_PENDING, []).append(
            f"Unknown page {wanted!r} in the link; showing {page_name!r} instead.")
    ss[_ENTERED] = True
    ss[_PAGE] = page_name
    _set_query("page", page_name)
    # link problems are listed together at the top of the page, above the page's own content
    ss[_WARNINGS] = st.container()
    for message in ss.pop(_PENDING, []):
        ss[_WARNINGS].warning(message)


def _query_items() -> dict[str, list[str]]:
    # lists keep repeated keys (?slides=a&slides=b)
    return {k: st.query_params.get_all(k) for k in st.query_params}


def _warn(message: str) -> None:
    box = st.session_state.get(_WARNINGS)
    if box is None:  # before start(): shown once the page is drawn
        st.session_state.setdefault(_PENDING, []).append(message)
    else:
        box.warning(message)


def _set_query(name: str, value) -> None:
    values = [value] if isinstance(value, str) else [str(v) for v in value]
    if st.query_params.get_all(name) != values:
        if values:
            st.query_params[name] = values if len(values) != 1 else values[0]
        elif name in st.query_params:
            del st.query_params[name]


def _from_link(name: str) -> list[str] | None:
    """The link's values for ``name`` if this page is the one the session opened on; once."""
    ss = st.session_state
    if ss.get(_INITIAL_PAGE) != ss.get(_PAGE) and name not in ("run", "niche"):
        return None
    return ss.get(_INITIAL, {}).pop(name, None)


def _copy_widget(key: str, widget_key: str) -> None:
    st.session_state[_STATE][key] = st.session_state[widget_key]


def _state_key(name: str, per_page: bool) -> str:
    return f"{st.session_state.get(_PAGE, '')}:{name}" if per_page else name


def choice(name: str, label: str, options: Sequence, *, default, what: str = "",
           per_page: bool = False, container=None, format_func: Callable = str,
           help: str | None = None, url_value: Callable = str):
    """A selectbox whose value lives in the URL as ``?name=url_value(value)``.

    An unknown value from the link falls back to ``default`` with a warning; a stored
    value no longer offered (e.g. after switching runs) falls back silently. A link
    value matches an option by its text, by its ``url_value`` (a niche by its id, so
    that a link survives a rename) or by the text the menu shows for it (what a user
    copies from the page, e.g. "data/demo_query.h5ad").
    """
    options = list(options)
    view = st.session_state.setdefault(_STATE, {})
    key = _state_key(name, per_page)
    link = _from_link(name)
    if link is not None:
        # query values are text; options may be numbers
        by_text = ({str(format_func(o)): o for o in options} | {url_value(o): o for o in options}
                   | {str(o): o for o in options})
        if link and link[0] in by_text:
            view[key] = by_text[link[0]]
        else:
            shown = link[0] if link else ""
            _warn(f"Unknown {what or name} {shown!r} in the link; showing {format_func(default)!r} instead.")
            view[key] = default
    if view.get(key) not in options:
        view[key] = default
    widget_key = f"_w_{key}"
    if st.session_state.get(widget_key) != view[key]:
        st.session_state[widget_key] = view[key]
    (container or st).selectbox(label, options, key=widget_key, format_func=format_func, help=help,
                                on_change=_copy_widget, args=(key, widget_key))
    _set_query(name, url_value(view[key]))
    return view[key]


def choices(name: str, label: str, options: Sequence[str], *, default: Sequence[str], what: str = "",
            max_selections: int | None = None, per_page: bool = False, container=None,
            help: str | None = None) -> list[str]:
    """A multiselect whose values live in the URL as ``?name=a&name=b``."""
    options = list(options)
    view = st.session_state.setdefault(_STATE, {})
    key = _state_key(name, per_page)
    link = _from_link(name)
    if link is not None:
        known = list(dict.fromkeys(v for v in link if v in options))
        unknown = [v for v in link if v not in options]
        if unknown:
            fallback = "ignored." if known else f"showing {', '.join(default)} instead."
            _warn(f"Unknown {what or name} {', '.join(map(repr, unknown))} in the link; {fallback}")
        if max_selections and len(known) > max_selections:
            _warn(f"At most {max_selections} {what or name}s at once; showing the first {max_selections}.")
            known = known[:max_selections]
        view[key] = known or list(default)
    stored = [v for v in view.get(key, list(default)) if v in options]
    view[key] = stored or list(default)
    widget_key = f"_w_{key}"
    if st.session_state.get(widget_key) != view[key]:
        st.session_state[widget_key] = view[key]
    (container or st).multiselect(label, options, key=widget_key, max_selections=max_selections,
                                  help=help, on_change=_copy_widget, args=(key, widget_key))
    _set_query(name, view[key])
    return list(view[key])


def text(name: str, *, per_page: bool = True) -> str | None:
    """A free-text view value kept in the URL as ``?name=...`` (read from the link once).

    The caller checks the value (it comes from a link) and calls :func:`set_text` with
    None to drop one it cannot use.
    """
    view = st.session_state.setdefault(_STATE, {})
    key = _state_key(name, per_page)
    link = _from_link(name)
    if link:
        view[key] = link[0]
    value = view.get(key)
    _set_query(name, [value] if value else [])
    return value


def set_text(name: str, value: str | None, *, per_page: bool = True) -> None:
    """Store a free-text view value (None removes it) and mirror it in the URL."""
    view = st.session_state.setdefault(_STATE, {})
    key = _state_key(name, per_page)
    if value:
        view[key] = value
    else:
        view.pop(key, None)
    _set_query(name, [value] if value else [])


def warn(message: str) -> None:
    """A warning about the link, shown at the top of the page."""
    _warn(message)


# ----------------------------------------------------------------------------- the run


@dataclass
class Current:
    """The selected run, loaded."""

    ref: RunRef
    run: Run
    keys: RunKeys


def select_run(runs: dict[str, RunRef]) -> RunRef | None:
    """Sidebar run picker, synced with ``?run=``; the demo run is the default."""
    st.session_state[_RUNS] = runs
    if not runs:
        return None
    default = state.DEMO_RUN if state.DEMO_RUN in runs else next(iter(runs))
    name = choice("run", "Run", list(runs), default=default, what="run", container=st.sidebar,
                  help=f"Run folders in {state.runs_dir()}")
    return runs[name]


def show_run(name: str) -> None:
    """Make ``name`` the selected run from the next run of the script (e.g. a run just trained)."""
    st.session_state.setdefault(_STATE, {})["run"] = name


def current_run() -> Current:
    """The selected run for a page; shows an error and stops the page when there is none."""
    runs = st.session_state.get(_RUNS) or {}
    name = st.session_state.get(_STATE, {}).get("run")
    if name not in runs:
        st.error(f"No run to show: no run folder was found in `{state.runs_dir()}`.")
        st.stop()
    ref = runs[name]
    try:
        run = state.load(ref)
        keys = state.run_keys(ref)
        _check_run(run, keys)
    except Exception as exc:  # a broken run folder is a message, not a traceback
        st.error(f"Run **{name}** could not be loaded: {type(exc).__name__}: {exc}")
        st.stop()
    return Current(ref, run, keys)


def _check_run(run: Run, keys: RunKeys) -> None:
    obs, obsm = run.adata.obs, run.adata.obsm
    if keys.niche not in obs:
        raise ValueError(f"the cohort has no obs[{keys.niche!r}] niche labels")
    if keys.spatial not in obsm:
        raise ValueError(f"the cohort has no obsm[{keys.spatial!r}] coordinates")


def highlight(niches: Sequence[str], *, container=None) -> str | None:
    """Highlighted-niche picker, synced with ``?niche=``; None for no highlight."""
    value = choice("niche", "Highlight niche", [NO_NICHE, *niches], default=NO_NICHE, what="niche",
                   container=container, format_func=lambda v: "— none —" if v == NO_NICHE else v,
                   help="Draw one niche in colour and dim the others", url_value=niche_id)
    return None if value == NO_NICHE else value
