"""Policy rules as the Casbin CSV names them, with strict parsing for admin input."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

# Subjects, projects, roles and actions are identifiers; tasks may end in a '*' pattern.
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,254}$")
_TASK = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._:@+-]{0,253}\*?)$")


class PolicyFileError(ValueError):
    """A policy file line is malformed; the message names the line."""


@dataclass(frozen=True, order=True)
class Rule:
    """One Casbin rule: ptype 'p' (sub, project, task, act, eft) or 'g' (sub, role, project)."""

    ptype: str
    values: tuple[str, ...]

    @property
    def project(self) -> str:
        return self.values[1] if self.ptype == "p" else self.values[2]

    def to_csv_line(self) -> str:
        return ", ".join((self.ptype, *self.values))


def validate_rule(ptype: str, values: list[str], where: str) -> Rule:
    if ptype == "p":
        if len(values) != 5:
            raise PolicyFileError(f"{where}: a 'p' rule has 5 fields: sub, project, task, act, eft")
        sub, project, task, act, eft = values
        for name, value in (("subject", sub), ("project", project), ("action", act)):
            if not _TOKEN.match(value):
                raise PolicyFileError(f"{where}: {name} {value!r} is not a valid name")
        if not _TASK.match(task):
            raise PolicyFileError(f"{where}: task pattern {task!r} is malformed")
        if eft not in ("allow", "deny"):
            raise PolicyFileError(f"{where}: effect must be 'allow' or 'deny', not {eft!r}")
    elif ptype == "g":
        if len(values) != 3:
            raise PolicyFileError(f"{where}: a 'g' rule has 3 fields: sub, role, project")
        for name, value in zip(("subject", "role", "project"), values, strict=True):
            if not _TOKEN.match(value):
                raise PolicyFileError(f"{where}: {name} {value!r} is not a valid name")
        if not values[1].startswith("role:"):
            raise PolicyFileError(f"{where}: a role name starts with 'role:' ({values[1]!r})")
    else:
        raise PolicyFileError(f"{where}: rule type must be 'p' or 'g', not {ptype!r}")
    return Rule(ptype, tuple(values))


def parse_csv(text: str, source: str = "policy") -> list[Rule]:
    """Parse Casbin CSV (`p, sub, project, task, act, eft` / `g, sub, role, project`)."""
    rules: list[Rule] = []
    seen: set[Rule] = set()
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    for line_number, row in enumerate(reader, start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        rule = validate_rule(cells[0], cells[1:], f"{source}:{line_number}")
        if rule not in seen:
            seen.add(rule)
            rules.append(rule)
    return rules


def render_csv(rules: list[Rule]) -> str:
    return "".join(rule.to_csv_line() + "\n" for rule in sorted(rules))
