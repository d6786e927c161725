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

from flask import Blueprint, current_app, jsonify, request, url_for
from sqlalchemy.exc import SQLAlchemyError

from gateway.api.auth import ADMIN, actor, error_response, require_role
from gateway.api.bodies import InvalidRequest, bad_request, json_object, use_json_bodies
from gateway.config import Config
from gateway.lockout import LOCK_KINDS, LockError, create_lock, lift_lock, list_locks
from gateway.lockout.store import check_target, get_lock, parse_duration
from gateway.lockout.targets import unknown_target_problem

log = logging.getLogger(__name__)

locks_blueprint = Blueprint("locks", __name__, url_prefix="/_gateway/admin/locks")

MAX_BODY_BYTES = 64 * 1024
use_json_bodies(locks_blueprint)
MAX_REASON_CHARS = 4000
# A lock meant to outlast this is one to lift by hand; longer TTLs overflow datetimes anyway.
MAX_TTL = timedelta(days=3650)
# Lock ids are a 32-bit column; a larger id names no lock (and must not reach the database).
MAX_LOCK_ID = 2**31 - 1
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


@locks_blueprint.errorhandler(LockError)
def _refused(error: LockError) -> Any:
    if error.status == 404:
        return error_response(404, "not_found", error.message)
    if error.status == 409:
        return error_response(409, "already_lifted", error.message)
    return bad_request({error.field: error.message})


@locks_blueprint.errorhandler(SQLAlchemyError)
def _database(error: SQLAlchemyError) -> Any:
    log.error("lock store unavailable: %s", error)
    return error_response(503, "database_unavailable", "the lock store cannot be reached")


# --- input --------------------------------------------------------------------------------


def _reason(data: dict[str, Any], fields: dict[str, str]) -> str | None:
    reason = data.get("reason")
    if reason is None:
        fields["reason"] = "is required: say why"
    elif not isinstance(reason, str) or not reason.strip():
        fields["reason"] = "must be a non-empty string"
    elif len(reason) > MAX_REASON_CHARS:
        fields["reason"] = f"must be at most {MAX_REASON_CHARS} characters"
    else:
        return reason
    return None


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
    data = json_object(MAX_BODY_BYTES, ("kind", "target", "reason", "ttl", "force"))
    fields: dict[str, str] = {}
    force = data.get("force", False)
    if not isinstance(force, bool):
        fields["force"] = "must be true or false"
        force = False
    kind = data.get("kind")
    if kind is None:
        fields["kind"] = f"is required: one of {', '.join(LOCK_KINDS)}"
    elif kind not in LOCK_KINDS:
        fields["kind"] = f"must be one of {', '.join(LOCK_KINDS)}"
    target = data.get("target")
    if target is None:
        fields["target"] = "is required"
    elif not isinstance(target, str) or not target:
        fields["target"] = "must be a non-empty string"
    elif kind in LOCK_KINDS:
        problem = check_target(config, kind, target)
        if problem is None and not force:
            problem = unknown_target_problem(_db(), config, kind, target)
        if problem:
            fields["target"] = problem
    reason = _reason(data, fields)
    ttl = None
    raw_ttl = data.get("ttl")
    if raw_ttl is not None:
        if not isinstance(raw_ttl, str):
            fields["ttl"] = "must be a duration like 30m, 24h or 7d, or null"
        else:
            try:
                ttl = parse_ttl(raw_ttl)
            except LockError as error:
                fields["ttl"] = error.message
    if fields:
        raise InvalidRequest(fields)
    assert isinstance(kind, str) and isinstance(target, str) and reason is not None
    return kind, target, reason, ttl, force


def _flag(name: str) -> bool:
    unknown = sorted(set(request.args) - {name})
    if unknown:
        raise InvalidRequest({key[:100]: "unknown query parameter" for key in unknown[:20]})
    values = request.args.getlist(name)
    if not values:
        return False
    if len(values) > 1:
        raise InvalidRequest({name: "give it once"})
    value = values[0].strip().lower()
    if value not in _TRUE + _FALSE:
        raise InvalidRequest({name: "must be true or false"})
    return value in _TRUE


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
    include_inactive = _flag("all")
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
    data = json_object(MAX_BODY_BYTES, ("reason",))
    fields: dict[str, str] = {}
    reason = _reason(data, fields)
    if fields:
        raise InvalidRequest(fields)
    assert reason is not None
    if lock_id > MAX_LOCK_ID:
        return error_response(404, "not_found", f"no lock {lock_id}")
    return jsonify(lock_json(lift_lock(_db(), lock_id, actor=actor(), reason=reason)))
