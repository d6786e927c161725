"""The `[catalogue]` table: how the record catalogue is kept and where sync reads it from.

[catalogue]
upstream = "default"          # the name this upstream's records are kept under
cache_size = 200000           # catalogue entries each worker keeps in memory
projects = ["1", "2"]         # what `gateway catalogue sync` walks by default

[[catalogue.sources]]         # one listing the sync walks, per project
kind = "task"
path = "/api/projects/{project}/tasks/"
records = "@"                 # JMESPath selecting the records of one page
record_id = "id"
record_task = "id"            # optional: the record's task
page_param = "page"           # page numbers from 1 ... or offset_param/limit_param,
page_size_param = "page_size" # ... or next = "next" (JMESPath of the next page's URL)
page_size = 100
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.configbase import NAME, ConfigError
from gateway.configbase import config_str as _str

KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
PAGINATION = ("none", "page", "offset", "next")


@dataclass(frozen=True)
class CatalogueSource:
    kind: str
    path: str
    records: str
    record_id: str
    record_task: str | None = None
    # Fixed query parameters sent with every page (e.g. fields to include).
    query: tuple[tuple[str, str], ...] = ()
    pagination: str = "none"
    page_param: str | None = None
    page_size_param: str | None = None
    offset_param: str | None = None
    limit_param: str | None = None
    next: str | None = None
    page_size: int = 100
    # A listing longer than this many pages is an upstream loop, not a dataset.
    max_pages: int = 1_000_000
    # A status that ends the listing like an empty page (Label Studio answers 404 past the
    # last page, and for a project without tasks).
    end_status: int | None = None


@dataclass(frozen=True)
class CatalogueConfig:
    upstream: str = "default"
    cache_size: int = 200_000
    poll_interval_seconds: float = 1.0
    projects: tuple[str, ...] = ()
    sources: tuple[CatalogueSource, ...] = ()


def parse_catalogue_table(raw: Any) -> CatalogueConfig:
    if raw is None:
        return CatalogueConfig()
    if not isinstance(raw, dict):
        raise ConfigError("catalogue", "must be a table")
    known = {"upstream", "cache_size", "poll_interval_seconds", "projects", "sources"}
    for name in raw:
        if name not in known:
            raise ConfigError(f"catalogue.{name}", "unknown key")
    upstream = _str(raw.get("upstream", "default"), "catalogue.upstream")
    if not NAME.match(upstream):
        raise ConfigError("catalogue.upstream", "use lower-case letters, digits, '.', '_' or '-'")
    cache_size = _positive_int(raw, "cache_size", CatalogueConfig.cache_size, "catalogue")
    poll = raw.get("poll_interval_seconds", CatalogueConfig.poll_interval_seconds)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or poll <= 0:
        raise ConfigError("catalogue.poll_interval_seconds", "must be a positive number")
    projects = raw.get("projects", [])
    if not isinstance(projects, list) or not all(isinstance(p, str) and p for p in projects):
        raise ConfigError("catalogue.projects", "must be a list of project names")
    sources_raw = raw.get("sources", [])
    if not isinstance(sources_raw, list) or not all(isinstance(s, dict) for s in sources_raw):
        raise ConfigError("catalogue.sources", "must be an array of tables ([[catalogue.sources]])")
    sources = tuple(_source(item, f"catalogue.sources[{i}]") for i, item in enumerate(sources_raw))
    return CatalogueConfig(
        upstream=upstream,
        cache_size=cache_size,
        poll_interval_seconds=float(poll),
        projects=tuple(projects),
        sources=sources,
    )


def check_kind(value: Any, key: str) -> str:
    if not isinstance(value, str) or not KIND.match(value):
        raise ConfigError(key, "a catalogue kind: lower-case letters, digits, '_' or '-'")
    return value


def _positive_int(raw: dict[str, Any], name: str, default: int, section: str) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{section}.{name}", "must be a positive integer")
    return value


def _source(raw: dict[str, Any], key: str) -> CatalogueSource:
    import jmespath
    from jmespath.exceptions import JMESPathError

    allowed = set(CatalogueSource.__dataclass_fields__) - {"pagination"}
    for name in raw:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", "unknown key")
    kind = check_kind(raw.get("kind"), f"{key}.kind")
    path = _str(raw.get("path"), f"{key}.path")
    if not path.startswith("/") or "{project}" not in path:
        raise ConfigError(f"{key}.path", "must start with '/' and contain {project}")
    expressions = {}
    for name in ("records", "record_id", "record_task", "next"):
        value = _str(raw.get(name), f"{key}.{name}", optional=name in ("record_task", "next"))
        if value is not None:
            try:
                jmespath.compile(value)
            except JMESPathError as error:
                raise ConfigError(f"{key}.{name}", f"bad JMESPath: {error}") from None
        expressions[name] = value
    query = raw.get("query", {})
    if not isinstance(query, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int) for k, v in query.items()
    ):
        raise ConfigError(f"{key}.query", "must be a table of string values")
    params = {
        name: _str(raw.get(name), f"{key}.{name}", optional=True)
        for name in ("page_param", "page_size_param", "offset_param", "limit_param")
    }
    styles = [
        style
        for style, present in (
            ("page", params["page_param"]),
            ("offset", params["offset_param"]),
            ("next", expressions["next"]),
        )
        if present
    ]
    if len(styles) > 1:
        raise ConfigError(
            f"{key}.page_param", "choose one pagination: page_param, offset_param or next"
        )
    pagination = styles[0] if styles else "none"
    if pagination == "offset" and not params["limit_param"]:
        raise ConfigError(f"{key}.limit_param", "offset pagination needs limit_param")
    return CatalogueSource(
        kind=kind,
        path=path,
        records=expressions["records"],
        record_id=expressions["record_id"],
        record_task=expressions["record_task"],
        query=tuple((k, str(v)) for k, v in query.items()),
        pagination=pagination,
        next=expressions["next"],
        page_size=_positive_int(raw, "page_size", CatalogueSource.page_size, key),
        max_pages=_positive_int(raw, "max_pages", CatalogueSource.max_pages, key),
        end_status=_end_status(raw.get("end_status"), key),
        **params,
    )


def _end_status(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 300 <= value <= 599:
        raise ConfigError(f"{key}.end_status", "an HTTP status from 300 to 599")
    return value
