"""The `gateway` command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from gateway.config import Config, ConfigError, load_config


def _load(config_path: str | None) -> Config:
    from gateway.routemap import RouteMap

    try:
        config = load_config(config_path)
        # Compiling the routes checks their JMESPath, as the gateway will at start.
        RouteMap(config.routes)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    return config


config_option = click.option(
    "--config",
    "config_path",
    envvar="GATEWAY_CONFIG",
    type=click.Path(dir_okay=False),
    help="gateway TOML file (or GATEWAY_CONFIG)",
)


@click.group()
def main() -> None:
    """Contractor access-governance gateway."""


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration and exit."""
    config = _load(config_path)
    click.echo(f"ok: {len(config.issuers)} issuers, {len(config.routes)} routes")


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@config_option
@click.option("--revision", default="head", show_default=True)
def db_upgrade(config_path: str | None, revision: str) -> None:
    """Apply the Alembic migrations."""
    from gateway.db.migrate import upgrade

    config = _load(config_path)
    try:
        upgrade(config.database_url, revision)
    except Exception as error:
        raise click.ClickException(f"migration failed: {type(error).__name__}: {error}") from None
    click.echo("database is at the newest schema")


@main.group()
def policy() -> None:
    """Policy rules (Casbin CSV)."""


@policy.command("import")
@config_option
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--actor", default=lambda: os.environ.get("USER", "cli"), show_default="$USER")
@click.option("--reason", required=True, help="why the policy changes (kept with the version)")
def policy_import(config_path: str | None, csv_file: str, actor: str, reason: str) -> None:
    """Replace the whole rule set with CSV_FILE as one new policy version."""
    from gateway.db.session import make_engine
    from gateway.policy import PolicyFileError, parse_csv
    from gateway.policy.store import replace_rules

    config = _load(config_path)
    try:
        rules = parse_csv(Path(csv_file).read_text(encoding="utf-8"), source=csv_file)
    except (PolicyFileError, UnicodeDecodeError) as error:
        raise click.ClickException(str(error)) from None
    engine = make_engine(config.database_url)
    try:
        version = replace_rules(engine, rules, actor=actor, reason=reason)
    except Exception as error:
        raise click.ClickException(f"could not store the policy: {type(error).__name__}") from None
    click.echo(f"imported {len(rules)} rules as policy version {version}")


@policy.command("export")
@config_option
def policy_export(config_path: str | None) -> None:
    """Print the rules in force as Casbin CSV (read through sqlalchemy-adapter)."""
    import casbin
    from sqlalchemy_adapter import Adapter

    from gateway.db.models import CasbinRule
    from gateway.db.session import make_engine

    config = _load(config_path)
    model = casbin.Enforcer.new_model(path=config.policy.model)
    adapter = Adapter(make_engine(config.database_url), db_class=CasbinRule, create_table=False)
    try:
        adapter.load_policy(model)
    except Exception as error:
        raise click.ClickException(f"could not read the policy: {type(error).__name__}") from None
    lines = []
    for sec in ("p", "g"):
        for ptype, assertion in model[sec].items():
            lines.extend(", ".join([ptype, *rule]) for rule in assertion.policy)
    click.echo("\n".join(sorted(lines)))


@main.command("serve")
@config_option
@click.option("--bind", default="127.0.0.1:8080", show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--threads", default=16, show_default=True)
def serve(config_path: str | None, bind: str, workers: int, threads: int) -> None:
    """Run the gateway under gunicorn (gthread workers)."""
    config_file = config_path or os.environ.get("GATEWAY_CONFIG")
    _load(config_file)
    os.environ["GATEWAY_CONFIG"] = str(Path(config_file or "").resolve())
    root = Path(__file__).resolve().parents[2]
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        str(root),
        "-k",
        "gthread",
        "-w",
        str(workers),
        "--threads",
        str(threads),
        "-b",
        bind,
        "wsgi:app",
    ]
    os.execv(sys.executable, argv)  # noqa: S606 - replace this process with gunicorn


@main.command("demo-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True)
@click.option(
    "--token", envvar="UPSTREAM_TOKEN", required=True, help="service token (or UPSTREAM_TOKEN)"
)
def demo_upstream(host: str, port: int, token: str) -> None:
    """Run the bundled sample dataset service."""
    from gateway.demo.upstream import serve as serve_upstream

    serve_upstream(host, port, token)
