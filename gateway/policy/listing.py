"""The rules in force as people read them: kind, subject, scope, window, in force or not.
Shared by `gateway policy list` and the console's access page."""

from __future__ import annotations

from typing import Any

from gateway.policy.rules import Rule
from gateway.timestamps import rfc3339


def rule_kind(rule: Rule) -> str:
    if rule.ptype == "g":
        return "member"
    if rule.subject.startswith("role:"):
        return "role"
    return "grant" if rule.values[4] == "allow" else "deny"


def rule_row(rule: Rule, now: float) -> dict[str, Any]:
    if rule.ptype == "g":
        task, action, role, effect = "*", None, rule.values[1], "allow"
    else:
        task, action, role, effect = rule.values[2], rule.values[3], None, rule.values[4]
        if rule.subject.startswith("role:"):
            role = rule.subject
    expires = None
    if rule.not_after is not None:
        expires = rfc3339(rule.not_after)
    return {
        "type": rule_kind(rule),
        "subject": rule.subject,
        "project": rule.project,
        "task": task,
        "action": action,
        "role": role,
        "effect": effect,
        "from": rfc3339(rule.not_before) if rule.not_before is not None else None,
        "expires": expires,
        "in_force": rule.in_force(now),
        "rule": rule.to_csv_line(),
    }
