"""`gateway anomalies canary add|list|remove`: records nobody should ever fetch."""

from __future__ import annotations

import click

from gateway.cli import config_option
from gateway.cli.anomalies import actor_option, anomalies_group, anomaly_errors, database, short
from gateway.cli.output import json_option, print_json, print_table


@anomalies_group.group("canary")
def canary_group() -> None:
    """Canary records: records nobody should ever fetch; any access is an alert."""


@canary_group.command("add")
@config_option
@click.argument("record_id")
@click.option("--reason", required=True, help="why this record is a canary")
@click.option("--project", help="the project the record belongs to (informational)")
@actor_option
@json_option
@anomaly_errors
def canary_add(
    config_path: str | None,
    record_id: str,
    reason: str,
    project: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Mark RECORD_ID as a canary: the next scan alerts on any access to it."""
    from gateway.anomaly.store import add_canary

    with database(config_path) as (_, engine):
        add_canary(engine, record_id, reason=reason, actor=actor, project=project)
    if as_json:
        print_json({"record_id": record_id, "canary": True, "project": project})
    else:
        click.echo(f"{record_id} is a canary record")


@canary_group.command("list")
@config_option
@json_option
@anomaly_errors
def canary_list(config_path: str | None, as_json: bool) -> None:
    """The canary records."""
    from gateway.anomaly.store import list_canaries

    with database(config_path) as (_, engine):
        canaries = list_canaries(engine)
    if as_json:
        print_json(canaries)
        return
    if not canaries:
        click.echo("no canary records")
        return
    print_table(
        ["RECORD", "PROJECT", "SINCE", "BY", "REASON"],
        [
            [c["record_id"], c["project"] or "-", c["created_at"], c["actor"], short(c["reason"])]
            for c in canaries
        ],
    )


@canary_group.command("remove")
@config_option
@click.argument("record_id")
@click.option("--reason", required=True)
@actor_option
@json_option
@anomaly_errors
def canary_remove(
    config_path: str | None, record_id: str, reason: str, actor: str, as_json: bool
) -> None:
    """Stop treating RECORD_ID as a canary."""
    from gateway.anomaly.store import remove_canary

    with database(config_path) as (_, engine):
        remove_canary(engine, record_id, reason=reason, actor=actor)
    if as_json:
        print_json({"record_id": record_id, "canary": False})
    else:
        click.echo(f"{record_id} is no longer a canary record")
