"""Secrets never reach a log line: not in a message, its arguments, or a traceback.

Two nets. Patterns catch credentials by their shape wherever they come from (a bearer
token a client sent, a JWT quoted by a library's exception, a cookie, `password=` in a
URL or a DSN); the values the configuration holds (client secrets, upstream credentials,
the database URL's password, the scrape token) are also replaced wherever they appear
literally, since a secret can have any shape.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

REDACTED = "[redacted]"
_CLIENT_FIELDS = ("path", "client_ip", "reason")
# Shorter literals would blank out ordinary words.
_MIN_SECRET_LENGTH = 6

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A JWT (or JWS/JWE) anywhere: base64url header starting with '{"'.
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_.-]*"), REDACTED),
    # Authorization schemes and their credential.
    (
        re.compile(r"(?i)\b(bearer|basic|digest|negotiate)(\s+)[A-Za-z0-9._~+/=:-]{8,}"),
        rf"\1\2{REDACTED}",
    ),
    # Header lines that are credentials whole.
    (
        re.compile(
            r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key)"
            r"(['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n]+"
        ),
        rf"\1\2{REDACTED}",
    ),
    # key=value and "key": "value" forms of secret-named settings.
    (
        re.compile(
            r"(?i)\b([a-z_]*(?:secret|password|passwd|token|api_?key|private_?key|session)"
            r"[a-z_]*)(['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&)}\]]+"
        ),
        rf"\1\2{REDACTED}",
    ),
    # user:password@ in a URL.
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s@]+@"), rf"\1:{REDACTED}@"),
)


class SecretRegistry:
    """Literal secret values to scrub, added as the configuration is loaded."""

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, values: Iterable[str | None]) -> None:
        with self._lock:
            found = {v for v in values if v and len(v) >= _MIN_SECRET_LENGTH}
            merged = self._values | found
            if merged == self._values:
                return
            self._values = frozenset(merged)
            # Longest first, so a secret containing another is replaced whole.
            alternatives = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in alternatives))

    def scrub(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(REDACTED, text)


SECRETS = SecretRegistry()


def redact(text: str) -> str:
    text = SECRETS.scrub(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Render the message and any traceback now, redacted, so no formatter downstream
    sees the raw arguments or exception."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self._formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        # Fields a client chose (a path, a forwarded address) are lines of their own.
        for name in _CLIENT_FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str):
                record.__dict__[name] = redact(value)
        return True
