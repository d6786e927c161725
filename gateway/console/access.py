"""The console's access pages (admins): who may do what, by vendor and contractor; explain
a decision; grant, deny and revoke with a preview of the change before it is stored (the
same validation and 409-on-stale as the CLI and the API, through `PolicyAdmin`); the
history with diffs and rollback."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from flask import Blueprint, current_app, g, render_template, request

from gateway.console.login import require
from gateway.policy import store
from gateway.policy.admin import PolicyValidationError, subject_name
from gateway.policy.listing import rule_row
from gateway.policy.rules import PolicyFileError, parse_instant

RULES_PER_PAGE = 200
HISTORY_PAGE = 50


def _services() -> Any:
    return current_app.extensions["gateway"]


def _admin() -> Any:
    return _services().policy_admin


def register(blueprint: Blueprint) -> None:
    admin = require("admin")
    blueprint.add_url_rule("/access", "access", admin(access_page))
    blueprint.add_url_rule("/access/explain", "explain", admin(explain_page))
    blueprint.add_url_rule("/access/change", "change", admin(change), methods=["POST"])
    blueprint.add_url_rule("/access/history", "history", admin(history_page))
    blueprint.add_url_rule("/access/versions/<int:version>", "version", admin(version_page))
    blueprint.add_url_rule("/access/rollback", "rollback", admin(rollback), methods=["POST"])


def _vendor_of(subject: str) -> str:
    """The vendor a rule's subject belongs to, for grouping (roles under 'roles')."""
    kind, _, name = subject.partition(":")
    if kind == "vendor":
        return name
    if kind == "role":
        return "roles"
    issuers = {issuer.name: issuer for issuer in _services().config.issuers}
    issuer = issuers.get(kind)
    if issuer is not None and issuer.vendor:
        return issuer.vendor
    return f"issuer {kind}"


def access_page(
    result: Any = None, problems: dict[str, str] | None = None, form: Any = None
) -> Any:
    version, rules = _admin().list_rules()
    wanted_vendor = request.args.get("vendor", "").strip()
    if wanted_vendor:
        rules = [rule for rule in rules if _vendor_of(rule.subject) == wanted_vendor]
    page_text = request.args.get("page", "1")
    page = int(page_text) if page_text.isdigit() and int(page_text) > 0 else 1
    pages = max(1, -(-len(rules) // RULES_PER_PAGE))
    shown = rules[(page - 1) * RULES_PER_PAGE : page * RULES_PER_PAGE]
    now = time.time()
    groups: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for rule in shown:
        groups[_vendor_of(rule.subject)][rule.subject].append(rule_row(rule, now))
    return render_template(
        "access.html",
        version=version,
        groups={vendor: dict(subjects) for vendor, subjects in sorted(groups.items())},
        actions=sorted(_services().config.policy.actions),
        projects=[p.name for p in _services().config.projects],
        result=result,
        problems=problems or {},
        form=form or {},
        paging={"page": page, "pages": pages, "vendor": wanted_vendor, "rules": len(rules)},
    ), (409 if problems and "base_version" in problems else 400 if problems else 200)


def explain_page() -> Any:
    wanted = {
        name: request.args.get(name, "").strip() for name in ("sub", "project", "task", "action")
    }
    explanation = problems = None
    if wanted["sub"] and wanted["project"] and wanted["action"]:
        issuers = {issuer.name: issuer for issuer in _services().config.issuers}
        issuer = issuers.get(wanted["sub"].partition(":")[0])
        vendor = request.args.get("vendor", "").strip() or (issuer.vendor if issuer else "")
        try:
            explanation = _admin().explain(
                sub=wanted["sub"],
                vendor=vendor or "",
                project=wanted["project"],
                task=wanted["task"] or "*",
                action=wanted["action"],
            )
        except PolicyValidationError as error:
            problems = error.errors
    return render_template(
        "explain.html",
        wanted=wanted,
        explanation=explanation,
        problems=problems or {},
        actions=sorted(_services().config.policy.actions),
    ), (400 if problems else 200)


def _window(form: Any) -> tuple[float | None, float | None]:
    until = form.get("until", "").strip()
    return None, (parse_instant(until, "until") if until else None)


def change() -> Any:
    """grant / deny / revoke / role: `step=preview` shows the diff, `step=commit` stores it."""
    form = request.form
    kind = form.get("kind", "")
    commit = form.get("step") == "commit"
    base = form.get("base_version", "")
    base_version = int(base) if base.isdigit() else None
    reason = form.get("reason", "")
    admin = _admin()
    actor = g.principal.policy_subject
    try:
        if kind == "revoke":
            result = admin.revoke(
                actor=actor,
                reason=reason,
                lines=[form.get("rule", "")],
                base_version=base_version,
                dry_run=not commit,
            )
        elif kind in ("grant", "deny"):
            sub, vendor = form.get("sub", "").strip(), form.get("vendor", "").strip()
            if bool(sub) == bool(vendor):
                raise PolicyValidationError({"sub": "give a contractor or a vendor, not both"})
            not_before, not_after = _window(form)
            common = {
                "actor": actor,
                "reason": reason,
                "subject": subject_name(sub=sub or None, vendor=vendor or None),
                "project": form.get("project", "").strip(),
                "task": form.get("task", "").strip() or "*",
                "not_before": not_before,
                "not_after": not_after,
                "base_version": base_version,
                "dry_run": not commit,
                "new_project": form.get("new_project") == "on",
            }
            if kind == "grant":
                role = form.get("role", "").strip() or None
                action = None if role else form.get("action", "").strip() or None
                result = admin.grant(role=role, action=action, **common)
            else:
                result = admin.deny(action=form.get("action", "").strip(), **common)
        elif kind == "role":
            actions = [a.strip() for a in form.get("actions", "").split(",") if a.strip()]
            result = admin.define_role(
                actor=actor,
                reason=reason,
                project=form.get("project", "").strip(),
                role=form.get("role", "").strip(),
                actions=actions,
                base_version=base_version,
                dry_run=not commit,
                new_project=form.get("new_project") == "on",
            )
        else:
            raise PolicyValidationError({"kind": "grant, deny, revoke or role"})
    except PolicyValidationError as error:
        return access_page(problems=error.errors, form=form)
    except PolicyFileError as error:
        return access_page(problems={"until": str(error)}, form=form)
    except store.StaleVersion as error:
        return access_page(
            problems={
                "base_version": f"the policy changed (now version {error.current}) since this"
                " page was read: look again and resubmit"
            },
            form=form,
        )
    touched = sorted({line.split(",")[2].strip() for line in result.added + result.removed})
    return access_page(result={"change": result, "projects": touched, "commit": commit}, form=form)


def history_page() -> Any:
    before = request.args.get("before", "")
    versions = _admin().history(
        limit=HISTORY_PAGE, before=int(before) if before.isdigit() else None
    )
    older = versions[-1].id if len(versions) == HISTORY_PAGE else None
    return render_template("history.html", versions=versions, older=older)


def version_page(version: int) -> Any:
    try:
        info = store.version_info(_services().db, version)
    except KeyError:
        return render_template("error.html", message=f"no policy version {version}"), 404
    current, _ = _admin().rules()
    return render_template("version.html", info=info, current=current)


def rollback() -> Any:
    form = request.form
    version = int(form["version"]) if form.get("version", "").isdigit() else 0
    base = form.get("base_version", "")
    try:
        result = _admin().rollback(
            actor=g.principal.policy_subject,
            reason=form.get("reason", ""),
            version=version,
            base_version=int(base) if base.isdigit() else None,
        )
    except PolicyValidationError as error:
        return render_template("error.html", message="; ".join(error.errors.values())), 400
    except store.StaleVersion as error:
        message = f"the policy changed (now version {error.current}): look again"
        return render_template("error.html", message=message), 409
    return access_page(result={"change": result, "projects": [], "commit": True})
