"""Console sign-in over real sockets: the gateway under gunicorn, the lab IdP (a real OIDC
provider process), authorization code + PKCE, server-side sessions, CSRF, return URLs,
security headers, and sessions cut by a lock."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urljoin, urlparse

import pytest
import requests

from gateway.console.security import safe_next
from tests.conftest import Gateway, Proc, dedicated_gateway

COOKIE = "gateway-console"
CONSOLE = "/_gateway/console"
CONSOLE_CONFIG = """
[console]
enabled = true
issuers = ["lab-idp"]
client_id = "gateway-console"
client_secret = "console-secret"
public_url = "{gateway_url}"
cookie_secure = false
"""


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, idp: Proc, opaque_idp: Proc, upstream: Proc
) -> Iterator[Gateway]:
    with dedicated_gateway(
        tmp_path_factory, idp, opaque_idp, upstream, "console", extra=CONSOLE_CONFIG
    ) as gateway:
        yield gateway


def sign_in(gw: Gateway, sub: str, target: str = CONSOLE + "/") -> requests.Session:
    """The browser's round trip: console → IdP login form → callback → the page."""
    browser = requests.Session()
    first = browser.get(gw.url + target, allow_redirects=False, timeout=10)
    assert first.status_code == 302, first.text
    to_login = urljoin(gw.url, first.headers["Location"])
    to_idp = browser.get(to_login, allow_redirects=False, timeout=10)
    assert to_idp.status_code == 302, to_idp.text
    authorize = to_idp.headers["Location"]
    query = parse_qs(urlparse(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    assert query["client_id"] == ["gateway-console"]
    login_cookie = browser.cookies.get(COOKIE)
    back = requests.post(authorize, data={"sub": sub}, allow_redirects=False, timeout=10)
    assert back.status_code == 302, back.text
    landed = browser.get(back.headers["Location"], allow_redirects=False, timeout=10)
    if landed.status_code == 302:
        # A new session id at sign-in: the one from before the login is worthless.
        assert browser.cookies.get(COOKIE) != login_cookie
    browser.last = landed  # type: ignore[attr-defined]
    return browser


def test_admin_signs_in_and_sees_the_overview(console: Gateway) -> None:
    browser = sign_in(console, "ann")
    assert browser.last.status_code == 302  # type: ignore[attr-defined]
    assert browser.last.headers["Location"].endswith(CONSOLE + "/")  # type: ignore[attr-defined]
    page = browser.get(console.url + CONSOLE + "/", timeout=10)
    assert page.status_code == 200
    assert "Signed in as <strong>lab-idp:ann</strong> (admin)" in page.text
    assert "Active locks" in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["Cache-Control"] == "no-store"
    assert "<script>" not in page.text  # no inline script anywhere
    cookie = next(c for c in browser.cookies if c.name == COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite") == "Lax"
    logins = console.db.rows(
        "SELECT actor, action FROM admin_events WHERE action = 'console.login'"
    )
    assert ("lab-idp:ann", "console.login") in [(r.actor, r.action) for r in logins]


def test_the_cookie_holds_no_data_and_the_database_no_cookie(console: Gateway) -> None:
    browser = sign_in(console, "audrey")
    raw = browser.cookies.get(COOKIE)
    assert raw and len(raw) >= 40
    rows = console.db.rows("SELECT id_hash FROM console_sessions")
    assert raw not in {row.id_hash for row in rows}  # only its SHA-256 is stored


def test_contractor_can_never_open_the_console(console: Gateway) -> None:
    browser = sign_in(console, "carol")  # globex's contractor at the same IdP, no role
    assert browser.last.status_code == 403  # type: ignore[attr-defined]
    assert "admins and auditors" in browser.last.text  # type: ignore[attr-defined]
    again = browser.get(console.url + CONSOLE + "/", allow_redirects=False, timeout=10)
    assert again.status_code == 302 and "/login" in again.headers["Location"]


def test_state_changes_need_the_csrf_token(console: Gateway) -> None:
    browser = sign_in(console, "ann")
    refused = browser.post(console.url + CONSOLE + "/logout", timeout=10, allow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.text
    still = browser.get(console.url + CONSOLE + "/", allow_redirects=False, timeout=10)
    assert still.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', still.text)
    assert token
    out = browser.post(
        console.url + CONSOLE + "/logout",
        data={"csrf_token": token.group(1)},
        allow_redirects=False,
        timeout=10,
    )
    assert out.status_code == 302
    # RP-initiated logout at the IdP, which sends the browser back to the console.
    assert "end_session" in out.headers["Location"]
    gone = browser.get(console.url + CONSOLE + "/", allow_redirects=False, timeout=10)
    assert gone.status_code == 302


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "/\\evil.example/",
        "/%09/evil.example/",
        "https://lab.evil/",
        "https://evil@lab/",
        "/_gateway/admin/policy",
        "/_gateway/console/../admin/policy",
        "javascript:alert(1)",
        "/_gateway/console//evil.example",
    ],
)
def test_return_urls_stay_in_the_console(target: str) -> None:
    assert safe_next(target) == CONSOLE + "/"


def test_console_paths_are_accepted_as_return_urls() -> None:
    assert safe_next(CONSOLE + "/access?vendor=acme") == CONSOLE + "/access?vendor=acme"


@pytest.mark.parametrize("target", ["//evil.example/", "https://lab.evil/", "/\\evil.example"])
def test_sign_in_never_returns_outside(console: Gateway, target: str) -> None:
    browser = requests.Session()
    start = browser.get(
        console.url + CONSOLE + "/login", params={"next": target}, allow_redirects=False,
        timeout=10,
    )  # fmt: skip
    authorize = start.headers["Location"]
    back = requests.post(authorize, data={"sub": "ann"}, allow_redirects=False, timeout=10)
    landed = browser.get(back.headers["Location"], allow_redirects=False, timeout=10)
    assert landed.status_code == 302
    assert landed.headers["Location"] == CONSOLE + "/"


def test_a_lock_ends_the_session(console: Gateway) -> None:
    browser = sign_in(console, "audrey")
    assert browser.get(console.url + CONSOLE + "/", timeout=10).status_code == 200
    lock = console.cli("lock", "contractor", "lab-idp:audrey", "--reason", "drill", "--force",
                       "--json")  # fmt: skip
    try:
        import json
        import time

        lock_id = json.loads(lock.stdout)["id"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            page = browser.get(console.url + CONSOLE + "/", allow_redirects=False, timeout=10)
            if page.status_code == 401:
                break
            time.sleep(0.1)
        assert page.status_code == 401 and 'data-reason="locked"' in page.text
        ended = console.db.rows(
            "SELECT end_reason FROM console_sessions WHERE subject = 'lab-idp:audrey'"
            " AND end_reason = 'locked'"
        )
        assert ended
    finally:
        console.cli("unlock", str(lock_id), "--reason", "drill over")


def test_an_admin_ends_a_persons_sessions_at_once(console: Gateway) -> None:
    browser = sign_in(console, "audrey")
    assert browser.get(console.url + CONSOLE + "/", timeout=10).status_code == 200
    import json

    listed = json.loads(console.cli("console", "sessions", "--json").stdout)
    assert "lab-idp:audrey" in {s["subject"] for s in listed["sessions"]}
    ended = console.cli("console", "end", "lab-idp:audrey", "--reason", "role withdrawn",
                        "--json")  # fmt: skip
    assert json.loads(ended.stdout)["ended"] >= 1
    after = browser.get(console.url + CONSOLE + "/", allow_redirects=False, timeout=10)
    assert after.status_code == 302 and "/login" in after.headers["Location"]


def test_the_audit_page_shows_the_last_verification(console: Gateway) -> None:
    console.cli("audit", "verify")
    browser = sign_in(console, "audrey", CONSOLE + "/audit")
    page = browser.get(console.url + CONSOLE + "/audit", timeout=10)
    assert 'data-testid="last-verify" class="ok"' in page.text
    assert "no tampering found" in page.text


def test_access_rules_filter_by_vendor_and_page(console: Gateway) -> None:
    browser = sign_in(console, "ann", CONSOLE + "/access")
    acme = browser.get(console.url + CONSOLE + "/access", params={"vendor": "acme"}, timeout=10)
    assert acme.status_code == 200
    assert "vendor:acme" in acme.text and "lab-idp:carol" not in acme.text
    everyone = browser.get(console.url + CONSOLE + "/access", params={"page": "1"}, timeout=10)
    assert "lab-idp:carol" in everyone.text
    beyond = browser.get(console.url + CONSOLE + "/access", params={"page": "99"}, timeout=10)
    assert beyond.status_code == 200 and "rule-row" not in beyond.text


def test_locks_and_history_pages_list_everything_in_pages(console: Gateway) -> None:
    browser = sign_in(console, "ann", CONSOLE + "/locks")
    made = console.cli("lock", "contractor", "acme-idp:bob", "--reason", "paging", "--json")
    import json

    lock_id = json.loads(made.stdout)["id"]
    console.cli("unlock", str(lock_id), "--reason", "paging done")
    active = browser.get(console.url + CONSOLE + "/locks", timeout=10).text
    every = browser.get(console.url + CONSOLE + "/locks", params={"all": "1"}, timeout=10).text
    assert f">{lock_id}</a>" not in active and f">{lock_id}</a>" in every
    history = browser.get(console.url + CONSOLE + "/access/history", timeout=10)
    assert history.status_code == 200 and "version-row" in history.text
    empty = browser.get(console.url + CONSOLE + "/access/history", params={"before": "1"},
                        timeout=10)  # fmt: skip
    assert "version-row" not in empty.text
