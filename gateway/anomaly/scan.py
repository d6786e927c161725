"""One scan: refresh the rollup, run the detectors on it, store alerts, maybe lock.

Scans run outside the request path (the CLI, or the `watch` process); they read the
access log, never block its writer, and are idempotent: a finding's dedup key
(detector + contractor + window) maps it to the same alert on every rescan.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from gateway import metrics
from gateway.anomaly.config import AnomalyConfig
from gateway.anomaly.detectors import Finding, detect, lookback_days, severity_at_least
from gateway.anomaly.incremental import IncrementalDetector, window_start
from gateway.anomaly.rollup import SqlSource, refresh_rollup, set_state, utc
from gateway.anomaly.store import UpsertResult, escalate_alert, upsert_findings
from gateway.timestamps import rfc3339

log = logging.getLogger(__name__)
AUTO_ACTOR = "anomaly-scan"


@dataclass
class ScanResult:
    since: datetime
    until: datetime
    findings: list[Finding]
    stored: UpsertResult
    rollup: dict[str, Any]
    auto_locks: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    # Seconds per phase: rollup, detectors, store (for `watch` logs and the benchmark).
    phases: dict[str, float] = field(default_factory=dict)
    # An incremental round: vendors and contractors scored again, hours re-read.
    detection: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": rfc3339(self.since),
            "until": rfc3339(self.until),
            "findings": len(self.findings),
            "new_alerts": self.stored.new,
            "updated_alerts": self.stored.updated,
            "unchanged_alerts": len(self.stored.unchanged),
            "rollup": self.rollup,
            "auto_locks": self.auto_locks,
            "seconds": round(self.seconds, 2),
            "phase_seconds": {name: round(value, 2) for name, value in self.phases.items()},
            "detection": self.detection,
        }


def scan(
    engine: Engine,
    config: AnomalyConfig,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    rebuild: bool = False,
    exposure_days: int = 30,
    gateway_config: Any = None,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    incremental: IncrementalDetector | None = None,
) -> ScanResult:
    """One scan. With `incremental` (a `watch` process keeps one across rounds), the
    window starts at a day boundary (`window_start`) and only the vendors and contractors
    whose inputs changed since its last round are scored again: the same findings."""
    started = time.monotonic()
    until = utc(until) if until else datetime.now(UTC)
    if since is None and incremental is not None:
        since = datetime.fromtimestamp(
            window_start(until.timestamp(), config.scan_window_hours), UTC
        )
    since = utc(since) if since else until - timedelta(hours=config.scan_window_hours)
    if since >= until:
        raise ValueError("--since must be before --until")
    first_hour = math.floor(since.timestamp() / 3600) - 24 * lookback_days(config)
    end_hour = math.ceil(until.timestamp() / 3600)
    if on_phase:
        on_phase("aggregating the access log into hourly counts")
    rollup = refresh_rollup(
        engine, first_hour, end_hour, late_hours=config.rollup_late_hours, rebuild=rebuild
    )
    phases: dict[str, float] = {}
    mark = started

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name], mark = now - mark, now

    lap("rollup")
    if incremental is not None:
        findings = incremental.round(
            since.timestamp(), until.timestamp(), on_start=on_start, progress=progress
        )
    else:
        findings = detect(
            SqlSource(engine),
            config,
            since.timestamp(),
            until.timestamp(),
            on_start=on_start,
            progress=progress,
        )
    lap("detectors")
    if on_phase:
        on_phase("storing alerts")
    stored = upsert_findings(engine, findings)
    lap("store")
    result = ScanResult(since, until, findings, stored, rollup, phases=phases)
    if incremental is not None:
        result.detection = incremental.figures.as_dict()
    result.auto_locks = auto_lock(
        engine, config, stored, exposure_days=exposure_days, gateway_config=gateway_config
    )
    result.seconds = time.monotonic() - started
    metrics.ANOMALY_ROUND_SECONDS.observe(result.seconds)
    for detector, count in stored.new_by_detector.items():
        metrics.ANOMALY_ALERTS.labels(detector=detector).inc(count)
    with engine.begin() as connection:
        set_state(
            connection,
            "last_scan",
            {
                "at": rfc3339(datetime.now(UTC)),
                "since": rfc3339(since),
                "until": rfc3339(until),
                "findings": len(findings),
                "new_alerts": len(stored.new),
                "seconds": round(result.seconds, 2),
            },
        )
    return result


def auto_lock(
    engine: Engine,
    config: AnomalyConfig,
    stored: UpsertResult,
    *,
    exposure_days: int = 30,
    gateway_config: Any = None,
) -> list[dict[str, Any]]:
    """Lock right away for the configured detectors and severities (new alerts only)."""
    if not config.auto_lock_detectors or not stored.new:
        return []
    from gateway.anomaly.store import AlertError, get_alert

    locks = []
    ttl = timedelta(hours=config.auto_lock_ttl_hours) if config.auto_lock_ttl_hours else None
    locked_targets: set[str] = set()
    for alert_id in stored.new:
        alert = get_alert(engine, alert_id)
        if alert["detector"] not in config.auto_lock_detectors:
            continue
        if not severity_at_least(alert["severity"], config.auto_lock_min_severity):
            continue
        target = alert["contractor"] if config.auto_lock_kind == "contractor" else alert["vendor"]
        if target in locked_targets:
            continue
        try:
            _, lock = escalate_alert(
                engine,
                alert_id,
                actor=AUTO_ACTOR,
                reason=f"automatic: {alert['detector']} ({alert['severity']})",
                kind=config.auto_lock_kind,
                ttl=ttl,
                exposure_days=exposure_days,
                config=gateway_config,
            )
        except AlertError as error:
            log.warning("alert %s not locked automatically: %s", alert_id, error)
            continue
        locked_targets.add(target)
        locks.append({"alert_id": alert_id, "lock_id": lock["id"], "target": lock["target"]})
    return locks
