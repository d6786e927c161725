"""A record route's body: parsed once, accounted for, and released from what was parsed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.records.selection import (
    ExtractedRecord,
    RecordError,
    RecordSpec,
    Unfilterable,
    extract_records,
    remove_records,
)


class UnexpectedFields(RecordError):
    reason = "upstream_unexpected_fields"


class TooComplex(RecordError):
    reason = "upstream_too_complex"


def json_values_bound(raw: bytes) -> int:
    """An upper bound on the values in a JSON text, at the speed of a byte scan.

    Every value but the first of a container follows a comma, and every container opens
    with a bracket; commas and brackets inside strings only raise the bound.
    """
    # One pass in C: the bytes a deletion of , { [ removes.
    return len(raw) - len(raw.translate(None, b",{[")) + 1


@dataclass
class RecordBody:
    spec: RecordSpec
    value: Any
    selected: list[Any]
    records: list[ExtractedRecord]

    @classmethod
    def parse(cls, spec: RecordSpec, raw: bytes, *, max_values: int | None = None) -> RecordBody:
        """Parse and fingerprint; RecordError (with its log reason) when it cannot be."""
        if max_values is not None and json_values_bound(raw) > max_values:
            # Refused before parsing: a 12 MB body of a million tiny objects parses into
            # hundreds of megabytes.
            raise TooComplex(f"more than {max_values} JSON values")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise RecordError(f"not JSON the gateway can account for: {error}") from None
        selected, records = extract_records(spec, value)
        return cls(spec, value, selected, records)

    def render(self, keep: list[bool]) -> tuple[bytes, list[str]]:
        """The bytes to release with only the kept records, and the envelope fields dropped.

        Always serialised from the parsed value: the upstream's own bytes may hold
        duplicate keys or copies that a client's parser would read differently.
        """
        spec = self.spec
        dropped: list[str] = []
        if spec.single:
            if not all(keep):
                raise Unfilterable("a single-record body cannot be partly released")
            value = self.value
        elif spec.envelope is not None:
            kept_records = [r for r, k in zip(self.selected, keep, strict=True) if k]
            value, dropped = spec.envelope.prune(self.value, kept_records)
            if dropped and spec.envelope.refuse_extra:
                raise UnexpectedFields(f"fields beside the records: {', '.join(dropped[:10])}")
        else:
            if not all(keep):
                remove_records(spec, self.value, self.selected, keep)
            value = self.value
        try:
            return orjson.dumps(value), dropped
        except orjson.JSONEncodeError as error:
            raise RecordError(f"cannot be serialised: {error}") from None
