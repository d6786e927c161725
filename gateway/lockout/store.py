"""Locks in the database: create (with the exposure snapshot), lift, list. Never deleted."""

from __future__ import annotations

import logging
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, func, insert, select, text, update
from sqlalchemy.orm import Session

from gateway import notify
from gateway.config import Config
from gateway.db.models import AccessEvent, CanaryRecord, Lock
from gateway.policy.store import record_admin_event
from gateway.timestamps import rfc3339

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "gateway_locks"
LOCK_KINDS = ("vendor", "contractor", "issuer", "project")
_TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,254}\Z")
_DURATION = re.compile(r"^(\d+)([smhd])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_SECONDS = 3650 * 86400


class LockError(ValueError):
    """Refused lock input; `field` names what is wrong."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def parse_duration(value: str) -> timedelta:
    """`90s`, `15m`, `24h`, `7d`."""
    match = _DURATION.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise LockError("ttl", f"{value!r} is not a duration like 30m, 24h or 7d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_TTL_SECONDS:
        raise LockError("ttl", "a lock lasts at most 3650d; leave the TTL out for no expiry")
    return timedelta(seconds=seconds)


def _notify(connection: Any) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_notify(:c, 'changed')"), {"c": NOTIFY_CHANNEL})


def exposure_summary(
    db: Engine, kind: str, target: str, days: int, catalogue_upstream: str = "default"
) -> dict[str, Any]:
    """What this vendor's (or contractor's) people received in the last `days` days."""
    since = datetime.now(UTC) - timedelta(days=days)
    conditions = [
        AccessEvent.time >= since,
        AccessEvent.decision == "allow",
        AccessEvent.record_id.is_not(None),
    ]
    if kind == "vendor":
        conditions.append(AccessEvent.vendor == target)
    elif kind == "contractor":
        issuer, _, subject = target.partition(":")
        conditions += [AccessEvent.issuer == issuer, AccessEvent.subject == subject]
    elif kind == "project":
        conditions.append(AccessEvent.project == target)
    else:
        issuer = target
        conditions.append(AccessEvent.issuer == issuer)
    query = (
        select(
            AccessEvent.project,
            func.count(func.distinct(AccessEvent.record_id)),
            func.count(func.distinct(AccessEvent.subject)),
            func.min(AccessEvent.time),
            func.max(AccessEvent.time),
        )
        .where(*conditions)
        .group_by(AccessEvent.project)
        .order_by(AccessEvent.project)
    )
    contractors = select(func.count(func.distinct(AccessEvent.subject))).where(*conditions)
    with db.connect() as connection:
        rows = connection.execute(query).all()
        total_contractors = connection.execute(contractors).scalar_one()
    from gateway.audit.exposure import catalogue_denominators

    projects = [
        {
            "project": row[0],
            "task": None,
            "distinct_records": row[1],
            "contractors": row[2],
            "first_access": _iso(row[3]),
            "last_access": _iso(row[4]),
        }
        for row in rows
    ]
    # Out of how many: the catalogue's records of each project (null when it has none).
    denominators = catalogue_denominators(db, catalogue_upstream, projects)
    for project in projects:
        del project["task"]
    distinct = sum(row[1] for row in rows)
    total = denominators["total"]
    return {
        "window_days": days,
        "since": rfc3339(since),
        "contractors": total_contractors,
        "distinct_records": distinct,
        "catalogue_records": total,
        "share": round(distinct / total, 4) if total else None,
        "projects": projects,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value)


def create_lock(
    db: Engine,
    *,
    kind: str,
    target: str,
    reason: str,
    actor: str,
    ttl: timedelta | None = None,
    exposure_days: int = 30,
    catalogue_upstream: str = "default",
    forced: bool = False,
    snapshot_in_background: bool = False,
) -> dict[str, Any]:
    """Store a lock (in force on every worker within a second); `forced`: the admin locked a
    target nothing knew yet, on purpose."""
    if kind not in LOCK_KINDS:
        raise LockError("kind", f"must be one of {list(LOCK_KINDS)}")
    if not isinstance(target, str) or not _TARGET.match(target):
        raise LockError("target", f"{target!r} is not a valid {kind} name")
    if kind == "contractor" and ":" not in target:
        raise LockError("target", "a contractor is named <issuer>:<sub>, e.g. acme-idp:alice")
    if not isinstance(reason, str) or not reason.strip():
        raise LockError("reason", "a reason is required")
    if kind == "contractor" and not target.partition(":")[2]:
        raise LockError("target", "a contractor is named <issuer>:<sub>, e.g. acme-idp:alice")
    if ttl is not None and ttl.total_seconds() > MAX_TTL_SECONDS:
        raise LockError("ttl", "a lock lasts at most 3650d; leave the TTL out for no expiry")
    now = datetime.now(UTC)
    with db.begin() as connection:
        lock_id = connection.execute(
            insert(Lock).values(
                kind=kind,
                target=target,
                reason=reason.strip(),
                actor=actor,
                created_at=now,
                expires_at=now + ttl if ttl else None,
                exposure="null",
            )
        ).inserted_primary_key[0]
        record_admin_event(
            connection,
            actor=actor,
            action="lock.create",
            target=f"{kind}:{target}",
            reason=reason.strip(),
            after={
                "lock_id": lock_id,
                "ttl_seconds": ttl.total_seconds() if ttl else None,
                **({"forced_unknown_target": True} if forced else {}),
            },
            time=now,
        )
        _notify(connection)
    # The lock is in force first; the blast radius is computed after, off the critical path.
    # Failing to compute it must not make the caller think the lock failed (and retry).
    if kind != "project":
        if snapshot_in_background:
            threading.Thread(
                target=_snapshot_exposure,
                args=(db, lock_id, kind, target, exposure_days, catalogue_upstream),
                name=f"lock-{lock_id}-exposure",
                daemon=True,
            ).start()
        else:
            _snapshot_exposure(db, lock_id, kind, target, exposure_days, catalogue_upstream)
    lock = get_lock(db, lock_id)
    notify.lock_created(lock)
    return lock


def _snapshot_exposure(
    db: Engine, lock_id: int, kind: str, target: str, days: int, catalogue_upstream: str
) -> None:
    try:
        exposure = exposure_summary(db, kind, target, days, catalogue_upstream)
        with db.begin() as connection:
            connection.execute(
                update(Lock)
                .where(Lock.id == lock_id)
                .values(exposure=orjson.dumps(exposure).decode())
            )
    except Exception as error:  # the lock itself is committed and in force
        log.error("exposure snapshot for lock %s failed: %s", lock_id, error)


def lift_lock(db: Engine, lock_id: int, *, actor: str, reason: str) -> dict[str, Any]:
    if not isinstance(reason, str) or not reason.strip():
        raise LockError("reason", "a reason is required")
    now = datetime.now(UTC)
    with db.begin() as connection:
        row = Session(bind=connection).get(Lock, lock_id)
        if row is None:
            raise LockError("lock_id", f"no lock {lock_id}", status=404)
        if row.lifted_at is not None:
            raise LockError("lock_id", f"lock {lock_id} was already lifted", status=409)
        lifted = connection.execute(
            update(Lock)
            .where(Lock.id == lock_id, Lock.lifted_at.is_(None))
            .values(lifted_at=now, lifted_by=actor, lift_reason=reason.strip())
        )
        if lifted.rowcount != 1:  # lifted concurrently by someone else
            raise LockError("lock_id", f"lock {lock_id} was already lifted", status=409)
        record_admin_event(
            connection,
            actor=actor,
            action="lock.lift",
            target=f"{row.kind}:{row.target}",
            reason=reason.strip(),
            before={"lock_id": lock_id},
            time=now,
        )
        _notify(connection)
    lock = get_lock(db, lock_id)
    notify.lock_lifted(lock)
    return lock


def get_lock(db: Engine, lock_id: int) -> dict[str, Any]:
    with Session(db) as session:
        row = session.get(Lock, lock_id)
        if row is None:
            raise LockError("lock_id", f"no lock {lock_id}", status=404)
        return lock_as_dict(row)


def list_locks(db: Engine, *, include_inactive: bool = False) -> list[dict[str, Any]]:
    with Session(db) as session:
        locks = [
            lock_as_dict(row) for row in session.scalars(select(Lock).order_by(Lock.id.desc()))
        ]
    return locks if include_inactive else [lock for lock in locks if lock["active"]]


def lock_as_dict(row: Lock) -> dict[str, Any]:
    expires = _aware(row.expires_at)
    active = row.lifted_at is None and (expires is None or expires > datetime.now(UTC))
    return {
        "id": row.id,
        "kind": row.kind,
        "target": row.target,
        "reason": row.reason,
        "actor": row.actor,
        "created_at": _iso(row.created_at),
        "expires_at": _iso(row.expires_at),
        "active": active,
        "lifted_at": _iso(row.lifted_at),
        "lifted_by": row.lifted_by,
        "lift_reason": row.lift_reason,
        "exposure": orjson.loads(row.exposure or "null"),
    }


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def active_lock_keys(db: Engine) -> dict[tuple[str, str], tuple[int, float | None]]:
    """(kind, target) → (lock id, expiry epoch) for every lock not lifted."""
    with db.connect() as connection:
        rows = connection.execute(
            select(Lock.id, Lock.kind, Lock.target, Lock.expires_at).where(Lock.lifted_at.is_(None))
        ).all()
    keys: dict[tuple[str, str], tuple[int, float | None]] = {}
    for lock_id, kind, target, expires_at in rows:
        expiry = _aware(expires_at).timestamp() if expires_at is not None else None
        previous = keys.get((kind, target))
        if previous is None or _outlasts(expiry, previous[1]):
            keys[(kind, target)] = (lock_id, expiry)
    return keys


def canary_record_ids(db: Engine) -> frozenset[str]:
    """Records nobody should fetch; the pipeline trips a lock on the first that leaves."""
    with db.connect() as connection:
        return frozenset(connection.execute(select(CanaryRecord.record_id)).scalars())


def notify_guards_changed(connection: Any) -> None:
    """Tell every worker to re-read its locks and canaries now (PostgreSQL; else polled)."""
    _notify(connection)


def _outlasts(a: float | None, b: float | None) -> bool:
    return a is None or (b is not None and a > b)


def check_target(config: Config, kind: str, target: str) -> str | None:
    """Why `target` cannot be a `kind` lock under this configuration, or None.

    A lock that can never match (a vendor no issuer can vouch for, an issuer name that is
    not configured, a contractor of such an issuer, a project outside the configured list)
    would look like protection while protecting nothing, so it is refused, not stored.
    """
    issuers = sorted(issuer.name for issuer in config.issuers)
    if kind == "vendor" and all(issuer.vendor_claim is None for issuer in config.issuers):
        # Every issuer binds its tokens to one vendor: no other vendor can ever appear.
        vendors = sorted({issuer.vendor for issuer in config.issuers if issuer.vendor})
        if target not in vendors:
            return f"no configured issuer binds vendor {target!r} (vendors: {', '.join(vendors)})"
    if kind == "issuer" and target not in issuers:
        return f"{target!r} is not a configured issuer name (issuers: {', '.join(issuers)})"
    if kind == "contractor":
        issuer, sep, subject = target.partition(":")
        if not sep or not subject or issuer not in issuers:
            return (
                f"{target!r} must be <issuer name>:<sub>, e.g. acme-idp:alice "
                f"(issuers: {', '.join(issuers)})"
            )
    projects = sorted(project.name for project in config.projects)
    if kind == "project" and projects and target not in projects:
        return f"unknown project {target!r} (projects: {', '.join(projects)})"
    return None
