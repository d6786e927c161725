"""`gateway anomalies ...`: scan, list, show, update, escalate, watch, canary, simulate,
evaluate.

Thin commands over `gateway.anomaly` (the HTTP API in `gateway.api.alerts` is the other
such layer). Thresholds come from the `[anomaly]` table of the gateway config, a
`--thresholds FILE` (or GATEWAY_ANOMALY_CONFIG) holding that table, and
`GATEWAY_ANOMALY__<KEY>` variables. Bad input ends in one `Error: ...` line and exit
status 1, never a traceback.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gateway import metrics
from gateway.cli import config_option, database
from gateway.cli.errors import friendly_errors
from gateway.cli.output import json_option, print_json, print_table

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.anomaly.config import AnomalyConfig

F = TypeVar("F", bound=Callable[..., Any])

thresholds_option = click.option(
    "--thresholds",
    "thresholds_path",
    envvar="GATEWAY_ANOMALY_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML file with an [anomaly] table of detector thresholds (or GATEWAY_ANOMALY_CONFIG)",
)
actor_option = click.option(
    "--actor",
    default=lambda: os.environ.get("USER", "cli"),
    show_default="$USER",
    help="who makes the change (recorded in admin_events)",
)


def anomaly_errors(function: F) -> F:
    """Refusals of the anomaly package become `Error: <field>: <message>`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from gateway.anomaly.config import AnomalyConfigError
        from gateway.anomaly.store import AlertError
        from gateway.config import ConfigError
        from gateway.lockout import LockError

        try:
            return function(*args, **kwargs)
        except AlertError as error:
            raise click.ClickException(f"{error.field}: {error.message}") from None
        except LockError as error:
            raise click.ClickException(f"{error.field}: {error.message}") from None
        except (AnomalyConfigError, ConfigError) as error:
            raise click.ClickException(str(error)) from None

    return friendly_errors()(wrapper)  # type: ignore[return-value]


def thresholds(config_path: str | None, thresholds_path: str | None) -> AnomalyConfig:
    from gateway.anomaly.config import load_anomaly_config
    from gateway.anomaly.detectors import locations_for

    anomaly = load_anomaly_config(config_path, thresholds_path)
    locations_for(anomaly)  # a bad locations file stops the command here, named
    return anomaly


def parse_moment(text: str | None, option: str, now: datetime) -> datetime | None:
    """ISO 8601 with a UTC offset, or a duration back from now (`36h`, `7d`)."""
    from gateway.cli.policy import parse_duration

    if text is None:
        return None
    seconds = parse_duration(text)
    if seconds is not None:
        return now - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO 8601 time (2026-01-05T00:00:00Z) nor a duration "
            "back from now (36h, 7d)",
            param_hint=option,
        ) from None
    if value.tzinfo is None:
        raise click.BadParameter(
            f"{text!r} needs a UTC offset, e.g. 2026-01-05T00:00:00Z", param_hint=option
        )
    return value.astimezone(UTC)


def parse_id(value: str, name: str = "ALERT_ID") -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii() or not 0 < int(text) < 2**31:
        raise click.ClickException(
            f"{name}: {value!r} is not an alert id (see `gateway anomalies list`)"
        )
    return int(text)


def short(text: str | None, width: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_alert(alert: dict[str, Any]) -> None:
    click.echo(
        f"alert {alert['id']}: {alert['detector']} ({alert['severity']}), {alert['status']}"
        + (f", assigned to {alert['assignee']}" if alert["assignee"] else "")
    )
    click.echo(f"  contractor: {alert['contractor']} (vendor {alert['vendor'] or '-'})")
    click.echo(f"  window:     {alert['window_start']} .. {alert['window_end']}")
    click.echo(f"  detected:   {alert['detected_at']}")
    click.echo(f"  why:        {alert['explanation']}")
    evidence = alert["evidence"]
    if evidence.get("signals"):
        click.echo("  signals:    (points = weight x surprise in nats, capped)")
        for item in evidence["signals"]:
            click.echo(
                f"    {item['day']}  {item['signal']:<16} {item['points']:>5.1f}  "
                f"{item['explanation']}"
            )
    if evidence.get("days"):
        click.echo(
            "  days:       (the vendor's contractors' rise against their own day-to-day "
            "spread, less other vendors'; z and CUSUM)"
        )
        for day in evidence["days"]:
            click.echo(
                f"    {day['day']}  z {day['z']:>5.1f}  CUSUM {day['cusum']:>5.1f}  "
                f"{day['contractors']} contractors, mean {day['mean_change']:+.2f} spreads "
                f"(others {day['others_mean_change']:+.2f})"
            )
    if evidence.get("contractors"):
        rising = ", ".join(
            f"{c['contractor']} {c['spreads']:+.1f}" for c in evidence["contractors"][:10]
        )
        click.echo(f"  rising:     {rising}")
    if evidence.get("rows"):
        click.echo(f"  rows:       {', '.join(map(str, evidence['rows']))}")
    if evidence.get("request_ids"):
        click.echo(f"  requests:   {', '.join(evidence['request_ids'][:10])}")
    if evidence.get("query"):
        query = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in evidence["query"].items())
        click.echo(f"  all rows:   gateway audit query {query}")
    if alert["lock_id"]:
        click.echo(f"  lock:       {alert['lock_id']}")
    if alert["notes"]:
        click.echo(f"  notes:      {alert['notes']}")


# --- the group -------------------------------------------------------------------------


@click.group("anomalies")
def anomalies_group() -> None:
    """Detect suspicious access in the per-record log; review the alerts."""


def run_scan(
    engine: Engine,
    config: Any,
    anomaly: AnomalyConfig,
    *,
    since: datetime | None,
    until: datetime | None,
    rebuild: bool,
    show_progress: bool,
    incremental: Any = None,
) -> Any:
    from gateway.anomaly.scan import scan

    bar: Any = None

    def on_phase(text: str) -> None:
        if show_progress:
            click.echo(f"{text} ...", err=True)

    def on_start(total: int) -> None:
        nonlocal bar
        if show_progress:
            bar = click.progressbar(
                length=max(total, 1), label="scanning contractors", file=sys.stderr
            )
            bar.__enter__()

    def progress(step: int) -> None:
        if bar is not None:
            bar.update(step)

    try:
        return scan(
            engine,
            anomaly,
            since=since,
            until=until,
            rebuild=rebuild,
            exposure_days=config.lockout.exposure_days,
            gateway_config=config,
            on_start=on_start,
            progress=progress,
            on_phase=on_phase,
            incremental=incremental,
        )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


@anomalies_group.command("scan")
@config_option
@thresholds_option
@click.option(
    "--since",
    metavar="ISO|DURATION",
    help="scan activity from this time (ISO 8601) or this long ago (36h, 7d); "
    "default: the last scan_window_hours (48)",
)
@click.option("--until", metavar="ISO", help="scan activity before this time (default: now)")
@click.option("--rebuild", is_flag=True, help="re-aggregate the hourly rollup from the log")
@json_option
@click.option("--quiet", is_flag=True, help="no progress bar")
@anomaly_errors
def scan_command(
    config_path: str | None,
    thresholds_path: str | None,
    since: str | None,
    until: str | None,
    rebuild: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run the detectors over the access log and store alerts (idempotent: a rescan
    updates the alerts it already made instead of adding new ones)."""
    now = datetime.now(UTC)
    start, end = parse_moment(since, "--since", now), parse_moment(until, "--until", now)
    if start is not None and start >= (end or now):
        raise click.BadParameter("must be before --until (or now)", param_hint="--since")
    anomaly = thresholds(config_path, thresholds_path)
    with database(config_path) as (config, engine):
        result = run_scan(
            engine,
            config,
            anomaly,
            since=start,
            until=end,
            rebuild=rebuild,
            show_progress=not quiet,
        )
    if as_json:
        print_json(result.as_dict())
        return
    click.echo(
        f"scanned {result.since:%Y-%m-%dT%H:%MZ} .. {result.until:%Y-%m-%dT%H:%MZ} in "
        f"{result.seconds:.1f}s: {len(result.findings)} findings, {len(result.stored.new)} new "
        f"alerts, {len(result.stored.updated)} updated, {len(result.stored.unchanged)} unchanged"
    )
    for lock in result.auto_locks:
        click.echo(
            f"locked {lock['target']} automatically (lock {lock['lock_id']}, alert "
            f"{lock['alert_id']})"
        )


@anomalies_group.command("list")
@config_option
@click.option(
    "--status",
    multiple=True,
    type=click.Choice(["open", "acknowledged", "resolved", "false_positive"]),
    help="only these statuses (repeatable); default: all",
)
@click.option("--detector", multiple=True, help="only these detectors (repeatable)")
@click.option(
    "--severity",
    type=click.Choice(["low", "medium", "high", "critical"]),
    help="at least this severe",
)
@click.option("--contractor", help="<issuer>:<sub>, or ip:<address>")
@click.option("--vendor")
@click.option("--assignee")
@click.option("--since", metavar="ISO|DURATION", help="detected at or after")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@anomaly_errors
def list_command(
    config_path: str | None,
    status: tuple[str, ...],
    detector: tuple[str, ...],
    severity: str | None,
    contractor: str | None,
    vendor: str | None,
    assignee: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Alerts, newest first."""
    from gateway.anomaly.store import AlertFilter, check_detectors, list_alerts

    wanted = AlertFilter(
        status=list(status) or None,
        detector=check_detectors(detector) or None,
        severity=severity,
        contractor=contractor,
        vendor=vendor,
        assignee=assignee,
        since=parse_moment(since, "--since", datetime.now(UTC)),
    )
    with database(config_path) as (_, engine):
        alerts = list_alerts(engine, wanted, limit=limit)
    if as_json:
        print_json(alerts)
        return
    if not alerts:
        click.echo("no alerts")
        return
    print_table(
        ["ID", "DETECTED", "SEVERITY", "STATUS", "DETECTOR", "CONTRACTOR", "WHY"],
        [
            [
                str(a["id"]),
                a["detected_at"] or "-",
                a["severity"],
                a["status"],
                a["detector"],
                a["contractor"],
                short(a["explanation"], 70),
            ]
            for a in alerts
        ],
    )


@anomalies_group.command("show")
@config_option
@click.argument("alert_id")
@json_option
@anomaly_errors
def show_command(config_path: str | None, alert_id: str, as_json: bool) -> None:
    """One alert: the explanation, the evidence rows and how to list them all."""
    from gateway.anomaly.store import get_alert

    with database(config_path) as (_, engine):
        alert = get_alert(engine, parse_id(alert_id))
    if as_json:
        print_json(alert)
    else:
        print_alert(alert)


@anomalies_group.command("update")
@config_option
@click.argument("alert_id")
@click.option("--status", type=click.Choice(["open", "acknowledged", "resolved", "false_positive"]))
@click.option("--assignee", help="who reviews it ('' to unassign)")
@click.option("--notes", help="replace the notes")
@actor_option
@json_option
@anomaly_errors
def update_command(
    config_path: str | None,
    alert_id: str,
    status: str | None,
    assignee: str | None,
    notes: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Set an alert's status, assignee or notes."""
    from gateway.anomaly.store import update_alert

    changes: dict[str, Any] = {}
    if status is not None:
        changes["status"] = status
    if assignee is not None:
        changes["assignee"] = assignee or None
    if notes is not None:
        changes["notes"] = notes
    if not changes:
        raise click.UsageError("give at least one of --status, --assignee, --notes")
    with database(config_path) as (_, engine):
        alert = update_alert(engine, parse_id(alert_id), actor=actor, **changes)
    if as_json:
        print_json(alert)
    else:
        print_alert(alert)


@anomalies_group.command("escalate")
@config_option
@click.argument("alert_id")
@click.option("--reason", required=True, help="why the lock is made (kept with the lock)")
@click.option(
    "--kind",
    type=click.Choice(["contractor", "vendor"]),
    default="contractor",
    show_default=True,
    help="lock the alert's contractor, or their whole vendor",
)
@click.option("--ttl", metavar="DURATION", help="lift automatically after 30m, 24h, 7d ...")
@actor_option
@json_option
@anomaly_errors
def escalate_command(
    config_path: str | None,
    alert_id: str,
    reason: str,
    kind: str,
    ttl: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Lock the alert's contractor (or vendor) now, and mark the alert acknowledged."""
    from gateway.anomaly.store import escalate_alert
    from gateway.cli.locks import parse_ttl

    lifetime = parse_ttl(ttl) if ttl else None
    with database(config_path) as (config, engine):
        alert, lock = escalate_alert(
            engine,
            parse_id(alert_id),
            actor=actor,
            reason=reason,
            kind=kind,
            ttl=lifetime,
            exposure_days=config.lockout.exposure_days,
            config=config,
        )
    if as_json:
        print_json({"alert": alert, "lock": lock})
        return
    click.echo(
        f"locked {lock['kind']} {lock['target']} (lock {lock['id']}) for alert {alert['id']}; "
        f"alert is {alert['status']}"
    )


@anomalies_group.command("watch")
@config_option
@thresholds_option
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=None,
    help="seconds between scans (default: watch_interval_seconds, 60)",
)
@click.option("--once", is_flag=True, help="one scan, then exit (for cron)")
@click.option(
    "--metrics-bind",
    metavar="HOST:PORT",
    help="serve this process's Prometheus metrics (round time, alerts by detector) there",
)
@anomaly_errors
def watch_command(
    config_path: str | None,
    thresholds_path: str | None,
    interval: float | None,
    once: bool,
    metrics_bind: str | None,
) -> None:
    """Scan periodically, in this process (run it beside the gateway, not in it).

    Each round scans from the start of the day that holds now - scan_window_hours; the
    hourly rollup is refreshed for the newest hours only, and the detectors score again
    only the contractors whose inputs changed since the last round (the first round, and
    the first after midnight UTC, score everyone). SIGTERM or Ctrl-C stop it after the
    current round.
    """
    from gateway.anomaly.incremental import IncrementalDetector
    from gateway.anomaly.rollup import SqlSource

    anomaly = thresholds(config_path, thresholds_path)
    every = interval or anomaly.watch_interval_seconds
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if metrics_bind:
        start_metrics_listener(metrics_bind)
    with database(config_path) as (config, engine):
        detector = IncrementalDetector(
            SqlSource(engine), anomaly, late_hours=anomaly.rollup_late_hours
        )
        while not stopping:
            started = time.monotonic()
            try:
                result = run_scan(
                    engine,
                    config,
                    anomaly,
                    since=None,
                    until=None,
                    rebuild=False,
                    show_progress=False,
                    incremental=detector,
                )
                new = result.stored.new
                click.echo(
                    f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} scan: {len(result.findings)} "
                    f"findings, {len(new)} new alerts{' ' + str(new) if new else ''} "
                    f"({result.seconds:.1f}s; scored {result.detection.get('rescored_contractors')}"
                    f" of {result.detection.get('contractors')} contractors)"
                )
                for lock in result.auto_locks:
                    click.echo(f"  locked {lock['target']} (lock {lock['lock_id']})")
            except Exception as error:  # keep watching: the next round may succeed
                metrics.ANOMALY_ROUND_FAILURES.inc()
                click.echo(f"scan failed: {type(error).__name__}: {error}", err=True)
            if once:
                return
            while not stopping and time.monotonic() - started < every:
                time.sleep(min(0.5, every))


def start_metrics_listener(bind: str) -> None:
    from gateway.metrics.exposition import start_listener

    try:
        start_listener(bind)
    except (ValueError, OSError) as error:
        raise click.ClickException(f"--metrics-bind {bind}: {error}") from None


# Canary records, and simulation/evaluation, register their commands here.
from gateway.cli import anomaly_canaries, anomaly_simulation  # noqa: E402, F401
