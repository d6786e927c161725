"""Rules and versions in the database (the `casbin_rule` table of sqlalchemy-adapter).

Every change is one transaction that edits the rule rows, appends an immutable version
row holding the diff, and records the admin action. Version ids are assigned as
`current + 1` inside that transaction, so two concurrent writers cannot both succeed:
the loser hits the primary key and is told its base version is stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError

from gateway.db.models import AdminEvent, CasbinRule, PolicyVersion
from gateway.policy.rules import Rule, parse_window, validate_rule
from gateway.timestamps import rfc3339

NOTIFY_CHANNEL = "gateway_policy"


class StaleVersion(Exception):
    def __init__(self, current: int, base: int | None) -> None:
        super().__init__(f"policy is at version {current}, the change was based on {base}")
        self.current = current
        self.base = base


@dataclass(frozen=True)
class VersionInfo:
    id: int
    created_at: datetime
    actor: str
    reason: str
    summary: str
    added: list[str]
    removed: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.id,
            "created_at": rfc3339(self.created_at),
            "actor": self.actor,
            "reason": self.reason,
            "summary": self.summary,
            "added": self.added,
            "removed": self.removed,
        }


def current_version(engine: Engine | Connection) -> int:
    query = select(func.coalesce(func.max(PolicyVersion.id), 0))
    if isinstance(engine, Connection):
        return engine.execute(query).scalar_one()
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def _row_to_rule(ptype: str, values: list[str | None]) -> Rule:
    width = 5 if ptype == "p" else 3
    window = values[width] if len(values) > width else None
    not_before, not_after = parse_window(window, "stored rule")
    return Rule(ptype, tuple(v or "" for v in values[:width]), not_before, not_after)


def _rule_columns(rule: Rule) -> dict[str, str | None]:
    cells: list[str | None] = [*rule.values, rule.window]
    return {
        "ptype": rule.ptype,
        **{f"v{i}": cells[i] if i < len(cells) else None for i in range(6)},
    }


def load_rules(engine: Engine) -> tuple[int, list[Rule]]:
    """Read the version and every rule in one snapshot."""
    columns = (CasbinRule.ptype, *(getattr(CasbinRule, f"v{i}") for i in range(6)))
    with engine.begin() as connection:
        version = current_version(connection)
        rows = connection.execute(select(*columns)).all()
    return version, [_row_to_rule(ptype, list(values)) for ptype, *values in rows]


def commit_change(
    engine: Engine,
    *,
    add: list[Rule],
    remove: list[Rule],
    actor: str,
    reason: str,
    action: str,
    base_version: int | None = None,
    summary: str = "",
) -> int:
    """Apply one change as a new version; raise StaleVersion if `base_version` is not current."""
    try:
        with engine.begin() as connection:
            current = current_version(connection)
            if base_version is not None and base_version != current:
                raise StaleVersion(current, base_version)
            for rule in remove:
                _delete_rule(connection, rule)
            if add:
                connection.execute(insert(CasbinRule), [_rule_columns(rule) for rule in add])
            version = current + 1
            added = sorted(rule.to_csv_line() for rule in add)
            removed = sorted(rule.to_csv_line() for rule in remove)
            now = datetime.now(UTC)
            connection.execute(
                insert(PolicyVersion).values(
                    id=version,
                    created_at=now,
                    actor=actor,
                    reason=reason,
                    summary=summary or f"+{len(added)} -{len(removed)} rules",
                    diff=orjson.dumps({"added": added, "removed": removed}).decode(),
                )
            )
            record_admin_event(
                connection,
                actor=actor,
                action=action,
                target="policy",
                reason=reason,
                before={"removed": removed},
                after={"added": added},
                policy_version=version,
                time=now,
            )
            if connection.dialect.name == "postgresql":
                # Delivered at commit, to every listening worker of every instance.
                connection.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": NOTIFY_CHANNEL, "payload": str(version)},
                )
            return version
    except IntegrityError:
        raise StaleVersion(current_version(engine), base_version) from None


def _delete_rule(connection: Connection, rule: Rule) -> None:
    """Delete exactly this rule (all six columns match, NULLs included)."""
    conditions = [CasbinRule.ptype == rule.ptype]
    for column, value in _rule_columns(rule).items():
        if column == "ptype":
            continue
        attribute = getattr(CasbinRule, column)
        conditions.append(attribute.is_(None) if value is None else attribute == value)
    connection.execute(delete(CasbinRule).where(and_(*conditions)))


def replace_rules(
    engine: Engine,
    rules: list[Rule],
    *,
    actor: str,
    reason: str,
    action: str = "policy.replace",
    base_version: int | None = None,
) -> int:
    """Make `rules` the whole rule set, as one version holding the difference."""
    _, current = load_rules(engine)
    wanted, existing = set(rules), set(current)
    return commit_change(
        engine,
        add=sorted(wanted - existing),
        remove=sorted(existing - wanted),
        actor=actor,
        reason=reason,
        action=action,
        base_version=base_version,
        summary=f"replaced {len(existing)} rules with {len(wanted)}",
    )


def history(engine: Engine, *, limit: int = 50, before: int | None = None) -> list[VersionInfo]:
    """The newest versions (older than `before`, for the next page), newest first."""
    statement = select(*_VERSION_COLUMNS).order_by(PolicyVersion.id.desc()).limit(limit)
    if before is not None:
        statement = statement.where(PolicyVersion.id < before)
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    return [_version_info(row) for row in rows]


def version_info(engine: Engine, version: int) -> VersionInfo:
    with engine.connect() as connection:
        row = connection.execute(
            select(*_VERSION_COLUMNS).where(PolicyVersion.id == version)
        ).first()
    if row is None:
        raise KeyError(version)
    return _version_info(row)


_VERSION_COLUMNS = (
    PolicyVersion.id,
    PolicyVersion.created_at,
    PolicyVersion.actor,
    PolicyVersion.reason,
    PolicyVersion.summary,
    PolicyVersion.diff,
)


def _version_info(row: Any) -> VersionInfo:
    diff = orjson.loads(row.diff or "{}")
    created_at = row.created_at
    if created_at.tzinfo is None:  # SQLite hands back naive UTC
        created_at = created_at.replace(tzinfo=UTC)
    return VersionInfo(
        id=row.id,
        created_at=created_at,
        actor=row.actor,
        reason=row.reason,
        summary=row.summary,
        added=diff.get("added", []),
        removed=diff.get("removed", []),
    )


def diffs_since(engine: Engine, version: int) -> list[tuple[int, list[Rule], list[Rule]]]:
    """(version, added, removed) for every version after `version`, in order."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(PolicyVersion.id, PolicyVersion.diff)
            .where(PolicyVersion.id > version)
            .order_by(PolicyVersion.id)
        ).all()
    diffs = []
    for row in rows:
        diff = orjson.loads(row.diff or "{}")
        diffs.append(
            (
                row.id,
                [_parse_line(line) for line in diff.get("added", [])],
                [_parse_line(line) for line in diff.get("removed", [])],
            )
        )
    return diffs


def rules_at(engine: Engine, version: int) -> set[Rule]:
    """The rule set as it was right after `version`, replayed from the stored diffs."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(PolicyVersion.id, PolicyVersion.diff)
            .where(PolicyVersion.id <= version)
            .order_by(PolicyVersion.id)
        ).all()
    if not rows or rows[-1].id != version:
        raise KeyError(version)
    rules: set[Rule] = set()
    for row in rows:
        diff = orjson.loads(row.diff or "{}")
        rules -= {_parse_line(line) for line in diff.get("removed", [])}
        rules |= {_parse_line(line) for line in diff.get("added", [])}
    return rules


def _parse_line(line: str) -> Rule:
    cells = [cell.strip() for cell in line.split(",")]
    return validate_rule(cells[0], cells[1:], "stored version")


def record_admin_event(
    connection: Connection,
    *,
    actor: str,
    action: str,
    target: str,
    reason: str,
    before: Any = None,
    after: Any = None,
    policy_version: int | None = None,
    time: datetime | None = None,
) -> None:
    connection.execute(
        insert(AdminEvent).values(
            time=time or datetime.now(UTC),
            actor=actor,
            action=action,
            target=target[:512],
            reason=reason,
            before=orjson.dumps(before).decode(),
            after=orjson.dumps(after).decode(),
            policy_version=policy_version,
        )
    )
