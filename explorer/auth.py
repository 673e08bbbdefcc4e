"""Access control for a hosted dashboard: OpenID Connect or one shared password.

How the dashboard is protected depends on its configuration, checked on every run:

- **OIDC**: ``.streamlit/secrets.toml`` has an ``[auth]`` section. Visitors sign in with
  Streamlit's ``st.login()`` (Google, Microsoft, Okta, ...); ``st.user`` says who they are,
  and only addresses listed in ``allowed_emails`` or under ``allowed_domains`` (top-level
  secrets) get in. With neither list nobody does: any account of a public provider could
  otherwise sign in.
- **Password**: ``st.secrets["password_hash"]`` or ``$CELLNICHE_PASSWORD_HASH`` holds a
  salted scrypt hash made with ``python -m explorer.auth hash``. The plain password is
  never stored: a visitor's signed-in status is kept in ``st.session_state``, and each
  wrong password costs a delay, taken one at a time for the whole server.
- **Open**: neither is set (local use); there is no gate.

A signed-out visitor sees the sign-in form and nothing else: :func:`gate` stops the run
before any run is listed or any page is drawn. The query string is left untouched, so a
shared link (``?run=...&slides=...``) opens its view once the password is accepted. With
OIDC the provider sends the browser back to the app's home page, which drops the link's
query string; the sign-in screen then asks the visitor to open the link again (the
identity cookie makes that second visit go straight through).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import secrets
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import streamlit as st
from streamlit.errors import StreamlitAPIException

__all__ = [
    "PASSWORD_ENV",
    "PASSWORD_SECRET",
    "Access",
    "HashFormatError",
    "access",
    "gate",
    "hash_password",
    "sign_out_button",
    "verify_password",
]

#: environment variable holding the password hash
PASSWORD_ENV = "CELLNICHE_PASSWORD_HASH"
#: key of the password hash in ``.streamlit/secrets.toml``
PASSWORD_SECRET = "password_hash"

SCHEME = "scrypt"
#: scrypt cost: 2**14 x 8 x 128 bytes = 16 MiB and ~50 ms per check
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_SALT_BYTES = 16
_HASH_BYTES = 32
#: seconds each wrong password holds the server-wide sign-in lock
FAILED_ATTEMPT_DELAY_S = 1.0

#: a session's own wait after repeated wrong passwords doubles up to this (seconds)
MAX_SESSION_DELAY_S = 30.0
#: longest wait for the server-wide sign-in lock before asking to retry later (seconds)
LOCK_WAIT_S = 10.0

_SIGNED_IN = "_auth_signed_in"  # fingerprint of the hash the session signed in with
_FAILURES = "_auth_failures"  # wrong passwords given by this session

Mode = Literal["open", "oidc", "password"]


class HashFormatError(ValueError):
    """A password hash that is not ``scrypt$<salt hex>$<hash hex>``."""


# ----------------------------------------------------------------------------- hashing


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The line to configure for ``password``: ``scrypt$<salt hex>$<hash hex>``.

    A random 16-byte salt is drawn unless ``salt`` is given.
    """
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    return f"{SCHEME}${salt.hex()}${_derive(password, salt).hex()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (made by :func:`hash_password`).

    The comparison takes the same time wherever the first difference is.

    Raises
    ------
    HashFormatError
        ``encoded`` is not a hash made by :func:`hash_password`.
    """
    salt, expected = _parse_hash(encoded)
    return hmac.compare_digest(_derive(password, salt), expected)


def _derive(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=_HASH_BYTES,
                          maxmem=64 * 2**20, **_SCRYPT)


def _parse_hash(encoded: str) -> tuple[bytes, bytes]:
    """``(salt, hash)`` of an encoded hash; the message never repeats the value."""
    how = f"expected '{SCHEME}$<salt hex>$<hash hex>' as printed by `python -m explorer.auth hash`"
    if not isinstance(encoded, str):
        raise HashFormatError(f"malformed password hash: not text; {how}")
    parts = encoded.strip().split("$")
    if len(parts) != 3:
        raise HashFormatError(f"malformed password hash: {len(parts)} '$'-separated field(s); {how}")
    scheme, salt_hex, hash_hex = parts
    if scheme != SCHEME:
        raise HashFormatError(f"malformed password hash: unknown scheme {scheme[:20]!r}; {how}")
    try:
        salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(hash_hex)
    except ValueError:
        raise HashFormatError(f"malformed password hash: salt and hash must be hex; {how}") from None
    if len(salt) < 8 or len(digest) != _HASH_BYTES:
        raise HashFormatError(
            f"malformed password hash: expected a salt of at least 8 bytes and a "
            f"{_HASH_BYTES}-byte hash, got {len(salt)} and {len(digest)}; {how}"
        )
    return salt, digest


def _fingerprint(encoded: str) -> str:
    # a session stays signed in only while the configured hash is the one it signed in with
    return hashlib.sha256(encoded.strip().encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Access:
    """How the dashboard is protected, and whether this session may see it."""

    mode: Mode
    signed_in: bool
    password_hash: str | None = None  # the configured hash (password mode)
    source: str = ""  # where the hash was found, for messages
    refused: str = ""  # OIDC: why a signed-in account may not see the views

    @property
    def allowed(self) -> bool:
        """True when the views may be shown: open, or signed in with an allowed account."""
        return self.mode == "open" or (self.signed_in and not self.refused)


def _secrets() -> Mapping[str, Any]:
    """``st.secrets`` when a secrets file exists, else an empty mapping."""
    # False too for an unreadable file, which Streamlit reports itself
    return st.secrets if st.secrets.load_if_toml_exists() else {}


def access() -> Access:
    """The current configuration and this session's status (cheap; call on every run)."""
    found = _secrets()
    if found.get("auth"):
        return _oidc_access(found)
    encoded, source = found.get(PASSWORD_SECRET), f"st.secrets[{PASSWORD_SECRET!r}]"
    if not encoded:
        encoded, source = os.environ.get(PASSWORD_ENV, "").strip(), f"${PASSWORD_ENV}"
    if not encoded:
        return Access("open", True)
    signed_in = st.session_state.get(_SIGNED_IN) == _fingerprint(str(encoded))
    return Access("password", signed_in, str(encoded), source)


#: top-level secrets listing who may sign in with OIDC
ALLOWED_EMAILS, ALLOWED_DOMAINS = "allowed_emails", "allowed_domains"


def _oidc_access(found: Mapping[str, Any]) -> Access:
    if not st.user.get("is_logged_in", False):
        return Access("oidc", False)

    def listed(key: str) -> set[str]:
        values = found.get(key) or []
        values = [values] if isinstance(values, str) else values
        return {str(v).strip().lower().lstrip("@") for v in values if str(v).strip()}

    emails, domains = listed(ALLOWED_EMAILS), listed(ALLOWED_DOMAINS)
    email = str(st.user.get("email") or "").strip().lower()
    if not emails and not domains:
        refused = (f"no account may sign in yet: the administrator must list {ALLOWED_EMAILS} or "
                   f"{ALLOWED_DOMAINS} in the secrets")
    elif not email:
        refused = "the provider did not give this account's e-mail address"
    elif st.user.get("email_verified") is False:
        refused = f"the provider has not verified the address {email}"
    elif email in emails or email.rpartition("@")[2] in domains:
        return Access("oidc", True)
    else:
        refused = f"{email} is not among the accounts allowed to see this dashboard"
    return Access("oidc", True, refused=refused)


# ----------------------------------------------------------------------------- the gate


@st.cache_resource
def _sign_in_lock() -> threading.Lock:
    # one password check at a time for the whole server: with the delay after a wrong
    # password, guessing is limited to about one attempt per FAILED_ATTEMPT_DELAY_S
    return threading.Lock()


def gate(current: Access | None = None) -> None:
    """Show the sign-in screen and stop the run unless the views may be shown.

    Call after ``st.navigation`` (with ``position="hidden"`` while signed out, so that no
    page name shows) and before anything else is drawn.
    """
    current = current or access()
    if current.allowed:
        return
    st.title("CellNiche Explorer")
    if current.refused:
        st.error(f"Access refused: {current.refused}.")
        if st.button("Sign out", key="_auth_refused_sign_out"):
            st.logout()
    elif current.mode == "oidc":
        _oidc_sign_in()
    else:
        _password_sign_in(current)
    st.stop()


def _oidc_sign_in() -> None:
    auth = _secrets().get("auth") or {}
    providers = [name for name, value in auth.items() if isinstance(value, Mapping)]
    st.write("Sign in to see the cohort.")
    if len(st.query_params):
        st.info("You opened a link to a particular view. Signing in brings you to the home "
                "page: open the link again once you are signed in.")
    for provider in providers or [None]:
        label = f"Sign in with {provider}" if provider else "Sign in"
        if st.button(label, key=f"_auth_login_{provider or 'default'}", type="primary"):
            try:
                st.login(provider) if provider else st.login()
            except StreamlitAPIException as exc:  # e.g. Authlib is not installed
                st.error(f"Sign-in is not available: {exc}")


def _password_sign_in(current: Access) -> None:
    try:
        _parse_hash(current.password_hash or "")
    except HashFormatError as exc:  # fail closed: no way in until the hash is fixed
        st.error(f"Sign-in is misconfigured: the hash in {current.source} is a {exc}. "
                 "Ask the administrator to set a new one.")
        return
    with st.form("_auth_sign_in", clear_on_submit=True, enter_to_submit=True):
        password = st.text_input("Password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    if not password:
        st.error("Enter the password.")
        return
    failures = int(st.session_state.get(_FAILURES, 0))
    outcome = _check(password, current.password_hash or "", failures)
    if outcome is None:
        st.error("Too many sign-in attempts on the server right now; try again in a minute.")
    elif outcome:
        st.session_state.pop(_FAILURES, None)
        st.session_state[_SIGNED_IN] = _fingerprint(current.password_hash or "")
        st.rerun()  # a clean run: the linked view, without the form
    else:
        st.session_state[_FAILURES] = failures + 1
        st.error("Wrong password.")


def _check(password: str, encoded: str, failures: int = 0) -> bool | None:
    """Whether the password is right; None when the server is too busy checking others.

    A wrong password holds the server-wide lock for ``FAILED_ATTEMPT_DELAY_S`` (which
    bounds guessing across all sessions), then this session waits longer after each of
    its own failures (up to ``MAX_SESSION_DELAY_S``), outside the lock.
    """
    if not _sign_in_lock().acquire(timeout=LOCK_WAIT_S):
        return None
    try:
        ok = verify_password(password, encoded)
        if not ok:
            time.sleep(FAILED_ATTEMPT_DELAY_S)
    finally:
        _sign_in_lock().release()
    if not ok and failures:
        time.sleep(min(MAX_SESSION_DELAY_S, FAILED_ATTEMPT_DELAY_S * 2 ** min(failures, 10)))
    return ok


def sign_out_button(current: Access | None = None) -> None:
    """A sign-out button in the sidebar (nothing when the dashboard is open)."""
    current = current or access()
    if current.mode == "open" or not current.signed_in:
        return
    box = st.sidebar.container()
    if current.mode == "oidc":
        who = st.user.get("email") or st.user.get("name")
        if who:
            box.caption(f"Signed in as {who}")
        if box.button("Sign out", key="_auth_sign_out"):
            st.logout()
    elif box.button("Sign out", key="_auth_sign_out"):
        st.session_state.pop(_SIGNED_IN, None)
        st.rerun()


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m explorer.auth hash``: read a password twice, print its hash line."""
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["hash"]:
        print("usage: python -m explorer.auth hash", file=sys.stderr)
        return 2
    password = getpass.getpass("Password: ")
    if not password:
        print("error: the password is empty", file=sys.stderr)
        return 2
    if getpass.getpass("Again: ") != password:
        print("error: the two passwords differ", file=sys.stderr)
        return 2
    encoded = hash_password(password)
    print(f"Put this line in .streamlit/secrets.toml ({PASSWORD_SECRET} = \"...\") or in "
          f"${PASSWORD_ENV}:", file=sys.stderr)
    print(encoded)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
