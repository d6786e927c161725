"""Audit integrity: exports, hash-chain verification, checkpoints, retention.

    gateway audit export --format csv|jsonl|ocsf [--vendor V] [--project P]
                         [--since ISO] [--until ISO] [--output FILE]
    gateway audit verify [--since ISO] [--anchor FILE] [--json]
    gateway audit checkpoint export [--since ISO] [--output FILE]
    gateway audit prune [--before ISO] [--confirm] [--checkpoint-output FILE]

`verify` exits 0 on an intact log and 1 on any modification, deletion, insertion,
reordering or truncation, naming the first bad row of each broken chain. `prune` without
--confirm only reports; with it, it verifies the chains concerned, writes signed prune
checkpoints (and the checkpoints they supersede) to a file first, then deletes.
Run `prune` as the database owner: the gateway's runtime role may not delete audit rows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
import orjson

from gateway.cli import config_option, database
from gateway.cli.audit import audit_group
from gateway.cli.errors import friendly_errors
from gateway.cli.output import json_option, print_json
from gateway.timestamps import rfc3339

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.audit.seal import Checkpoint
    from gateway.audit.verify import VerifyReport


def _time(field: str) -> Callable[[click.Context, click.Parameter, str | None], datetime | None]:
    def convert(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        from gateway.audit.export import ExportError, parse_time

        if value is None:
            return None
        try:
            return parse_time(value, field)
        except ExportError as error:
            raise click.BadParameter(error.message) from None

    return convert


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


@contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    """stdout, or FILE written as FILE.partial and renamed when complete."""
    if path is None or path == "-":
        try:
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        except BrokenPipeError:  # `... | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as handle:
        try:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            partial.unlink(missing_ok=True)
            raise
    partial.replace(target)


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def update(self, _steps: int) -> None:
        return None


def _progress(length: int | None, label: str) -> Any:
    """A progress bar on stderr when it is a terminal; silent in pipes, logs and tests."""
    if not sys.stderr.isatty():
        return _NoProgress()
    return click.progressbar(
        length=length, label=label, file=sys.stderr, show_pos=True, show_eta=True
    )


def _record(engine: Engine, *, actor: str, action: str, target: Any, reason: str) -> None:
    from gateway.policy.store import record_admin_event

    with engine.begin() as connection:
        record_admin_event(
            connection,
            actor=actor,
            action=action,
            target=orjson.dumps(target).decode(),
            reason=reason,
        )


_actor_option = click.option(
    "--actor",
    default=lambda: f"cli:{os.environ.get('USER', 'unknown')}",
    show_default="cli:$USER",
    help="who runs this (recorded in admin_events)",
)


# --- export ----------------------------------------------------------------------------


@audit_group.command("export")
@config_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl", "ocsf"]),
    default="jsonl",
    show_default=True,
    help="ocsf: OCSF 1.3.0 API Activity (class 6003), one event per access row",
)
@click.option("--vendor", help="only this vendor's rows")
@click.option("--project", help="only this project's rows")
@click.option("--since", callback=_time("since"), help="from this time on (ISO 8601, UTC)")
@click.option("--until", callback=_time("until"), help="before this time (ISO 8601, UTC)")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="write here (default: stdout)"
)
@_actor_option
@friendly_errors()
def export_command(
    config_path: str | None,
    fmt: str,
    vendor: str | None,
    project: str | None,
    since: datetime | None,
    until: datetime | None,
    output: str | None,
    actor: str,
) -> None:
    """Export the access log, streamed (bounded memory however many rows)."""
    from gateway.audit.export import ExportError, ExportFilter, count_rows, export_chunks

    try:
        filters = ExportFilter(vendor=vendor, project=project, since=since, until=until)
    except ExportError as error:
        raise click.BadParameter(error.message, param_hint=f"--{error.field}") from None
    with database(config_path) as (_config, engine):
        _record(
            engine,
            actor=actor,
            action="audit.export",
            target={"format": fmt, **filters.as_json()},
            reason="auditor read (cli)",
        )
        total = count_rows(engine, filters)
        with _output(output) as out, _progress(total, f"exporting {fmt}") as bar:
            for chunk in export_chunks(engine, fmt, filters, on_rows=bar.update):
                out.write(chunk)
    if output not in (None, "-"):
        click.echo(f"exported {total} rows to {output}", err=True)


# --- verify ----------------------------------------------------------------------------


def _load_anchors(path: str) -> list[Checkpoint]:
    from gateway.audit.seal import Checkpoint

    anchors = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                anchors.append(Checkpoint.from_json(orjson.loads(line)))
            except (ValueError, KeyError, TypeError) as error:
                raise click.ClickException(f"{path}:{number}: not a checkpoint ({error})") from None
    return anchors


def _print_report(report: VerifyReport) -> None:
    scope = f" from {rfc3339(report.since)} on" if report.since else ""
    click.echo(
        f"verified {report.rows} rows in {report.chains} chains{scope} against "
        f"{report.checkpoints} signed checkpoints"
    )
    click.echo(
        f"sealed rows: {report.sealed_rows}; unsealed tail: {report.unsealed_rows} rows in "
        f"{report.unsealed_chains} chains ({report.never_sealed_chains} never sealed); "
        f"chains continuing after a prune: {report.pruned_chains}"
    )
    if report.archives:
        click.echo(
            f"archives: {report.archives} checked against their signed manifests,"
            f" {report.archived_rows} archived rows in the chains above"
        )
    for key in report.unlisted_archives:
        click.echo(f"note: the archive store holds {key}, which the catalogue does not list")
    if report.keys_pinned:
        click.echo(f"signatures checked with {report.keys_origin}")
    else:
        click.echo(
            "signing keys NOT pinned: signatures checked with the database's registered keys,"
            " which whoever can write the database can add to; pin them with --jwks FILE"
            " (`gateway keys export-jwks`, kept off this database)"
        )
    if report.ok:
        click.echo("OK: no modification, deletion, insertion, reordering or truncation found")
        return
    first = report.first_problem
    click.echo(f"FAILED: {report.problem_count} problem(s)", err=True)
    click.echo(f"first bad row: {first}", err=True)
    for problem in report.problems[1:20]:
        click.echo(f"  also: {problem}", err=True)
    if len(report.problems) > 20:
        click.echo(f"  … and {len(report.problems) - 20} more chains", err=True)


@audit_group.command("verify")
@config_option
@click.option(
    "--since",
    callback=_time("since"),
    help="only chains' rows from this time on (the row before is trusted as the anchor)",
)
@click.option(
    "--anchor",
    "anchor_path",
    type=click.Path(exists=True, dir_okay=False),
    help="also hold the log against checkpoints exported earlier (JSON lines)",
)
@click.option(
    "--jwks",
    "jwks_path",
    type=click.Path(exists=True, dir_okay=False),
    help="trust only these public keys (a JWKS exported earlier), not the database's",
)
@json_option
@friendly_errors()
def verify_command(
    config_path: str | None,
    since: datetime | None,
    anchor_path: str | None,
    jwks_path: str | None,
    as_json: bool,
) -> None:
    """Recompute every hash chain and check the signed checkpoints; exit 1 on tampering."""
    from gateway.audit.verify import verify_log

    anchors = _load_anchors(anchor_path) if anchor_path else []
    keys = _pinned_keys(jwks_path)
    with database(config_path) as (_config, engine):
        if sys.stderr.isatty() and not as_json:
            from gateway.audit.export import ExportFilter, count_rows

            total = count_rows(engine, ExportFilter(since=since))
            with _progress(total, "verifying") as bar:
                report = verify_log(
                    engine, since=since, anchors=anchors, progress=bar.update, keys=keys
                )
        else:
            report = verify_log(engine, since=since, anchors=anchors, keys=keys)
        # The console's audit page shows when the log was last verified, and the outcome;
        # an auditor verifying with read-only credentials still gets the verdict.
        _record_verification(engine, report)
    if as_json:
        print_json(report.as_json())
    else:
        _print_report(report)
    if not report.ok:
        raise SystemExit(1)


def _record_verification(engine: Engine, report: VerifyReport) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        _record(
            engine,
            actor=f"cli:{os.environ.get('USER', 'unknown')}",
            action="audit.verify",
            target={
                "ok": report.ok,
                "rows": report.rows,
                "chains": report.chains,
                "problems": report.problem_count,
                "keys_pinned": report.keys_pinned,
            },
            reason="",
        )
    except SQLAlchemyError as error:
        click.echo(f"note: the verification was not recorded ({type(error).__name__})", err=True)


def _pinned_keys(jwks_path: str | None) -> Any:
    """The auditor's pinned keys (--jwks), or None for the database's registered keys."""
    from gateway.keys.ring import KeyRing, KeyRingError

    if jwks_path is None:
        return None
    try:
        return KeyRing.from_file(jwks_path)
    except KeyRingError as error:
        raise click.ClickException(str(error)) from None


# --- checkpoints -----------------------------------------------------------------------


@audit_group.group("checkpoint")
def checkpoint_group() -> None:
    """Signed checkpoints of the hash-chain heads."""


@checkpoint_group.command("export")
@config_option
@click.option("--since", callback=_time("since"), help="only checkpoints from this time on")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="write here (default: stdout)"
)
@friendly_errors()
def checkpoint_export(config_path: str | None, since: datetime | None, output: str | None) -> None:
    """Write the checkpoints as JSON lines, to keep off the box (anchoring).

    Each line carries kind, chain_id, seq, head_hash, time, kid and the Ed25519 signature
    over the canonical JSON of those fields; the public key is at /_gateway/jwks.json.
    `gateway audit verify --anchor FILE` checks the log against such a file.
    """
    from gateway.audit.seal import checkpoint_lines, iter_checkpoints

    count = 0
    with (
        database(config_path) as (_config, engine),
        engine.connect() as connection,
        _output(output) as out,
    ):
        for line in checkpoint_lines(iter_checkpoints(connection, since=since)):
            out.write(line)
            count += 1
    if output not in (None, "-"):
        click.echo(f"exported {count} checkpoints to {output}", err=True)


# --- retention -------------------------------------------------------------------------


@audit_group.command("prune")
@config_option
@click.option(
    "--before",
    callback=_time("before"),
    help="remove rows older than this (default: now - [audit] retention_days)",
)
@click.option("--confirm", is_flag=True, help="really delete (without it: only report)")
@click.option(
    "--checkpoint-output",
    type=click.Path(dir_okay=False),
    help="where the checkpoints of the pruned rows go first "
    "(default: audit-prune-<time>.checkpoints.jsonl)",
)
@click.option("--reason", default="retention", show_default=True, help="recorded with the prune")
@_actor_option
@json_option
@friendly_errors()
def prune_command(
    config_path: str | None,
    before: datetime | None,
    confirm: bool,
    checkpoint_output: str | None,
    reason: str,
    actor: str,
    as_json: bool,
) -> None:
    """Remove old access rows without breaking verification of what remains."""
    from gateway.audit.seal import (
        apply_prune,
        checkpoint_lines,
        plan_prune,
        prune_checkpoints,
        pruned_range_checkpoints,
    )
    from gateway.audit.verify import verify_log
    from gateway.keys import gateway_keys

    with database(config_path) as (config, engine):
        if before is None:
            if not config.audit.retention_days:
                raise click.UsageError("give --before, or set [audit] retention_days")
            before = datetime.now(UTC) - timedelta(days=config.audit.retention_days)
        plans = plan_prune(engine, before)
        total = sum(plan.rows for plan in plans)
        outcome: dict[str, Any] = {
            "before": before,
            "rows": total,
            "chains": [
                {
                    "chain_id": plan.chain_id,
                    "first_seq": plan.first_seq,
                    "upto_seq": plan.upto_seq,
                    "rows": plan.rows,
                    "oldest": plan.oldest,
                    "newest": plan.newest,
                }
                for plan in plans
            ],
            "deleted": 0,
            "checkpoint_file": None,
        }
        say = (lambda _text: None) if as_json else click.echo
        say(f"rows older than {rfc3339(before)}: {total} in {len(plans)} chains")
        for plan in plans:
            say(
                f"  chain {plan.chain_id}: seq {plan.first_seq}..{plan.upto_seq} "
                f"({plan.rows} rows, {rfc3339(plan.oldest)} .. {rfc3339(plan.newest)})"
            )
        if not plans or not confirm:
            if plans:
                say("nothing deleted: run again with --confirm to prune")
            if as_json:
                print_json(outcome)
            return
        report = verify_log(engine, chains=[plan.chain_id for plan in plans])
        if not report.ok:
            _print_report(report)
            raise click.ClickException(
                "the chains to prune do not verify; refusing to delete the evidence"
            )
        keys = gateway_keys(config, engine, signing=True)
        checkpoints = prune_checkpoints(engine, plans, keys.sign_detached)
        path = checkpoint_output or f"audit-prune-{_stamp()}.checkpoints.jsonl"
        with _output(path) as out:
            for line in checkpoint_lines(pruned_range_checkpoints(engine, plans)):
                out.write(line)
            for line in checkpoint_lines(iter(checkpoints)):
                out.write(line)
        say(f"checkpoints of the pruned rows written to {path}")
        _record(
            engine,
            actor=actor,
            action="audit.prune",
            target={
                "before": rfc3339(before),
                "rows": total,
                "chains": {plan.chain_id: [plan.first_seq, plan.upto_seq] for plan in plans},
                "checkpoint_file": str(Path(path).resolve()),
            },
            reason=reason,
        )
        with _progress(total, "pruning") as bar:
            deleted = apply_prune(engine, checkpoints, on_batch=lambda _c, rows: bar.update(rows))
    if as_json:
        print_json({**outcome, "deleted": deleted, "checkpoint_file": str(Path(path).resolve())})
        return
    click.echo(f"pruned {deleted} rows; the remaining log still verifies against its checkpoints")
