"""Kill-switch API under /_gateway/admin/locks: thin views over gateway.lockout.

    POST /_gateway/admin/locks                 lock a vendor, contractor, issuer or project
    GET  /_gateway/admin/locks?all=false       the locks in force (all=true: lifted, expired too)
    GET  /_gateway/admin/locks/<id>            one lock, with its exposure snapshot
    POST /_gateway/admin/locks/<id>/lift       lift it, with a reason

Admins only. The store records every lock and lift in admin_events and pushes it to every
gateway worker. Bad input is a 400 `invalid_request` whose `fields` name what is wrong; an
unknown lock is a 404, lifting a lifted lock a 409, an unreachable database a 503.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint, current_app, jsonify, url_for
from sqlalchemy.exc import SQLAlchemyError

from gateway.api.auth import ADMIN, actor, error_response, require_role
from gateway.api.bodies import (
    InvalidRequest,
    bad_request,
    request_body,
    request_query,
    use_json_bodies,
)
from gateway.config import Config
from gateway.lockout import LockError, create_lock, list_locks
from gateway.lockout.store import check_target, get_lock, parse_duration
from gateway.lockout.targets import unknown_target_problem

log = logging.getLogger(__name__)

locks_blueprint = Blueprint("locks", __name__, url_prefix="/_gateway/admin/locks")

MAX_BODY_BYTES = 64 * 1024
use_json_bodies(locks_blueprint)
# A lock meant to outlast this is one to lift by hand; longer TTLs overflow datetimes anyway.
MAX_TTL = timedelta(days=3650)
# Lock ids are a 32-bit column; a larger id names no lock (and must not reach the database).
MAX_LOCK_ID = 2**31 - 1


@locks_blueprint.errorhandler(LockError)
def _refused(error: LockError) -> Any:
    if error.status == 404:
        return error_response(404, "not_found", error.message)
    if error.status == 409:
        name = "already_lifted" if error.field == "lock_id" else "conflict"
        return error_response(409, name, error.message)
    if error.status == 403:
        return error_response(403, "forbidden", error.message)
    return bad_request({error.field: error.message})


@locks_blueprint.errorhandler(SQLAlchemyError)
def _database(error: SQLAlchemyError) -> Any:
    log.error("lock store unavailable: %s", error)
    return error_response(503, "database_unavailable", "the lock store cannot be reached")


# --- input --------------------------------------------------------------------------------


def parse_ttl(value: str) -> timedelta:
    """`30m`, `24h`, `7d` → a timedelta, bounded; LockError('ttl', ...) otherwise."""
    try:
        ttl = parse_duration(value)
    except OverflowError:
        ttl = MAX_TTL + timedelta(days=1)
    if ttl > MAX_TTL:
        raise LockError("ttl", "must be at most 3650d; leave it out for a lock until lifted")
    return ttl


def _lock_request(config: Config) -> tuple[str, str, str, timedelta | None, bool]:
    """Checked against the document's LockRequest, then against what the gateway knows."""
    data = request_body("LockRequest", MAX_BODY_BYTES)
    kind, target, reason = data["kind"], data["target"], data["reason"]
    force = data.get("force", False)
    problem = check_target(config, kind, target)
    if problem is None and not force:
        problem = unknown_target_problem(_db(), config, kind, target)
    if problem:
        raise InvalidRequest({"target": problem})
    return kind, target, reason, _ttl(data.get("ttl")), force


def _ttl(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_ttl(text)
    except LockError as error:
        raise InvalidRequest({"ttl": error.message}) from None


# --- output -------------------------------------------------------------------------------


def lock_state(lock: dict[str, Any]) -> str:
    if lock["lifted_at"] is not None:
        return "lifted"
    return "active" if lock["active"] else "expired"


def lock_json(lock: dict[str, Any]) -> dict[str, Any]:
    return {**lock, "state": lock_state(lock)}


def _config() -> Config:
    return current_app.extensions["gateway"].config


def _db() -> Any:
    return current_app.extensions["gateway"].db


# --- views --------------------------------------------------------------------------------


@locks_blueprint.post("")
@require_role(ADMIN)
def create() -> Any:
    config = _config()
    kind, target, reason, ttl, force = _lock_request(config)
    lock = create_lock(
        _db(),
        kind=kind,
        target=target,
        reason=reason,
        actor=actor(),
        ttl=ttl,
        exposure_days=config.lockout.exposure_days,
        catalogue_upstream=config.catalogue.upstream,
        forced=force,
    )
    response = jsonify(lock_json(lock))
    response.headers["Location"] = url_for("locks.show", lock_id=lock["id"])
    return response, 201


@locks_blueprint.get("")
@require_role(ADMIN)
def index() -> Any:
    include_inactive = request_query("LockListQuery").get("all", False)
    locks = list_locks(_db(), include_inactive=include_inactive)
    return jsonify(locks=[lock_json(lock) for lock in locks])


@locks_blueprint.get("/<int:lock_id>")
@require_role(ADMIN)
def show(lock_id: int) -> Any:
    if lock_id > MAX_LOCK_ID:
        return error_response(404, "not_found", f"no lock {lock_id}")
    return jsonify(lock_json(get_lock(_db(), lock_id)))


@locks_blueprint.post("/<int:lock_id>/lift")
@require_role(ADMIN)
def lift(lock_id: int) -> Any:
    """Lift now, or (vendor and issuer locks) ask for a second admin's approval: 202."""
    from gateway.lockout.lifts import request_lift

    reason = request_body("LiftRequest", MAX_BODY_BYTES)["reason"]
    if lock_id > MAX_LOCK_ID:
        return error_response(404, "not_found", f"no lock {lock_id}")
    lockout = _config().lockout
    outcome = request_lift(
        _db(),
        lock_id,
        actor=actor(),
        reason=reason,
        two_person_kinds=lockout.two_person_lift,
        ttl=timedelta(minutes=lockout.lift_request_ttl_minutes),
    )
    if outcome.lock is not None:
        return jsonify(lock_json(outcome.lock))
    return jsonify(lifted=False, lift_request=outcome.request), 202


@locks_blueprint.get("/lift-requests")
@require_role(ADMIN)
def lift_requests() -> Any:
    from gateway.lockout.lifts import pending_requests

    return jsonify(lift_requests=pending_requests(_db()))


@locks_blueprint.post("/lift-requests/<int:request_id>/approve")
@require_role(ADMIN)
def approve(request_id: int) -> Any:
    """A second admin approves a lift request; the lock is lifted."""
    from gateway.lockout.lifts import approve_lift

    request_body("ApproveRequest", MAX_BODY_BYTES)
    if request_id > MAX_LOCK_ID:
        return error_response(404, "not_found", f"no lift request {request_id}")
    return jsonify(lock_json(approve_lift(_db(), request_id, actor=actor())))
