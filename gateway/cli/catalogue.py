"""`gateway catalogue`: fill the record catalogue and look into it."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from sqlalchemy import select

from gateway.cli import config_option, database
from gateway.cli.output import json_option, print_json


class _PageProgress:
    """One updating line on stderr per walk: its records and pages so far."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.label: str | None = None
        self.records = 0
        self.pages = 0

    def __call__(self, label: str, records: int) -> None:
        if not self.enabled:
            return
        if label != self.label:
            self.finish()
            self.label, self.records, self.pages = label, 0, 0
        self.records += records
        self.pages += 1
        click.echo(f"\r{label}: {self.records} records, {self.pages} pages", nl=False, err=True)

    def finish(self) -> None:
        if self.enabled and self.label is not None:
            click.echo("", err=True)
        self.label = None


def _report(summary: Any, as_json: bool) -> None:
    data = summary.as_dict()
    if as_json:
        print_json(data)
    else:
        what = "resumed run" if data["resumed"] else "run"
        click.echo(
            f"{data['command']} {what} {data['run']}: {data['status']} — {data['seen']} seen,"
            f" {data['added']} added, {data['moved']} moved, {data['gone']} gone"
        )
        for kind, size in sorted(data["catalogue"].items()):
            click.echo(f"  catalogue of {kind}: {size} records")
        if data["error"]:
            click.echo(f"  error: {data['error']}", err=True)
    if data["status"] != "done":
        sys.exit(1)


@click.group("catalogue")
def catalogue_group() -> None:
    """The record catalogue: which project (and task) each record really belongs to."""


@catalogue_group.command("sync")
@config_option
@click.option("--project", "projects", multiple=True, help="walk this project (repeatable)")
@click.option("--kind", "kinds", multiple=True, help="only sources of this kind (repeatable)")
@click.option("--restart", is_flag=True, help="start over instead of resuming an unfinished run")
@click.option(
    "--actor",
    default=lambda: os.environ.get("USER", "cli"),
    show_default="$USER",
    help="who runs it (recorded with the run)",
)
@json_option
def sync_command(
    config_path: str | None,
    projects: tuple[str, ...],
    kinds: tuple[str, ...],
    restart: bool,
    actor: str,
    as_json: bool,
) -> None:
    """Walk each project's listings ([[catalogue.sources]]) with the service credential.

    Records listed are added (or moved, when the upstream now lists them elsewhere); records
    a complete walk no longer lists are removed. An interrupted sync resumes where it
    stopped (the last committed page) unless --restart.
    """
    from gateway.catalogue.sync import CatalogueError, sync

    with database(config_path) as (config, engine):
        chosen = (
            list(projects)
            or list(config.catalogue.projects)
            or [project.name for project in config.projects]
        )
        progress = _PageProgress(enabled=not as_json)
        try:
            summary = sync(
                engine,
                config,
                projects=chosen,
                kinds=list(kinds) or None,
                actor=actor,
                restart=restart,
                progress=progress,
            )
        except CatalogueError as error:
            raise click.ClickException(str(error)) from None
        finally:
            progress.finish()
        _report(summary, as_json)


@catalogue_group.command("import")
@config_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--kind", default="record", show_default=True, help="kind of lines that name none")
@click.option(
    "--actor",
    default=lambda: os.environ.get("USER", "cli"),
    show_default="$USER",
    help="who runs it (recorded with the run)",
)
@json_option
def import_command(
    config_path: str | None, file: str, kind: str, actor: str, as_json: bool
) -> None:
    """Place records from FILE.csv (header: record_id,project[,task][,kind]) or FILE.jsonl."""
    from gateway.catalogue.config import KIND
    from gateway.catalogue.sync import CatalogueError, import_file

    if not KIND.match(kind):
        raise click.BadParameter("lower-case letters, digits, '_' or '-'", param_hint="--kind")
    progress = _PageProgress(enabled=not as_json)
    with database(config_path) as (config, engine), open(file, "rb") as handle:
        try:
            summary = import_file(
                engine,
                config,
                handle,
                os.path.basename(file).lower(),
                actor=actor,
                default_kind=kind,
                progress=progress,
            )
        except CatalogueError as error:
            raise click.ClickException(str(error)) from None
        finally:
            progress.finish()
        _report(summary, as_json)


@catalogue_group.command("status")
@config_option
@json_option
def status_command(config_path: str | None, as_json: bool) -> None:
    """Records per kind, and the last sync and import runs."""
    from gateway.catalogue.store import CatalogueStore
    from gateway.db.models import CatalogueRun

    with database(config_path) as (config, engine):
        store = CatalogueStore(engine, config.catalogue.upstream)
        sizes = store.kind_sizes()
        with engine.connect() as connection:
            runs = connection.execute(
                select(
                    CatalogueRun.id,
                    CatalogueRun.command,
                    CatalogueRun.status,
                    CatalogueRun.started_at,
                    CatalogueRun.finished_at,
                    CatalogueRun.seen,
                    CatalogueRun.added,
                    CatalogueRun.moved,
                    CatalogueRun.gone,
                    CatalogueRun.error,
                )
                .where(CatalogueRun.upstream == config.catalogue.upstream)
                .order_by(CatalogueRun.id.desc())
                .limit(5)
            ).all()
    data = {
        "upstream": config.catalogue.upstream,
        "kinds": sizes,
        "runs": [
            {
                "run": run.id,
                "command": run.command,
                "status": run.status,
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "seen": run.seen,
                "added": run.added,
                "moved": run.moved,
                "gone": run.gone,
                "error": run.error,
            }
            for run in runs
        ],
    }
    if as_json:
        print_json(data)
        return
    if not sizes:
        click.echo(f"the catalogue of upstream {data['upstream']!r} is empty")
    for kind, size in sorted(sizes.items()):
        click.echo(f"{kind}: {size} records")
    for run in data["runs"]:
        click.echo(
            f"run {run['run']} {run['command']} {run['status']} {run['started_at']}:"
            f" {run['seen']} seen, {run['added']} added, {run['moved']} moved,"
            f" {run['gone']} gone" + (f" — {run['error']}" if run["error"] else "")
        )


@catalogue_group.command("lookup")
@config_option
@click.argument("record_ids", nargs=-1, required=True)
@click.option("--kind", default="record", show_default=True)
@json_option
def lookup_command(
    config_path: str | None, record_ids: tuple[str, ...], kind: str, as_json: bool
) -> None:
    """Where the catalogue places these records (absent: unknown)."""
    from gateway.catalogue.store import CatalogueStore

    with database(config_path) as (config, engine):
        found = CatalogueStore(engine, config.catalogue.upstream).lookup(kind, record_ids)
    data = {
        record_id: (
            {"project": found[record_id].project, "task": found[record_id].task}
            if record_id in found
            else None
        )
        for record_id in record_ids
    }
    if as_json:
        print_json(data)
        return
    for record_id, place in data.items():
        where = (
            "unknown"
            if place is None
            else f"project {place['project']}"
            + (f", task {place['task']}" if place["task"] else "")
        )
        click.echo(f"{record_id}: {where}")
