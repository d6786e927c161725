"""The `gateway` command."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gateway.cli.output import json_option
from gateway.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from sqlalchemy import Engine


def _load(config_path: str | None) -> Config:
    from gateway.routemap import RouteMap

    try:
        config = load_config(config_path)
        # Compiling the routes checks their JMESPath, as the gateway will at start.
        RouteMap(config.routes)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    return config


NOTIFY_FLUSH_SECONDS = 15.0


@contextmanager
def database(config_path: str | None, pool_size: int = 2) -> Iterator[tuple[Config, Engine]]:
    """The config and an engine on its database, disposed of when the command is done."""
    from gateway import notify
    from gateway.archive import reader as archives
    from gateway.db.session import make_engine

    config = _load(config_path)
    engine = make_engine(config.database_url, pool_size=pool_size)
    notify.configure(config, engine)
    archives.configure(config.audit.archive)
    try:
        yield config, engine
    finally:
        # A lock made here is announced before the command ends (bounded: a receiver
        # that is down must not hang an incident responder's shell).
        if not notify.flush(NOTIFY_FLUSH_SECONDS):
            click.echo("warning: some notifications were not delivered in time", err=True)
        notify.close()
        engine.dispose()


def _config_from_group(ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """A command's --config, else the one given before the command (`gateway --config X`)."""
    if value is not None:
        return value
    return ctx.find_root().params.get("config_path")


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    callback=_config_from_group,
    help="gateway TOML file (default: the group's --config, or GATEWAY_CONFIG)",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="GATEWAY_CONFIG",
    type=click.Path(dir_okay=False),
    help="gateway TOML file for every command (or GATEWAY_CONFIG)",
)
@click.version_option(package_name="contractor-gateway", prog_name="gateway")
def main(config_path: str | None) -> None:
    """Contractor access-governance gateway.

    Every command that prints a result takes --json for programs; times are RFC 3339
    UTC (2026-12-04T03:00:00Z). Shell completion: see the README ("Command line").
    """


def _report_config(config: Config, as_json: bool) -> None:
    from gateway.cli.output import print_json

    if as_json:
        print_json({"ok": True, "issuers": len(config.issuers), "routes": len(config.routes)})
    else:
        click.echo(f"ok: {len(config.issuers)} issuers, {len(config.routes)} routes")


@main.command("check-config")
@config_option
@json_option
def check_config(config_path: str | None, as_json: bool) -> None:
    """Validate the configuration and exit."""
    _report_config(_load(config_path), as_json)


@main.group("config")
def config_group() -> None:
    """The configuration file: check it, print its schema."""


@config_group.command("check")
@config_option
@json_option
def config_check(config_path: str | None, as_json: bool) -> None:
    """Validate the configuration and exit (same as check-config)."""
    _report_config(_load(config_path), as_json)


@config_group.command("schema")
def config_schema_command() -> None:
    """Print the JSON Schema of the configuration file (for editors and CI checks)."""
    import orjson

    from gateway.config import config_schema

    click.echo(orjson.dumps(config_schema(), option=orjson.OPT_INDENT_2).decode())


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@config_option
@click.option("--revision", default="head", show_default=True)
@json_option
def db_upgrade(config_path: str | None, revision: str, as_json: bool) -> None:
    """Apply the Alembic migrations."""
    from gateway.db.migrate import upgrade

    config = _load(config_path)
    try:
        upgrade(config.database_url, revision)
    except Exception as error:
        raise click.ClickException(f"migration failed: {type(error).__name__}: {error}") from None
    if as_json:
        from gateway.cli.output import print_json

        print_json({"ok": True, "revision": revision})
    else:
        click.echo(
            "database is at the newest schema"
            if revision == "head"
            else f"database is at {revision}"
        )


@main.command("serve")
@config_option
@click.option("--bind", help="HOST:PORT [server.bind: 127.0.0.1:8080]")
@click.option(
    "--workers", type=click.IntRange(min=1), help="[server.workers: one per CPU, at least 2]"
)
@click.option("--threads", type=click.IntRange(min=1), help="[server.threads: 16]")
@click.option(
    "--keep-alive",
    type=click.IntRange(min=1),
    help="seconds an idle connection is kept, above a pooling proxy's idle timeout"
    " [server.keep_alive: 5]",
)
@click.option(
    "--client-header-timeout",
    type=float,
    envvar="GATEWAY_CLIENT_HEADER_TIMEOUT",
    help="seconds for request line + headers [10; GATEWAY_CLIENT_HEADER_TIMEOUT]",
)
@click.option(
    "--client-body-timeout",
    type=float,
    envvar="GATEWAY_CLIENT_BODY_TIMEOUT",
    help="seconds between two body reads [10; GATEWAY_CLIENT_BODY_TIMEOUT]",
)
@click.option(
    "--client-body-min-rate",
    type=float,
    envvar="GATEWAY_CLIENT_BODY_MIN_RATE",
    help="average body bytes/s after that grace, 0 = off [8192; GATEWAY_CLIENT_BODY_MIN_RATE]",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    envvar="GATEWAY_LOG_FORMAT",
    help="one JSON object per line, or text [json unless stderr is a terminal; GATEWAY_LOG_FORMAT]",
)
def serve(
    config_path: str | None,
    bind: str | None,
    workers: int | None,
    threads: int | None,
    keep_alive: int | None,
    client_header_timeout: float | None,
    client_body_timeout: float | None,
    client_body_min_rate: float | None,
    log_format: str | None,
) -> None:
    """Run the gateway under gunicorn, with gateway/gunicorn.conf.py (gthread workers with
    client timeouts, metrics, JSON logs; SIGHUP reloads gracefully). See README "Running
    it for real"."""
    from gateway.logs import LOG_FORMAT_ENV, chosen_format
    from gateway.serving import (
        BODY_MIN_RATE_ENV,
        BODY_TIMEOUT_ENV,
        HEADER_TIMEOUT_ENV,
        ClientLimits,
    )

    # gunicorn's master and workers read these from the environment this process hands
    # on; the [server] overrides through the configuration's own GATEWAY_SERVER__* names,
    # so a reload (SIGHUP) keeps them.
    for name, value in (
        ("GATEWAY_SERVER__BIND", None if bind is None else f'"{bind}"'),
        ("GATEWAY_SERVER__WORKERS", workers),
        ("GATEWAY_SERVER__THREADS", threads),
        ("GATEWAY_SERVER__KEEP_ALIVE", keep_alive),
        (HEADER_TIMEOUT_ENV, client_header_timeout),
        (BODY_TIMEOUT_ENV, client_body_timeout),
        (BODY_MIN_RATE_ENV, client_body_min_rate),
    ):
        if value is not None:
            os.environ[name] = value if isinstance(value, str) else repr(value)
    os.environ[LOG_FORMAT_ENV] = chosen_format(log_format)
    config_file = config_path or os.environ.get("GATEWAY_CONFIG")
    config = _load(config_file)
    _check_signing_key(config)
    if config.database_url.startswith("sqlite"):
        click.echo(
            f"warning: the access log is the SQLite file of {config.database_url}: keep it on"
            " persistent storage (in a container, a volume) or use PostgreSQL",
            err=True,
        )
    os.environ["GATEWAY_CONFIG"] = str(Path(config_file or "").resolve())
    try:
        ClientLimits.from_env()
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    settings = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
    argv = [sys.executable, "-m", "gunicorn", "-c", str(settings)]
    os.execv(sys.executable, argv)  # noqa: S606 - replace this process with gunicorn


def _check_signing_key(config: Config) -> None:
    """Before any worker starts: the key loads, and is registered and valid (registered
    here, once, where `register_at_start` and the database role allow)."""
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.db.session import make_engine
    from gateway.keys import KeysError, gateway_keys

    engine = make_engine(config.database_url, pool_size=1)
    try:
        gateway_keys(config, engine, signing=True)
    except KeysError as error:
        raise click.ClickException(str(error)) from None
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"cannot check the signing key in the database ({type(error).__name__});"
            " is it at the newest schema (`gateway db upgrade`)?"
        ) from None
    finally:
        engine.dispose()


def _demo_installed() -> bool:
    """The runtime image leaves the demo package out; its command goes with it."""
    import importlib.util

    return importlib.util.find_spec("gateway.demo") is not None


@click.command("demo-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True)
@click.option(
    "--token", envvar="UPSTREAM_TOKEN", required=True, help="service token (or UPSTREAM_TOKEN)"
)
@click.option(
    "--idor",
    is_flag=True,
    help="serve a record under any project's path, records without a project field"
    " (the nested-path IDOR of many real dataset APIs)",
)
def demo_upstream(host: str, port: int, token: str, idor: bool) -> None:
    """Run the bundled sample dataset service."""
    from gateway.demo.upstream import serve as serve_upstream

    serve_upstream(host, port, token, idor=idor)


if _demo_installed():
    main.add_command(demo_upstream)


# The policy commands live in their own module, which uses `_load` and `config_option`.
from gateway.cli.policy import policy_group  # noqa: E402

main.add_command(policy_group)

from gateway.cli.audit import audit_group  # noqa: E402
from gateway.cli.locks import register_lock_commands  # noqa: E402

main.add_command(audit_group)
register_lock_commands(main)

from gateway.cli.anomalies import anomalies_group  # noqa: E402

main.add_command(anomalies_group)

from gateway.cli.catalogue import catalogue_group  # noqa: E402

main.add_command(catalogue_group)

from gateway.cli.keys import keys_group  # noqa: E402

main.add_command(keys_group)

from gateway.cli.console import console_group  # noqa: E402

main.add_command(console_group)
