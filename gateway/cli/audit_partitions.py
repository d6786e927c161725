"""`gateway audit partitions ensure|list`: the access log's daily partitions (PostgreSQL).

Run `ensure` as the database owner, daily (cron or a timer), so that every day has its
partition before its first row: `gateway audit partitions ensure --days-ahead 7`.
"""

from __future__ import annotations

import click

from gateway.cli import config_option, database
from gateway.cli.audit import audit_group
from gateway.cli.errors import friendly_errors
from gateway.cli.output import json_option, print_json, print_table


@audit_group.group("partitions")
def partitions_group() -> None:
    """The access log's daily partitions on PostgreSQL (SQLite keeps one table)."""


@partitions_group.command("ensure")
@config_option
@click.option(
    "--days-ahead",
    type=click.IntRange(min=0, max=366),
    default=None,
    help="make today's partition and this many days' after it [audit.partition_days_ahead: 7]",
)
@json_option
@friendly_errors()
def ensure_command(config_path: str | None, days_ahead: int | None, as_json: bool) -> None:
    """Make the missing daily partitions (as the owner); rows the default partition caught
    for one of those days move into it."""
    from gateway.audit import partitions

    with database(config_path, pool_size=1) as (config, engine):
        if not partitions.is_partitioned(engine):
            raise click.ClickException(
                "the access log is not partitioned (SQLite, or run `gateway db upgrade`)"
            )
        ahead = config.audit.partition_days_ahead if days_ahead is None else days_ahead
        made = partitions.ensure(engine, ahead)
    if as_json:
        print_json({"made": made})
    else:
        click.echo(f"made {', '.join(made)}" if made else "every partition already exists")


@partitions_group.command("list")
@config_option
@json_option
@friendly_errors()
def list_command(config_path: str | None, as_json: bool) -> None:
    """The partitions, their time ranges and estimated rows."""
    from gateway.audit import partitions

    with database(config_path, pool_size=1) as (_config, engine):
        found = partitions.partitions(engine)
    if as_json:
        print_json([{"name": p.name, "bounds": p.bounds, "rows_estimate": p.rows} for p in found])
        return
    print_table(
        ["partition", "bounds", "rows (estimate)"],
        [[p.name, p.bounds, str(p.rows)] for p in found],
    )
