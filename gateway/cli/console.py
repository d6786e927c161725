"""`gateway console sessions|end`: the browser console's sessions, seen and ended.

Ending a subject's sessions takes effect at their next request on every worker (each
console request reads its session row): the way to cut a person off the console at once
when their role is withdrawn at the IdP, before their token runs out.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import click

from gateway.cli import config_option, database
from gateway.cli.errors import friendly_errors
from gateway.cli.output import json_option, print_json, print_table
from gateway.timestamps import rfc3339


@click.group("console")
def console_group() -> None:
    """The browser console's sessions."""


@console_group.command("sessions")
@config_option
@json_option
@friendly_errors()
def sessions_command(config_path: str | None, as_json: bool) -> None:
    """The open console sessions: who, since when, last seen, until when."""
    from sqlalchemy import select

    from gateway.db.models import ConsoleSession

    now = datetime.now(UTC)
    with database(config_path, pool_size=1) as (_config, engine), engine.connect() as conn:
        rows = conn.execute(
            select(ConsoleSession)
            .where(ConsoleSession.ended_at.is_(None), ConsoleSession.subject.is_not(None))
            .order_by(ConsoleSession.last_seen_at.desc())
        ).all()
    sessions = [
        {
            "subject": row.subject,
            "created_at": rfc3339(row.created_at),
            "last_seen_at": rfc3339(row.last_seen_at),
            "expires_at": rfc3339(row.expires_at),
        }
        for row in rows
        if (row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)) > now
    ]
    if as_json:
        print_json({"sessions": sessions})
        return
    if not sessions:
        click.echo("no open console sessions")
        return
    print_table(
        ["SUBJECT", "SIGNED IN", "LAST SEEN", "EXPIRES"],
        [[s["subject"], s["created_at"], s["last_seen_at"], s["expires_at"]] for s in sessions],
    )


@console_group.command("end")
@config_option
@click.argument("subject")
@click.option("--reason", required=True, help="why (recorded in admin_events)")
@click.option("--actor", default=lambda: os.environ.get("USER", "cli"), show_default="$USER")
@json_option
@friendly_errors()
def end_command(
    config_path: str | None, subject: str, reason: str, actor: str, as_json: bool
) -> None:
    """End every open console session of SUBJECT (e.g. lab-idp:ann) now."""
    from gateway.console.sessions import end_sessions_of
    from gateway.policy.store import record_admin_event

    with database(config_path, pool_size=1) as (_config, engine):
        ended = end_sessions_of(engine, subject, "ended_by_admin")
        with engine.begin() as connection:
            record_admin_event(
                connection,
                actor=actor,
                action="console.sessions_end",
                target=subject,
                reason=reason,
                after={"sessions": ended},
            )
    if as_json:
        print_json({"subject": subject, "ended": ended})
    else:
        click.echo(f"{ended} console session(s) of {subject} ended")
