"""Auditor API under /_gateway/audit/: thin views over gateway.audit.

Every view needs a token with the `auditor` role (401 without a token, 403 without the
role) and every read is recorded in admin_events (actor, `audit.*` action, the filters).

- `GET /events?contractor=&vendor=&issuer=&project=&task=&record=&decision=&since=&until=
  &client_ip=&request_id=&limit=&cursor=` → `{"events": [...], "next_cursor": ...}`,
  sorted by (time, id); pass `next_cursor` back as `cursor` for the next page (null: no
  more rows for now). `limit` 1..1000, default 100.
- `GET /records/<record_id>?limit=&cursor=` → every access to one record, oldest first:
  `{"record_id", "summary", "accesses": [...], "next_cursor"}` (`limit` default 1000;
  the summary counts every access and comes with the first page only).
- `GET /exposure?vendor=|contractor=|project=&since=&until=` → the exposure report.
- `GET /exposure/manifest?…&format=csv|jsonl` → the signed manifest of records received,
  as a download; its detached signature document is the `X-Manifest-Signature` response
  header (JSON), and `X-Manifest-SHA256` repeats the digest. Save the header's JSON as
  `FILE.sig` to check with `gateway audit verify-manifest FILE`.

Bad parameters (unknown name, repeated, malformed time or cursor, limit out of range,
unknown decision or format) are a 400 whose `message` and `fields` name the parameter.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

from gateway.api.auth import AUDITOR, actor, error_response, require_role
from gateway.api.bodies import InvalidRequest, bad_request, request_query
from gateway.archive.store import ArchiveUnavailable
from gateway.audit import exposure, manifest, query

audit_blueprint = Blueprint("audit", __name__, url_prefix="/_gateway/audit")
audit_blueprint.register_error_handler(InvalidRequest, lambda error: bad_request(error.fields))

_CHUNK = 64 * 1024


@audit_blueprint.errorhandler(query.QueryError)
def _bad_query(error: query.QueryError) -> Any:
    return error_response(
        400, "invalid_request", str(error)[:2000], fields={error.param: error.message}
    )


@audit_blueprint.errorhandler(ArchiveUnavailable)
def _archive_unavailable(error: ArchiveUnavailable) -> Any:
    # Fail closed: an answer from part of the log would read as "nothing there".
    return error_response(503, "archive_unavailable", str(error)[:2000])


def _services() -> Any:
    return current_app.extensions["gateway"]


def _args() -> dict[str, list[str]]:
    return request.args.to_dict(flat=False)


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), mimetype="application/json")


@audit_blueprint.get("/events")
@require_role(AUDITOR)
def events() -> Any:
    request_query("EventQuery")
    wanted = query.parse_event_query(_args())
    db = _services().db
    page = query.query_events(db, wanted.filter, limit=wanted.limit, cursor=wanted.cursor)
    query.log_read(
        db,
        actor=actor(),
        action="audit.query",
        query=_echo(wanted.filter.as_dict(), wanted.limit, wanted.cursor),
        result={"events": len(page.events), "more": page.next_cursor is not None},
    )
    return _json(page.as_dict())


@audit_blueprint.get("/records/<path:record_id>")
@require_role(AUDITOR)
def record(record_id: str) -> Any:
    request_query("RecordQuery")
    wanted = query.parse_record_query(record_id, _args())
    db = _services().db
    provenance = query.record_provenance(db, wanted)
    query.log_read(
        db,
        actor=actor(),
        action="audit.record",
        query=_echo({"record": record_id}, wanted.limit, wanted.cursor),
        result={"accesses": len(provenance["accesses"])},
    )
    return _json(provenance)


@audit_blueprint.get("/exposure")
@require_role(AUDITOR)
def exposure_report() -> Any:
    request_query("ExposureQuery")
    wanted = exposure.parse_exposure_query(_args())
    db = _services().db
    report = exposure.exposure_report(
        db, wanted, catalogue_upstream=_services().config.catalogue.upstream
    )
    query.log_read(
        db,
        actor=actor(),
        action="audit.exposure",
        query=wanted.as_dict(),
        result={
            "distinct_records": report["totals"]["distinct_records"],
            "contractors": report["totals"]["contractors"],
        },
    )
    return _json(report)


@audit_blueprint.get("/exposure/manifest")
@require_role(AUDITOR)
def exposure_manifest() -> Any:
    request_query("ManifestQuery")
    wanted = exposure.parse_exposure_query(_args(), manifest=True)
    services = _services()
    # The signature covers the whole file and goes out in a header, before the body: so
    # the manifest is streamed from the database into a temporary file first.
    handle = tempfile.TemporaryFile(prefix="gateway-manifest-")  # noqa: SIM115 - closed by the response
    try:
        document = manifest.signed_manifest(services.db, services.keys, wanted, handle)
        query.log_read(
            services.db,
            actor=actor(),
            action="audit.exposure",
            query=wanted.as_dict(),
            result={
                "manifest_sha256": document["sha256"],
                "records": document["records"],
                "kid": document["kid"],
            },
        )
    except BaseException:
        handle.close()
        raise
    fmt = wanted.format or "csv"
    response = Response(
        manifest.chunks_then_close(handle),
        content_type=manifest.MEDIA_TYPES[fmt],
        direct_passthrough=True,
    )
    response.call_on_close(handle.close)
    response.headers["Content-Length"] = str(document["bytes"])
    response.headers["Content-Disposition"] = (
        f'attachment; filename="exposure-manifest-{document["sha256"][:12]}.{fmt}"'
    )
    # ASCII JSON: a header value must be Latin-1, and the query may hold any text.
    response.headers["X-Manifest-Signature"] = json.dumps(document, separators=(",", ":"))
    response.headers["X-Manifest-SHA256"] = document["sha256"]
    return response


def _echo(filters: dict[str, Any], limit: int, cursor: query.Cursor | None) -> dict[str, Any]:
    data = dict(filters)
    data["limit"] = limit
    if cursor is not None:
        data["cursor"] = cursor.encode()
    return data
