"""Compiled route templates; anything unmatched is denied."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from gateway.config import RouteConfig
from gateway.records import RecordSpec

_SEGMENT_VALUE = r"[A-Za-z0-9][A-Za-z0-9._~@:+-]{0,254}"
# Query parameters by which dataset APIs commonly pick a project. On a route whose
# project is known (path or config) they may only repeat that project: the upstream
# would otherwise answer for another project under this one's name.
PROJECT_QUERY_PARAMS = frozenset({"project", "project_id", "projectid", "project_ids"})
_PLACEHOLDER = re.compile(r"\{(project|task|record)\}")


class RouteError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


@dataclass(frozen=True)
class Route:
    config: RouteConfig
    pattern: re.Pattern[str]
    records: RecordSpec | None

    @property
    def action(self) -> str:
        return self.config.action


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    path: str
    project: str | None
    task: str
    record: str | None


def compile_template(template: str) -> re.Pattern[str]:
    parts = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[position : match.start()]))
        parts.append(f"(?P<{match.group(1)}>{_SEGMENT_VALUE})")
        position = match.end()
    parts.append(re.escape(template[position:]))
    return re.compile("".join(parts))


class RouteMap:
    def __init__(self, routes: tuple[RouteConfig, ...]) -> None:
        self.routes = [
            Route(
                config=route,
                pattern=compile_template(route.path),
                records=RecordSpec.from_route(route) if route.records else None,
            )
            for route in routes
        ]

    def match(self, method: str, path: str, query: str) -> RouteMatch:
        allowed_methods: set[str] = set()
        for route in self.routes:
            found = route.pattern.fullmatch(path)
            if found is None:
                continue
            if method not in route.config.methods:
                allowed_methods.update(route.config.methods)
                continue
            pairs = _check_query(route, query)
            values = found.groupdict()
            project = values.get("project") or route.config.project
            _check_query_project(pairs, project)
            return RouteMatch(
                route=route,
                path=path,
                project=project,
                task=values.get("task") or "*",
                record=values.get("record"),
            )
        if allowed_methods:
            raise RouteError(405, "method_not_allowed", f"{method} is not allowed on this route")
        raise RouteError(403, "unknown_route", "no route allows this path")


def _check_query(route: Route, query: str) -> list[tuple[str, str]]:
    if not query:
        return []
    allowed = route.config.query_params
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        if allowed is None:
            # No allow-list: the upstream parses the query; only a project name is checked.
            return parse_qsl(query, keep_blank_values=True)
        raise RouteError(400, "bad_query", "malformed query string") from None
    if allowed is None:
        return pairs
    names = [name for name, _ in pairs]
    for name in names:
        if name not in allowed:
            raise RouteError(400, "bad_query", f"query parameter {name!r} is not allowed here")
    if len(set(names)) != len(names):
        raise RouteError(400, "bad_query", "a query parameter is repeated")
    return pairs


def _check_query_project(pairs: list[tuple[str, str]], project: str | None) -> None:
    if project is None:
        return
    for name, value in pairs:
        if name.lower().replace("-", "_") in PROJECT_QUERY_PARAMS and value != project:
            raise RouteError(
                400, "bad_query", f"query parameter {name!r} names another project than the route"
            )
