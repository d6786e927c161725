"""The console's kill switch (admins): lock in one form, the exposure snapshot right after,
lifts with the two-person rule. The same services as `gateway lock` and the locks API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from gateway.console.login import require
from gateway.lockout import LOCK_KINDS, LockError, create_lock, list_locks
from gateway.lockout.lifts import approve_lift, pending_requests, request_lift
from gateway.lockout.store import check_target, get_lock, parse_duration
from gateway.lockout.targets import unknown_target_problem

LOCKS_PER_PAGE = 100


def _services() -> Any:
    return current_app.extensions["gateway"]


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/locks", "locks", require("admin")(locks_page), methods=["GET"])
    blueprint.add_url_rule("/locks", "lock", require("admin")(lock), methods=["POST"])
    blueprint.add_url_rule("/locks/<int:lock_id>", "lock_page", require("admin")(lock_page))
    blueprint.add_url_rule(
        "/locks/<int:lock_id>/lift", "lift", require("admin")(lift), methods=["POST"]
    )
    blueprint.add_url_rule(
        "/lift-requests/<int:request_id>/approve",
        "approve",
        require("admin")(approve),
        methods=["POST"],
    )


def locks_page(problems: dict[str, str] | None = None, form: dict[str, str] | None = None) -> Any:
    services = _services()
    everything = request.args.get("all") == "1"
    locks = list_locks(services.db, include_inactive=everything)
    page_text = request.args.get("page", "1")
    page = int(page_text) if page_text.isdigit() and int(page_text) > 0 else 1
    pages = max(1, -(-len(locks) // LOCKS_PER_PAGE))
    return render_template(
        "locks.html",
        locks=locks[(page - 1) * LOCKS_PER_PAGE : page * LOCKS_PER_PAGE],
        paging={"page": page, "pages": pages, "all": everything},
        requests=pending_requests(services.db),
        kinds=LOCK_KINDS,
        two_person=services.config.lockout.two_person_lift,
        problems=problems or {},
        form=form or {},
    ), (400 if problems else 200)


def lock() -> Any:
    services = _services()
    form = {
        name: request.form.get(name, "").strip() for name in ("kind", "target", "reason", "ttl")
    }
    force = request.form.get("force") == "on"
    problems: dict[str, str] = {}
    if form["kind"] not in LOCK_KINDS:
        problems["kind"] = f"one of {', '.join(LOCK_KINDS)}"
    if not form["target"]:
        problems["target"] = "who or what is cut off"
    if not form["reason"]:
        problems["reason"] = "say why"
    ttl = None
    if form["ttl"]:
        try:
            ttl = parse_duration(form["ttl"])
        except (LockError, OverflowError, ValueError):
            problems["ttl"] = "a duration like 30m, 24h or 7d, or empty for until lifted"
    if not problems:
        problem = check_target(services.config, form["kind"], form["target"])
        if problem is None and not force:
            problem = unknown_target_problem(
                services.db, services.config, form["kind"], form["target"]
            )
        if problem:
            problems["target"] = problem
    if problems:
        return locks_page(problems, form)
    made = create_lock(
        services.db,
        kind=form["kind"],
        target=form["target"],
        reason=form["reason"],
        actor=g.principal.policy_subject,
        ttl=ttl,
        exposure_days=services.config.lockout.exposure_days,
        catalogue_upstream=services.config.catalogue.upstream,
        forced=force,
    )
    return redirect(url_for("console.lock_page", lock_id=made["id"]), code=303)


def lock_page(lock_id: int, message: str | None = None) -> Any:
    services = _services()
    try:
        found = get_lock(services.db, lock_id)
    except LockError as error:
        return render_template("error.html", message=error.message), error.status
    waiting = [r for r in pending_requests(services.db) if r["lock_id"] == lock_id]
    return render_template(
        "lock.html",
        lock=found,
        waiting=waiting,
        message=message,
        two_person=found["kind"] in services.config.lockout.two_person_lift,
        viewer=g.principal.policy_subject,
    )


def lift(lock_id: int) -> Any:
    services = _services()
    lockout = services.config.lockout
    try:
        outcome = request_lift(
            services.db,
            lock_id,
            actor=g.principal.policy_subject,
            reason=request.form.get("reason", ""),
            two_person_kinds=lockout.two_person_lift,
            ttl=timedelta(minutes=lockout.lift_request_ttl_minutes),
        )
    except LockError as error:
        return lock_page(lock_id, message=error.message)
    if outcome.lock is not None:
        return lock_page(lock_id, message="Lifted: access returns within a second.")
    assert outcome.request is not None
    return lock_page(
        lock_id,
        message=f"Lift request {outcome.request['id']} awaits a second admin's approval"
        f" until {outcome.request['expires_at']}.",
    )


def approve(request_id: int) -> Any:
    services = _services()
    try:
        lifted = approve_lift(services.db, request_id, actor=g.principal.policy_subject)
    except LockError as error:
        return render_template("error.html", message=error.message), error.status
    return lock_page(lifted["id"], message="Approved and lifted: access returns within a second.")
