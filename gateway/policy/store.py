"""Rules and versions in the database (the `casbin_rule` table of sqlalchemy-adapter)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, delete, func, insert, select

from gateway.db.models import CasbinRule, PolicyVersion
from gateway.policy.rules import Rule


def current_version(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.coalesce(func.max(PolicyVersion.id), 0))).scalar_one()


def load_rules(engine: Engine) -> tuple[int, list[Rule]]:
    """Read the version and every rule in one snapshot."""
    with engine.begin() as connection:
        version = connection.execute(
            select(func.coalesce(func.max(PolicyVersion.id), 0))
        ).scalar_one()
        rows = connection.execute(
            select(
                CasbinRule.ptype,
                CasbinRule.v0,
                CasbinRule.v1,
                CasbinRule.v2,
                CasbinRule.v3,
                CasbinRule.v4,
            )
        ).all()
    rules = []
    for ptype, *values in rows:
        width = 5 if ptype == "p" else 3
        rules.append(Rule(ptype, tuple(v or "" for v in values[:width])))
    return version, rules


def _cell(values: tuple[str, ...], index: int) -> str | None:
    return values[index] if index < len(values) else None


def replace_rules(engine: Engine, rules: list[Rule], *, actor: str, reason: str) -> int:
    """Replace the whole rule set and record a new version, in one transaction."""
    with engine.begin() as connection:
        before = connection.execute(select(func.count()).select_from(CasbinRule)).scalar_one()
        connection.execute(delete(CasbinRule))
        if rules:
            connection.execute(
                insert(CasbinRule),
                [
                    {"ptype": rule.ptype, **{f"v{i}": _cell(rule.values, i) for i in range(6)}}
                    for rule in rules
                ],
            )
        result = connection.execute(
            insert(PolicyVersion).values(
                created_at=datetime.now(UTC),
                actor=actor,
                reason=reason,
                summary=f"replaced {before} rules with {len(rules)}",
            )
        )
        return int(result.inserted_primary_key[0])
