"""The configuration's secret values, for the log redaction to replace wherever they
appear (an exception quoting a DSN, a library logging a request's headers)."""

from __future__ import annotations

import contextlib

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.config import Config
from gateway.logs.redact import SECRETS


def config_secrets(config: Config) -> list[str]:
    values: list[str | None] = [config.metrics.token, config.console.client_secret]
    values += [issuer.client_secret for issuer in config.issuers]
    values += [hook.secret for hook in config.notify.webhooks]
    values.append(config.audit.archive.secret_access_key)
    # A webhook URL often is the credential (Slack's incoming webhooks).
    values += [hook.url for hook in config.notify.webhooks if hook.format == "slack"]
    for header in config.upstream.headers.values():
        values.append(header)
        # "Token abc..." : the credential alone, as a library might print it.
        values += header.split()[1:]
    with contextlib.suppress(ArgumentError, ValueError):
        values.append(make_url(config.database_url).password)
    return [value for value in values if value]


def register_config_secrets(config: Config) -> None:
    SECRETS.add(config_secrets(config))
