"""What a notification says: the gateway's JSON, or a Slack message."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from gateway.timestamps import rfc3339


@dataclass
class Notification:
    event: str  # lock | lift | alert
    data: dict[str, Any]
    severity: str | None = None  # alerts: filtered per webhook
    occurred_at: str = field(default_factory=lambda: rfc3339(datetime.now(UTC)))


def json_body(notification: Notification, delivery_id: str) -> dict[str, Any]:
    return {
        "id": delivery_id,
        "event": notification.event,
        "occurred_at": notification.occurred_at,
        **notification.data,
    }


def manifest_link(query: dict[str, Any]) -> str:
    """Where the responder downloads the manifest whose SHA-256 the notification carries."""
    return "/_gateway/audit/exposure/manifest?" + urlencode(query)


def slack_body(notification: Notification) -> dict[str, Any]:
    text = summary(notification)
    lines = [text]
    data = notification.data
    exposure = data.get("exposure")
    if isinstance(exposure, dict):
        lines.append(
            f"Exposure over {exposure.get('window_days')} days: "
            f"{exposure.get('distinct_records')} distinct records to "
            f"{exposure.get('contractors')} contractors in "
            f"{len(exposure.get('projects') or [])} projects"
        )
    manifest = data.get("manifest")
    if isinstance(manifest, dict):
        lines.append(
            f"Manifest SHA-256 `{manifest.get('sha256')}` ({manifest.get('records')} records):"
            f" `{manifest.get('download')}`"
        )
    alert = data.get("alert")
    if isinstance(alert, dict) and alert.get("explanation"):
        lines.append(str(alert["explanation"]))
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": _escape(line)}} for line in lines
        ],
    }


def summary(notification: Notification) -> str:
    data = notification.data
    if notification.event in ("lock", "lift"):
        lock = data.get("lock", {})
        verb = "locked" if notification.event == "lock" else "lifted the lock on"
        who = lock.get("lifted_by") if notification.event == "lift" else lock.get("actor")
        reason = lock.get("lift_reason") if notification.event == "lift" else lock.get("reason")
        return (
            f"Gateway: {who} {verb} {lock.get('kind')} {lock.get('target')}"
            f" (lock {lock.get('id')}): {reason}"
        )
    alert = data.get("alert", {})
    return (
        f"Gateway anomaly alert {alert.get('id')}: {alert.get('detector')}"
        f" ({alert.get('severity')}) on {alert.get('contractor')} of {alert.get('vendor')}"
    )


def _escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
