"""Policy rules as the Casbin CSV names them, with strict parsing for admin input.

A rule may carry a validity window, written as one more CSV field in ISO 8601 interval
form, `FROM/UNTIL` with `..` for an open end (`../2026-12-01T00:00:00Z`). The window is
stored in a spare column of the same `casbin_rule` row (v5 for 'p', v3 for 'g') and never
reaches Casbin: the engine leaves rules out of an enforcer while they are not in force.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime

# Subjects, projects, roles and actions are identifiers; tasks may end in a '*' pattern.
# \Z, not $: "$" would also accept a trailing newline.
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,254}\Z")
_TASK = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._:@+-]{0,253}\*?)\Z")
OPEN = ".."


class PolicyFileError(ValueError):
    """A policy file line is malformed; the message names the line."""


def parse_instant(text: str, where: str = "time") -> float:
    """ISO 8601 with a UTC offset (or `Z`) → epoch seconds; naive times are refused."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PolicyFileError(f"{where}: {text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise PolicyFileError(f"{where}: {text!r} needs a UTC offset, e.g. 2026-12-01T00:00:00Z")
    try:
        epoch = value.timestamp()
        datetime.fromtimestamp(epoch, UTC)
    except (ValueError, OverflowError, OSError):
        raise PolicyFileError(f"{where}: {text!r} is out of range") from None
    return epoch


def format_instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, order=True)
class Rule:
    """'p' (sub, project, task, act, eft) or 'g' (sub, role, project), maybe time-boxed."""

    ptype: str
    values: tuple[str, ...]
    not_before: float | None = None
    not_after: float | None = None

    @property
    def project(self) -> str:
        return self.values[1] if self.ptype == "p" else self.values[2]

    @property
    def subject(self) -> str:
        return self.values[0]

    @property
    def window(self) -> str | None:
        if self.not_before is None and self.not_after is None:
            return None
        start = format_instant(self.not_before) if self.not_before is not None else OPEN
        end = format_instant(self.not_after) if self.not_after is not None else OPEN
        return f"{start}/{end}"

    def in_force(self, now: float) -> bool:
        if self.not_before is not None and now < self.not_before:
            return False
        return self.not_after is None or now < self.not_after

    def to_csv_line(self) -> str:
        window = self.window
        return ", ".join((self.ptype, *self.values, *([window] if window else [])))


def parse_window(text: str | None, where: str) -> tuple[float | None, float | None]:
    if text is None or not text.strip():
        return None, None
    start, sep, end = text.strip().partition("/")
    if not sep:
        raise PolicyFileError(f"{where}: validity window must be FROM/UNTIL ('..' for open)")
    not_before = None if start in ("", OPEN) else parse_instant(start, where)
    not_after = None if end in ("", OPEN) else parse_instant(end, where)
    if not_before is not None and not_after is not None and not_after <= not_before:
        raise PolicyFileError(f"{where}: validity window ends before it starts")
    return not_before, not_after


def validate_rule(ptype: str, values: list[str], where: str, window: str | None = None) -> Rule:
    if ptype == "p":
        if len(values) == 6:
            values, window = values[:5], values[5] or None
        if len(values) != 5:
            raise PolicyFileError(
                f"{where}: a 'p' rule has 5 fields (+ optional window): "
                "sub, project, task, act, eft"
            )
        sub, project, task, act, eft = values
        for name, value in (("subject", sub), ("project", project), ("action", act)):
            if not _TOKEN.match(value):
                raise PolicyFileError(f"{where}: {name} {value!r} is not a valid name")
        if not _TASK.match(task):
            raise PolicyFileError(f"{where}: task pattern {task!r} is malformed")
        if eft not in ("allow", "deny"):
            raise PolicyFileError(f"{where}: effect must be 'allow' or 'deny', not {eft!r}")
    elif ptype == "g":
        if len(values) == 4:
            values, window = values[:3], values[3] or None
        if len(values) != 3:
            raise PolicyFileError(
                f"{where}: a 'g' rule has 3 fields (+ optional window): sub, role, project"
            )
        for name, value in zip(("subject", "role", "project"), values, strict=True):
            if not _TOKEN.match(value):
                raise PolicyFileError(f"{where}: {name} {value!r} is not a valid name")
        if not values[1].startswith("role:"):
            raise PolicyFileError(f"{where}: a role name starts with 'role:' ({values[1]!r})")
    else:
        raise PolicyFileError(f"{where}: rule type must be 'p' or 'g', not {ptype!r}")
    not_before, not_after = parse_window(window, where)
    return Rule(ptype, tuple(values), not_before, not_after)


def parse_csv(text: str, source: str = "policy") -> list[Rule]:
    """Parse Casbin CSV (`p, sub, project, task, act, eft` / `g, sub, role, project`)."""
    rules: list[Rule] = []
    seen: set[Rule] = set()
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    try:
        for line_number, row in enumerate(reader, start=1):
            cells = [cell.strip() for cell in row]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            rule = validate_rule(cells[0], cells[1:], f"{source}:{line_number}")
            if rule not in seen:
                seen.add(rule)
                rules.append(rule)
    except csv.Error as error:
        raise PolicyFileError(f"{source}: malformed CSV ({error})") from None
    return rules


def render_csv(rules: list[Rule]) -> str:
    return "".join(rule.to_csv_line() + "\n" for rule in sorted(rules))
