"""`[metrics]`: where Prometheus scrapes the gateway, and who may."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from gateway.configbase import (
    HostPort,
    PositiveInt,
    Problem,
    ReadableFile,
    Section,
    Text,
    secret_from_file,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a network (e.g. 10.0.0.0/8)") from None
    return values


class MetricsConfig(Section):
    """Prometheus metrics: a separate listener, or `/_gateway/metrics` for a scraper.

    Never to a contractor: `/_gateway/metrics` answers only a request that carries the
    scrape token, or comes from one of `networks`; with neither configured it is 404.
    """

    enabled: bool = True
    bind: HostPort | None = None
    """HOST:PORT of a listener in the gunicorn master serving only the metrics (e.g.
    127.0.0.1:9464): keep it off the contractors' network."""
    token: Text | None = Field(default=None, repr=False)
    """Bearer token a scraper sends to `/_gateway/metrics` (Prometheus `authorization`)."""
    token_file: ReadableFile | None = Field(default=None, exclude=True)
    networks: Annotated[tuple[str, ...], Field(strict=False), AfterValidator(_networks)] = ()
    """Client networks allowed to read `/_gateway/metrics` without the token."""
    vendor_label_limit: PositiveInt = 200
    """Distinct vendor values a worker reports before further ones count as "other": a
    vendor claim is the IdP's to choose, and each value is a time series."""

    @model_validator(mode="before")
    @classmethod
    def _token_from_file(cls, data: Any) -> Any:
        return secret_from_file(data, "token")

    @model_validator(mode="after")
    def _token_long_enough(self) -> MetricsConfig:
        if self.token is not None and len(self.token) < 16:
            raise Problem("token", "use at least 16 characters")
        return self

    def allowed_networks(self) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(value, strict=False) for value in self.networks)
