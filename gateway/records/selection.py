"""Pick the records out of a JSON body with JMESPath and fingerprint each one."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jmespath
import orjson
from jmespath.exceptions import JMESPathError

from gateway.config import ConfigError, RouteConfig
from gateway.records.envelope import Envelope, field_path

_SORT_KEYS = orjson.OPT_SORT_KEYS


class RecordError(Exception):
    """The upstream body does not have the shape the route promises."""

    reason = "upstream_malformed"


class TooManyRecords(RecordError):
    reason = "upstream_too_many_records"


class Unfilterable(RecordError):
    """Records must be withheld, but the route's selection cannot be written back through."""

    reason = "unfilterable"


Getter = Callable[[Any], Any]
# `records = "[*]"`: the body is a JSON array of records (no envelope around them).
BODY_IS_LIST = "[*]"


def compile_getter(expression: str) -> Getter:
    """A JMESPath expression as a function; a plain field name skips the interpreter.

    Record ids are read once per record on the hot path, and `record["id"]` is about
    twenty times cheaper than walking the JMESPath AST for the same answer.
    """
    if expression.strip() == BODY_IS_LIST:
        # The body itself, so that withheld records can be removed from it in place.
        return lambda value: value if isinstance(value, list) else None
    parsed = jmespath.compile(expression)
    if parsed.parsed["type"] == "field":
        name = parsed.parsed["value"]
        return lambda value: value.get(name) if isinstance(value, dict) else None
    return parsed.search


@dataclass(frozen=True)
class RecordSpec:
    records: Getter
    record_id: Getter
    record_project: Getter | None
    record_task: Getter | None
    single: bool
    max_records: int = 10_000
    # None: the body is one record, or the route releases the whole body (envelope_extra
    # = "allow") with unkept records removed in place.
    envelope: Envelope | None = None

    @classmethod
    def from_route(cls, route: RouteConfig) -> RecordSpec:
        assert route.records and route.record_id

        def compile_expression(expression: str | None, key: str) -> Getter | None:
            if expression is None:
                return None
            try:
                return compile_getter(expression)
            except JMESPathError as error:
                raise ConfigError(f"routes[{route.path}].{key}", f"bad JMESPath: {error}") from None

        single = route.records.strip() == "@"
        envelope = None
        if not single and route.envelope_extra != "allow" and route.records.strip() != BODY_IS_LIST:
            records_path = field_path(route.records)
            if records_path is None:
                raise ConfigError(
                    f"routes[{route.path}].records",
                    "must be a plain field path unless envelope_extra = 'allow'",
                )
            envelope = Envelope(
                records_path=records_path,
                kept=tuple(path for name in route.envelope if (path := field_path(name))),
                refuse_extra=route.envelope_extra == "refuse",
            )
        records = compile_expression(route.records, "records")
        record_id = compile_expression(route.record_id, "record_id")
        assert records is not None and record_id is not None
        return cls(
            records=records,
            record_id=record_id,
            record_project=compile_expression(route.record_project, "record_project"),
            record_task=compile_expression(route.record_task, "record_task"),
            single=single,
            max_records=route.max_records,
            envelope=envelope,
        )

    @property
    def per_record_policy(self) -> bool:
        return self.record_project is not None or self.record_task is not None


class ExtractedRecord(NamedTuple):
    """One record's facts. A named tuple: built once per record released, and a frozen
    dataclass's constructor alone cost a third of the extraction."""

    record_id: str
    sha256: str
    size: int
    project: str | None
    task: str | None


def _scalar(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if type(value) is str and 0 < len(value) <= 255 and "\x00" not in value:
        return value  # the common case, checked first
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError(f"record {what} is not a string or integer")
    text = str(value)
    if not text or len(text) > 255:
        raise RecordError(f"record {what} is empty or too long")
    if "\x00" in text:
        # The access log cannot store it (PostgreSQL text), so the record cannot be logged.
        raise RecordError(f"record {what} contains a NUL character")
    return text


def extract_records(spec: RecordSpec, body: Any) -> tuple[list[Any], list[ExtractedRecord]]:
    """Return the selected list (the very object inside `body`) and each record's facts."""
    if spec.single:
        selected: Any = [body]
    else:
        selected = spec.records(body)
        if selected is None:
            selected = []
    if not isinstance(selected, list):
        raise RecordError("records selection is not a list")
    if len(selected) > spec.max_records:
        # Refused before any hashing: each record would cost a row and a hash.
        raise TooManyRecords(f"{len(selected)} records, over the route's {spec.max_records}")
    extracted = []
    append, dumps, sha256, sort_keys = extracted.append, orjson.dumps, hashlib.sha256, _SORT_KEYS
    record_id_of, project_of, task_of = spec.record_id, spec.record_project, spec.record_task
    for record in selected:
        if type(record) is not dict:
            raise RecordError("a record is not a JSON object")
        record_id = _scalar(record_id_of(record), "id")
        if record_id is None:
            raise RecordError("a record has no id")
        try:
            canonical = dumps(record, option=sort_keys)
        except orjson.JSONEncodeError as error:
            # Parsed but not serialisable (nested past orjson's 255 levels): unaccountable.
            raise RecordError(f"a record cannot be fingerprinted: {error}") from None
        append(
            ExtractedRecord(
                record_id,
                sha256(canonical).hexdigest(),
                len(canonical),
                _scalar(project_of(record), "project") if project_of else None,
                _scalar(task_of(record), "task") if task_of else None,
            )
        )
    return selected, extracted


def remove_records(spec: RecordSpec, body: Any, selected: list[Any], keep: list[bool]) -> None:
    """Drop records in place; refuse if the selection is a copy we cannot write back through."""
    if spec.single:
        raise Unfilterable("a single-record body cannot be partly released")
    if spec.records(body) is not selected:
        raise Unfilterable("records selection is computed, so filtered records cannot be removed")
    selected[:] = [record for record, kept in zip(selected, keep, strict=True) if kept]
