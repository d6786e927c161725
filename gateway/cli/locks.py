"""`gateway lock ...`, `gateway unlock`, `gateway locks`: the kill switch from a shell.

Thin commands over `gateway.lockout` (the HTTP API in `gateway.api.locks` is the other
such layer). The store records every lock and lift in admin_events and pushes it to every
gateway worker. Bad input ends in one `Error: ...` line and exit status 1, never a
traceback — including the input click would otherwise answer with a usage screen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from gateway.cli import config_option, database
from gateway.cli.errors import friendly_errors
from gateway.cli.output import json_option, print_json, print_table

if TYPE_CHECKING:
    from gateway.config import Config

KINDS = ("vendor", "contractor", "issuer", "project")
# Longer TTLs overflow datetimes; a lock meant to last that long is lifted by hand.
MAX_TTL = timedelta(days=3650)
MAX_LOCK_ID = 2**31 - 1
# How the store's field names read on the command line.
_OPTION = {"kind": "KIND", "target": "TARGET", "reason": "--reason", "ttl": "--ttl"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def register_lock_commands(main: click.Group) -> None:
    """Add the lock commands to the top-level `gateway` group."""
    main.add_command(lock_command)
    main.add_command(unlock_command)
    main.add_command(locks_command)


# --- plumbing -----------------------------------------------------------------------------


@contextmanager
def refusals() -> Iterator[None]:
    """A LockError from the store becomes one `Error:` line naming the option."""
    from gateway.lockout import LockError

    try:
        yield
    except LockError as error:
        if error.status != 400:
            raise click.ClickException(error.message) from None
        raise click.ClickException(
            f"{_OPTION.get(error.field, error.field)}: {error.message}"
        ) from None


def fail(message: str) -> click.ClickException:
    return click.ClickException(message)


def parse_ttl(value: str) -> timedelta:
    from gateway.lockout import LockError
    from gateway.lockout.store import parse_duration

    try:
        ttl = parse_duration(value)
    except OverflowError:
        ttl = MAX_TTL + timedelta(days=1)
    if ttl > MAX_TTL:
        raise LockError("ttl", "must be at most 3650d; leave it out for a lock until lifted")
    return ttl


def parse_lock_id(value: str | None, name: str = "LOCK_ID") -> int:
    what = "lift request" if name == "--approve" else "lock"
    if value is None:
        raise fail(f"{name} is required (see `gateway locks`)")
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise fail(f"{name}: {value!r} is not a {what} id (a number, see `gateway locks`)")
    number = int(text)
    if number == 0 or number > MAX_LOCK_ID:
        raise fail(f"no {what} {number}")
    return number


def lock_state(lock: dict[str, Any]) -> str:
    if lock["lifted_at"] is not None:
        return "lifted"
    return "active" if lock["active"] else "expired"


def show_time(value: str | None, default: str = "-") -> str:
    if value is None:
        return default
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clean(text: str | None) -> str:
    """One line, no terminal control characters (reasons come from any admin)."""
    return _CONTROL.sub(" ", text or "").strip()


def lock_row(lock: dict[str, Any]) -> dict[str, Any]:
    return {**lock, "state": lock_state(lock)}


def describe(lock: dict[str, Any]) -> str:
    return f"{lock['kind']} {clean(lock['target'])}"


def print_exposure(lock: dict[str, Any]) -> None:
    exposure = lock.get("exposure")
    if exposure is None:
        click.echo("exposure: no snapshot for a project lock (see the audit log for the project)")
        return
    projects = exposure.get("projects", [])
    click.echo(
        f"exposure of {describe(lock)} in the last {exposure['window_days']} days: "
        f"{exposure['distinct_records']} distinct records in {len(projects)} projects, "
        f"{exposure['contractors']} contractors"
    )
    if not projects:
        return
    print_table(
        ["PROJECT", "DISTINCT RECORDS", "CONTRACTORS", "FIRST ACCESS", "LAST ACCESS"],
        [
            [
                clean(str(entry["project"])),
                str(entry["distinct_records"]),
                str(entry["contractors"]),
                show_time(entry["first_access"]),
                show_time(entry["last_access"]),
            ]
            for entry in projects
        ],
    )


def _unbound_vendor(config: Config, vendor: str) -> bool:
    """No issuer binds this vendor (it can only come from a vendor claim)."""
    return all(issuer.vendor != vendor for issuer in config.issuers)


# --- commands -----------------------------------------------------------------------------


actor_option = click.option(
    "--actor",
    default=lambda: os.environ.get("USER", "cli"),
    show_default="$USER",
    help="who acts (recorded with the lock)",
)


@click.command("lock", short_help="Cut off a vendor, contractor, issuer or project now.")
@config_option
@click.argument("kind", required=False, metavar="KIND")
@click.argument("target", required=False, metavar="TARGET")
@click.option("--reason", help="why (required; shown to admins, never to the contractor)")
@click.option("--ttl", metavar="DURATION", help="lift on its own after 30m, 24h, 7d, ...")
@click.option(
    "--force",
    is_flag=True,
    help="lock a target nothing knows yet (a vendor or contractor before its first request);"
    " recorded as forced",
)
@actor_option
@json_option
@friendly_errors(db_prefix="could not store the lock: ")
def lock_command(
    config_path: str | None,
    kind: str | None,
    target: str | None,
    reason: str | None,
    ttl: str | None,
    force: bool,
    actor: str,
    as_json: bool,
) -> None:
    """Lock KIND TARGET on every gateway worker within a second.

    \b
    KIND is one of:
      vendor NAME             every contractor of the vendor, e.g. acme
      contractor ISSUER:SUB   one contractor, e.g. acme-idp:alice
      issuer NAME             every token of a configured issuer, e.g. acme-idp
      project NAME            all contractor traffic to one project

    Running downloads of the locked principals are cut off. Prints the lock id and, for
    all but project locks, what the locked principals received recently (exposure).
    A target that neither the config, the policy nor the access log knows is refused with
    the nearest known names; --force locks it anyway.
    """
    from gateway.lockout import create_lock
    from gateway.lockout.store import check_target
    from gateway.lockout.targets import unknown_target_problem

    if kind is None:
        raise fail(f"KIND is required: one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise fail(f"KIND: unknown lock kind {kind!r}; use one of {', '.join(KINDS)}")
    if target is None or not target.strip():
        raise fail(f"TARGET is required: the {kind} to lock")
    if reason is None or not reason.strip():
        raise fail('--reason is required: say why, e.g. --reason "vendor breach, ticket 4711"')
    with refusals():
        duration = parse_ttl(ttl) if ttl is not None else None
        with database(config_path, pool_size=1) as (config, engine):
            problem = check_target(config, kind, target)
            if problem:
                raise fail(f"TARGET: {problem}")
            if not force:
                problem = unknown_target_problem(engine, config, kind, target)
                if problem:
                    raise fail(f"TARGET: {problem.replace('use force', 'use --force')}")
            lock = create_lock(
                engine,
                kind=kind,
                target=target,
                reason=reason,
                actor=actor,
                ttl=duration,
                exposure_days=config.lockout.exposure_days,
                catalogue_upstream=config.catalogue.upstream,
                forced=force,
            )
    if as_json:
        print_json(lock_row(lock))
        return
    until = show_time(lock["expires_at"], "lifted")
    click.echo(
        f"lock {lock['id']}: {describe(lock)} locked (in force until {until}); "
        f"every gateway worker enforces it within a second"
    )
    print_exposure(lock)
    exposure = lock.get("exposure") or {}
    if (
        kind == "vendor"
        and not exposure.get("distinct_records")
        and _unbound_vendor(config, target)
    ):
        click.echo(
            f"warning: no configured issuer binds vendor {target!r} and it has received "
            "no records; check the name",
            err=True,
        )
    click.echo(f'lift it with: gateway unlock {lock["id"]} --reason "..."')


@click.command("unlock", short_help="Lift a lock, with a reason (vendor/issuer: two admins).")
@config_option
@click.argument("lock_id", required=False, metavar="LOCK_ID")
@click.option("--reason", help="why it is lifted (required)")
@click.option(
    "--approve",
    "request_id",
    metavar="REQUEST",
    help="approve another admin's lift request (vendor and issuer locks need two admins)",
)
@actor_option
@json_option
@friendly_errors(db_prefix="could not lift the lock: ")
def unlock_command(
    config_path: str | None,
    lock_id: str | None,
    reason: str | None,
    request_id: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Lift lock LOCK_ID (see `gateway locks`); access returns within a second.

    Lifting a vendor or issuer lock ([lockout] two_person_lift) opens a lift request; a
    second admin approves it with `gateway unlock --approve REQUEST --actor THEM`.
    """
    from gateway.lockout import list_locks
    from gateway.lockout.lifts import approve_lift, request_lift

    if request_id is not None:
        if lock_id is not None:
            raise fail("give LOCK_ID (to ask) or --approve REQUEST (to approve), not both")
        number = parse_lock_id(request_id, "--approve")
        with refusals(), database(config_path, pool_size=1) as (_config, engine):
            lock = approve_lift(engine, number, actor=actor)
        _print_lifted(lock, [], as_json)
        return
    number = parse_lock_id(lock_id)
    if reason is None or not reason.strip():
        raise fail("--reason is required: say why the lock is lifted")
    with refusals(), database(config_path, pool_size=1) as (config, engine):
        outcome = request_lift(
            engine,
            number,
            actor=actor,
            reason=reason,
            two_person_kinds=config.lockout.two_person_lift,
            ttl=timedelta(minutes=config.lockout.lift_request_ttl_minutes),
        )
        others = []
        if outcome.lock is not None:
            others = [
                other
                for other in list_locks(engine)
                if (other["kind"], other["target"])
                == (outcome.lock["kind"], outcome.lock["target"])
            ]
    if outcome.lock is not None:
        _print_lifted(outcome.lock, others, as_json)
        return
    request = outcome.request
    assert request is not None
    if as_json:
        print_json({"lifted": False, "lift_request": request})
        return
    click.echo(
        f"lift request {request['id']} for lock {number} awaits a second admin until"
        f" {request['expires_at']}: gateway unlock --approve {request['id']} --actor OTHER-ADMIN"
    )


def _print_lifted(lock: dict[str, Any], others: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(lock_row(lock))
        return
    click.echo(f"lock {lock['id']} lifted: {describe(lock)}")
    for other in others:
        click.echo(f"note: lock {other['id']} on {describe(other)} is still in force", err=True)


@click.command("locks", short_help="List the locks in force (--all: lifted, expired too).")
@config_option
@click.option("--all", "include_all", is_flag=True, help="also lifted and expired locks")
@json_option
@friendly_errors(db_prefix="could not read the locks: ")
def locks_command(config_path: str | None, include_all: bool, as_json: bool) -> None:
    """The locks in force, newest first (with --all, the whole history)."""
    from gateway.lockout import list_locks

    with database(config_path, pool_size=1) as (_config, engine):
        locks = list_locks(engine, include_inactive=include_all)
    if as_json:
        print_json({"locks": [lock_row(lock) for lock in locks]})
        return
    if not locks:
        click.echo("no locks" if include_all else "no locks in force")
        return
    print_table(
        ["ID", "KIND", "TARGET", "REASON", "ACTOR", "CREATED", "EXPIRES", "STATE"],
        [
            [
                str(lock["id"]),
                lock["kind"],
                clean(lock["target"]),
                clean(lock["reason"]),
                clean(lock["actor"]),
                show_time(lock["created_at"]),
                show_time(lock["expires_at"], "never"),
                lock_state(lock),
            ]
            for lock in locks
        ],
    )
