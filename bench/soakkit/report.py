"""The soak's report: the RESULTS.md section and the details printed on the console."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

from bench.soakkit.run import NEAR, SoakResult, near_fault

# --- report ---------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(result: SoakResult) -> list[str]:
    rec = result.reconciliation
    attempts = result.attempts
    finished = [a for a in attempts if a.end is not None]
    verdict = "PASS" if rec.ok else "FAIL"
    kinds = Counter(a.kind for a in attempts)
    lines = [
        f"**Reconciliation: {verdict}** — unlogged releases **{rec.unlogged}**, unexplained"
        f" rows **{len(rec.unexplained_rows)}**, rows contradicting a response"
        f" **{len(rec.mismatched_rows)}**, HTTP 500 **{len(rec.http_500)}**.",
        "",
        *(
            ["**RUN INCOMPLETE** — the figures below are not those of the planned soak:", ""]
            + [f"- {line}" for line in result.incomplete]
            + (
                [
                    "- files of the gateway or its test config changed in the working tree"
                    " during the run (workers forked after a kill load them as they are then): "
                    + ", ".join(result.code_changed)
                ]
                if result.code_changed
                else []
            )
            + [""]
            if result.incomplete or result.code_changed
            else []
        ),
        f"- requests: {rec.requests} in {result.elapsed:.0f} s"
        f" ({len(finished) / max(result.elapsed, 1e-9):.0f}/s) from {result.options.clients}"
        f" clients; by kind: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()),
        f"- records released in 2xx record bodies: {rec.records_released}, each with its allow"
        f" row: {rec.records_logged}",
        f"- NDJSON lines received on the streamed export route: {rec.stream_lines} (that route"
        " has no `records` spec, so it is logged as one row per request, not per record)",
        f"- access rows: {rec.rows} ("
        + ", ".join(f"{k} {v}" for k, v in rec.rows_by_decision.most_common())
        + f"); of a request id a client saw: {rec.rows_reached}; explained: "
        + (", ".join(f"{k} {v}" for k, v in rec.rows_explained.most_common()) or "none")
        + f"; unexplained: {len(rec.unexplained_rows)}",
        "- rows of requests the clients saw, by decision and reason: "
        + ", ".join(f"{k} {v}" for k, v in rec.reached_reasons.most_common(12)),
        "- responses without any access row: "
        + (", ".join(f"{k} {v}" for k, v in rec.responses_without_rows.most_common()) or "none"),
        "- allow rows of records whose response was an error (logged, not released): "
        + (", ".join(f"{k} {v}" for k, v in rec.logged_not_released.most_common()) or "none"),
        "",
        "Requests by outcome, and the fault each unhealthy one overlapped:",
        "",
        "| outcome | requests | with a worker kill | with the PostgreSQL restart"
        " | with a lock of its contractor | no fault nearby |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    near: dict[str, Counter[str]] = defaultdict(Counter)
    for attempt in attempts:
        if not attempt.healthy:
            near[attempt.outcome][near_fault(attempt, result.faults)] += 1
    for outcome, count in rec.outcomes.most_common():
        spread = near.get(outcome, Counter())
        cells = [str(spread.get(key, 0)) if outcome in near else "" for key in NEAR]
        lines.append(f"| {outcome} | {count} | {' | '.join(cells)} |")
    lines += ["", "Faults (seconds since the load started):", ""]
    lines += ["| at | fault | took | outcome |", "|---:|---|---:|---|"]
    for fault in result.faults:
        extra = ""
        if fault.kind == "kill_worker" and fault.respawned is not None:
            extra = f"; replacement worker forked {fault.respawned - fault.started:.1f} s later"
        lines.append(
            f"| {fault.started:.1f} | {fault.kind} | {fault.ended - fault.started:.1f} s"
            f" | {'ok' if fault.ok else 'FAILED'}: {fault.detail}{extra} |"
        )
    if result.recoveries:
        lines += _recovery_lines(result)
    lines += ["", "Locks and policy changes (requests started after the CLI command returned):", ""]
    lines += [f"- {line}" for line in result.enforcement] or ["- none"]
    lines += ["", "Gateway logs:", ""]
    for number, log in enumerate(result.logs, 1):
        lines.append(
            f"- instance {number}: {log.worker_kills_seen} worker SIGKILL(s) noted by the master,"
            f" {log.worker_timeouts} worker timeout(s); tracebacks: "
            + ("; ".join(f"`{k}` x{v}" for k, v in log.tracebacks.most_common(6)) or "none")
            + "; warnings: "
            + (", ".join(f"{k} x{v}" for k, v in log.warnings.most_common()) or "none")
        )
        lines += [f"  - first `{k}`: `{v}`" for k, v in sorted(log.examples.items())]
    lines += ["", "Findings:", ""]
    lines += [f"- {note}" for note in result.findings] or ["- none"]
    return lines


def _recovery_lines(result: SoakResult) -> list[str]:
    restart = next(f for f in result.faults if f.kind == "pg_restart")
    lines = [
        "",
        f"PostgreSQL restart at {restart.started:.1f} s; `pg_ctlcluster ... restart` returned"
        f" after {restart.ended - restart.started:.1f} s"
        + (
            f" ({result.other_pg_connections} other client connection(s) to the server were"
            " cut too)"
            if result.other_pg_connections
            else ""
        )
        + ". Recovery per instance (seconds after the restart began):",
        "",
        "| instance | healthy before | first failure | first 200 after it | steady (5 s ≥ 90% of"
        " before) | unhealthy outcomes until steady |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for rec in result.recoveries:
        lines.append(
            f"| {rec.instance + 1} | {rec.baseline:.1%} | {_seconds(rec.first_failure)}"
            f" | {_seconds(rec.first_200)} | {_seconds(rec.steady)} | "
            + (", ".join(f"{k} {v}" for k, v in rec.outage.most_common()) or "none")
            + " |"
        )
    lines += [
        "",
        "Per second around the restart (requests by start time; healthy = answered below 500):",
        "",
        "| s after restart | "
        + " | ".join(
            f"instance {r.instance + 1}: requests / healthy / unhealthy" for r in result.recoveries
        )
        + " |",
        "|---:|" + "---|" * len(result.recoveries),
    ]
    for row in range(min(len(r.bins) for r in result.recoveries)):
        cells = []
        for rec in result.recoveries:
            _start, count, good, bad = rec.bins[row]
            cells.append(
                f"{count} / {good} / "
                + (", ".join(f"{k} {v}" for k, v in bad.most_common(3)) or "-")
            )
        lines.append(f"| {rec.bins[row][0]:.0f} | " + " | ".join(cells) + " |")
    return lines


def print_details(result: SoakResult, say: Callable[[str], None] = print) -> None:
    """The individual failures (first 20 of each), and the gateway's traceback per 500."""
    rec = result.reconciliation
    for title, items in (
        ("unlogged records", rec.unlogged_records),
        ("unlogged responses", rec.unlogged_responses),
        ("unexplained rows", rec.unexplained_rows),
        ("rows contradicting a response", rec.mismatched_rows),
    ):
        if items:
            say(f"--- {title} ({len(items)}) ---")
            for item in items[:20]:
                say(f"  {item}")
    if rec.http_500:
        say(f"--- HTTP 500 ({len(rec.http_500)}) ---")
        excerpts: dict[str, str] = {}
        for log in result.logs:
            excerpts.update(log.excerpts)
        for attempt in rec.http_500[:20]:
            say(
                f"  {attempt.tag} instance {attempt.instance + 1} {attempt.method} {attempt.path}"
                f" at {attempt.start:.1f}s request {attempt.request_id}: {attempt.body}"
            )
            if attempt.request_id in excerpts:
                say("    " + excerpts[attempt.request_id].replace("\n", "\n    "))
