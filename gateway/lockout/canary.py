"""A canary record fetched through the gateway trips a lock at once, not at the next scan.

Canary records are records nobody has reason to fetch. The first request that returns
one locks the contractor (or the vendor, `[anomaly] canary_lock`) on every worker within
a second, through the same lock store and propagation as `gateway lock`, and raises the
`canary_touch` alert the scan would raise, under the same dedup key, so the scan later
only adds its evidence rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import Engine

from gateway.anomaly.config import AnomalyConfig
from gateway.identity import Principal
from gateway.lockout.state import LockState
from gateway.lockout.store import create_lock

log = logging.getLogger(__name__)

CANARY_ACTOR = "gateway:canary"


@dataclass(frozen=True)
class Trip:
    lock_id: int | None  # None: canary_lock = "none", or the lock could not be stored
    withhold: bool


class CanaryTripwire:
    def __init__(self, db: Engine, config: AnomalyConfig, locks: LockState, exposure_days: int):
        self._db = db
        self._config = config
        self._locks = locks
        self._exposure_days = exposure_days

    def canaries(self, record_ids: list[str]) -> list[str]:
        known = self._locks.canaries
        if not known:
            return []
        return [record_id for record_id in record_ids if record_id in known]

    @property
    def withhold(self) -> bool:
        return self._config.canary_on_fetch == "withhold"

    def trip(
        self,
        principal: Principal,
        record_ids: list[str],
        *,
        request_id: str,
        project: str | None,
        client_ip: str | None,
    ) -> Trip:
        """Lock and alert now. Never raises: the request is answered by the caller."""
        lock_id = self._lock(principal, record_ids[0], request_id)
        self._alert(principal, record_ids, request_id, project, client_ip)
        return Trip(lock_id, self.withhold)

    def _lock(self, principal: Principal, record_id: str, request_id: str) -> int | None:
        kind = self._config.canary_lock
        if kind == "none":
            return None
        target = principal.policy_subject if kind == "contractor" else principal.vendor
        hit = self._locks.check(
            vendor=principal.vendor,
            contractor=principal.policy_subject,
            issuer=principal.issuer,
            project=None,
        )
        if hit is not None and (hit.kind, hit.target) == (kind, target):
            return hit.lock_id  # already locked (a parallel request tripped it first)
        try:
            lock = create_lock(
                self._db,
                kind=kind,
                target=target,
                reason=f"canary record {record_id} fetched (request {request_id})",
                actor=CANARY_ACTOR,
                exposure_days=self._exposure_days,
                snapshot_in_background=True,
            )
        except Exception:
            log.exception(
                "canary %s: the %s lock on %s could not be stored", record_id, kind, target
            )
            return None
        log.warning(
            "canary record %s fetched by %s: %s %s locked (lock %s)",
            record_id,
            principal.policy_subject,
            kind,
            target,
            lock["id"],
        )
        return int(lock["id"])

    def _alert(
        self,
        principal: Principal,
        record_ids: list[str],
        request_id: str,
        project: str | None,
        client_ip: str | None,
    ) -> None:
        from gateway.anomaly.data import Who, contractor_key
        from gateway.anomaly.detectors import Finding, iso
        from gateway.anomaly.store import upsert_findings

        key = contractor_key(principal.issuer, principal.subject, client_ip)
        who = Who(key, principal.issuer, principal.subject, principal.vendor, None)
        now = time.time()
        released = not self.withhold
        findings = [
            Finding(
                "canary_touch",
                "critical" if released else "high",
                who,
                now,
                now + 1,
                now,
                1.0,
                f"canary record {record_id} requested at {iso(now)} from {client_ip} "
                f"({'released' if released else 'withheld'}; {self._config.canary_lock} locked"
                f" at once): records marked as never to be fetched",
                f"canary_touch:{key}:{record_id}",
                project=project,
                evidence={"rows": [], "request_ids": [request_id], "record_id": record_id},
            )
            for record_id in record_ids
        ]
        try:
            upsert_findings(self._db, findings)
        except Exception:
            # The lock stands; the next scan raises the alert from the access rows.
            log.exception("canary alert for request %s could not be stored", request_id)
