"""Kill switch: locks on a vendor, contractor, issuer or project, enforced everywhere."""

from gateway.lockout.state import LockHit, LockState
from gateway.lockout.store import (
    LOCK_KINDS,
    LockError,
    create_lock,
    lift_lock,
    list_locks,
    lock_as_dict,
)

__all__ = [
    "LOCK_KINDS",
    "LockError",
    "LockHit",
    "LockState",
    "create_lock",
    "lift_lock",
    "list_locks",
    "lock_as_dict",
]
