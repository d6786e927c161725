"""What a record route releases besides its records: named envelope fields, nothing else.

A body such as `{"records": [...], "related": [<another project's record>]}` would
otherwise carry records past the gateway that were never selected, checked or logged.
The route names the fields it lets through (`envelope = ["count", "next"]`); every
other field is dropped, or the body refused, before anything is released.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

Path = tuple[str, ...]

ENVELOPE_EXTRA = ("drop", "refuse", "allow")


def field_path(expression: str) -> Path | None:
    """The field names of a plain JMESPath field path (`a`, `a.b`, `"x-y"`), else None."""
    try:
        return _field_path(jmespath.compile(expression).parsed)
    except JMESPathError:
        return None


def _field_path(node: dict[str, Any]) -> Path | None:
    if node["type"] == "field":
        return (node["value"],)
    if node["type"] == "subexpression":
        names: list[str] = []
        for child in node["children"]:
            inner = _field_path(child)
            if inner is None:
                return None
            names.extend(inner)
        return tuple(names)
    return None


@dataclass(frozen=True)
class Envelope:
    records_path: Path
    kept: tuple[Path, ...]
    refuse_extra: bool

    def prune(self, body: Any, records: list[Any]) -> tuple[Any, list[str]]:
        """(the body with only the kept fields and `records`, the dotted names dropped)."""
        if not isinstance(body, dict):
            return {}, []
        dropped: list[str] = []
        pruned = _prune(body, list(self.kept), self.records_path, records, (), dropped)
        return pruned, dropped


def _prune(
    node: dict[str, Any],
    kept: list[Path],
    records_rest: Path | None,
    records: list[Any],
    prefix: Path,
    dropped: list[str],
) -> dict[str, Any]:
    # Built in the body's own key order, so a released page reads like the upstream's.
    out: dict[str, Any] = {}
    for key, value in node.items():
        sub_kept = [path[1:] for path in kept if path[0] == key]
        sub_records = records_rest[1:] if records_rest and records_rest[0] == key else None
        if sub_records == ():
            out[key] = records
        elif () in sub_kept:
            out[key] = value
        elif (sub_kept or sub_records) and isinstance(value, dict):
            out[key] = _prune(value, sub_kept, sub_records, records, (*prefix, key), dropped)
        else:
            dropped.append(".".join((*prefix, key)))
    return out


def overlapping(records_path: Path, kept: Path) -> bool:
    """A kept field inside, or around, the records would release them unchecked."""
    shorter = min(len(records_path), len(kept))
    return records_path[:shorter] == kept[:shorter]
