"""Compiled route templates; anything unmatched is denied."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from gateway.config import RouteConfig
from gateway.records import RecordSpec

_SEGMENT_VALUE = r"[A-Za-z0-9][A-Za-z0-9._~@:+-]{0,254}"
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
            _check_query(route, query)
            values = found.groupdict()
            return RouteMatch(
                route=route,
                path=path,
                project=values.get("project") or route.config.project,
                task=values.get("task") or "*",
                record=values.get("record"),
            )
        if allowed_methods:
            raise RouteError(405, "method_not_allowed", f"{method} is not allowed on this route")
        raise RouteError(403, "unknown_route", "no route allows this path")


def _check_query(route: Route, query: str) -> None:
    allowed = route.config.query_params
    if allowed is None or not query:
        return
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise RouteError(400, "bad_query", "malformed query string") from None
    names = [name for name, _ in pairs]
    for name in names:
        if name not in allowed:
            raise RouteError(400, "bad_query", f"query parameter {name!r} is not allowed here")
    if len(set(names)) != len(names):
        raise RouteError(400, "bad_query", "a query parameter is repeated")
