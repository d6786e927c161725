"""Policy administration: the admin's vocabulary (grants, denies, roles) over Casbin rules.

Every write validates the whole resulting rule set first, then commits it as one new
version through `store.commit_change`; nothing is half-applied. The CLI and the HTTP
API are thin layers over this module.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from casbin.util import key_match
from sqlalchemy import Engine, select

from gateway.config import Config
from gateway.db.models import AccessEvent
from gateway.policy import store
from gateway.policy.engine import PolicyEngine
from gateway.policy.rules import PolicyFileError, Rule, format_instant, parse_csv, validate_rule

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,200}\Z")


class PolicyValidationError(ValueError):
    """The change is refused; `errors` maps a field to what is wrong with it."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class ChangeResult:
    version: int | None  # None for a dry run
    added: list[str]
    removed: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "added": self.added, "removed": self.removed}


@dataclass
class Explanation:
    allowed: bool
    version: int
    subjects: list[str]
    role_links: list[str] = field(default_factory=list)
    allow_rules: list[str] = field(default_factory=list)
    deny_rules: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": "allow" if self.allowed else "deny",
            "version": self.version,
            "subjects": self.subjects,
            "role_links": self.role_links,
            "allow_rules": self.allow_rules,
            "deny_rules": self.deny_rules,
        }


def subject_name(*, sub: str | None = None, vendor: str | None = None) -> str:
    """`--sub acme-idp:alice` or `--vendor acme` → a policy subject."""
    if (sub is None) == (vendor is None):
        raise PolicyValidationError({"subject": "give exactly one of a contractor or a vendor"})
    if vendor is not None:
        if not _NAME.match(vendor):
            raise PolicyValidationError({"vendor": f"{vendor!r} is not a valid vendor name"})
        return f"vendor:{vendor}"
    assert sub is not None
    return sub


def _revoke_selects(rule: Rule, task: str | None, action: str | None) -> bool:
    if rule.ptype == "g":
        return task is None and action is None
    return task in (None, rule.values[2]) and action in (None, rule.values[3])


def _stored_rule(wanted: Rule, current: list[Rule]) -> Rule:
    """The stored rule a revoke names: exactly, or without its window when unambiguous."""
    if wanted in set(current):
        return wanted
    line = wanted.to_csv_line()
    if wanted.window is None:
        same = [r for r in current if (r.ptype, r.values) == (wanted.ptype, wanted.values)]
        if len(same) == 1:
            return same[0]
        if same:
            raise PolicyValidationError(
                {
                    "rules": f"{line!r} is in the policy with several windows; name one: "
                    + "; ".join(r.to_csv_line() for r in same[:5])
                }
            )
    near = difflib.get_close_matches(line, [r.to_csv_line() for r in current], n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    raise PolicyValidationError({"rules": f"not in the policy: {line!r}{hint}"})


def role_name(role: str) -> str:
    return role if role.startswith("role:") else f"role:{role}"


class PolicyAdmin:
    def __init__(self, db: Engine, config: Config, engine: PolicyEngine | None = None) -> None:
        self.db = db
        self.config = config
        self.projects = {p.name: p for p in config.projects}
        self.actions = set(config.policy.actions)
        self.issuer_names = {issuer.name for issuer in config.issuers}
        self._engine = engine

    # --- reading -----------------------------------------------------------------------

    def rules(self) -> tuple[int, list[Rule]]:
        return store.load_rules(self.db)

    def list_rules(
        self,
        *,
        project: str | None = None,
        subject: str | None = None,
        vendor: str | None = None,
    ) -> tuple[int, list[Rule]]:
        version, rules = self.rules()
        selected = [
            rule
            for rule in rules
            if (project is None or rule.project == project)
            and (subject is None or rule.subject == subject)
            and (vendor is None or rule.subject == f"vendor:{vendor}")
        ]
        return version, sorted(selected)

    def explain(
        self, *, sub: str, vendor: str, project: str, task: str, action: str
    ) -> Explanation:
        """The decision and the role links and rules that produced it.

        Walks the rules in force independently of Casbin, so a test can hold the two
        implementations against each other; the decision returned is the engine's.
        """
        errors = {}
        if self.projects and project not in self.projects:
            errors["project"] = f"unknown project {project!r}"
        if action not in self.actions:
            errors["action"] = f"unknown action {action!r}; known: {sorted(self.actions)}"
        if not _NAME.match(vendor):
            errors["vendor"] = f"{vendor!r} is not a valid vendor name"
        if sub.partition(":")[0] not in self.issuer_names:
            errors["sub"] = f"subject {sub!r} names no configured issuer (<issuer>:<sub>)"
        if errors:
            raise PolicyValidationError(errors)
        engine = self._policy_engine()
        decision = engine.decide(sub, vendor, project, task, action)
        rules = engine.rules_in_force(project)
        subjects = {sub, f"vendor:{vendor}"}
        links: list[str] = []
        changed = True
        while changed:
            changed = False
            for rule in sorted(rules):
                if (
                    rule.ptype == "g"
                    and rule.subject in subjects
                    and rule.values[1] not in subjects
                ):
                    subjects.add(rule.values[1])
                    links.append(rule.to_csv_line())
                    changed = True
        matching = [
            rule
            for rule in sorted(rules)
            if rule.ptype == "p"
            and rule.subject in subjects
            and key_match(task, rule.values[2])
            and rule.values[3] == action
        ]
        return Explanation(
            allowed=decision.allowed,
            version=decision.version,
            subjects=sorted(subjects),
            role_links=links,
            allow_rules=[r.to_csv_line() for r in matching if r.values[4] == "allow"],
            deny_rules=[r.to_csv_line() for r in matching if r.values[4] == "deny"],
        )

    def _policy_engine(self) -> PolicyEngine:
        if self._engine is None:
            self._engine = PolicyEngine(self.db, self.config.policy.model)
        self._engine.refresh()
        return self._engine

    def history(self, limit: int = 50, before: int | None = None) -> list[store.VersionInfo]:
        return store.history(self.db, limit=limit, before=before)

    def diff(self, older: int, newer: int) -> dict[str, list[str]]:
        try:
            before, after = store.rules_at(self.db, older), store.rules_at(self.db, newer)
        except KeyError as missing:
            raise PolicyValidationError({"version": f"no policy version {missing}"}) from None
        return {
            "added": sorted(r.to_csv_line() for r in after - before),
            "removed": sorted(r.to_csv_line() for r in before - after),
        }

    # --- writing -----------------------------------------------------------------------

    def grant(
        self,
        *,
        actor: str,
        reason: str,
        subject: str,
        project: str,
        task: str = "*",
        role: str | None = None,
        action: str | None = None,
        not_before: float | None = None,
        not_after: float | None = None,
        base_version: int | None = None,
        dry_run: bool = False,
        new_project: bool = False,
    ) -> ChangeResult:
        """Give `subject` a role or an action in a project, maybe narrowed to a task.

        A project nothing knows yet (a typo, most likely) is refused unless `new_project`.
        """
        if (role is None) == (action is None):
            raise PolicyValidationError({"role": "give exactly one of a role or an action"})
        _check_grantee(subject)
        window = _window(not_before, not_after)
        if role is not None and task == "*":
            added = [self._rule("g", [subject, role_name(role), project], window)]
        elif role is not None:
            # Casbin roles are project-wide; a task-narrowed role grant becomes the role's
            # actions granted directly on that task.
            actions = self._role_actions(project, role_name(role))
            if not actions:
                raise PolicyValidationError({"role": f"role {role!r} is not defined in {project}"})
            added = [self._rule("p", [subject, project, task, a, "allow"], window) for a in actions]
        else:
            assert action is not None
            added = [self._rule("p", [subject, project, task, action, "allow"], window)]
        return self._change(
            add=added,
            remove=[],
            actor=actor,
            reason=reason,
            action="policy.grant",
            base_version=base_version,
            dry_run=dry_run,
            allow_new_project=new_project,
        )

    def deny(
        self,
        *,
        actor: str,
        reason: str,
        subject: str,
        project: str,
        action: str,
        task: str = "*",
        not_before: float | None = None,
        not_after: float | None = None,
        base_version: int | None = None,
        dry_run: bool = False,
        new_project: bool = False,
    ) -> ChangeResult:
        _check_grantee(subject)
        rule = self._rule(
            "p", [subject, project, task, action, "deny"], _window(not_before, not_after)
        )
        return self._change(
            add=[rule],
            remove=[],
            actor=actor,
            reason=reason,
            action="policy.deny",
            base_version=base_version,
            dry_run=dry_run,
            allow_new_project=new_project,
        )

    def define_role(
        self,
        *,
        actor: str,
        reason: str,
        project: str,
        role: str,
        actions: list[str],
        base_version: int | None = None,
        dry_run: bool = False,
        new_project: bool = False,
    ) -> ChangeResult:
        name = role_name(role)
        added = [self._rule("p", [name, project, "*", a, "allow"], None) for a in actions]
        return self._change(
            add=added,
            remove=[],
            actor=actor,
            reason=reason,
            action="policy.role",
            base_version=base_version,
            dry_run=dry_run,
            allow_new_project=new_project,
        )

    def revoke(
        self,
        *,
        actor: str,
        reason: str,
        lines: list[str],
        base_version: int | None = None,
        dry_run: bool = False,
    ) -> ChangeResult:
        """Remove the exact rules given as CSV lines (as `list` prints them)."""
        if not lines:
            raise PolicyValidationError({"rules": "name at least one rule to revoke"})
        try:
            wanted = parse_csv("\n".join(lines), source="rules")
        except PolicyFileError as error:
            raise PolicyValidationError({"rules": str(error)}) from None
        _, current = self.rules()
        return self._change(
            add=[],
            remove=[_stored_rule(rule, current) for rule in wanted],
            actor=actor,
            reason=reason,
            action="policy.revoke",
            base_version=base_version,
            dry_run=dry_run,
        )

    def revoke_matching(
        self,
        *,
        actor: str,
        reason: str,
        subject: str,
        project: str,
        task: str | None = None,
        action: str | None = None,
        base_version: int | None = None,
        dry_run: bool = False,
    ) -> ChangeResult:
        """Remove every rule of `subject` in `project` (narrowed by task and action).

        Role memberships (`g` rules) go with a project-wide revoke (no task, no action).
        """
        _, current = self.rules()
        chosen = [
            rule
            for rule in current
            if rule.subject == subject
            and rule.project == project
            and _revoke_selects(rule, task, action)
        ]
        if not chosen:
            near = difflib.get_close_matches(
                f"{subject} {project}",
                sorted({f"{r.subject} {r.project}" for r in current}),
                n=3,
                cutoff=0.6,
            )
            hint = f"; rules exist for {', '.join(repr(n) for n in near)}" if near else ""
            raise PolicyValidationError({"rules": f"no rule of {subject} in {project}{hint}"})
        return self._change(
            add=[],
            remove=chosen,
            actor=actor,
            reason=reason,
            action="policy.revoke",
            base_version=base_version,
            dry_run=dry_run,
        )

    def apply(
        self,
        *,
        actor: str,
        reason: str,
        text: str,
        source: str = "policy",
        base_version: int | None = None,
        dry_run: bool = False,
        confirm_removals: bool = False,
        allow_empty: bool = False,
        action: str = "policy.apply",
    ) -> ChangeResult:
        """Make a whole reviewed policy set (Casbin CSV) the policy, as one version.

        A set that would wipe the policy (an empty or truncated file, the wrong file) is
        refused unless the caller says so: `allow_empty` for no rules at all,
        `confirm_removals` for removing more than `[policy] max_removal_share` of them.
        A dry run is never refused: it is how the caller sees what it would confirm.
        """
        try:
            wanted = set(parse_csv(text, source=source))
        except PolicyFileError as error:
            raise PolicyValidationError({"policy": str(error)}) from None
        _, current = self.rules()
        existing = set(current)
        removed = existing - wanted
        return self._change(
            add=sorted(wanted - existing),
            remove=sorted(removed),
            actor=actor,
            reason=reason,
            action=action,
            base_version=base_version,
            dry_run=dry_run,
            before_commit=lambda: self.check_removals(
                len(wanted),
                len(removed),
                len(existing),
                confirmed=confirm_removals,
                allow_empty=allow_empty,
            ),
        )

    def check_removals(
        self, wanted: int, removed: int, existing: int, *, confirmed: bool, allow_empty: bool
    ) -> None:
        """Refuse a whole-policy write that empties or mostly removes the policy unasked."""
        if wanted == 0 and existing and not allow_empty:
            raise PolicyValidationError(
                {
                    "policy": f"holds no rules: it would remove all {existing} rules in force;"
                    " an empty policy must be asked for explicitly (allow_empty)"
                }
            )
        share = removed / existing if existing else 0.0
        limit = self.config.policy.max_removal_share
        if share > limit and not confirmed and not (wanted == 0 and allow_empty):
            raise PolicyValidationError(
                {
                    "confirm_removals": f"the change removes {removed} of {existing} rules"
                    f" ({share:.0%}, more than {limit:.0%}): review the difference and confirm"
                }
            )

    def rollback(
        self, *, actor: str, reason: str, version: int, base_version: int | None = None
    ) -> ChangeResult:
        try:
            target = store.rules_at(self.db, version)
        except KeyError:
            raise PolicyValidationError({"version": f"no policy version {version}"}) from None
        _, current = self.rules()
        existing = set(current)
        return self._change(
            add=sorted(target - existing),
            remove=sorted(existing - target),
            actor=actor,
            reason=f"rollback to {version}: {reason}",
            action="policy.rollback",
            base_version=base_version,
            dry_run=False,
        )

    # --- shared -----------------------------------------------------------------------

    def _rule(self, ptype: str, values: list[str], window: str | None) -> Rule:
        try:
            return validate_rule(ptype, values, "rule", window)
        except PolicyFileError as error:
            raise PolicyValidationError({"rule": str(error).removeprefix("rule: ")}) from None

    def _role_actions(self, project: str, role: str) -> list[str]:
        _, rules = self.rules()
        return sorted(
            {
                r.values[3]
                for r in rules
                if r.ptype == "p"
                and r.project == project
                and r.subject == role
                and r.values[4] == "allow"
            }
        )

    def _change(
        self,
        *,
        add: list[Rule],
        remove: list[Rule],
        actor: str,
        reason: str,
        action: str,
        base_version: int | None,
        dry_run: bool,
        before_commit: Callable[[], None] | None = None,
        allow_new_project: bool = True,
    ) -> ChangeResult:
        if not reason or not reason.strip():
            raise PolicyValidationError({"reason": "a reason is required"})
        if not actor:
            raise PolicyValidationError({"actor": "an actor is required"})
        version, current = self.rules()
        if base_version is not None and base_version != version:
            raise store.StaleVersion(version, base_version)
        existing = set(current)
        add = [r for r in dict.fromkeys(add) if r not in existing]
        after = (existing - set(remove)) | set(add)
        if not allow_new_project:
            self._refuse_new_projects(add, existing)
        self.validate(after, add)
        added = sorted(r.to_csv_line() for r in add)
        removed = sorted(r.to_csv_line() for r in remove)
        if dry_run:
            return ChangeResult(None, added, removed)
        if not add and not remove:
            raise PolicyValidationError({"rules": "the change changes nothing"})
        if before_commit is not None:
            before_commit()
        new_version = store.commit_change(
            self.db,
            add=add,
            remove=remove,
            actor=actor,
            reason=reason.strip(),
            action=action,
            base_version=version,
        )
        return ChangeResult(new_version, added, removed)

    def _refuse_new_projects(self, added: list[Rule], existing: set[Rule]) -> None:
        """A grant must name a project the gateway knows: the project registry by default.

        Known: `[[projects]]` when configured (checked by `validate`), else the projects of
        the policy in force and of the access log. A new project is created on purpose.
        """
        if self.projects:
            return
        known = {rule.project for rule in existing}
        for project in sorted({rule.project for rule in added} - known):
            if self._project_in_log(project):
                continue
            near = difflib.get_close_matches(project, sorted(known), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            raise PolicyValidationError(
                {
                    "project": f"unknown project {project!r}: not in the policy or the access"
                    f" log{hint} (a new project must be asked for: new_project)"
                }
            )

    def _project_in_log(self, project: str) -> bool:
        with self.db.connect() as connection:
            found = connection.execute(
                select(AccessEvent.id).where(AccessEvent.project == project).limit(1)
            ).first()
        return found is not None

    def validate(self, rules: set[Rule], added: list[Rule]) -> None:
        """Refuse unknown projects, roles, actions and subjects, and grants above a ceiling."""
        errors: dict[str, str] = {}
        defined_roles = {(r.project, r.subject) for r in rules if r.ptype == "p"}
        for rule in added:
            line = rule.to_csv_line()
            if self.projects and rule.project not in self.projects:
                errors.setdefault("project", f"unknown project {rule.project!r} ({line})")
            subject_error = self._subject_error(rule.subject)
            if subject_error:
                errors.setdefault("subject", f"{subject_error} ({line})")
            if rule.ptype == "p" and rule.values[3] not in self.actions:
                errors.setdefault(
                    "action",
                    f"unknown action {rule.values[3]!r}; known: {sorted(self.actions)} ({line})",
                )
            if rule.ptype == "g" and (rule.project, rule.values[1]) not in defined_roles:
                errors.setdefault(
                    "role", f"role {rule.values[1]!r} is not defined in {rule.project} ({line})"
                )
            project = self.projects.get(rule.project)
            vendor_wide_allow = rule.subject.startswith("vendor:") and (
                rule.ptype == "g" or rule.values[4] == "allow"
            )
            if project is not None and project.restricted and vendor_wide_allow:
                errors.setdefault(
                    "ceiling",
                    f"project {rule.project} is restricted: grant to "
                    f"named contractors, not a whole vendor ({line})",
                )
        if errors:
            raise PolicyValidationError(errors)

    def _subject_error(self, subject: str) -> str | None:
        kind, sep, name = subject.partition(":")
        if not sep or not name:
            return f"subject {subject!r} must be <issuer>:<sub>, vendor:<name> or role:<name>"
        if kind in ("vendor", "role"):
            return None if _NAME.match(name) else f"{subject!r} is not a valid name"
        if kind not in self.issuer_names:
            return f"subject {subject!r} names no configured issuer"
        return None


def _check_grantee(subject: str) -> None:
    """Grants and denies name a contractor or a vendor; roles are edited with define_role."""
    if subject.startswith("role:"):
        raise PolicyValidationError(
            {"subject": "grant to a contractor or a vendor; define roles with the role command"}
        )


def _window(not_before: float | None, not_after: float | None) -> str | None:
    if not_after is not None and not_after <= time.time():
        raise PolicyValidationError({"until": "the grant would end in the past"})
    if not_before is None and not_after is None:
        return None
    start = format_instant(not_before) if not_before is not None else ".."
    end = format_instant(not_after) if not_after is not None else ".."
    return f"{start}/{end}"
