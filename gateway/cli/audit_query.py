"""Audit queries: events, record provenance, exposure reports and signed manifests.

    gateway audit query [--vendor V] [--contractor ISSUER:SUB] [--issuer I] [--project P]
        [--task T] [--record R] [--decision allow|deny|filtered] [--since T] [--until T]
        [--client-ip IP] [--request-id ID] [--limit N] [--cursor C] [--all]
        [--format jsonl|json|table]
    gateway audit record RECORD_ID [--format jsonl|json|table]
    gateway audit exposure --vendor V|--contractor C|--project P [--since T] [--until T]
        [--manifest FILE [--format csv|jsonl]]
    gateway audit verify-manifest FILE [--signature FILE.sig]

Times are ISO 8601 with a UTC offset (2026-12-01T00:00:00Z); windows are since <= time <
until. Every read is recorded in admin_events under `--actor` (default $USER). Bad input
ends in one `Error: <parameter>: <message>` line and exit status 1.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from gateway.cli import config_option, database
from gateway.cli.audit import audit_group
from gateway.cli.output import json_option, print_json, to_json

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT_FORMATS = ("jsonl", "json", "table")
_TABLE_EVENT = (
    ("time", 27),
    ("contractor", 24),
    ("vendor", 12),
    ("decision", 8),
    ("project", 12),
    ("task", 10),
    ("record_id", 20),
    ("policy_version", 6),
    ("request_id", 24),
)
_TABLE_ACCESS = (
    ("time", 27),
    ("contractor", 24),
    ("vendor", 12),
    ("decision", 8),
    ("policy_version", 6),
    ("record_sha256", 16),
    ("request_id", 24),
)


def _errors(function: F) -> F:
    """Query and manifest errors, and the database errors the policy CLI knows, as one
    `Error: ...` line and exit status 1."""
    from gateway.cli.errors import friendly_errors

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from gateway.audit.manifest import ManifestInvalid
        from gateway.audit.query import QueryError

        try:
            return function(*args, **kwargs)
        except QueryError as error:
            raise click.ClickException(str(error)) from None
        except ManifestInvalid as error:
            raise click.ClickException(f"invalid manifest: {error}") from None

    return friendly_errors()(wrapper)  # type: ignore[return-value]


actor_option = click.option(
    "--actor",
    default=lambda: os.environ.get("USER", "cli"),
    show_default="$USER",
    help="who reads (recorded in admin_events)",
)


def output_options(function: F) -> F:
    """--json (one document), --jsonl (one event per line, for large pipes), else a table."""
    function = click.option(
        "--format",
        "legacy_format",
        default=None,
        hidden=True,
        help="deprecated: jsonl, json or table",
    )(function)
    function = click.option(
        "--jsonl", "as_jsonl", is_flag=True, help="one JSON object per line (streams)"
    )(function)
    return json_option(function)


def _output_format(as_json: bool, as_jsonl: bool, legacy: str | None) -> str:
    if legacy is not None:
        if legacy not in OUTPUT_FORMATS:
            raise click.ClickException(
                f"format: {legacy!r} is not one of {', '.join(OUTPUT_FORMATS)}"
            )
        click.echo("note: --format is deprecated here; use --json or --jsonl", err=True)
        return legacy
    if as_json and as_jsonl:
        raise click.ClickException("--jsonl: give --json or --jsonl, not both")
    return "json" if as_json else "jsonl" if as_jsonl else "table"


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_table(rows: Iterable[dict[str, Any]], columns: tuple[tuple[str, int], ...]) -> int:
    click.echo("  ".join(name[:width].ljust(width) for name, width in columns).rstrip())
    count = 0
    for row in rows:
        click.echo("  ".join(_cell(row[n], w).ljust(w) for n, w in columns).rstrip())
        count += 1
    return count


def _print_jsonl(rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    out = sys.stdout
    for row in rows:
        out.write(to_json(row, indent=False) + "\n")
        count += 1
    out.flush()
    return count


def _print_json_object(key: str, rows: Iterable[dict[str, Any]], **tail: Any) -> int:
    """`{"<key>": [...], **tail}` written row by row, never held whole in memory."""
    out = sys.stdout
    out.write(f'{{"{key}": [')
    count = 0
    for row in rows:
        out.write(("," if count else "") + "\n  " + to_json(row, indent=False))
        count += 1
    out.write("\n]" if count else "]")
    for name, value in tail.items():
        out.write(f', "{name}": {to_json(value, indent=False)}')
    out.write("}\n")
    out.flush()
    return count


# --- gateway audit query ----------------------------------------------------------------


@audit_group.command("query")
@config_option
@click.option("--contractor", help="<issuer name>:<sub>, e.g. acme-idp:alice")
@click.option("--vendor")
@click.option("--issuer", help="issuer name, e.g. acme-idp")
@click.option("--project")
@click.option("--task")
@click.option("--record", help="record id")
@click.option("--decision", help="allow, deny or filtered")
@click.option("--since", help="from this time on (ISO 8601 with offset)")
@click.option("--until", help="before this time (ISO 8601 with offset)")
@click.option("--client-ip")
@click.option("--request-id")
@click.option("--limit", help="events per page, 1..1000 (default 100)")
@click.option("--cursor", help="continue after this cursor (printed after a page)")
@click.option("--all", "all_pages", is_flag=True, help="every matching event, page after page")
@output_options
@actor_option
@_errors
def query_command(
    config_path: str | None,
    as_json: bool,
    as_jsonl: bool,
    legacy_format: str | None,
    all_pages: bool,
    actor: str,
    **options: str | None,
) -> None:
    """Events of the access log matching the filters, sorted by time."""
    from gateway.audit import query

    fmt = _output_format(as_json, as_jsonl, legacy_format)
    params = {name: value for name, value in options.items() if value is not None}
    wanted = query.parse_event_query(params)
    with database(config_path) as (_config, db):
        first = query.query_events(db, wanted.filter, limit=wanted.limit, cursor=wanted.cursor)
        echo = wanted.filter.as_dict() | {"limit": wanted.limit}
        if wanted.cursor is not None:
            echo["cursor"] = wanted.cursor.encode()
        query.log_read(
            db,
            actor=actor,
            action="audit.query",
            query=echo | ({"all": True} if all_pages else {}),
            result={"events": len(first.events), "more": first.next_cursor is not None},
        )

        def events() -> Iterator[dict[str, Any]]:
            yield from first.events
            if all_pages and first.next_cursor is not None:
                cursor = query.Cursor.decode(first.next_cursor)
                yield from query.iter_events(
                    db, wanted.filter, page_size=wanted.limit, cursor=cursor
                )

        next_cursor = None if all_pages else first.next_cursor
        if fmt == "json":
            _print_json_object("events", events(), next_cursor=next_cursor)
            return
        if fmt == "table":
            _print_table(events(), _TABLE_EVENT)
        else:
            _print_jsonl(events())
        if next_cursor is not None:
            click.echo(f"next cursor: {next_cursor}", err=True)


# --- gateway audit record ---------------------------------------------------------------


@audit_group.command("record")
@config_option
@click.argument("record_id")
@output_options
@actor_option
@_errors
def record_command(
    config_path: str | None,
    record_id: str,
    as_json: bool,
    as_jsonl: bool,
    legacy_format: str | None,
    actor: str,
) -> None:
    """Every access to one record: who, vendor, when, decision, policy version, hash."""
    from gateway.audit import query

    fmt = _output_format(as_json, as_jsonl, legacy_format)
    wanted = query.parse_record_query(record_id, {})
    with database(config_path) as (_config, db):
        first = query.record_provenance(db, wanted)
        query.log_read(
            db,
            actor=actor,
            action="audit.record",
            query={"record": record_id, "all": True},
            result={"accesses": first["summary"]["accesses"]},
        )

        def accesses() -> Iterator[dict[str, Any]]:
            yield from first["accesses"]
            if first["next_cursor"] is not None:
                cursor = query.Cursor.decode(first["next_cursor"])
                for event in query.iter_events(db, wanted.filter, cursor=cursor):
                    yield {name: event[name] for name in query.PROVENANCE_FIELDS}

        if fmt == "json":
            _print_json_object("accesses", accesses(), record_id=record_id, **first["summary"])
        elif fmt == "table":
            if _print_table(accesses(), _TABLE_ACCESS) == 0:
                click.echo(f"no access to record {record_id!r} is logged", err=True)
        elif _print_jsonl(accesses()) == 0:
            click.echo(f"no access to record {record_id!r} is logged", err=True)


# --- gateway audit exposure -------------------------------------------------------------


@audit_group.command("exposure")
@config_option
@click.option("--vendor")
@click.option("--contractor", help="<issuer name>:<sub>")
@click.option("--project")
@click.option("--since", help="from this time on (ISO 8601 with offset)")
@click.option("--until", help="before this time (default: now)")
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False),
    help="also write the signed manifest of records received here (and FILE.sig)",
)
@click.option(
    "--format", "fmt", default=None, help="manifest format: csv or jsonl (default: by suffix)"
)
@json_option
@actor_option
@_errors
def exposure_command(
    config_path: str | None,
    manifest_path: str | None,
    fmt: str | None,
    as_json: bool,
    actor: str,
    **options: str | None,
) -> None:
    """What a vendor's (contractor's, project's) people received in a window."""
    from gateway.audit import exposure, query

    params = {name: value for name, value in options.items() if value is not None}
    if manifest_path is not None:
        suffix = Path(manifest_path).suffix.lower()
        params["format"] = fmt or ("jsonl" if suffix in (".jsonl", ".ndjson") else "csv")
    elif fmt is not None:
        raise click.ClickException("format: only applies with --manifest")
    wanted = exposure.parse_exposure_query(params, manifest=manifest_path is not None)
    with database(config_path) as (config, db):
        report = exposure.exposure_report(db, wanted, catalogue_upstream=config.catalogue.upstream)
        result: dict[str, Any] = {
            "distinct_records": report["totals"]["distinct_records"],
            "contractors": report["totals"]["contractors"],
        }
        document = None
        if manifest_path is not None:
            document = _write_signed_manifest(config, db, wanted, Path(manifest_path))
            result |= {"manifest_sha256": document["sha256"], "records": document["records"]}
        query.log_read(
            db, actor=actor, action="audit.exposure", query=wanted.as_dict(), result=result
        )
    if as_json:
        print_json(report)
    else:
        _print_exposure(report)
    if document is not None:
        click.echo(
            f"manifest: {manifest_path} ({document['records']} records, {document['bytes']} "
            f"bytes, sha256 {document['sha256']}); signature: {manifest_path}.sig "
            f"(Ed25519, key {document['kid']})",
            err=True,
        )


def _print_exposure(report: dict[str, Any]) -> None:
    totals = report["totals"]
    window = report["query"]
    click.echo(
        f"{totals['distinct_records']} distinct records received by {totals['contractors']}"
        f" contractors from {window.get('since', '-')} until {window.get('until', '-')}"
    )
    columns = [("project", 16), ("task", 12), ("distinct_records", 16), ("contractors", 11)]
    rows = [{name: group.get(name) for name, _ in columns} for group in report["projects"]]
    if rows:
        _print_table(rows, tuple(columns))
    click.echo("(the whole report, with contractors and shares: --json)", err=True)


def _write_signed_manifest(config: Any, db: Any, wanted: Any, path: Path) -> dict[str, Any]:
    from gateway.audit import manifest
    from gateway.keys import gateway_keys

    keys = gateway_keys(config, db, signing=True)
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as handle:
            document = manifest.signed_manifest(db, keys, wanted, handle)
            os.fsync(handle.fileno())
        signature = path.with_name(path.name + ".sig")
        signature.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return document


# --- gateway audit verify-manifest --------------------------------------------------------


@audit_group.command("verify-manifest")
@config_option
@click.argument("manifest_path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option(
    "--signature",
    "signature_path",
    type=click.Path(dir_okay=False),
    help="the signature document (default: FILE.sig)",
)
@click.option(
    "--jwks",
    "jwks_path",
    type=click.Path(exists=True, dir_okay=False),
    help="trust only these public keys (a JWKS exported earlier), not the database's",
)
@json_option
@_errors
def verify_manifest_command(
    config_path: str | None,
    manifest_path: str,
    signature_path: str | None,
    jwks_path: str | None,
    as_json: bool,
) -> None:
    """Check a manifest against its detached signature and the gateway's keys."""
    from gateway.audit import manifest
    from gateway.keys import GatewayKeys
    from gateway.keys.ring import KeyRing, KeyRingError

    path = Path(manifest_path)
    signature = Path(signature_path) if signature_path else path.with_name(path.name + ".sig")
    for item in (path, signature):
        if not item.is_file():
            raise click.ClickException(f"no such file: {item}")
    document = manifest.load_signature(signature)
    if jwks_path is not None:
        try:
            ring = KeyRing.from_file(jwks_path)
        except KeyRingError as error:
            raise click.ClickException(str(error)) from None
        digest = manifest.verify_manifest(ring, path, document)
    else:
        with database(config_path) as (config, db):
            ring = GatewayKeys(db, audience=config.upstream.url).key_ring()
            digest = manifest.verify_manifest(ring, path, document)
    if as_json:
        print_json(
            {
                "valid": True,
                "manifest": str(path),
                "sha256": digest,
                "kid": document["kid"],
                "query": document.get("query"),
                "generated_at": document.get("generated_at"),
                "keys_pinned": ring.pinned,
            }
        )
        return
    query = orjson.dumps(document.get("query")).decode() if document.get("query") else "-"
    click.echo(
        f"valid: {path} (sha256 {digest}) is signed by gateway key {document['kid']}; "
        f"query {query}, generated {document.get('generated_at', '-')}"
    )
    if not ring.pinned:
        click.echo(
            "signing keys NOT pinned: checked with the database's registered keys; pin them"
            " with --jwks FILE (`gateway keys export-jwks`, kept off this database)",
            err=True,
        )
