"""gunicorn's settings and hooks for the gateway, from its configuration; read by
gateway/gunicorn.conf.py at start and again on each SIGHUP."""

from __future__ import annotations

import logging.config
import os
import shutil
from typing import Any

from gunicorn.glogging import Logger

from gateway.config import Config, ConfigError, load_config
from gateway.logs import LOG_FORMAT_ENV, chosen_format, logging_dict

WORKER_CLASS = "gateway.serving.GatewayThreadWorker"
_running: dict[str, Any] = {}


class GunicornLogger(Logger):
    """gunicorn's own lines in the gateway's log shape, and no access line of its own: the
    gateway writes one per request (logger gateway.access) with the request id, subject
    and decision, which gunicorn does not know."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        log_format = os.environ.get(LOG_FORMAT_ENV) or chosen_format()
        logging.config.dictConfig(logging_dict(log_format, level=cfg.loglevel.upper()))

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


def settings_for(config: Config, log_format: str) -> dict[str, Any]:
    server = config.server
    max_requests = server.max_requests
    return {
        "wsgi_app": "gateway.wsgi:app",
        "worker_class": WORKER_CLASS,
        "bind": [server.bind],
        # gthread workers run Python under one GIL each: one per CPU, threads for the
        # waits (upstream, audit commit).
        "workers": server.workers or max(2, os.cpu_count() or 1),
        "threads": server.threads,
        "keepalive": server.keep_alive,
        "graceful_timeout": server.graceful_timeout,
        "timeout": 30,
        "max_requests": max_requests,
        # Without jitter every worker would recycle at the same moment.
        "max_requests_jitter": server.max_requests_jitter or max_requests // 10,
        # gunicorn believes X-Forwarded-Proto only from these; the gateway believes
        # X-Forwarded-For only as far as gateway.trusted_proxy_hops: no hops, no proxies.
        "forwarded_allow_ips": (
            ",".join(server.forwarded_allow_ips) if config.gateway.trusted_proxy_hops > 0 else ""
        ),
        "accesslog": None,
        "errorlog": "-",
        "logger_class": GunicornLogger,
    }


def gunicorn_settings() -> dict[str, Any]:
    """This configuration's settings; on a reload with a broken configuration, the running
    ones (the master keeps serving; fix the file and send SIGHUP again)."""
    try:
        config = load_config()
        log_format = chosen_format()
    except (ConfigError, ValueError) as error:
        if not _running:
            raise SystemExit(f"gateway: {error}") from None
        logging.getLogger("gunicorn.error").error(
            "configuration not reloaded, keeping the running one: %s", error
        )
        return _running["settings"]
    # The workers log in the same shape as the master, whatever their stderr is.
    os.environ[LOG_FORMAT_ENV] = log_format
    settings = settings_for(config, log_format)
    _running.update(settings=settings, metrics=config.metrics, config=config)
    return settings


def running_config() -> Config | None:
    """The configuration the gunicorn master last read well; its workers (forked from it)
    serve with that, so master and workers agree, and a file broken before a reload
    leaves everyone on the last good one. None outside gateway/gunicorn.conf.py."""
    return _running.get("config")


def on_starting(server: Any) -> None:
    """Once, in the master: counters of an earlier run must not add to this one's."""
    from gateway.metrics.exposition import MULTIPROC_ENV, prepare_multiprocess_dir

    prepare_multiprocess_dir(os.environ.get(MULTIPROC_ENV))


def when_ready(server: Any) -> None:
    metrics = _running.get("metrics")
    if metrics is not None and metrics.enabled and metrics.bind:
        from gateway.metrics.exposition import start_listener

        start_listener(metrics.bind)
        server.log.info("metrics on http://%s/metrics", metrics.bind)


def on_exit(server: Any) -> None:
    """The master stops: a metrics directory made for this run goes with it."""
    from gateway.metrics.exposition import MULTIPROC_ENV

    if os.environ.get("GATEWAY_METRICS_DIR_OWNED") == "1":
        shutil.rmtree(os.environ.get(MULTIPROC_ENV, ""), ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    from gateway.metrics.exposition import worker_exited

    worker_exited(worker.pid)
