"""The one CSV writer for everything the project writes as CSV (exports, manifests).

A cell a spreadsheet would run as a formula is prefixed with a single quote (OWASP, "CSV
Injection"): record ids, paths and user agents come from contractors and upstreams.
Spreadsheets skip leading blanks and read full-width signs as their ASCII twins, so
`  =1+1` and a full-width equals sign followed by 1+1 are formulas too.
"""

from __future__ import annotations

import csv
from typing import Any, Protocol

# ASCII formula triggers and their full-width forms (U+FF1D = , U+FF0B + , U+FF0D - , U+FF20 @).
_TRIGGERS = frozenset("=+-@\uff1d\uff0b\uff0d\uff20")
# Control characters that start a formula on their own, or hide one behind them.
_CONTROL_STARTS = ("\t", "\r", "\n")


class _Writable(Protocol):
    def write(self, text: str, /) -> Any: ...


def safe_cell(value: Any) -> Any:
    """The value as a spreadsheet should show it; None becomes an empty cell."""
    if value is None:
        return ""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(_CONTROL_STARTS):
        return "'" + value
    stripped = value.lstrip()
    if stripped and stripped[0] in _TRIGGERS:
        return "'" + value
    return value


class SafeCsvWriter:
    """csv.writer whose every text cell goes through `safe_cell`."""

    def __init__(self, stream: _Writable, *, lineterminator: str = "\r\n") -> None:
        self._writer = csv.writer(stream, lineterminator=lineterminator)

    def writerow(self, values: Any) -> None:
        self._writer.writerow([safe_cell(value) for value in values])
