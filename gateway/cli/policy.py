"""`gateway policy ...`: the admin's vocabulary over the policy, from the command line.

Thin commands over `gateway.policy.admin.PolicyAdmin` (the HTTP admin API is another
such layer). Every write names its actor and reason, may name the version it was based on
(`--base-version`, optimistic concurrency) and, where it makes sense, can be previewed
(`--dry-run`). Bad input ends in one clear `Error: ...` line and a non-zero exit, never
a traceback.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gateway.cli import _load, config_option
from gateway.cli.errors import friendly_errors, refuse
from gateway.cli.output import (
    format_span,
    json_option,
    print_json,
    print_table,
)
from gateway.policy.listing import rule_row

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.policy.admin import ChangeResult, PolicyAdmin

F = TypeVar("F", bound=Callable[..., Any])


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
    """--reason (required), --actor, --base-version, --json and maybe --dry-run."""

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
            json_option,
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


def print_change(result: ChangeResult, done: str, as_json: bool = False) -> None:
    if as_json:
        print_json({**result.as_dict(), "dry_run": result.version is None})
        return
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
    as_json: bool,
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
    print_change(result, "granted", as_json)


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
    as_json: bool,
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
    print_change(result, "denied", as_json)


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
    as_json: bool,
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
    print_change(result, "defined", as_json)


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
    as_json: bool,
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
    print_change(result, "revoked", as_json)


@policy_group.command("list", short_help="List the rules, with their expiry.")
@config_option
@click.option("--project", help="only this project")
@click.option("--sub", help="only rules naming this contractor (<issuer>:<sub>)")
@click.option("--vendor", help="only rules naming this vendor group")
@json_option
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
@json_option
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


# The version commands (history, diff, rollback, apply, import, export) register here.
from gateway.cli import policy_versions  # noqa: E402, F401
