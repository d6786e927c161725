"""The console's pages: thin views over the services the CLI and the API use."""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
)

from gateway.archive.store import ArchiveUnavailable
from gateway.console import access, alerts, explorer, killswitch, login
from gateway.console.security import csrf_ok, csrf_token, secure_headers
from gateway.console.sessions import CONSOLE_PREFIX, ConsoleSessionInterface

console_blueprint = Blueprint(
    "console",
    __name__,
    url_prefix=CONSOLE_PREFIX,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
console_blueprint.after_request(secure_headers)


@console_blueprint.errorhandler(ArchiveUnavailable)
def _archive_unavailable(error: ArchiveUnavailable) -> Any:
    # Fail closed: a page from part of the log would read as "nothing there".
    return render_template("error.html", message=f"archive unavailable: {error}"), 503


@console_blueprint.app_template_global()
def csrf() -> str:
    return csrf_token()


@console_blueprint.app_template_global()
def signed_in() -> dict[str, Any] | None:
    principal = getattr(g, "principal", None)
    if principal is None:
        return None
    return {"subject": principal.policy_subject, "roles": session.get("roles", [])}


def _services() -> Any:
    return current_app.extensions["gateway"]


# --- signing in and out -------------------------------------------------------------------


@console_blueprint.get("/login")
def login_page() -> Any:
    issuers = _services().config.console.issuers
    chosen = request.args.get("issuer")
    target = request.args.get("next")
    if chosen in issuers:
        return login.start_login(chosen, target)
    if len(issuers) == 1:
        return login.start_login(issuers[0], target)
    return render_template("login.html", issuers=issuers, next=target)


@console_blueprint.get("/callback")
def callback() -> Any:
    principal, target_or_problem = login.finish_login()
    if principal is None:
        session.end("login_refused")  # type: ignore[attr-defined]
        return render_template("error.html", message=target_or_problem), 403
    _record(principal.policy_subject, "console.login", {"roles": session.get("roles")})
    return redirect(target_or_problem)


@console_blueprint.post("/logout")
def logout() -> Any:
    if session.get("subject") and not csrf_ok():
        return render_template("error.html", message="missing or wrong CSRF token"), 403
    target = login.logout_target(session.get("id_token"), session.get("issuer"))
    if session.get("subject"):
        _record(session["subject"], "console.logout", {})
    session.end("logout")  # type: ignore[attr-defined]
    return redirect(target)


@console_blueprint.get("/signed-out")
def signed_out() -> Any:
    return render_template("ended.html", reason="logout")


# --- pages -------------------------------------------------------------------------------


@console_blueprint.get("/")
@login.require()
def overview() -> Any:
    from gateway.api.health import readiness_checks
    from gateway.console.overview import overview as figures

    services = _services()
    return render_template(
        "overview.html",
        figures=figures(services.db, services.policy.version),
        readiness=readiness_checks(services),
    )


def _record(actor: str, action: str, after: dict[str, Any]) -> None:
    from gateway.policy.store import record_admin_event

    with _services().db.begin() as connection:
        record_admin_event(
            connection, actor=actor, action=action, target="console", reason="", after=after
        )


killswitch.register(console_blueprint)
explorer.register(console_blueprint)
alerts.register(console_blueprint)
access.register(console_blueprint)


def install_console(app: Flask) -> None:
    """Serve the console when `[console] enabled`: sessions, sign-in clients, pages."""
    services = app.extensions["gateway"]
    app.session_interface = ConsoleSessionInterface(services.db, services.config.console)
    login.register_issuers(app)
    app.register_blueprint(console_blueprint)
