"""Training jobs and cached reads of uploads, for the Train page.

The job registry is one per server process (``st.cache_resource``), shared by every
session; a session finds its own jobs by a random id kept in its session state. Previews
and checks of uploads are ``st.cache_data`` keyed by each upload's name and its
uploader file id (the bytes are passed unhashed), so a rerun never reads a file again;
they return the message of a bad file rather than raise, so that it is cached too.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import streamlit as st

from cellniche_core.io import CohortError
from cellniche_core.keys import CohortKeys

from . import train, transfer_state, uploads
from .job_queue import JobRegistry
from .train import CohortCheck
from .uploads import FilePreview, Upload

_SESSION = "_train_session"


def uploads_dir() -> Path:
    """Where uploads are staged while they are read or trained on (``data/uploads``)."""
    return transfer_state.upload_dir()


def session_id() -> str:
    """This session's random id, the owner of its training jobs."""
    return st.session_state.setdefault(_SESSION, secrets.token_hex(16))


@st.cache_resource
def registry() -> JobRegistry:
    """The server's job registry."""
    return JobRegistry()


@st.cache_resource(show_spinner=False)
def clean_uploads(folder: str) -> list[Path]:
    """Remove, once per server, the staging folders a stopped server left in ``folder``."""
    return uploads.remove_stale_staging(Path(folder))


def _message(name: str, exc: Exception) -> str:
    if isinstance(exc, CohortError):
        return str(exc)
    return f"{Upload(name, b'').shown}: could not be read ({type(exc).__name__}: {exc})"


@st.cache_data(max_entries=32, show_spinner="Reading the upload…")
def preview(name: str, file_id: str, staging: str, _data: bytes) -> tuple[FilePreview | None, str | None]:
    """``(preview, None)`` of an upload, or ``(None, message)`` when it cannot be read."""
    try:
        return uploads.preview_upload(Upload(name, _data), Path(staging)), None
    except Exception as exc:  # a bad file is a message, never a traceback
        return None, _message(name, exc)


@st.cache_data(max_entries=16, show_spinner="Checking the cohort…")
def check(names: tuple[str, ...], file_ids: tuple[str, ...], staging: str, keys: CohortKeys, features: str,
          _data: tuple[bytes, ...]) -> tuple[CohortCheck | None, str | None]:
    """``(summary, None)`` when the uploads read as one cohort with ``keys``, else ``(None, message)``."""
    uploads = [Upload(n, d) for n, d in zip(names, _data)]
    try:
        return train.check_cohort(uploads, Path(staging), keys, features=features), None
    except Exception as exc:  # a bad cohort is a message, never a traceback
        return None, _message(names[0] if len(names) == 1 else "upload", exc)
