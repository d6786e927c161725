"""Lifting a lock, with the two-person rule for the kinds that need it.

Cutting off a vendor takes one admin; giving a whole vendor (or issuer) its access back
takes two: the first asks (`request_lift`), a different admin approves
(`approve_lift`) before the request expires, and only then is the lock lifted. Other
kinds are lifted at once. Every step is an admin event. The console, the CLI and the API
all call these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from gateway.db.models import LiftRequest, Lock
from gateway.lockout.store import LockError, lift_lock
from gateway.policy.store import record_admin_event
from gateway.timestamps import rfc3339


@dataclass(frozen=True)
class LiftOutcome:
    """A lift done at once (`lock`), or a request now waiting for a second admin."""

    lock: dict[str, Any] | None = None
    request: dict[str, Any] | None = None

    @property
    def lifted(self) -> bool:
        return self.lock is not None


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def request_as_dict(row: LiftRequest, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    expires = _aware(row.expires_at)
    approved = _aware(row.approved_at)
    if approved is not None:
        state = "approved"
    elif expires is not None and expires <= now:
        state = "expired"
    else:
        state = "pending"
    return {
        "id": row.id,
        "lock_id": row.lock_id,
        "requested_by": row.requested_by,
        "reason": row.reason,
        "created_at": rfc3339(_aware(row.created_at)),  # type: ignore[arg-type]
        "expires_at": rfc3339(expires),  # type: ignore[arg-type]
        "approved_by": row.approved_by,
        "approved_at": rfc3339(approved) if approved else None,
        "state": state,
    }


def request_lift(
    db: Engine,
    lock_id: int,
    *,
    actor: str,
    reason: str,
    two_person_kinds: tuple[str, ...],
    ttl: timedelta,
) -> LiftOutcome:
    """Lift now, or (a two-person kind) open a request a second admin must approve."""
    if not isinstance(reason, str) or not reason.strip():
        raise LockError("reason", "a reason is required")
    with Session(db) as session:
        lock = session.get(Lock, lock_id)
        if lock is None:
            raise LockError("lock_id", f"no lock {lock_id}", status=404)
        if lock.lifted_at is not None:
            raise LockError("lock_id", f"lock {lock_id} was already lifted", status=409)
        kind, target = lock.kind, lock.target
    if kind not in two_person_kinds:
        return LiftOutcome(lock=lift_lock(db, lock_id, actor=actor, reason=reason))
    now = datetime.now(UTC)
    with db.begin() as connection:
        pending = connection.execute(
            select(LiftRequest).where(
                LiftRequest.lock_id == lock_id,
                LiftRequest.approved_at.is_(None),
                LiftRequest.expires_at > now,
            )
        ).first()
        if pending is not None:
            raise LockError(
                "lift_request",
                f"lift request {pending.id} for lock {lock_id} already awaits a second admin"
                f" (approve it: gateway unlock --approve {pending.id})",
                status=409,
            )
        created = connection.execute(
            LiftRequest.__table__.insert().values(
                lock_id=lock_id,
                requested_by=actor,
                reason=reason.strip(),
                created_at=now,
                expires_at=now + ttl,
            )
        )
        request_id = created.inserted_primary_key[0]
        record_admin_event(
            connection,
            actor=actor,
            action="lock.lift_requested",
            target=f"{kind}:{target}",
            reason=reason.strip(),
            before={"lock_id": lock_id},
            after={"lift_request": request_id, "expires_at": rfc3339(now + ttl)},
            time=now,
        )
    return LiftOutcome(request=get_request(db, request_id))


def approve_lift(db: Engine, request_id: int, *, actor: str) -> dict[str, Any]:
    """A second admin's approval: the lock is lifted, with the request's reason."""
    now = datetime.now(UTC)
    with Session(db) as session:
        row = session.get(LiftRequest, request_id)
        if row is None:
            raise LockError("request_id", f"no lift request {request_id}", status=404)
        found = request_as_dict(row, now)
    if found["state"] == "approved":
        raise LockError("request_id", f"lift request {request_id} was already approved", 409)
    if found["state"] == "expired":
        raise LockError(
            "request_id", f"lift request {request_id} expired; ask for a new one", status=409
        )
    if found["requested_by"] == actor:
        raise LockError(
            "request_id",
            "the admin who asked for a lift cannot approve it: a second admin must",
            status=403,
        )
    with db.begin() as connection:
        claimed = connection.execute(
            update(LiftRequest)
            .where(LiftRequest.id == request_id, LiftRequest.approved_at.is_(None))
            .values(approved_by=actor, approved_at=now)
        )
        if claimed.rowcount != 1:
            raise LockError("request_id", f"lift request {request_id} was already approved", 409)
        record_admin_event(
            connection,
            actor=actor,
            action="lock.lift_approved",
            target=f"lock:{found['lock_id']}",
            reason=found["reason"],
            before={"lift_request": request_id, "requested_by": found["requested_by"]},
            time=now,
        )
    reason = f"{found['reason']} (asked by {found['requested_by']}, approved by {actor})"
    return lift_lock(db, found["lock_id"], actor=actor, reason=reason)


def get_request(db: Engine, request_id: int) -> dict[str, Any]:
    with Session(db) as session:
        row = session.get(LiftRequest, request_id)
        if row is None:
            raise LockError("request_id", f"no lift request {request_id}", status=404)
        return request_as_dict(row)


def pending_requests(db: Engine) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    with Session(db) as session:
        rows = session.scalars(
            select(LiftRequest)
            .where(LiftRequest.approved_at.is_(None), LiftRequest.expires_at > now)
            .order_by(LiftRequest.id)
        ).all()
        return [request_as_dict(row, now) for row in rows]
