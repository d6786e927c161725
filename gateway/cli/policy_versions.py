"""`gateway policy history|diff|rollback|apply|import|export`: the policy as versions.

Every change is a version with its actor and reason; these commands read the versions,
return to one, and replace the whole rule set with a reviewed file.
"""

from __future__ import annotations

import os

import click

from gateway.cli import _load, config_option
from gateway.cli.errors import describe_error, friendly_errors, refuse
from gateway.cli.output import format_datetime, json_option, print_json, print_table
from gateway.cli.policy import (
    policy_admin,
    policy_group,
    print_change,
    read_text,
    write_options,
)


@policy_group.command("history", short_help="Recent versions: who, when, why.")
@config_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@json_option
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
@json_option
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
    as_json: bool,
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
    print_change(result, f"rolled back to version {version}", as_json)


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
    as_json: bool,
    yes: bool,
    allow_empty: bool,
) -> None:
    """Make a reviewed policy set (Casbin CSV) the whole policy, as one version.

    Shows the difference first (+/- lines), then asks before applying it (unless --yes).
    """
    if as_json and not (yes or dry_run):
        refuse("--json", "a program cannot answer the confirmation: add --yes or --dry-run")
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
        unchanged = not preview.added and not preview.removed
        if as_json and (dry_run or unchanged):
            print_json({**preview.as_dict(), "version": current, "dry_run": dry_run})
            return
        if not as_json:
            for line in preview.removed:
                click.echo(f"- {line}")
            for line in preview.added:
                click.echo(f"+ {line}")
        if unchanged:
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
    if as_json:
        print_json({**result.as_dict(), "dry_run": False})
        return
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
@json_option
@friendly_errors(db_prefix="could not store the policy: ")
def policy_import(
    config_path: str | None,
    csv_file: str,
    actor: str,
    reason: str,
    base_version: int | None,
    yes: bool,
    allow_empty: bool,
    as_json: bool,
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
    if as_json:
        print_json(
            {
                "version": version,
                "rules": len(rules),
                "added": preview.added,
                "removed": preview.removed,
                "dry_run": False,
            }
        )
        return
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
