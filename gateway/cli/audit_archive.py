"""`gateway audit archive --before DATE` and `gateway audit archives`: old partitions of
the access log as signed Parquet in the archive store (gateway/archive). Run `archive` as
the database owner (it drops partitions), e.g. daily: `--before` 30 days ago."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click

from gateway.cli import config_option, database
from gateway.cli.audit import audit_group
from gateway.cli.audit_integrity import _actor_option, _print_report, _record, _time
from gateway.cli.errors import friendly_errors
from gateway.cli.output import json_option, print_json, print_table
from gateway.timestamps import rfc3339


@audit_group.command("archive")
@config_option
@click.option(
    "--before",
    callback=_time("before"),
    help="archive the daily partitions that end at or before this time (default: now -"
    " [audit] retention_days, else 30 days ago)",
)
@click.option("--confirm", is_flag=True, help="really archive (without it: only list)")
@click.option("--reason", default="archive", show_default=True, help="recorded with each archive")
@_actor_option
@json_option
@friendly_errors()
def archive_command(
    config_path: str | None,
    before: datetime | None,
    confirm: bool,
    reason: str,
    actor: str,
    as_json: bool,
) -> None:
    """Verify, write as signed Parquet, store and drop the partitions before a date."""
    from gateway.archive.make import ArchiveRefused, archivable, archive_partition
    from gateway.archive.reader import store
    from gateway.keys import gateway_keys
    from gateway.keys.registry import registered_keys
    from gateway.keys.ring import KeyRing

    with database(config_path) as (config, engine):
        if before is None:
            days = config.audit.retention_days or 30
            before = datetime.now(UTC) - timedelta(days=days)
        parts = archivable(engine, before)
        say = (lambda _text: None) if as_json else click.echo
        say(f"partitions wholly before {rfc3339(before)}: {len(parts)}")
        for part in parts:
            say(
                f"  {part.name}: {rfc3339(part.time_from)} .. {rfc3339(part.time_to)}"
                f" (~{max(part.rows_estimate, 0)} rows)"
            )
        outcome: dict[str, Any] = {
            "before": rfc3339(before),
            "partitions": [part.name for part in parts],
            "archived": [],
        }
        if not parts or not confirm:
            if parts:
                say("nothing archived: run again with --confirm")
            if as_json:
                print_json(outcome)
            return
        archive_store = store()
        signer = gateway_keys(config, engine, signing=True)
        keys = KeyRing.from_registered(registered_keys(engine))
        for part in parts:
            try:
                result = archive_partition(
                    engine,
                    part,
                    store=archive_store,
                    config=config.audit.archive,
                    sign=signer.sign_detached,
                    keys=keys,
                    progress=say,
                )
            except ArchiveRefused as refused:
                if refused.report is not None and not as_json:
                    _print_report(refused.report)
                raise click.ClickException(str(refused)) from None
            entry = {
                "name": result.name,
                "rows": result.rows,
                "file_key": result.file_key,
                "file_bytes": result.file_bytes,
                "file_sha256": result.file_sha256,
                "seconds": round(result.seconds, 3),
            }
            _record(engine, actor=actor, action="audit.archive", target=entry, reason=reason)
            outcome["archived"].append(entry)
            say(
                f"archived {result.name}: {result.rows} rows, {result.file_bytes} bytes"
                f" ({result.file_key}) in {result.seconds:.1f} s"
            )
    if as_json:
        print_json(outcome)


@audit_group.command("archives")
@config_option
@json_option
@friendly_errors()
def archives_command(config_path: str | None, as_json: bool) -> None:
    """The archived partitions: time range, rows, file and SHA-256."""
    from gateway.archive.catalogue import entries

    with database(config_path, pool_size=1) as (_config, engine):
        found = entries(engine)
    rows = [
        {
            "name": entry.name,
            "time_from": rfc3339(entry.time_from),
            "time_to": rfc3339(entry.time_to),
            "rows": entry.rows,
            "file_key": entry.file_key,
            "file_bytes": entry.file_bytes,
            "file_sha256": entry.file_sha256,
            "archived_at": rfc3339(entry.created_at),
        }
        for entry in found
    ]
    if as_json:
        print_json(rows)
        return
    print_table(
        ["archive", "from", "to", "rows", "bytes", "file"],
        [
            [
                r["name"],
                r["time_from"],
                r["time_to"],
                str(r["rows"]),
                str(r["file_bytes"]),
                r["file_key"],
            ]
            for r in rows
        ],
    )
