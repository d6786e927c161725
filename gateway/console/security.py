"""What keeps the console's pages safe in a browser: return URLs that stay in the console,
a CSRF token on every state-changing request, and headers that forbid framing, inline
scripts and caching of audit data."""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import unquote, urlsplit

from flask import Response, request, session

from gateway.console.sessions import CONSOLE_PREFIX

HOME = CONSOLE_PREFIX + "/"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ]
)


def safe_next(target: str | None) -> str:
    """`target` if it is a path inside the console, else the console's home.

    Every open-redirect form is refused: another host (`https://lab.evil`,
    `https://evil@lab`), scheme-relative (`//evil`), backslashes browsers read as slashes
    (`/\\evil`), control characters browsers drop (`/%09/evil`), and anything outside
    /_gateway/console/.
    """
    if not target or len(target) > 2048:
        return HOME
    decoded = unquote(target)
    for text in (target, decoded):
        if "\\" in text or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
            return HOME
        if text.startswith("//"):
            return HOME
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return HOME
    path = parts.path
    if not (path == CONSOLE_PREFIX or path.startswith(HOME)) or "/../" in decoded + "/":
        return HOME
    if "//" in path:
        return HOME
    return target


def csrf_token() -> str:
    """The session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok() -> bool:
    """Whether a state-changing request carries the session's token (form or header)."""
    expected = session.get("csrf")
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    return bool(expected and given) and hmac.compare_digest(str(expected), str(given))


def secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # Pages show policy and audit data: never kept by the browser or a shared cache.
    response.headers["Cache-Control"] = "no-store"
    return response
