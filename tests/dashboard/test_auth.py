"""Access control (explorer/auth.py): the password hash, the sign-in gate, OIDC, permalinks.

The dashboard runs under AppTest on a tiny run. A password is configured through
``$CELLNICHE_PASSWORD_HASH`` or ``at.secrets``; an OIDC sign-in is faked with ``at.user``
(``{"is_logged_in": True, ...}`` is what ``st.user`` reads) and ``st.login`` is replaced by
a recorder, since the provider round trip needs a browser and a network.
"""

from __future__ import annotations

import re

import pytest
import streamlit as st
from apptest_support import APP, assert_clean, query, run_entrypoint_always
from streamlit.testing.v1 import AppTest
from tiny_run import TINY

from explorer import auth, state

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def password_hash():
    return auth.hash_password(PASSWORD)


@pytest.fixture(autouse=True)
def _dashboard(tiny_run, monkeypatch):
    run_entrypoint_always(monkeypatch)
    monkeypatch.setenv(state.RUNS_DIR_ENV, str(tiny_run.parent))
    monkeypatch.delenv(auth.PASSWORD_ENV, raising=False)
    monkeypatch.setattr(auth, "FAILED_ATTEMPT_DELAY_S", 0.0)


def new_app(query_params: dict | None = None, *, secrets: dict | None = None,
            user: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query_params or {})
    at.secrets.update(secrets or {})
    if user is not None:
        at.user = user
    return at


def rendered_text(at: AppTest) -> str:
    """Every element of the last run, as text (protobuf dumps of the whole tree)."""
    parts = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def element_types(at: AppTest) -> set[str]:
    types = set()

    def walk(node) -> None:
        if getattr(node, "proto", None) is not None and not getattr(node, "children", None):
            types.add(node.type)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    walk(at.sidebar)
    return types


def assert_only_sign_in(at: AppTest, *, form: bool = True) -> None:
    """Nothing of the dashboard is shown: no sidebar, no run picker, no page, no run name."""
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.sidebar.children) == 0
    assert not at.selectbox and not at.multiselect and not at.metric
    assert [t.value for t in at.title] == ["CellNiche Explorer"]
    text = rendered_text(at)
    assert TINY not in text and "Cohort overview" not in text and "Niche maps" not in text
    if form:
        assert [t.label for t in at.text_input] == ["Password"]
        assert [b.label for b in at.button] == ["Sign in"]
    allowed = {"title", "markdown", "text_input", "button", "alert", "form", "info", "error"}
    assert element_types(at) <= allowed, element_types(at)


def sign_in(at: AppTest, password: str) -> AppTest:
    at.text_input[0].input(password)
    return at.button[0].click().run()


# ----------------------------------------------------------------------------- hashing


def test_hash_round_trip_and_wrong_passwords():
    encoded = auth.hash_password(PASSWORD)
    assert re.fullmatch(r"scrypt\$[0-9a-f]{32}\$[0-9a-f]{64}", encoded)
    assert PASSWORD not in encoded
    assert auth.verify_password(PASSWORD, encoded)
    for wrong in ("", "correct horse battery stapl", PASSWORD.upper(), PASSWORD + " "):
        assert not auth.verify_password(wrong, encoded)
    assert auth.hash_password(PASSWORD) != encoded  # a fresh salt each time


@pytest.mark.parametrize("encoded, problem", [
    ("", "1 '$'-separated field"),
    ("hunter2", "1 '$'-separated field"),
    ("scrypt$00112233445566778899aabbccddeeff", "2 '$'-separated field"),
    ("bcrypt$00112233445566778899aabbccddeeff$" + "00" * 32, "unknown scheme 'bcrypt'"),
    ("scrypt$not-hex$" + "00" * 32, "must be hex"),
    ("scrypt$0011$" + "00" * 32, "at least 8 bytes"),
    ("scrypt$00112233445566778899aabbccddeeff$00ff", "32-byte hash"),
])
def test_malformed_hash_strings_are_refused_clearly(encoded, problem):
    with pytest.raises(auth.HashFormatError, match="malformed password hash") as info:
        auth.verify_password(PASSWORD, encoded)
    assert problem in str(info.value)
    assert "python -m explorer.auth hash" in str(info.value)


def test_hash_command_reads_the_password_twice(monkeypatch, capsys):
    answers = iter([PASSWORD, PASSWORD])
    monkeypatch.setattr(auth.getpass, "getpass", lambda prompt="": next(answers))
    assert auth.main(["hash"]) == 0
    out = capsys.readouterr()
    line = out.out.strip()
    assert auth.verify_password(PASSWORD, line)
    assert PASSWORD not in out.out + out.err

    answers = iter([PASSWORD, "typo"])
    assert auth.main(["hash"]) == 2
    assert "differ" in capsys.readouterr().err
    assert auth.main([]) == 2


# ----------------------------------------------------------------------------- the gate


def test_unconfigured_dashboard_is_open(tiny_run):
    at = new_app().run()
    assert_clean(at)
    assert at.title[0].value == "Cohort overview"
    assert at.sidebar.selectbox[0].value == TINY
    assert not at.sidebar.button  # no sign-out without access control


def test_signed_out_visitor_sees_only_the_sign_in_form(password_hash, monkeypatch):
    monkeypatch.setenv(auth.PASSWORD_ENV, password_hash)
    at = new_app({"run": TINY, "page": "maps"}).run()
    assert_only_sign_in(at)
    assert not at.error
    assert query(at, "run") == [TINY] and query(at, "page") == ["maps"]  # the link is kept


def test_wrong_password_is_an_error_and_shows_nothing(password_hash, monkeypatch):
    monkeypatch.setenv(auth.PASSWORD_ENV, password_hash)
    at = sign_in(new_app().run(), "not the password")
    assert [e.value for e in at.error] == ["Wrong password."]
    assert_only_sign_in(at)
    assert auth._SIGNED_IN not in at.session_state


def test_wrong_password_waits_holding_the_server_wide_lock(password_hash, monkeypatch):
    delays = []
    monkeypatch.setattr(auth.time, "sleep", delays.append)
    monkeypatch.setattr(auth, "FAILED_ATTEMPT_DELAY_S", 1.5)
    assert not auth._check("guess", password_hash)
    assert auth._check(PASSWORD, password_hash)
    assert delays == [1.5]  # only the wrong password waits


def test_right_password_opens_the_views_and_sign_out_closes_them(password_hash, monkeypatch):
    monkeypatch.setenv(auth.PASSWORD_ENV, password_hash)
    at = sign_in(new_app().run(), PASSWORD)
    assert_clean(at)
    assert at.title[0].value == "Cohort overview"
    assert at.sidebar.selectbox[0].value == TINY
    assert not at.text_input  # the form is gone
    assert PASSWORD not in str(at.session_state.to_dict())

    at.sidebar.button(key="_auth_sign_out").click().run()
    assert_only_sign_in(at)


def test_a_permalink_survives_the_sign_in(password_hash, tiny_run, monkeypatch):
    import anndata as ad

    slides = sorted(ad.read_h5ad(tiny_run / "cohort.h5ad", backed="r").obs["sample"].unique())
    link = {"page": "maps", "run": TINY, "slides": [slides[-1]], "color": "cell_type", "niche": "N2"}
    monkeypatch.setenv(auth.PASSWORD_ENV, password_hash)

    at = sign_in(new_app(link).run(), PASSWORD)

    assert_clean(at)
    assert not at.warning
    assert at.title[0].value == "Niche maps"
    assert at.sidebar.selectbox[0].value == TINY
    assert at.multiselect[0].value == [slides[-1]]
    assert at.selectbox(key="_w_maps:color").value == "cell_type"
    assert at.selectbox(key="_w_niche").value.startswith("N2 · ")  # shown with its name
    assert query(at, "slides") == [slides[-1]] and query(at, "niche") == ["N2"]


def test_hash_in_secrets_and_a_changed_hash_signs_everyone_out(password_hash):
    at = sign_in(new_app(secrets={"password_hash": password_hash}).run(), PASSWORD)
    assert at.title[0].value == "Cohort overview"

    at.secrets["password_hash"] = auth.hash_password("a new password")
    at.run()
    assert_only_sign_in(at)


def test_malformed_configured_hash_fails_closed(monkeypatch):
    monkeypatch.setenv(auth.PASSWORD_ENV, "scrypt$oops")
    at = new_app({"run": TINY}).run()
    assert_only_sign_in(at, form=False)
    assert not at.text_input
    (message,) = [e.value for e in at.error]
    assert "misconfigured" in message and f"${auth.PASSWORD_ENV}" in message
    assert "scrypt$oops" not in message


# ----------------------------------------------------------------------------- OIDC

OIDC = {"auth": {"redirect_uri": "https://niches.example.org/oauth2callback",
                 "cookie_secret": "test-cookie-secret", "client_id": "cellniche",
                 "client_secret": "not-a-secret",
                 "server_metadata_url": "https://id.example.org/.well-known/openid-configuration"}}


def test_oidc_signed_out_visitor_gets_only_a_sign_in_button(monkeypatch):
    calls = []
    monkeypatch.setattr(st, "login", lambda *args: calls.append(args))
    at = new_app({"run": TINY, "page": "maps"}, secrets=OIDC, user={"is_logged_in": False}).run()
    assert len(at.sidebar.children) == 0
    assert [b.label for b in at.button] == ["Sign in"]
    assert "open the link again" in at.info[0].value  # the provider returns to the home page
    assert TINY not in rendered_text(at)

    at.button[0].click().run()
    assert calls == [()]
    assert not at.selectbox


def test_oidc_named_providers_get_one_button_each(monkeypatch):
    calls = []
    monkeypatch.setattr(st, "login", lambda *args: calls.append(args))
    secrets = {"auth": {"redirect_uri": OIDC["auth"]["redirect_uri"], "cookie_secret": "x",
                        "google": {"client_id": "a"}, "microsoft": {"client_id": "b"}}}
    at = new_app(secrets=secrets, user={"is_logged_in": False}).run()
    assert [b.label for b in at.button] == ["Sign in with google", "Sign in with microsoft"]
    at.button[1].click().run()
    assert calls == [("microsoft",)]


def test_oidc_signed_in_user_sees_the_views_and_can_sign_out():
    at = new_app({"run": TINY}, secrets={**OIDC, "allowed_domains": ["example.org"]},
                 user={"is_logged_in": True, "email": "ana@example.org", "name": "Ana"}).run()
    assert_clean(at)
    assert at.title[0].value == "Cohort overview"
    assert at.sidebar.selectbox[0].value == TINY
    assert "ana@example.org" in at.sidebar.caption[0].value

    at.sidebar.button(key="_auth_sign_out").click().run()  # st.logout() empties st.user
    assert at.user == {"is_logged_in": False}
    at.run()
    assert len(at.sidebar.children) == 0
    assert [b.label for b in at.button] == ["Sign in"]


@pytest.mark.parametrize("allowed, user, refusal", [
    ({}, {"email": "ana@example.org"}, "no account may sign in yet"),
    ({"allowed_emails": ["bo@example.org"]}, {"email": "ana@example.org"}, "is not among the accounts"),
    ({"allowed_domains": ["example.org"]}, {"email": "eve@example.org.evil.com"}, "is not among the accounts"),
    ({"allowed_domains": ["example.org"]}, {"email": "ana@example.org", "email_verified": False},
     "has not verified"),
    ({"allowed_domains": ["example.org"]}, {}, "did not give this account's e-mail"),
])
def test_oidc_accounts_outside_the_allow_list_see_nothing(allowed, user, refusal):
    at = new_app({"run": TINY}, secrets={**OIDC, **allowed}, user={"is_logged_in": True, **user}).run()
    assert refusal in at.error[0].value
    assert len(at.sidebar.children) == 0 and TINY not in rendered_text(at)
    assert [b.label for b in at.button] == ["Sign out"]


def test_oidc_listed_address_gets_in_whatever_its_case():
    at = new_app({"run": TINY}, secrets={**OIDC, "allowed_emails": ["Ana@Example.org"]},
                 user={"is_logged_in": True, "email": "ana@example.ORG", "email_verified": True}).run()
    assert_clean(at)
    assert at.sidebar.selectbox[0].value == TINY


def test_repeated_wrong_passwords_wait_longer_and_a_busy_lock_asks_to_retry(password_hash, monkeypatch):
    delays = []
    monkeypatch.setattr(auth.time, "sleep", delays.append)
    monkeypatch.setattr(auth, "FAILED_ATTEMPT_DELAY_S", 1.0)
    assert auth._check("guess", password_hash, failures=3) is False
    assert delays == [1.0, 8.0]  # the server-wide second, then this session's own backoff
    delays.clear()
    auth._check("guess", password_hash, failures=40)
    assert delays == [1.0, auth.MAX_SESSION_DELAY_S]

    monkeypatch.setattr(auth, "LOCK_WAIT_S", 0.01)
    lock = auth._sign_in_lock()
    lock.acquire()
    try:  # another session is being checked: this one is told to come back
        assert auth._check(PASSWORD, password_hash) is None
    finally:
        lock.release()
    assert auth._check(PASSWORD, password_hash) is True
