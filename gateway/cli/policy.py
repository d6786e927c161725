"""`gateway policy ...`: the admin's vocabulary over the policy, from the command line.

Thin commands over `gateway.policy.admin.PolicyAdmin` (the HTTP admin API is another
such layer). Every write names its actor and reason, may name the version it was based on
(`--base-version`, optimistic concurrency) and, where it makes sense, can be previewed
(`--dry-run`). Bad input ends in one clear `Error: ...` line and a non-zero exit, never
a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from gateway.cli import _load, config_option

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.policy.admin import ChangeResult, PolicyAdmin
    from gateway.policy.rules import Rule

F = TypeVar("F", bound=Callable[..., Any])

SCHEMA_MISSING = "the database has no gateway schema; run `gateway db upgrade`"


# --- errors ----------------------------------------------------------------------------


def describe_error(error: BaseException) -> str | None:
    """A one-line message for an error an admin can act on; None for anything else."""
    from sqlalchemy import exc as sa

    from gateway.policy.admin import PolicyValidationError
    from gateway.policy.rules import PolicyFileError
    from gateway.policy.store import StaleVersion

    if isinstance(error, PolicyValidationError):
        return "; ".join(f"{field}: {message}" for field, message in error.errors.items())
    if isinstance(error, StaleVersion):
        return f"policy changed since version {error.base} (now {error.current}); re-read and retry"
    if isinstance(error, PolicyFileError):
        return str(error)
    if isinstance(error, UnicodeDecodeError):
        return f"the file is not UTF-8 text ({error.reason} at byte {error.start})"
    if isinstance(error, sa.ArgumentError):
        return f"database.url is not usable: {error}"
    if isinstance(error, sa.DBAPIError) and (
        "no such table" in str(error.orig) or type(error.orig).__name__ == "UndefinedTable"
    ):
        return SCHEMA_MISSING
    if isinstance(error, sa.OperationalError | sa.InterfaceError):
        detail = str(error.orig).strip().splitlines()
        return "database unreachable" + (f" ({detail[0]})" if detail else "")
    if isinstance(error, sa.SQLAlchemyError):
        return f"database error: {type(error).__name__}"
    if isinstance(error, OSError):
        return f"{error.strerror or type(error).__name__}: {error.filename or ''}".rstrip(": ")
    return None


def friendly_errors(*, db_prefix: str = "") -> Callable[[F], F]:
    """Turn the errors an admin can cause into `Error: <message>` and exit status 1."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from sqlalchemy.exc import SQLAlchemyError

            try:
                return function(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except Exception as error:
                message = describe_error(error)
                if message is None:
                    message = f"unexpected error: {type(error).__name__}: {error}"
                elif isinstance(error, SQLAlchemyError):
                    message = db_prefix + message
                raise click.ClickException(message) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def refuse(field: str, message: str) -> NoReturn:
    """Refuse bad command-line input the same way the service layer refuses a change."""
    from gateway.policy.admin import PolicyValidationError

    raise PolicyValidationError({field: message})


# --- shared plumbing -------------------------------------------------------------------


@contextmanager
def policy_admin(config_path: str | None) -> Iterator[PolicyAdmin]:
    from gateway.db.session import make_engine
    from gateway.policy.admin import PolicyAdmin

    config = _load(config_path)
    engine = make_engine(config.database_url)
    try:
        yield PolicyAdmin(engine, config)
    finally:
        engine.dispose()


def write_options(*, dry_run: bool = True) -> Callable[[F], F]:
    """--reason (required), --actor, --base-version and maybe --dry-run."""

    def decorate(function: F) -> F:
        options = [
            click.option(
                "--reason", required=True, help="why the policy changes (kept with the version)"
            ),
            click.option(
                "--actor",
                default=lambda: os.environ.get("USER", "cli"),
                show_default="$USER",
                help="who makes the change",
            ),
            click.option(
                "--base-version",
                type=click.IntRange(min=0),
                default=None,
                help="refuse the change unless the policy is still at this version",
            ),
        ]
        if dry_run:
            options.append(
                click.option("--dry-run", is_flag=True, help="show the change, store nothing")
            )
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def subject_options(function: F) -> F:
    """--sub or --vendor: who a grant or deny is for."""
    vendor = click.option("--vendor", help="a whole vendor (all its contractors), e.g. acme")
    sub = click.option("--sub", help="one contractor, <issuer name>:<sub>, e.g. acme-idp:alice")
    return sub(vendor(function))


def window_options(function: F) -> F:
    """--from and --until: a time-boxed rule."""
    start = click.option(
        "--from", "start", metavar="ISO", help="in force from (ISO 8601 with a UTC offset)"
    )
    until = click.option(
        "--until",
        metavar="ISO|DURATION",
        help="in force until a time (2026-12-01T00:00:00Z) or for a duration (8h, 3d, 1d12h)",
    )
    return start(until(function))


def resolve_subject(config: Config, sub: str | None, vendor: str | None) -> str:
    """`--sub` / `--vendor` → the policy subject, refusing anything ambiguous."""
    from gateway.policy.admin import subject_name

    if (sub is None) == (vendor is None):
        refuse("--sub/--vendor", "give exactly one of --sub ISSUER:SUB or --vendor NAME")
    if sub is not None:
        kind, sep, name = sub.partition(":")
        if kind in ("vendor", "role"):
            refuse("--sub", f"{sub!r} is not a contractor; use --vendor for a whole vendor")
        issuers = sorted(issuer.name for issuer in config.issuers)
        if not sep or not name:
            refuse("--sub", f"{sub!r} must be <issuer name>:<sub> (issuers: {', '.join(issuers)})")
        if kind not in issuers:
            refuse("--sub", f"{sub!r} names no configured issuer (issuers: {', '.join(issuers)})")
    return subject_name(sub=sub, vendor=vendor)


_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = (7 * 86400, 86400, 3600, 60, 1)


def parse_duration(text: str) -> float | None:
    """`8h`, `3d`, `1d12h`, `90m`, `2w` → seconds; None if `text` is not a duration."""
    match = _DURATION.match(text.strip().lower())
    if not match or not any(match.groups()):
        return None
    return float(sum(int(v) * unit for v, unit in zip(match.groups(), _UNITS, strict=True) if v))


def validity_window(start: str | None, until: str | None) -> tuple[float | None, float | None]:
    """`--from ISO` and `--until ISO|DURATION` → (not_before, not_after) epoch seconds.

    A duration counts from `--from` when given, else from now. An end in the past is
    refused: such a grant would never be in force.
    """
    from gateway.policy.rules import PolicyFileError, parse_instant

    now = time.time()
    not_before = parse_instant(start, "--from") if start is not None else None
    not_after = None
    if until is not None:
        seconds = parse_duration(until)
        if seconds is not None:
            if seconds <= 0:
                refuse("--until", f"duration {until!r} must be longer than zero")
            not_after = (not_before if not_before is not None else now) + seconds
        else:
            try:
                not_after = parse_instant(until, "--until")
            except PolicyFileError as error:
                if "UTC offset" in str(error):
                    raise
                refuse(
                    "--until",
                    f"{until!r} is neither an ISO 8601 time (2026-12-01T00:00:00Z) "
                    "nor a duration (8h, 3d, 1d12h)",
                )
        assert not_after is not None
        if not_after <= now:
            refuse("--until", f"{until!r} is in the past; the rule would never be in force")
        if not_before is not None and not_after <= not_before:
            refuse("--until", f"{until!r} is not after --from {start!r}")
    return not_before, not_after


def read_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def print_change(result: ChangeResult, done: str) -> None:
    for line in result.removed:
        click.echo(f"- {line}")
    for line in result.added:
        click.echo(f"+ {line}")
    if result.version is None:
        click.echo(
            f"dry run: nothing stored (would add {len(result.added)}, "
            f"remove {len(result.removed)} rules)"
        )
    else:
        click.echo(f"{done} as policy version {result.version}")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_datetime(value: datetime) -> str:
    """Stored times are UTC; SQLite hands them back without a zone."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_span(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{max(minutes, 1)}m"


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
        expires = format_time(rule.not_after)
    return {
        "type": rule_kind(rule),
        "subject": rule.subject,
        "project": rule.project,
        "task": task,
        "action": action,
        "role": role,
        "effect": effect,
        "from": format_time(rule.not_before) if rule.not_before is not None else None,
        "expires": expires,
        "in_force": rule.in_force(now),
        "rule": rule.to_csv_line(),
    }


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())


# --- the group -------------------------------------------------------------------------


@click.group("policy")
def policy_group() -> None:
    """Policy: grants, denies, roles, explain, versions (Casbin CSV underneath)."""


@policy_group.command("grant", short_help="Grant a role or an action (maybe time-boxed).")
@config_option
@subject_options
@click.option("--project", required=True, help="project the grant is in")
@click.option("--task", default="*", show_default=True, help="task or task pattern (task-*)")
@click.option("--role", help="a role defined in the project (see `policy role`)")
@click.option("--action", help="a single action, e.g. read")
@window_options
@click.option(
    "--new-project",
    is_flag=True,
    help="the project is new: not yet in the policy or the access log (else refused as a typo)",
)
@write_options()
@friendly_errors()
def policy_grant(
    config_path: str | None,
    sub: str | None,
    vendor: str | None,
    project: str,
    task: str,
    role: str | None,
    action: str | None,
    start: str | None,
    until: str | None,
    reason: str,
    actor: str,
    base_version: int | None,
    dry_run: bool,
    new_project: bool,
) -> None:
    """Give a contractor (--sub) or a whole vendor (--vendor) a role or an action.

    Optionally narrowed to a task (pattern) and time-boxed with --from/--until.
    """
    with policy_admin(config_path) as admin:
        subject = resolve_subject(admin.config, sub, vendor)
        not_before, not_after = validity_window(start, until)
        result = admin.grant(
            actor=actor,
            reason=reason,
            subject=subject,
            project=project,
            task=task,
            role=role,
            action=action,
            not_before=not_before,
            not_after=not_after,
            base_version=base_version,
            dry_run=dry_run,
            new_project=new_project,
        )
    print_change(result, "granted")


@policy_group.command("deny")
@config_option
@subject_options
@click.option("--project", required=True)
@click.option("--task", default="*", show_default=True, help="task or task pattern (task-*)")
@click.option("--action", required=True, help="the action denied, e.g. read")
@window_options
@click.option(
    "--new-project",
    is_flag=True,
    help="the project is new: not yet in the policy or the access log (else refused as a typo)",
)
@write_options()
@friendly_errors()
def policy_deny(
    config_path: str | None,
    sub: str | None,
    vendor: str | None,
    project: str,
    task: str,
    action: str,
    start: str | None,
    until: str | None,
    reason: str,
    actor: str,
    base_version: int | None,
    dry_run: bool,
    new_project: bool,
) -> None:
    """Deny an action explicitly; a deny overrides every allow."""
    with policy_admin(config_path) as admin:
        subject = resolve_subject(admin.config, sub, vendor)
        not_before, not_after = validity_window(start, until)
        result = admin.deny(
            actor=actor,
            reason=reason,
            subject=subject,
            project=project,
            task=task,
            action=action,
            not_before=not_before,
            not_after=not_after,
            base_version=base_version,
            dry_run=dry_run,
            new_project=new_project,
        )
    print_change(result, "denied")


@policy_group.command("role")
@config_option
@click.option("--project", required=True)
@click.option("--name", "role", required=True, help="role name, e.g. annotator")
@click.option("--actions", required=True, help="comma-separated actions, e.g. read,annotate")
@click.option(
    "--new-project",
    is_flag=True,
    help="the project is new: not yet in the policy or the access log (else refused as a typo)",
)
@write_options()
@friendly_errors()
def policy_role(
    config_path: str | None,
    project: str,
    role: str,
    actions: str,
    reason: str,
    actor: str,
    base_version: int | None,
    dry_run: bool,
    new_project: bool,
) -> None:
    """Define a role in a project (or add actions to it)."""
    names = [a.strip() for a in actions.split(",") if a.strip()]
    if not names:
        refuse("--actions", "name at least one action, e.g. --actions read,annotate")
    with policy_admin(config_path) as admin:
        result = admin.define_role(
            actor=actor,
            reason=reason,
            project=project,
            role=role,
            actions=names,
            base_version=base_version,
            dry_run=dry_run,
            new_project=new_project,
        )
    print_change(result, "defined")


@policy_group.command("revoke", short_help="Remove rules: lines as `list` prints, or a filter.")
@config_option
@click.argument("rule_lines", nargs=-1, metavar="RULE_LINE...")
@click.option(
    "--file",
    "rules_file",
    type=click.Path(exists=True, dir_okay=False),
    help="a file of rule lines to revoke",
)
@subject_options
@click.option("--project", help="with --sub/--vendor: the project whose rules go")
@click.option("--task", help="with --project: only rules on this task (pattern)")
@click.option("--action", help="with --project: only rules of this action")
@write_options()
@friendly_errors()
def policy_revoke(
    config_path: str | None,
    rule_lines: tuple[str, ...],
    rules_file: str | None,
    sub: str | None,
    vendor: str | None,
    project: str | None,
    task: str | None,
    action: str | None,
    reason: str,
    actor: str,
    base_version: int | None,
    dry_run: bool,
) -> None:
    """Remove rules, given as the lines `policy list` prints (RULE column), or chosen by
    --sub/--vendor and --project (and --task, --action).

    A line without its validity window names the rule when only one window exists.
    """
    lines = list(rule_lines)
    if rules_file is not None:
        lines.extend(read_text(rules_file).splitlines())
    by_filter = sub is not None or vendor is not None or project is not None
    if by_filter and lines:
        refuse("RULE_LINE", "give rule lines or --sub/--vendor with --project, not both")
    if not by_filter and (task is not None or action is not None):
        refuse("--task/--action", "narrow a --sub/--vendor --project revoke")
    with policy_admin(config_path) as admin:
        if by_filter:
            if project is None:
                refuse("--project", "name the project whose rules are revoked")
            result = admin.revoke_matching(
                actor=actor,
                reason=reason,
                subject=resolve_subject(admin.config, sub, vendor),
                project=project,
                task=task,
                action=action,
                base_version=base_version,
                dry_run=dry_run,
            )
        else:
            result = admin.revoke(
                actor=actor, reason=reason, lines=lines, base_version=base_version, dry_run=dry_run
            )
    print_change(result, "revoked")


@policy_group.command("list", short_help="List the rules, with their expiry.")
@config_option
@click.option("--project", help="only this project")
@click.option("--sub", help="only rules naming this contractor (<issuer>:<sub>)")
@click.option("--vendor", help="only rules naming this vendor group")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors()
def policy_list(
    config_path: str | None,
    project: str | None,
    sub: str | None,
    vendor: str | None,
    as_json: bool,
) -> None:
    """The rules stored, as a table with their expiry (RULE is the line `revoke` takes)."""
    if sub is not None and vendor is not None:
        refuse("--sub/--vendor", "filter by --sub or by --vendor, not both")
    with policy_admin(config_path) as admin:
        version, rules = admin.list_rules(project=project, subject=sub, vendor=vendor)
    now = time.time()
    rows = [rule_row(rule, now) for rule in rules]
    if as_json:
        print_json({"version": version, "rules": rows})
        return
    click.echo(f"policy version {version}: {len(rows)} rules")
    if not rows:
        return
    table = []
    for row, rule in zip(rows, rules, strict=True):
        if rule.not_after is None:
            expires = "never"
        elif rule.not_after <= now:
            expires = f"{row['expires']} (expired)"
        else:
            expires = f"{row['expires']} (in {format_span(rule.not_after - now)})"
        start = "-"
        if rule.not_before is not None:
            pending = " (not yet)" if rule.not_before > now else ""
            start = f"{row['from']}{pending}"
        table.append(
            [
                row["type"],
                row["subject"],
                row["project"],
                row["task"],
                row["role"] if rule.ptype == "g" else row["action"],
                row["effect"],
                start,
                expires,
                row["rule"],
            ]
        )
    print_table(
        ["TYPE", "SUBJECT", "PROJECT", "TASK", "ACTION/ROLE", "EFFECT", "FROM", "EXPIRES", "RULE"],
        table,
    )


@policy_group.command("explain", short_help="Why one request would be allowed or denied.")
@config_option
@click.option("--sub", required=True, help="the contractor, <issuer name>:<sub>")
@click.option("--vendor", help="the contractor's vendor (default: the issuer's bound vendor)")
@click.option("--project", required=True)
@click.option("--task", default="*", show_default=True, help="the task ('*' for routes without)")
@click.option("--action", required=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors()
def policy_explain(
    config_path: str | None,
    sub: str,
    vendor: str | None,
    project: str,
    task: str,
    action: str,
    as_json: bool,
) -> None:
    """Would this request be allowed, and which role links and rules decide it?

    A query: exits 0 whatever the decision.
    """
    with policy_admin(config_path) as admin:
        vendor = check_request(admin, sub, vendor, project, action)
        explanation = admin.explain(
            sub=sub, vendor=vendor, project=project, task=task, action=action
        )
    # The decision is the engine's; the rules are found independently. Say so if they
    # ever disagree instead of presenting rules that do not account for the decision.
    accounted = bool(explanation.allow_rules) and not explanation.deny_rules
    consistent = accounted == explanation.allowed
    if as_json:
        print_json(
            {
                "request": {
                    "sub": sub,
                    "vendor": vendor,
                    "project": project,
                    "task": task,
                    "action": action,
                },
                **explanation.as_dict(),
                "consistent": consistent,
            }
        )
        return
    decision = "ALLOW" if explanation.allowed else "DENY"
    click.echo(
        f"{decision}: {sub} (vendor {vendor}) {action} on {project}/{task} "
        f"at policy version {explanation.version}"
    )
    if explanation.deny_rules:
        why = "an explicit deny rule matches (deny overrides allow)"
    elif explanation.allow_rules:
        why = "allowed by the rules below"
    else:
        why = "no rule allows it (default deny)"
    click.echo(f"because: {why}")
    click.echo(f"subjects: {', '.join(explanation.subjects)}")
    for title, lines in (
        ("role links", explanation.role_links),
        ("allow rules", explanation.allow_rules),
        ("deny rules", explanation.deny_rules),
    ):
        click.echo(f"{title}:" + ("" if lines else " none"))
        for line in lines:
            click.echo(f"  {line}")
    if not consistent:
        click.echo("warning: the rules found do not account for the engine's decision", err=True)


def check_request(
    admin: PolicyAdmin, sub: str, vendor: str | None, project: str, action: str
) -> str:
    """Refuse an explain request that no real request could make; return its vendor."""
    config = admin.config
    issuers = {issuer.name: issuer for issuer in config.issuers}
    kind, sep, name = sub.partition(":")
    if not sep or not name or kind not in issuers:
        refuse("--sub", f"{sub!r} must be <issuer name>:<sub> with one of {sorted(issuers)}")
    bound = issuers[kind].vendor
    if vendor is None:
        if bound is None:
            refuse("--vendor", f"issuer {kind} takes the vendor from a claim; give --vendor")
        vendor = bound
    elif bound is not None and vendor != bound:
        refuse("--vendor", f"issuer {kind} binds every token to vendor {bound!r}, not {vendor!r}")
    if admin.projects and project not in admin.projects:
        refuse("--project", f"unknown project {project!r}; known: {sorted(admin.projects)}")
    if action not in admin.actions:
        refuse("--action", f"unknown action {action!r}; known: {sorted(admin.actions)}")
    assert vendor is not None
    return vendor


@policy_group.command("history", short_help="Recent versions: who, when, why.")
@config_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors()
def policy_history(config_path: str | None, limit: int, as_json: bool) -> None:
    """The newest policy versions: who changed what, when and why."""
    with policy_admin(config_path) as admin:
        versions = admin.history(limit=limit)
    if as_json:
        print_json([version.as_dict() for version in versions])
        return
    if not versions:
        click.echo("no policy versions yet")
        return
    print_table(
        ["VERSION", "TIME", "ACTOR", "CHANGE", "REASON"],
        [
            [
                str(v.id),
                format_datetime(v.created_at),
                v.actor,
                f"+{len(v.added)} -{len(v.removed)}",
                v.reason,
            ]
            for v in versions
        ],
    )


@policy_group.command("diff", short_help="Rules added and removed between two versions.")
@config_option
@click.argument("older", type=click.IntRange(min=1))
@click.argument("newer", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors()
def policy_diff(config_path: str | None, older: int, newer: int, as_json: bool) -> None:
    """The rules added (+) and removed (-) going from version OLDER to NEWER."""
    with policy_admin(config_path) as admin:
        diff = admin.diff(older, newer)
    if as_json:
        print_json({"from": older, "to": newer, **diff})
        return
    click.echo(f"--- policy version {older}")
    click.echo(f"+++ policy version {newer}")
    for line in diff["removed"]:
        click.echo(f"- {line}")
    for line in diff["added"]:
        click.echo(f"+ {line}")
    if not diff["added"] and not diff["removed"]:
        click.echo("(no differences)")


@policy_group.command("rollback")
@config_option
@click.argument("version", type=click.IntRange(min=1))
@write_options()
@friendly_errors()
def policy_rollback(
    config_path: str | None,
    version: int,
    reason: str,
    actor: str,
    base_version: int | None,
    dry_run: bool,
) -> None:
    """Make the policy equal to VERSION again, as a new version."""
    from gateway.policy import render_csv, store

    with policy_admin(config_path) as admin:
        if dry_run:
            # Preview through `apply`, which validates the target set the same way.
            try:
                target = store.rules_at(admin.db, version)
            except KeyError:
                refuse("version", f"no policy version {version}")
            result = admin.apply(
                actor=actor,
                reason=reason,
                text=render_csv(sorted(target)),
                source=f"version {version}",
                base_version=base_version,
                dry_run=True,
            )
        else:
            result = admin.rollback(
                actor=actor, reason=reason, version=version, base_version=base_version
            )
    print_change(result, f"rolled back to version {version}")


@policy_group.command("apply", short_help="Apply a reviewed policy file as one version.")
@config_option
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False))
@write_options()
@click.option("--yes", "-y", is_flag=True, help="apply without asking for confirmation")
@click.option("--allow-empty", is_flag=True, help="a file without rules empties the policy")
@friendly_errors()
def policy_apply(
    config_path: str | None,
    policy_file: str,
    reason: str,
    actor: str,
    base_version: int | None,
    dry_run: bool,
    yes: bool,
    allow_empty: bool,
) -> None:
    """Make a reviewed policy set (Casbin CSV) the whole policy, as one version.

    Shows the difference first (+/- lines), then asks before applying it (unless --yes).
    """
    text = read_text(policy_file)
    with policy_admin(config_path) as admin:
        current, _ = admin.rules()
        base = current if base_version is None else base_version
        preview = admin.apply(
            actor=actor,
            reason=reason,
            text=text,
            source=policy_file,
            base_version=base,
            dry_run=True,
        )
        for line in preview.removed:
            click.echo(f"- {line}")
        for line in preview.added:
            click.echo(f"+ {line}")
        if not preview.added and not preview.removed:
            click.echo(f"no changes: policy version {current} already matches {policy_file}")
            return
        if dry_run:
            click.echo(
                f"dry run: nothing stored (would add {len(preview.added)}, "
                f"remove {len(preview.removed)} rules)"
            )
            return
        if not yes:
            click.confirm(
                f"apply +{len(preview.added)} -{len(preview.removed)} rules "
                f"as a new policy version?",
                abort=True,
            )
        # Based on the version previewed: what was shown is exactly what gets applied.
        # The admin saw the removals (and confirmed, or passed --yes).
        result = admin.apply(
            actor=actor,
            reason=reason,
            text=text,
            source=policy_file,
            base_version=base,
            confirm_removals=True,
            allow_empty=allow_empty,
        )
    click.echo(
        f"applied {policy_file} as policy version {result.version} "
        f"(+{len(result.added)} -{len(result.removed)})"
    )


@policy_group.command("import", short_help="Replace the rule set with a CSV file (for CI).")
@config_option
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--actor", default=lambda: os.environ.get("USER", "cli"), show_default="$USER")
@click.option("--reason", required=True, help="why the policy changes (kept with the version)")
@click.option(
    "--base-version",
    type=click.IntRange(min=0),
    default=None,
    help="refuse the change unless the policy is still at this version",
)
@click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="confirm removing more than [policy] max_removal_share of the rules",
)
@click.option("--allow-empty", is_flag=True, help="a file without rules empties the policy")
@friendly_errors(db_prefix="could not store the policy: ")
def policy_import(
    config_path: str | None,
    csv_file: str,
    actor: str,
    reason: str,
    base_version: int | None,
    yes: bool,
    allow_empty: bool,
) -> None:
    """Replace the whole rule set with CSV_FILE as one new policy version.

    Validated like `apply`, without asking: for CI and the demo. Importing an unchanged
    file still records a version. A file without rules is refused unless --allow-empty;
    one that removes more than [policy] max_removal_share of the rules (a truncated or
    wrong file) prints the removals and is refused unless --yes.
    """
    from gateway.policy import parse_csv, store
    from gateway.policy.admin import PolicyValidationError

    text = read_text(csv_file)
    rules = parse_csv(text, source=csv_file)
    with policy_admin(config_path) as admin:
        current, in_force = admin.rules()
        base = current if base_version is None else base_version
        preview = admin.apply(
            actor=actor, reason=reason, text=text, source=csv_file, base_version=base, dry_run=True
        )
        try:
            admin.check_removals(
                len(set(rules)),
                len(preview.removed),
                len(set(in_force)),
                confirmed=yes,
                allow_empty=allow_empty,
            )
        except PolicyValidationError:
            for line in preview.removed[:50]:
                click.echo(f"- {line}", err=True)
            if len(preview.removed) > 50:
                click.echo(f"  ... and {len(preview.removed) - 50} more", err=True)
            raise
        version = store.replace_rules(
            admin.db, rules, actor=actor, reason=reason, action="policy.import", base_version=base
        )
    click.echo(
        f"imported {len(rules)} rules as policy version {version} "
        f"(+{len(preview.added)} -{len(preview.removed)})"
    )


@policy_group.command("export", short_help="Print the rules as Casbin CSV.")
@config_option
@friendly_errors(db_prefix="could not read the policy: ")
def policy_export(config_path: str | None) -> None:
    """Print the rules in force as Casbin CSV (read through sqlalchemy-adapter).

    Time-boxed rules carry their validity window as one more field.
    """
    import casbin
    from sqlalchemy_adapter import Adapter

    from gateway.db.models import CasbinRule
    from gateway.db.session import make_engine

    config = _load(config_path)
    model = casbin.Enforcer.new_model(path=config.policy.model)
    engine = make_engine(config.database_url)
    adapter = Adapter(engine, db_class=CasbinRule, create_table=False)
    try:
        adapter.load_policy(model)
    except Exception as error:
        detail = describe_error(error) or type(error).__name__
        raise click.ClickException(f"could not read the policy: {detail}") from None
    finally:
        engine.dispose()
    lines = []
    for sec in ("p", "g"):
        for ptype, assertion in model[sec].items():
            lines.extend(", ".join([ptype, *rule]) for rule in assertion.policy)
    click.echo("\n".join(sorted(lines)))
