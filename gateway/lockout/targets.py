"""Does a lock target exist? A lock on a misspelled name protects nothing.

During a breach, `gateway lock vendor acmee` must not answer "locked" while the real
vendor stays open. A target exists when the configuration, the policy or the access log
knows it; otherwise the lock is refused with the nearest known names, unless the admin
forces it (recorded as forced).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from sqlalchemy import Connection, Engine, Select, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from gateway.config import Config
from gateway.db.models import AccessEvent, AnomalyHourly, CasbinRule

VENDOR_PREFIX = "vendor:"


def known(db: Engine, config: Config, kind: str, target: str) -> bool:
    """True when anything the gateway keeps names this target (cheap, indexed lookups)."""
    if kind == "issuer":
        return any(issuer.name == target for issuer in config.issuers)
    if kind == "vendor" and any(issuer.vendor == target for issuer in config.issuers):
        return True
    if kind == "project" and any(project.name == target for project in config.projects):
        return True
    with db.connect() as connection:
        for query in _existence_queries(kind, target):
            if connection.execute(query.limit(1)).first() is not None:
                return True
    return False


def _existence_queries(kind: str, target: str) -> Iterable[Select[tuple[int]]]:
    if kind == "vendor":
        yield select(CasbinRule.id).where(CasbinRule.v0 == VENDOR_PREFIX + target)
        yield select(AccessEvent.id).where(AccessEvent.vendor == target)
    elif kind == "contractor":
        issuer, _, subject = target.partition(":")
        yield select(CasbinRule.id).where(CasbinRule.v0 == target)
        yield select(AccessEvent.id).where(
            AccessEvent.subject == subject, AccessEvent.issuer == issuer
        )
    elif kind == "project":
        yield select(CasbinRule.id).where(
            or_(
                (CasbinRule.ptype == "p") & (CasbinRule.v1 == target),
                (CasbinRule.ptype == "g") & (CasbinRule.v2 == target),
            )
        )
        yield select(AccessEvent.id).where(AccessEvent.project == target)


def candidates(db: Engine, config: Config, kind: str) -> set[str]:
    """Names of this kind for near matches: config, policy, and the hourly rollup of the log.

    The rollup stands in for the log itself: a DISTINCT over a hundred-million-row log is
    not something to run while a breach is on.
    """
    names: set[str] = set()
    if kind == "issuer":
        return {issuer.name for issuer in config.issuers}
    if kind == "vendor":
        names |= {issuer.vendor for issuer in config.issuers if issuer.vendor}
    if kind == "project":
        names |= {project.name for project in config.projects}
    with db.connect() as connection:
        if kind == "vendor":
            for (subject,) in connection.execute(
                select(CasbinRule.v0).where(CasbinRule.v0.like(VENDOR_PREFIX + "%")).distinct()
            ):
                names.add(subject.removeprefix(VENDOR_PREFIX))
            names |= _rollup(connection, AnomalyHourly.vendor)
        elif kind == "contractor":
            for (subject,) in connection.execute(
                select(CasbinRule.v0).where(CasbinRule.v0.like("%:%")).distinct()
            ):
                if not subject.startswith((VENDOR_PREFIX, "role:")):
                    names.add(subject)
            for issuer, subject in connection.execute(
                select(AnomalyHourly.issuer, AnomalyHourly.subject).distinct()
            ):
                if issuer and subject:
                    names.add(f"{issuer}:{subject}")
        elif kind == "project":
            for ptype, project_p, project_g in connection.execute(
                select(CasbinRule.ptype, CasbinRule.v1, CasbinRule.v2).distinct()
            ):
                name = project_p if ptype == "p" else project_g if ptype == "g" else None
                if name:
                    names.add(name)
            names |= _rollup(connection, AnomalyHourly.project)
    names.discard("")
    return names


def _rollup(connection: Connection, column: InstrumentedAttribute[str | None]) -> set[str]:
    return {value for (value,) in connection.execute(select(column).distinct()) if value}


def near_matches(target: str, names: Iterable[str], limit: int = 3) -> list[str]:
    return difflib.get_close_matches(target, sorted(names), n=limit, cutoff=0.6)


def unknown_target_problem(db: Engine, config: Config, kind: str, target: str) -> str | None:
    """Why this target looks like a mistake (with near matches), or None when it is known."""
    if known(db, config, kind, target):
        return None
    near = near_matches(target, candidates(db, config, kind))
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return (
        f"no {kind} {target!r} is known to the configuration, the policy or the access log"
        f"{hint} (use force to lock it anyway)"
    )
