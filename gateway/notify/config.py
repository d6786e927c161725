"""`[[notify.webhooks]]`: where lock, lift and anomaly-alert notifications go."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gateway.anomaly.config import Severity
from gateway.configbase import (
    HttpURL,
    Name,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Problem,
    ReadableFile,
    Section,
    Text,
    secret_from_file,
)

Event = Literal["lock", "lift", "alert"]
EVENTS: tuple[str, ...] = ("lock", "lift", "alert")


class WebhookConfig(Section):
    """One receiver. `json`: the gateway's own JSON, signed (HMAC-SHA256 over timestamp
    and body, README "Notifications"); `slack`: a Slack-compatible incoming webhook."""

    name: Name
    url: HttpURL
    format: Literal["json", "slack"] = "json"
    secret: Text | None = Field(default=None, repr=False)
    """HMAC key of a `json` webhook (use `${ENV}`), or `secret_file`."""
    secret_file: ReadableFile | None = Field(default=None, exclude=True)
    events: Annotated[tuple[Event, ...], Field(strict=False)] = ("lock", "lift", "alert")
    min_severity: Severity = "high"
    """Alerts below this severity are not sent (locks and lifts always are)."""
    timeout_seconds: PositiveFloat = 5.0
    max_attempts: PositiveInt = 6
    """Attempts per notification (a network error, 429 or 5xx is retried; other 4xx not)."""
    backoff_seconds: NonNegativeFloat = 1.0
    """First retry delay; doubled per attempt (with jitter), at most 5 minutes."""
    ca_file: ReadableFile | None = None

    @model_validator(mode="before")
    @classmethod
    def _secret_from_file(cls, data: Any) -> Any:
        return secret_from_file(data, "secret")

    @model_validator(mode="after")
    def _signed(self) -> WebhookConfig:
        if self.format == "json" and not self.secret:
            raise Problem("secret", "a json webhook is signed: set secret or secret_file")
        if self.secret is not None and len(self.secret) < 16:
            raise Problem("secret", "use at least 16 characters")
        if not self.events:
            raise Problem("events", f"name at least one of {list(EVENTS)}")
        return self


class NotifyConfig(Section):
    webhooks: Annotated[tuple[WebhookConfig, ...], Field(strict=False)] = ()
    queue_size: PositiveInt = 10_000
    """Notifications waiting for delivery per process; beyond it new ones are dropped
    (and counted), never blocking a lock."""
    exposure_days: PositiveInt | None = None
    """Window of a vendor lock's exposure summary and manifest (default: lockout's)."""

    @model_validator(mode="after")
    def _unique(self) -> NotifyConfig:
        names = [hook.name for hook in self.webhooks]
        if len(set(names)) != len(names):
            raise Problem("webhooks", "webhook names must be unique")
        return self
