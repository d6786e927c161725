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
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator, model_validator

from gateway.configbase import Name, PositiveFloat, PositiveInt, Problem, Section, Text

KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")


def _kind(value: str) -> str:
    if not KIND.match(value):
        raise ValueError("a catalogue kind: lower-case letters, digits, '_' or '-'")
    return value


def _jmespath(value: str) -> str:
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        jmespath.compile(value)
    except JMESPathError as error:
        raise ValueError(f"bad JMESPath: {error}") from None
    return value


Kind = Annotated[
    str, AfterValidator(_kind), Field(json_schema_extra={"pattern": "^[a-z][a-z0-9_-]{0,31}$"})
]
JMESPath = Annotated[str, Field(min_length=1), AfterValidator(_jmespath)]


class CatalogueSource(Section):
    kind: Kind
    path: Text
    records: JMESPath
    record_id: JMESPath
    record_task: JMESPath | None = None
    query: dict[str, str] = {}
    """Fixed query parameters sent with every page (e.g. fields to include)."""
    page_param: Text | None = None
    page_size_param: Text | None = None
    offset_param: Text | None = None
    limit_param: Text | None = None
    next: JMESPath | None = None
    page_size: PositiveInt = 100
    max_pages: PositiveInt = 1_000_000
    """A listing longer than this many pages is an upstream loop, not a dataset."""
    end_status: Annotated[int, Field(ge=300, le=599)] | None = None
    """A status that ends the listing like an empty page (Label Studio answers 404 past the last
    page, and for a project without tasks).
    """

    @field_validator("query", mode="before")
    @classmethod
    def _query_values_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in value.items()
            }
        return value

    @field_validator("path")
    @classmethod
    def _path_names_project(cls, value: str) -> str:
        if not value.startswith("/") or "{project}" not in value:
            raise ValueError("must start with '/' and contain {project}")
        return value

    @model_validator(mode="after")
    def _one_pagination(self) -> CatalogueSource:
        styles = [
            name
            for name, present in (
                ("page", self.page_param),
                ("offset", self.offset_param),
                ("next", self.next),
            )
            if present
        ]
        if len(styles) > 1:
            raise Problem("page_param", "choose one pagination: page_param, offset_param or next")
        if self.offset_param and not self.limit_param:
            raise Problem("limit_param", "offset pagination needs limit_param")
        return self

    @property
    def pagination(self) -> str:
        """ "page", "offset", "next" or "none"."""
        if self.page_param:
            return "page"
        if self.offset_param:
            return "offset"
        return "next" if self.next else "none"


class CatalogueConfig(Section):
    upstream: Name = "default"
    cache_size: PositiveInt = 200_000
    poll_interval_seconds: PositiveFloat = 1.0
    projects: Annotated[tuple[Text, ...], Field(strict=False)] = ()
    sources: Annotated[tuple[CatalogueSource, ...], Field(strict=False)] = ()


def parse_catalogue_table(raw: Any) -> CatalogueConfig:
    """A `[catalogue]` table (None: none in the file), or a ConfigError naming the key."""
    from gateway.configbase import validated

    return validated(CatalogueConfig, {} if raw is None else raw, "catalogue")
