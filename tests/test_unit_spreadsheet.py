"""The project's one CSV writer neutralises formula cells (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io

import pytest

from gateway.audit.spreadsheet import SafeCsvWriter, safe_cell

FORMULAS = [
    '=HYPERLINK("http://evil.example","x")',
    "@SUM(A1:A2)",
    "-2+3",
    "+1",
    "\t=1+1",
    "\r=1+1",
    " =1+1",
    "   @cmd",
    "\uff1d1+1",  # full-width equals
    "\uff20SUM(A1)",  # full-width commercial at
    " \uff0b1",
]
HARMLESS = ["rec-1-1-0001", "alice", "a=b", "1-2", "", "x@example.com"]


@pytest.mark.parametrize("value", FORMULAS)
def test_formula_cells_are_quoted(value: str) -> None:
    assert safe_cell(value) == "'" + value


@pytest.mark.parametrize("value", HARMLESS)
def test_ordinary_cells_are_untouched(value: str) -> None:
    assert safe_cell(value) == value


def test_numbers_and_none() -> None:
    assert safe_cell(-3) == -3
    assert safe_cell(None) == ""


def test_writer_round_trip_keeps_the_text_after_the_quote() -> None:
    buffer = io.StringIO()
    SafeCsvWriter(buffer).writerow([*FORMULAS, *HARMLESS])
    (row,) = list(csv.reader(io.StringIO(buffer.getvalue())))
    assert row == ["'" + value for value in FORMULAS] + HARMLESS
