"""One `[[routes]]` entry: what a path may do and how its answer is accounted for."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.catalogue.config import Kind
from gateway.configbase import NOT_EMPTY_SCHEMA, NotEmpty, Problem, Section, Text

CATALOGUE_MODES = ("check", "learn", "off")
UNKNOWN_RECORDS = ("refuse", "allow", "learn")
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")


class RouteConfig(Section):
    path: Text
    methods: Annotated[tuple[Method, ...], Field(strict=False), NotEmpty, NOT_EMPTY_SCHEMA] = (
        "GET",
    )
    action: Text
    records: Text | None = None
    record_id: Text | None = None
    record_project: Text | None = None
    record_task: Text | None = None
    project: Text | None = None
    query_params: Annotated[tuple[str, ...], Field(strict=False)] | None = None
    max_records: Annotated[int, Field(gt=0)] = 10_000
    """More records than this in one response is refused: each costs an access row."""
    envelope: Annotated[tuple[Text, ...], Field(strict=False)] = ()
    """Fields a record route releases besides its records; others are dropped or refused."""
    envelope_extra: Literal["drop", "refuse", "allow"] = "drop"
    upstream_errors: Literal["replace", "pass", "inspect"] = "pass"
    """Non-2xx answers: "replace" (the gateway's own error), "pass", or "inspect" (records).
    Unset: "replace" on record and media routes, else "pass".
    """
    # --- the record catalogue (docs/DESIGN.md §9) ---
    catalogue: Literal["check", "learn", "off"] = "check"
    """"check": records and a path's {record} are checked against the catalogue; "learn":
    checked, and records not yet in it are learnt under this route's project; "off".
    """
    catalogue_kind: Kind = "record"
    """The catalogue's name for what this route's records (and {record}) are."""
    path_record_kind: Kind | None = None
    """When the path's {record} is of another kind than the body's records (a task id in the path
    of a write that answers with the annotation it made).
    """
    unknown_records: Literal["refuse", "allow", "learn"] | None = None
    """A record the catalogue does not know: "refuse", "allow" or "learn"; unset: refused once
    the catalogue holds records of this kind, allowed before.
    """
    project_from: Literal["path", "catalogue"] = "path"
    """"catalogue": the project (task) is the catalogue's for the path's {record}."""
    task_from: Literal["path", "catalogue"] = "path"
    media: bool = False
    """The body is one file, logged as one record: its path is the id, its bytes hashed."""

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "upstream_errors" not in data:
            data["upstream_errors"] = (
                "replace" if data.get("records") or data.get("media") else "pass"
            )
        if data.get("catalogue") == "learn":
            if data.get("unknown_records") not in (None, "learn"):
                raise Problem(
                    "unknown_records", "contradicts catalogue = 'learn' (which learns them)"
                )
            data["unknown_records"] = "learn"
        return data

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        if not path.startswith("/") or path.startswith("/_gateway"):
            raise ValueError("must start with '/' and not use the reserved /_gateway prefix")
        for placeholder in _PLACEHOLDER.findall(path):
            if placeholder not in ("project", "task", "record"):
                raise ValueError(f"unknown placeholder {{{placeholder}}}")
        return path

    @model_validator(mode="after")
    def _consistent(self) -> RouteConfig:
        given = self.model_fields_set
        if (self.records is None) != (self.record_id is None):
            raise Problem("records", "'records' and 'record_id' go together")
        if self.record_project and not self.records:
            raise Problem("record_project", "needs 'records' and 'record_id'")
        self._check_catalogue(given)
        if self.media and self.records:
            raise Problem("media", "a media route's body is one file: no 'records'")
        if (
            "{project}" not in self.path
            and not self.project
            and not self.record_project
            and self.project_from != "catalogue"
        ):
            raise Problem(
                "path",
                "a route must name its project: {project} in the path, 'project',"
                " 'record_project' or project_from = 'catalogue'",
            )
        if "{project}" not in self.path and self.project and self.query_params is None:
            raise Problem(
                "query_params",
                "a route with a fixed 'project' must list the query parameters it allows (an"
                " empty list allows none): an unchecked query could select another project's"
                " data",
            )
        if "max_records" in given and not self.records:
            raise Problem("max_records", "needs 'records' and 'record_id'")
        self._check_release(given)
        return self

    def _check_catalogue(self, given: set[str]) -> None:
        """How a route uses the record catalogue; contradictions are refused here."""
        path = self.path
        if self.path_record_kind is not None and "{record}" not in path:
            raise Problem("path_record_kind", "needs {record} in the path")
        for name, placeholder in (("project_from", "{project}"), ("task_from", "{task}")):
            if getattr(self, name) == "catalogue":
                if "{record}" not in path:
                    raise Problem(name, "'catalogue' needs {record} in the path")
                if placeholder in path:
                    raise Problem(name, f"the path names it already ({placeholder})")
        if self.project_from == "catalogue" and self.project:
            raise Problem("project", "contradicts project_from = 'catalogue'")
        if (
            self.task_from == "catalogue"
            and self.project_from != "catalogue"
            and "{project}" not in path
        ):
            raise Problem("task_from", "needs the project from the path or the catalogue")
        if self.catalogue == "off":
            for name in ("unknown_records", "project_from", "task_from", "path_record_kind"):
                if name in given and getattr(self, name) not in (None, "path"):
                    raise Problem(name, "has no effect with catalogue = 'off'")
        if self.unknown_records == "learn":
            if not self.records and not self.media:
                raise Problem(
                    "unknown_records", "learning needs records in the body ('records' or media)"
                )
            if "{project}" not in path and not self.project and self.project_from != "catalogue":
                raise Problem(
                    "unknown_records",
                    "learning needs the route to know its project (path, 'project' or catalogue)",
                )

    def _check_release(self, given: set[str]) -> None:
        """What a route lets out besides checked records: envelope fields and errors."""
        from gateway.records.envelope import field_path, overlapping

        records = self.records
        if self.upstream_errors == "inspect" and not records:
            raise Problem("upstream_errors", "'inspect' needs 'records' and 'record_id'")
        single = records is not None and records.strip() in ("@", "[*]")
        if not records or single:
            for name in ("envelope", "envelope_extra"):
                if name in given:
                    raise Problem(
                        name, "applies to routes whose 'records' selects a list of records"
                    )
            return
        if self.envelope_extra == "allow":
            if self.envelope:
                raise Problem("envelope", "has no effect with envelope_extra = 'allow'")
            return
        records_path = field_path(records)
        if records_path is None:
            import jmespath
            from jmespath.exceptions import JMESPathError

            try:
                jmespath.compile(records)
            except JMESPathError as error:
                raise Problem("records", f"bad JMESPath: {error}") from None
            raise Problem(
                "records",
                "must be a plain field path (e.g. 'records' or 'data.items') so that fields"
                " beside the records can be dropped; or set envelope_extra = 'allow' to"
                " release them unchecked",
            )
        for name in self.envelope:
            path = field_path(name)
            if path is None:
                raise Problem("envelope", f"{name!r} is not a plain field path")
            if overlapping(records_path, path):
                raise Problem(
                    "envelope", f"{name!r} contains or is inside the records ({records!r})"
                )


def parse_route(raw: Any, key: str) -> RouteConfig:
    """One `[[routes]]` table, or a ConfigError naming the key (`routes[3].records`)."""
    from gateway.configbase import validated

    return validated(RouteConfig, raw, key)
