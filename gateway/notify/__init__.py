"""Notifications of locks, lifts and anomaly alerts to webhooks (`[[notify.webhooks]]`).

The services that make locks and alerts (gateway/lockout/store.py,
gateway/anomaly/store.py) announce them here, whichever face called them (API, console,
CLI, canary, automatic lock); each process delivers its own announcements from a
background thread (gateway/notify/sender.py). A process that exits (a CLI command)
waits a bounded time for its deliveries.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.notify.messages import Notification, manifest_link

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.config import Config
    from gateway.notify.sender import Notifier

__all__ = [
    "Notification",
    "active",
    "alert_raised",
    "configure",
    "flush",
    "lock_created",
    "lock_lifted",
]

log = logging.getLogger(__name__)
_process: dict[str, Notifier] = {}


def configure(config: Config, db: Engine) -> Notifier | None:
    """This process's notifier (None without webhooks)."""
    from gateway.notify.sender import Notifier

    close()
    notify = config.notify
    if not notify.webhooks:
        return None
    days = notify.exposure_days or config.lockout.exposure_days
    upstream = config.catalogue.upstream

    def enrich(notification: Notification) -> None:
        _enrich_lock(db, notification, days, upstream)

    notifier = Notifier(notify.webhooks, queue_size=notify.queue_size, enrich=enrich)
    _process["notifier"] = notifier
    return notifier


def close(timeout: float = 0.0) -> None:
    notifier = _process.pop("notifier", None)
    if notifier is not None:
        notifier.close(timeout)


def flush(timeout: float) -> bool:
    notifier = _process.get("notifier")
    return True if notifier is None else notifier.flush(timeout)


def active() -> bool:
    """Whether this process sends notifications (callers skip building them otherwise)."""
    return "notifier" in _process


def _publish(notification: Notification) -> None:
    notifier = _process.get("notifier")
    if notifier is not None:
        notifier.publish(notification)


def lock_created(lock: dict[str, Any]) -> None:
    _publish(Notification("lock", {"lock": _lock_fields(lock)}))


def lock_lifted(lock: dict[str, Any]) -> None:
    _publish(Notification("lift", {"lock": _lock_fields(lock)}))


def alert_raised(alert: dict[str, Any]) -> None:
    fields = {
        key: alert.get(key)
        for key in (
            "id",
            "detector",
            "severity",
            "contractor",
            "vendor",
            "project",
            "window_start",
            "window_end",
            "score",
            "explanation",
            "lock_id",
        )
    }
    _publish(Notification("alert", {"alert": fields}, severity=alert.get("severity")))


def _lock_fields(lock: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in lock.items() if key != "exposure"}


def _enrich_lock(db: Engine, notification: Notification, days: int, upstream: str) -> None:
    """A vendor lock carries what the vendor's people received: the exposure summary and
    the SHA-256 of the exposure manifest over the same window (the responder downloads
    the manifest from the link and checks the digest)."""
    lock = notification.data.get("lock", {})
    if notification.event != "lock" or lock.get("kind") != "vendor":
        return
    from gateway.audit.exposure import parse_exposure_query
    from gateway.audit.manifest import write_manifest
    from gateway.lockout.store import exposure_summary
    from gateway.timestamps import rfc3339_micro

    until = datetime.now(UTC)
    window = {
        "vendor": lock["target"],
        "since": rfc3339_micro(until - timedelta(days=days)),
        "until": rfc3339_micro(until),
        "format": "csv",
    }
    notification.data["exposure"] = exposure_summary(db, "vendor", lock["target"], days, upstream)
    query = parse_exposure_query(window, manifest=True)
    result = write_manifest(db, query, _Discard())  # type: ignore[arg-type]
    notification.data["manifest"] = {
        "sha256": result.sha256,
        "records": result.records,
        "bytes": result.bytes,
        "query": window,
        "download": manifest_link(window),
    }


class _Discard:
    """A file that keeps nothing: write_manifest hashes what it writes."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        return None
