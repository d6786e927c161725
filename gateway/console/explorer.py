"""The console's audit explorer (auditors): events by filter with cursor paging, one
record's provenance, the exposure report with its signed manifest, and the state of the
hash chains. The same services as `gateway audit ...` and /_gateway/audit/; every read is
logged in admin_events under the signed-in auditor."""

from __future__ import annotations

import json
import tempfile
from typing import Any

from flask import Blueprint, Response, current_app, g, render_template, request
from sqlalchemy import func, select

from gateway.audit import exposure, manifest, query
from gateway.console.login import require
from gateway.db.models import AuditCheckpoint

EVENT_FILTERS = (
    "contractor",
    "vendor",
    "project",
    "task",
    "record",
    "decision",
    "since",
    "until",
    "request_id",
)


def _services() -> Any:
    return current_app.extensions["gateway"]


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/audit", "explorer", require("auditor")(explorer))
    blueprint.add_url_rule("/audit/records/<path:record_id>", "record", require("auditor")(record))
    blueprint.add_url_rule("/audit/exposure", "exposure", require("auditor")(exposure_page))
    blueprint.add_url_rule(
        "/audit/exposure/manifest", "manifest", require("auditor")(exposure_manifest)
    )
    blueprint.add_url_rule("/audit/export", "export", require("auditor")(export))


def _given(names: tuple[str, ...]) -> dict[str, str]:
    return {name: request.args[name] for name in names if request.args.get(name, "").strip()}


def explorer() -> Any:
    db = _services().db
    params = _given((*EVENT_FILTERS, "cursor"))
    page = problem = None
    if params:
        try:
            wanted = query.parse_event_query(params)
        except query.QueryError as error:
            problem = f"{error.param}: {error.message}"
        else:
            page = query.query_events(db, wanted.filter, limit=50, cursor=wanted.cursor)
            query.log_read(
                db,
                actor=g.principal.policy_subject,
                action="audit.query",
                query=wanted.filter.as_dict() | {"via": "console"},
                result={"events": len(page.events), "more": page.next_cursor is not None},
            )
    return render_template(
        "explorer.html",
        params=params,
        page=page,
        problem=problem,
        filters=EVENT_FILTERS,
        chains=_chain_heads(),
        verified=_last_verification(),
    ), (400 if problem else 200)


def record(record_id: str) -> Any:
    db = _services().db
    try:
        wanted = query.parse_record_query(record_id, {})
    except query.QueryError as error:
        return render_template("error.html", message=f"{error.param}: {error.message}"), 400
    provenance = query.record_provenance(db, wanted)
    query.log_read(
        db,
        actor=g.principal.policy_subject,
        action="audit.record",
        query={"record": record_id, "via": "console"},
        result={"accesses": len(provenance["accesses"])},
    )
    return render_template("record.html", record_id=record_id, provenance=provenance)


def exposure_page() -> Any:
    services = _services()
    params = _given(exposure.EXPOSURE_PARAMS)
    report = problem = None
    if params:
        try:
            wanted = exposure.parse_exposure_query(params)
        except query.QueryError as error:
            problem = f"{error.param}: {error.message}"
        else:
            report = exposure.exposure_report(
                services.db, wanted, catalogue_upstream=services.config.catalogue.upstream
            )
            query.log_read(
                services.db,
                actor=g.principal.policy_subject,
                action="audit.exposure",
                query=wanted.as_dict() | {"via": "console"},
                result={
                    "distinct_records": report["totals"]["distinct_records"],
                    "contractors": report["totals"]["contractors"],
                },
            )
    return render_template("exposure.html", params=params, report=report, problem=problem), (
        400 if problem else 200
    )


def exposure_manifest() -> Any:
    """The signed manifest as a download; its signature document rides in a header and
    is offered as `FILE.sig` content (the same bytes the API serves)."""
    services = _services()
    params = _given((*exposure.EXPOSURE_PARAMS, "format"))
    try:
        wanted = exposure.parse_exposure_query(params, manifest=True)
    except query.QueryError as error:
        return render_template("error.html", message=f"{error.param}: {error.message}"), 400
    handle = tempfile.TemporaryFile(prefix="gateway-manifest-")  # noqa: SIM115 - the response closes it
    try:
        document = manifest.signed_manifest(services.db, services.keys, wanted, handle)
        query.log_read(
            services.db,
            actor=g.principal.policy_subject,
            action="audit.exposure",
            query=wanted.as_dict() | {"via": "console"},
            result={"manifest_sha256": document["sha256"], "records": document["records"]},
        )
    except BaseException:
        handle.close()
        raise

    fmt = wanted.format or "csv"
    response = Response(manifest.chunks_then_close(handle), content_type=manifest.MEDIA_TYPES[fmt])
    response.headers["Content-Length"] = str(document["bytes"])
    response.headers["Content-Disposition"] = (
        f'attachment; filename="exposure-manifest-{document["sha256"][:12]}.{fmt}"'
    )
    response.headers["X-Manifest-Signature"] = json.dumps(document, separators=(",", ":"))
    response.headers["X-Manifest-SHA256"] = document["sha256"]
    return response


def _last_verification() -> dict[str, Any] | None:
    """The newest `gateway audit verify` run, as it recorded itself in admin_events."""
    from gateway.db.models import AdminEvent

    with _services().db.connect() as connection:
        row = connection.execute(
            select(AdminEvent.time, AdminEvent.actor, AdminEvent.target)
            .where(AdminEvent.action == "audit.verify")
            .order_by(AdminEvent.id.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    try:
        outcome = json.loads(row.target)
    except ValueError:
        outcome = {}
    return {"time": query.format_time(row.time), "actor": row.actor, **outcome}


def _chain_heads() -> list[dict[str, Any]]:
    """The newest signed checkpoint of each writer's chain: how far the log is sealed."""
    with _services().db.connect() as connection:
        newest = (
            select(AuditCheckpoint.chain_id, func.max(AuditCheckpoint.id).label("id"))
            .group_by(AuditCheckpoint.chain_id)
            .subquery()
        )
        rows = connection.execute(
            select(AuditCheckpoint).join(newest, AuditCheckpoint.id == newest.c.id)
        ).all()
    return [
        {
            "chain_id": row.chain_id,
            "seq": row.seq,
            "time": query.format_time(row.time),
            "kid": row.kid,
        }
        for row in rows
    ]


def export() -> Any:
    """The access log (vendor, project, window) as CSV, JSON lines or OCSF: a download."""
    from datetime import UTC, datetime
    from itertools import chain

    from gateway.archive.store import ArchiveUnavailable
    from gateway.audit.export import FORMATS, ExportError, ExportFilter, export_chunks, parse_time

    params = _given(("vendor", "project", "since", "until", "format"))
    fmt = params.get("format", "csv")
    try:
        if fmt not in FORMATS:
            raise ExportError("format", f"one of {', '.join(FORMATS)}")
        filters = ExportFilter(
            vendor=params.get("vendor"),
            project=params.get("project"),
            since=parse_time(params["since"], "since") if "since" in params else None,
            until=parse_time(params["until"], "until") if "until" in params else None,
        )
    except ExportError as error:
        return render_template("error.html", message=f"{error.field}: {error.message}"), 400
    db = _services().db
    query.log_read(
        db,
        actor=g.principal.policy_subject,
        action="audit.export",
        query={"format": fmt, **filters.as_json(), "via": "console"},
        result={},
    )
    media_type, suffix = FORMATS[fmt]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    chunks = export_chunks(db, fmt, filters)
    try:
        first = next(chunks, b"")
    except ArchiveUnavailable as error:
        return render_template("error.html", message=f"archive unavailable: {error}"), 503
    response = Response(chain([first], chunks), content_type=media_type)
    response.headers["Content-Disposition"] = f'attachment; filename="access-log-{stamp}.{suffix}"'
    return response
