"""One `[[routes]]` entry: what a path may do and how its answer is accounted for."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.catalogue.config import check_kind
from gateway.configbase import HTTP_METHODS, ConfigError
from gateway.configbase import config_bool as _bool
from gateway.configbase import config_str as _str

CATALOGUE_MODES = ("check", "learn", "off")
UNKNOWN_RECORDS = ("refuse", "allow", "learn")


@dataclass(frozen=True)
class RouteConfig:
    path: str
    methods: tuple[str, ...]
    action: str
    records: str | None = None
    record_id: str | None = None
    record_project: str | None = None
    record_task: str | None = None
    project: str | None = None
    query_params: tuple[str, ...] | None = None
    # More records than this in one response is refused: each costs an access row.
    max_records: int = 10_000
    # Fields a record route releases besides its records; others are dropped or refused.
    envelope: tuple[str, ...] = ()
    envelope_extra: str = "drop"
    # Non-2xx answers: "replace" (the gateway's own error), "pass", or "inspect" (records).
    upstream_errors: str = "pass"
    # --- the record catalogue (docs/DESIGN.md §9) ---
    # "check": records and a path's {record} are checked against the catalogue; "learn":
    # checked, and records not yet in it are learnt under this route's project; "off".
    catalogue: str = "check"
    # The catalogue's name for what this route's records (and {record}) are.
    catalogue_kind: str = "record"
    # When the path's {record} is of another kind than the body's records (a task id in
    # the path of a write that answers with the annotation it made).
    path_record_kind: str | None = None
    # A record the catalogue does not know: "refuse", "allow" or "learn"; unset: refused
    # once the catalogue holds records of this kind, allowed before.
    unknown_records: str | None = None
    # "catalogue": the project (task) is the catalogue's for the path's {record}.
    project_from: str = "path"
    task_from: str = "path"
    # The body is one file, logged as one record: its path is the id, its bytes hashed.
    media: bool = False


_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")


def parse_route(raw: dict[str, Any], key: str) -> RouteConfig:
    allowed = set(RouteConfig.__dataclass_fields__)
    for name in raw:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", "unknown key")
    path = _str(raw.get("path"), f"{key}.path")
    if not path.startswith("/") or path.startswith("/_gateway"):
        raise ConfigError(
            f"{key}.path", "must start with '/' and not use the reserved /_gateway prefix"
        )
    for placeholder in _PLACEHOLDER.findall(path):
        if placeholder not in ("project", "task", "record"):
            raise ConfigError(f"{key}.path", f"unknown placeholder {{{placeholder}}}")
    methods = raw.get("methods", ["GET"])
    if not isinstance(methods, list) or not methods:
        raise ConfigError(f"{key}.methods", "must be a non-empty list")
    for method in methods:
        if method not in HTTP_METHODS:
            raise ConfigError(f"{key}.methods", f"unknown method {method!r}")
    action = _str(raw.get("action"), f"{key}.action")
    records = _str(raw.get("records"), f"{key}.records", optional=True)
    record_id = _str(raw.get("record_id"), f"{key}.record_id", optional=True)
    if (records is None) != (record_id is None):
        raise ConfigError(f"{key}.records", "'records' and 'record_id' go together")
    project = _str(raw.get("project"), f"{key}.project", optional=True)
    media = _bool(raw.get("media", False), f"{key}.media")
    record_project = _str(raw.get("record_project"), f"{key}.record_project", optional=True)
    if record_project and not records:
        raise ConfigError(f"{key}.record_project", "needs 'records' and 'record_id'")
    catalogue = _catalogue_keys(raw, key, path, records)
    if media and records:
        raise ConfigError(f"{key}.media", "a media route's body is one file: no 'records'")
    if (
        "{project}" not in path
        and not project
        and not record_project
        and catalogue["project_from"] != "catalogue"
    ):
        raise ConfigError(
            f"{key}.path",
            "a route must name its project: {project} in the path, 'project', 'record_project'"
            " or project_from = 'catalogue'",
        )
    query = raw.get("query_params")
    if query is not None and (
        not isinstance(query, list) or not all(isinstance(q, str) for q in query)
    ):
        raise ConfigError(f"{key}.query_params", "must be a list of parameter names")
    if "{project}" not in path and project and query is None:
        raise ConfigError(
            f"{key}.query_params",
            "a route with a fixed 'project' must list the query parameters it allows (an"
            " empty list allows none): an unchecked query could select another project's data",
        )
    max_records = raw.get("max_records", RouteConfig.max_records)
    if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
        raise ConfigError(f"{key}.max_records", "must be a positive integer")
    if "max_records" in raw and not records:
        raise ConfigError(f"{key}.max_records", "needs 'records' and 'record_id'")
    envelope, envelope_extra, upstream_errors = _route_release(raw, key, records)
    return RouteConfig(
        path=path,
        methods=tuple(methods),
        action=action,
        records=records,
        record_id=record_id,
        record_project=record_project,
        record_task=_str(raw.get("record_task"), f"{key}.record_task", optional=True),
        project=project,
        query_params=tuple(query) if query is not None else None,
        max_records=max_records,
        envelope=envelope,
        envelope_extra=envelope_extra,
        upstream_errors=upstream_errors,
        media=media,
        **catalogue,
    )


def _catalogue_keys(
    raw: dict[str, Any], key: str, path: str, records: str | None
) -> dict[str, Any]:
    """How a route uses the record catalogue; contradictions are refused here."""
    mode = raw.get("catalogue", "check")
    if mode not in CATALOGUE_MODES:
        raise ConfigError(f"{key}.catalogue", f"must be one of {', '.join(CATALOGUE_MODES)}")
    kind = check_kind(raw.get("catalogue_kind", "record"), f"{key}.catalogue_kind")
    path_kind = raw.get("path_record_kind")
    if path_kind is not None:
        check_kind(path_kind, f"{key}.path_record_kind")
        if "{record}" not in path:
            raise ConfigError(f"{key}.path_record_kind", "needs {record} in the path")
    unknown = raw.get("unknown_records")
    if unknown is not None and unknown not in UNKNOWN_RECORDS:
        raise ConfigError(f"{key}.unknown_records", f"must be one of {', '.join(UNKNOWN_RECORDS)}")
    if mode == "learn":
        if unknown not in (None, "learn"):
            raise ConfigError(
                f"{key}.unknown_records", "contradicts catalogue = 'learn' (which learns them)"
            )
        unknown = "learn"
    project_from = raw.get("project_from", "path")
    task_from = raw.get("task_from", "path")
    for name, value, placeholder in (
        ("project_from", project_from, "{project}"),
        ("task_from", task_from, "{task}"),
    ):
        if value not in ("path", "catalogue"):
            raise ConfigError(f"{key}.{name}", "must be 'path' or 'catalogue'")
        if value == "catalogue":
            if "{record}" not in path:
                raise ConfigError(f"{key}.{name}", "'catalogue' needs {record} in the path")
            if placeholder in path:
                raise ConfigError(f"{key}.{name}", f"the path names it already ({placeholder})")
    if project_from == "catalogue" and raw.get("project"):
        raise ConfigError(f"{key}.project", "contradicts project_from = 'catalogue'")
    if task_from == "catalogue" and project_from != "catalogue" and "{project}" not in path:
        raise ConfigError(f"{key}.task_from", "needs the project from the path or the catalogue")
    if mode == "off":
        for name in ("unknown_records", "project_from", "task_from", "path_record_kind"):
            if name in raw and raw[name] not in (None, "path"):
                raise ConfigError(f"{key}.{name}", "has no effect with catalogue = 'off'")
    if unknown == "learn":
        if not records and not raw.get("media"):
            raise ConfigError(
                f"{key}.unknown_records", "learning needs records in the body ('records' or media)"
            )
        if "{project}" not in path and not raw.get("project") and project_from != "catalogue":
            raise ConfigError(
                f"{key}.unknown_records",
                "learning needs the route to know its project (path, 'project' or catalogue)",
            )
    return {
        "catalogue": mode,
        "catalogue_kind": kind,
        "path_record_kind": path_kind,
        "unknown_records": unknown,
        "project_from": project_from,
        "task_from": task_from,
    }


def _route_release(
    raw: dict[str, Any], key: str, records: str | None
) -> tuple[tuple[str, ...], str, str]:
    """What a route lets out besides checked records: envelope fields and upstream errors."""
    from gateway.records.envelope import ENVELOPE_EXTRA, field_path, overlapping

    envelope = raw.get("envelope", [])
    if not isinstance(envelope, list) or not all(isinstance(e, str) and e for e in envelope):
        raise ConfigError(f"{key}.envelope", "must be a list of field names")
    extra = raw.get("envelope_extra", "drop")
    if extra not in ENVELOPE_EXTRA:
        raise ConfigError(f"{key}.envelope_extra", f"must be one of {', '.join(ENVELOPE_EXTRA)}")
    errors = raw.get("upstream_errors", "replace" if records or raw.get("media") else "pass")
    if errors not in ("replace", "pass", "inspect"):
        raise ConfigError(f"{key}.upstream_errors", "must be one of replace, pass, inspect")
    if errors == "inspect" and not records:
        raise ConfigError(f"{key}.upstream_errors", "'inspect' needs 'records' and 'record_id'")
    single = records is not None and records.strip() in ("@", "[*]")
    if not records or single:
        for name in ("envelope", "envelope_extra"):
            if name in raw:
                raise ConfigError(
                    f"{key}.{name}", "applies to routes whose 'records' selects a list of records"
                )
        return (), extra, errors
    if extra == "allow":
        if envelope:
            raise ConfigError(f"{key}.envelope", "has no effect with envelope_extra = 'allow'")
        return (), extra, errors
    records_path = field_path(records)
    if records_path is None:
        import jmespath
        from jmespath.exceptions import JMESPathError

        try:
            jmespath.compile(records)
        except JMESPathError as error:
            raise ConfigError(f"{key}.records", f"bad JMESPath: {error}") from None
        raise ConfigError(
            f"{key}.records",
            "must be a plain field path (e.g. 'records' or 'data.items') so that fields beside"
            " the records can be dropped; or set envelope_extra = 'allow' to release them"
            " unchecked",
        )
    for name in envelope:
        path = field_path(name)
        if path is None:
            raise ConfigError(f"{key}.envelope", f"{name!r} is not a plain field path")
        if overlapping(records_path, path):
            raise ConfigError(
                f"{key}.envelope", f"{name!r} contains or is inside the records ({records!r})"
            )
    return tuple(envelope), extra, errors
