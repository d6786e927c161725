"""Serving the metrics: the multiprocess directory, the scrape check, the listener."""

from __future__ import annotations

import hmac
import ipaddress
import os
import tempfile
from pathlib import Path

from gateway.metrics.config import MetricsConfig

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(configured: str | None) -> str:
    """Create (or empty) the directory gunicorn's workers share their counters through,
    and name it in the environment the workers inherit. Called in the master before any
    worker starts and before `prometheus_client` is imported: stale files from an earlier
    run would otherwise add its counts to this one's."""
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return str(path)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters keep counting in the totals)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def registry():  # type: ignore[no-untyped-def]
    """What a scrape reads: every worker's files under gunicorn, else this process."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)
    return collected


def render(accept: str | None) -> tuple[bytes, str]:
    """The exposition in the format the scraper asked for (text or OpenMetrics)."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry()), content_type


def start_listener(bind: str) -> None:
    """A metrics-only HTTP listener in this process (the gunicorn master)."""
    from prometheus_client import start_http_server

    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
    start_http_server(int(port), addr=host.strip("[]"), registry=registry())


class ScrapeAccess:
    """Who may read `/_gateway/metrics`: the scrape token, or a configured network.

    The network is the connection's peer (REMOTE_ADDR), never X-Forwarded-For; and a
    request that came through a proxy (it carries X-Forwarded-For) is never let in by
    network: behind a load balancer every peer is the balancer, contractors included, so
    use the token there.
    """

    def __init__(self, config: MetricsConfig) -> None:
        self._token = config.token.encode() if config.token else None
        self._networks = config.allowed_networks()

    @property
    def exposed(self) -> bool:
        return self._token is not None or bool(self._networks)

    def allows(
        self, authorization: str | None, peer: str | None, *, forwarded: bool = False
    ) -> bool:
        if self._token is not None and authorization:
            scheme, _, credential = authorization.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                credential.strip().encode(), self._token
            ):
                return True
        if self._networks and peer and not forwarded:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                return False
            return any(address in network for network in self._networks)
        return False
