"""The gateway's logs: one JSON object per line (plain text on a terminal), each line of
a request carrying its request id (the `X-Request-Id` and access-log id), subject,
vendor and route, and nothing secret (gateway/logs/redact.py).

`GATEWAY_LOG_FORMAT` (json|text; `gateway serve --log-format`) chooses; by default JSON
unless stderr is a terminal. gunicorn's own loggers get the same handler through
gateway/gunicorn.conf.py, so a process writes one shape only.
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter

from gateway.logs.redact import SECRETS, RedactingFilter, redact

if TYPE_CHECKING:
    from gateway.context import RequestContext

__all__ = [
    "CURRENT_REQUEST",
    "LOG_FORMAT_ENV",
    "SECRETS",
    "chosen_format",
    "configure",
    "logging_dict",
    "redact",
]

LOG_FORMAT_ENV = "GATEWAY_LOG_FORMAT"
FORMATS = ("json", "text")
CURRENT_REQUEST: ContextVar[RequestContext | None] = ContextVar("request", default=None)
# Fields a line may carry beyond time, level, logger and message (text mode shows them).
REQUEST_FIELDS = (
    "request_id",
    "subject",
    "vendor",
    "route",
    "method",
    "path",
    "decision",
    "reason",
    "status",
    "duration_ms",
    "client_ip",
)


def chosen_format(explicit: str | None = None) -> str:
    value = (explicit or os.environ.get(LOG_FORMAT_ENV) or "").strip().lower()
    if value in FORMATS:
        return value
    if value:
        raise ValueError(f"{LOG_FORMAT_ENV}={value!r}: use json or text")
    return "text" if sys.stderr.isatty() else "json"


class RequestFields(logging.Filter):
    """Lines logged while a request is handled carry who and what it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = CURRENT_REQUEST.get()
        if ctx is None:
            return True
        fields = record.__dict__
        fields.setdefault("request_id", ctx.request_id)
        if ctx.principal is not None:
            fields.setdefault("subject", ctx.principal.policy_subject)
            fields.setdefault("vendor", ctx.principal.vendor)
        if ctx.match is not None:
            fields.setdefault("route", ctx.match.route.config.path)
        return True


def _rfc3339(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        f".{int((created - seconds) * 1000):03d}Z"
    )


class JsonLines(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _rfc3339(record.created)


class TextLines(logging.Formatter):
    """`time LEVEL logger: message key=value ...` for a person at a terminal."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _rfc3339(record.created)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(
            f"{name}={record.__dict__[name]}"
            for name in REQUEST_FIELDS
            if record.__dict__.get(name) is not None and f"{name}=" not in line
        )
        if not extra:
            return line
        head, newline, rest = line.partition("\n")
        return f"{head} {extra}{newline}{rest}"


def logging_dict(log_format: str, *, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for this process (and gunicorn's `logconfig_dict`)."""
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": log_format,
        "filters": ["request", "redact"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request": {"()": RequestFields},
            "redact": {"()": RedactingFilter},
        },
        "formatters": {
            "json": {
                "()": JsonLines,
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            },
            "text": {
                "()": TextLines,
                "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
            },
        },
        "handlers": {"stderr": handler},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # Casbin logs every model line at INFO on each enforcer build.
            "casbin": {"level": "WARNING"},
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": level, "handlers": ["stderr"], "propagate": False},
        },
    }


def configure(log_format: str | None = None) -> str:
    """Set up this process's logging; returns the format chosen."""
    chosen = chosen_format(log_format)
    logging.config.dictConfig(logging_dict(chosen))
    return chosen
