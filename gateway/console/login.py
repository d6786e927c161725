"""Signing in to the console: OIDC authorization code with PKCE (authlib's Flask client)
against the `[console] issuers`, and the guard every console request passes.

The roles come from the access token, read by the same verifier as the API's bearer
tokens, so a console user is the same `Principal` with the same roles, locks and actor
name. The guard re-validates that token and re-checks locks on every request: a lock on
the subject, their vendor or issuer ends the session at the next request (locks reach
every worker within a second); a token that no longer validates or no longer carries the
role ends it too.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from authlib.integrations.flask_client import OAuth
from flask import Flask, current_app, g, redirect, render_template, request, session, url_for

from gateway.console.security import csrf_ok, safe_next
from gateway.identity import AuthError, Principal

log = logging.getLogger(__name__)

CONSOLE_ROLES = ("admin", "auditor")


def register_issuers(app: Flask) -> OAuth:
    """One authlib client per console issuer (discovery read when first used)."""
    console = app.extensions["gateway"].config.console
    issuers = {issuer.name: issuer for issuer in app.extensions["gateway"].config.issuers}
    oauth = OAuth(app)
    for name in console.issuers:
        client_kwargs: dict[str, Any] = {
            "scope": "openid email profile",
            "code_challenge_method": "S256",
        }
        if issuers[name].ca_file:
            # The IdP's CA bundle, as for token checks: discovery, JWKS, the token request.
            client_kwargs["verify"] = issuers[name].ca_file
        oauth.register(
            name=name,
            client_id=console.client_id,
            client_secret=console.client_secret,
            server_metadata_url=issuers[name].discovery,
            client_kwargs=client_kwargs,
        )
    app.extensions["console_oauth"] = oauth
    return oauth


def _services() -> Any:
    return current_app.extensions["gateway"]


def callback_url() -> str:
    base = str(_services().config.console.public_url).rstrip("/")
    return base + url_for("console.callback")


def start_login(issuer: str, target: str | None) -> Any:
    client = current_app.extensions["console_oauth"].create_client(issuer)
    session["next"] = safe_next(target)
    session["login_issuer"] = issuer
    return client.authorize_redirect(callback_url())


def finish_login() -> tuple[Principal | None, str]:
    """The signed-in principal (None and why not) after the IdP sent the browser back."""
    issuer = session.get("login_issuer")
    if issuer not in _services().config.console.issuers:
        return None, "no sign-in was started here (or it took too long): start again"
    client = current_app.extensions["console_oauth"].create_client(issuer)
    try:
        token = client.authorize_access_token()
    except Exception as error:  # authlib raises several types for a refused code or state
        log.warning("console sign-in failed at the token step: %s", type(error).__name__)
        return None, f"the identity provider's answer was refused ({type(error).__name__})"
    access = token.get("access_token")
    try:
        principal = _services().verifier.authenticate(f"Bearer {access}")
    except AuthError as error:
        return None, f"the access token was refused: {error.description}"
    if principal.issuer != issuer:
        return None, "the access token is not from the issuer signed in with"
    if not principal.roles & set(CONSOLE_ROLES):
        return None, "the console is for admins and auditors; your account has neither role"
    locked = _lock_of(principal)
    if locked:
        return None, locked
    target = session.get("next") or url_for("console.overview")
    session.clear()
    session.update(
        {
            "subject": principal.policy_subject,
            "issuer": principal.issuer,
            "vendor": principal.vendor,
            "email": principal.email,
            "roles": sorted(principal.roles & set(CONSOLE_ROLES)),
            "access_token": access,
            "id_token": token.get("id_token"),
            "signed_in_at": time.time(),
            "csrf": secrets.token_urlsafe(32),
            "next": target,
        }
    )
    session.rotate = True  # type: ignore[attr-defined]
    return principal, target


def logout_target(id_token: str | None, issuer: str | None) -> str:
    """Where the browser goes after logout: the IdP's end_session_endpoint (RP-initiated
    logout) when it advertises one, else the console's signed-out page."""
    signed_out = str(_services().config.console.public_url).rstrip("/") + url_for(
        "console.signed_out"
    )
    if issuer in _services().config.console.issuers:
        client = current_app.extensions["console_oauth"].create_client(issuer)
        try:
            metadata = client.load_server_metadata()
        except Exception:  # the IdP is down: log out here at least
            metadata = {}
        endpoint = metadata.get("end_session_endpoint")
        if endpoint:
            params = {"post_logout_redirect_uri": signed_out, "state": secrets.token_urlsafe(8)}
            if id_token:
                params["id_token_hint"] = id_token
            return f"{endpoint}?{urlencode(params)}"
    return signed_out


def _lock_of(principal: Principal) -> str | None:
    hit = _services().locks.check(
        vendor=principal.vendor,
        contractor=principal.policy_subject,
        issuer=principal.issuer,
        project=None,
    )
    if hit is None:
        return None
    return f"{hit.kind} {hit.target} is locked (lock {hit.lock_id}): access is cut off"


def signed_in_principal() -> tuple[Principal | None, str | None]:
    """The session's principal re-validated now, or None and why the session ends."""
    access = session.get("access_token")
    if not session.get("subject") or not access:
        return None, None
    try:
        principal = _services().verifier.authenticate(f"Bearer {access}")
    except AuthError:
        return None, "token_invalid"
    if principal.policy_subject != session.get("subject"):
        return None, "token_invalid"
    if not principal.roles & set(session.get("roles", [])):
        return None, "role_lost"
    if _lock_of(principal):
        return None, "locked"
    if not _services().locks.fresh:
        return None, "lock_state_unknown"
    return principal, None


def require(*roles: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A console page for these roles (any console role when none are named)."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            principal, ended = signed_in_principal()
            if principal is None:
                if ended:
                    session.end(ended)  # type: ignore[attr-defined]
                    return render_template("ended.html", reason=ended), 401
                if request.method != "GET":
                    return render_template("ended.html", reason="signed_out"), 401
                return redirect(url_for("console.login_page", next=request.full_path.rstrip("?")))
            if request.method in ("POST", "PUT", "PATCH", "DELETE") and not csrf_ok():
                return render_template("error.html", message="missing or wrong CSRF token"), 403
            wanted = set(roles or CONSOLE_ROLES)
            if not principal.roles & wanted:
                message = f"this page needs the {' or '.join(sorted(wanted))} role"
                return render_template("error.html", message=message), 403
            g.principal = principal
            return view(*args, **kwargs)

        return guarded

    return decorate
