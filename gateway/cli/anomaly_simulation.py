"""`gateway anomalies simulate|evaluate`: a seeded synthetic log with labelled attacks, and
how well the detectors find them."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from gateway.cli.anomalies import anomalies_group, anomaly_errors, thresholds_option
from gateway.cli.output import json_option, print_json

F = TypeVar("F", bound=Callable[..., Any])


def size_options(function: F) -> F:
    for option in reversed(
        [
            click.option(
                "--contractors", type=click.IntRange(20, 100_000), default=200, show_default=True
            ),
            click.option("--vendors", type=click.IntRange(1, 8), default=5, show_default=True),
            click.option("--days", type=click.IntRange(24, 366), default=30, show_default=True),
        ]
    ):
        function = option(function)
    return function


@anomalies_group.command("simulate")
@click.option("--seed", type=int, required=True)
@size_options
@click.option(
    "--output",
    required=True,
    metavar="DB_URL|FILE",
    help="a database URL (rows appended to access_log, canaries marked) or a .jsonl[.gz] file",
)
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(dir_okay=False, writable=True),
    help="where to write the labelled attacks (required with a database URL; default next to"
    " a file output: NAME.labels.json)",
)
@click.option(
    "--end",
    metavar="ISO",
    help="the simulated days end by this time (default: now), so `scan` finds them; moved in"
    " whole weeks, which keeps every score the same",
)
@json_option
@anomaly_errors
def simulate_command(
    seed: int,
    contractors: int,
    vendors: int,
    days: int,
    output: str,
    labels_path: str | None,
    end: str | None,
    as_json: bool,
) -> None:
    """A seeded synthetic access log with labelled attacks (see gateway/anomaly/simulate/)."""
    from gateway.anomaly.simulate import (
        labels_document,
        simulate,
        start_ending_by,
        write_database,
        write_file,
    )

    to_database = "://" in output
    if labels_path is None:
        if to_database:
            raise click.ClickException(
                "--labels FILE is required with a database output (nothing is written to the"
                " current directory unasked)"
            )
        labels_path = output.removesuffix(".gz").removesuffix(".jsonl") + ".labels.json"
    try:
        until = _parse_end(end)
        with click.progressbar(
            length=contractors, label="simulating contractors", file=sys.stderr
        ) as bar:
            simulation = simulate(
                seed,
                contractors=contractors,
                vendors=vendors,
                days=days,
                start=start_ending_by(until, days),
                progress=lambda done, _total: bar.update(done - bar.pos),
            )
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    rows = len(simulation.requests)
    with click.progressbar(length=rows, label="writing rows", file=sys.stderr) as bar:
        if to_database:
            written = write_database(simulation, output, progress=bar.update)
        else:
            written = write_file(simulation, output)
            bar.update(rows)
    document = labels_document(simulation)
    with open(labels_path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1)
    if as_json:
        print_json(
            {
                "seed": seed,
                "contractors": contractors,
                "vendors": vendors,
                "days": days,
                "start": document["start"],
                "end": document["end"],
                "rows": written,
                "labelled_attacks": len(simulation.labels),
                "canaries": len(simulation.canaries),
                "labels_file": labels_path,
            }
        )
        return
    click.echo(
        f"simulated seed {seed}: {contractors} contractors, {vendors} vendors, {days} days "
        f"({document['start']} to {document['end']}); {written:,} rows to "
        f"{output.split('@')[-1]}; {len(simulation.labels)} labelled attacks and "
        f"{len(simulation.canaries)} canaries in {labels_path}"
    )


def _parse_end(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--end: {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise ValueError("--end: give a UTC offset (e.g. 2026-12-01T00:00:00Z)")
    return parsed


@anomalies_group.command("evaluate")
@click.option(
    "--seeds",
    default="101,102,103",
    show_default=True,
    help="comma-separated seeds (the thresholds were tuned on seeds 1-10 of the simulator)",
)
@click.option(
    "--generator",
    "generator_name",
    type=click.Choice(["simulator", "heldout"]),
    default="simulator",
    show_default=True,
    help="simulator: the project's own (thresholds tuned on it); heldout: written from a "
    "behaviour specification without the detectors' code (judged on it)",
)
@click.option(
    "--contractors", type=click.IntRange(20, 100_000), help="default: the generator's (200)"
)
@click.option("--vendors", type=click.IntRange(1, 8), help="default: the generator's")
@click.option("--days", type=click.IntRange(24, 366), help="default: the generator's")
@thresholds_option
@json_option
@anomaly_errors
def evaluate_command(
    seeds: str,
    generator_name: str,
    contractors: int | None,
    vendors: int | None,
    days: int | None,
    thresholds_path: str | None,
    as_json: bool,
) -> None:
    """Recall, precision, false alerts per 100 contractor-days and time to detect, per
    scenario family, on generated logs (the same detectors `scan` runs)."""
    from gateway.anomaly.config import load_anomaly_config
    from gateway.anomaly.evaluate import TUNING_SEEDS, evaluate, markdown, summary_line

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{seeds!r} is not a comma-separated list of numbers", param_hint="--seeds"
        ) from None
    if not seed_list:
        raise click.BadParameter("give at least one seed", param_hint="--seeds")
    tuned = sorted(set(seed_list) & set(TUNING_SEEDS))
    if tuned and generator_name == "simulator":
        click.echo(
            f"warning: seeds {tuned} were used for tuning; figures on them are optimistic", err=True
        )
    # Only an explicit thresholds file counts: the figures must not depend on GATEWAY_CONFIG.
    config = load_anomaly_config(None, thresholds_path, environ={})

    def on_seed(result: Any) -> None:
        click.echo(
            f"seed {result.seed}: {result.rows:,} rows, {sum(result.alerts.values())} alerts, "
            f"{len(result.false_alerts)} false ({result.seconds:.1f}s)",
            err=True,
        )

    try:
        report = evaluate(
            seed_list,
            config,
            generator_name=generator_name,
            contractors=contractors,
            vendors=vendors,
            days=days,
            on_seed=on_seed,
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        print_json(report.as_dict())
        return
    click.echo(markdown(report))
    click.echo("")
    click.echo(f"figures: {summary_line(report)}")
