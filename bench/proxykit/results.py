"""The proxy benchmark's figures: per-target medians, the summary judged against the goals,
the markdown written to bench/RESULTS.md and the steps table kept per commit."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.proxykit.cpu import CpuUse
from bench.proxykit.database import Database
from bench.proxykit.load import LoadResult, LoadTool
from bench.proxykit.policy import ISSUER_NAME, PolicyStats, bench_contractor
from bench.proxykit.processes import gunicorn_settings
from bench.report import git_head, machine

ROOT = Path(__file__).resolve().parent.parent.parent
SECTION_START = "<!-- proxy_overhead:start -->"
SECTION_END = "<!-- proxy_overhead:end -->"
PAGE_RECORDS = 50


@dataclass
class Target:
    key: str
    label: str
    url: str
    headers: dict[str, str]
    proxy: str | None = None  # name of the proxy's processes, if any
    runs: list[LoadResult] = field(default_factory=list)
    warmups: list[LoadResult] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)

    def cpu_ms(self, group: str | None) -> float | None:
        """Median CPU milliseconds that `group`'s processes spent per request."""
        if group is None or any(run.cpu is None for run in self.runs):
            return None
        return statistics.median(cpu_ms_per_request(run, group) for run in self.runs)


def cpu_ms_per_request(run: LoadResult, group: str) -> float:
    assert run.cpu is not None
    return 1000 * run.cpu.group(group) / run.rps if run.rps else float("nan")


def _postgres_cores(run: LoadResult) -> float:
    assert run.cpu is not None
    return run.cpu.postgres


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# Issue 16's goals for governed/bare throughput, by upstream kind: a near-free upstream
# shows the gateway's whole cost; the sample service's own CPU hides part of it.
GOALS = {"static": 0.5, "sample": 0.85}


@dataclass
class Summary:
    """The figures a run is judged by, also kept per commit in the steps table."""

    ratio: float | None  # governed / bare throughput (medians)
    gateway_rps: float
    bare_rps: float | None
    gateway_us_per_record: float | None  # gateway processes' CPU per released record
    postgres_us_per_record: float | None  # every PostgreSQL process's CPU per released record
    bare_ms_per_request: float | None


def summarise(targets: list[Target]) -> Summary:
    by_key = {t.key: t for t in targets}
    gateway, bare = by_key["c"], by_key.get("b")
    gw_ms = gateway.cpu_ms("gateway")
    pg_ms = None
    if gateway.runs and all(run.cpu is not None for run in gateway.runs):
        pg_ms = statistics.median(
            1000 * max(0.0, _postgres_cores(run)) / run.rps for run in gateway.runs
        )
    return Summary(
        ratio=gateway.median("rps") / bare.median("rps") if bare else None,
        gateway_rps=gateway.median("rps"),
        bare_rps=bare.median("rps") if bare else None,
        gateway_us_per_record=None if gw_ms is None else 1000 * gw_ms / PAGE_RECORDS,
        postgres_us_per_record=None if pg_ms is None else 1000 * pg_ms / PAGE_RECORDS,
        bare_ms_per_request=bare.cpu_ms("bare-proxy") if bare else None,
    )


def metrics_cost(targets: list[Target]) -> str:
    """(c) the gateway as shipped against (d) the same with [metrics] enabled = false."""
    by_key = {t.key: t for t in targets}
    on, off = by_key["c"], by_key["d"]
    ratio = on.median("rps") / off.median("rps")
    lines = [
        f"- metrics cost: governed req/s with metrics / without = **{ratio:.3f}** "
        f"({on.median('rps'):.1f} vs {off.median('rps'):.1f}, medians of interleaved rounds;"
        " goal: no more than 3 % lower)",
    ]
    on_ms, off_ms = on.cpu_ms(on.proxy), off.cpu_ms(off.proxy)
    if on_ms is not None and off_ms is not None:
        lines.append(
            f"- gateway CPU per released record: {1000 * on_ms / PAGE_RECORDS:.1f} µs with"
            f" metrics, {1000 * off_ms / PAGE_RECORDS:.1f} µs without"
            f" ({100 * (on_ms / off_ms - 1):+.1f} %)"
        )
    return "\n".join(lines)


def results_table(targets: list[Target], upstream: str = "sample") -> str:
    by_key = {t.key: t for t in targets}
    goal = GOALS[upstream]
    lines = [
        "| target | req/s | p50 (ms) | p99 (ms) | proxy CPU ms/req | upstream CPU ms/req "
        "| requests measured |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        lines.append(
            f"| {target.label} | {target.median('rps'):.1f} | {target.median('p50_ms'):.2f} "
            f"| {target.median('p99_ms'):.2f} | {fmt_ms(target.cpu_ms(target.proxy))} "
            f"| {fmt_ms(target.cpu_ms('upstream'))} | {sum(r.requests for r in target.runs)} |"
        )
    lines.append("")
    if "b" in by_key:
        ratio = by_key["c"].median("rps") / by_key["b"].median("rps")
        verdict = "meets" if ratio >= goal else "MISSES"
        lines.append(f"- throughput c/b = **{ratio:.2f}** ({verdict} the goal c/b >= {goal})")
        if "a" in by_key:
            lines.append(
                f"- throughput b/a = {by_key['b'].median('rps') / by_key['a'].median('rps'):.2f}"
            )
        lines.append(
            f"- p50 latency c/b = {by_key['c'].median('p50_ms') / by_key['b'].median('p50_ms'):.2f}"
            f", p99 latency c/b = {by_key['c'].median('p99_ms') / by_key['b'].median('p99_ms'):.2f}"
        )
    if "a" in by_key:
        lines.append(
            f"- throughput c/a = {by_key['c'].median('rps') / by_key['a'].median('rps'):.2f}"
        )
    gw_cpu, bare_cpu = by_key["c"].cpu_ms("gateway"), None
    if "b" in by_key:
        bare_cpu = by_key["b"].cpu_ms("bare-proxy")
    runs_c = by_key["c"].runs
    if all(run.cpu is not None for run in runs_c):
        pg_ms = statistics.median(1000 * _postgres_cores(run) / run.rps for run in runs_c)
        lines.append(
            f"- PostgreSQL CPU per gateway request ≈ {pg_ms:.2f} ms (all postgres processes on"
            " the machine, so other users of the server count too)"
        )
    if gw_cpu is not None and bare_cpu:
        lines.append(
            f"- proxy CPU per request c/b = {gw_cpu / bare_cpu:.2f} ({gw_cpu:.2f} ms vs"
            f" {bare_cpu:.2f} ms, all gunicorn processes, user + system; the gateway's figure"
            " includes its audit-writer threads but not PostgreSQL)"
        )
        up_b, up_c = by_key["b"].cpu_ms("upstream"), by_key["c"].cpu_ms("upstream")
        if up_b is not None and up_c is not None and all(r.cpu for r in runs_c):
            pg_ms = statistics.median(1000 * max(0.0, _postgres_cores(r)) / r.rps for r in runs_c)
            budget = (bare_cpu + up_b) / goal - up_c
            lines.append(
                "- rough CPU budget (every process shares the same CPUs, so throughput goes"
                " as 1 / CPU per request of the whole chain; load generator ignored):"
                f" (b)'s chain costs {bare_cpu + up_b:.2f} ms (proxy + upstream); for c/b >= {goal}"
                f" gateway + PostgreSQL must fit in ~{budget:.2f} ms per request; they take"
                f" {gw_cpu + pg_ms:.2f} ms now"
            )
    summary = summarise(targets)
    if summary.gateway_us_per_record is not None and summary.postgres_us_per_record is not None:
        lines.append(
            f"- **CPU per released record** (measured from /proc over the gateway's rounds,"
            f" {PAGE_RECORDS} records per request): gateway processes"
            f" {summary.gateway_us_per_record:.1f} µs + PostgreSQL"
            f" {summary.postgres_us_per_record:.1f} µs ="
            f" {summary.gateway_us_per_record + summary.postgres_us_per_record:.1f} µs"
            + (
                f"; the bare proxy spends {summary.bare_ms_per_request:.2f} ms per request"
                f" ({1000 * summary.bare_ms_per_request / PAGE_RECORDS:.1f} µs per record"
                " passed through)"
                if summary.bare_ms_per_request is not None
                else ""
            )
        )
    return "\n".join(lines)


STEPS_START, STEPS_END = "<!-- proxy_steps:start -->", "<!-- proxy_steps:end -->"
STEPS_HEADER = (
    "| commit measured | date (UTC) | upstream | c/b | gateway req/s | bare req/s "
    "| gateway µs/record | PostgreSQL µs/record | bare ms/req | load avg before/after |"
)


def _step_key(row: str) -> tuple[str, str]:
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    return cells[0], cells[2]


def step_code() -> str:
    """The steps table's first cell: short commit, subject, and whether gateway/ was dirty."""
    head, dirty = git_head("gateway")
    short, _, subject = head.partition(" ")
    subject = subject.replace("|", "/")
    subject = subject if len(subject) <= 70 else subject[:69] + "…"
    return f"`{short}` {subject}" + (" (+ uncommitted changes)" if dirty else "")


def record_step(
    results: Path, upstream: str, summary: Summary, code: str, load: tuple[float, float]
) -> None:
    """Keep one row per (commit, upstream) in the steps table: the history of the cost."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    rows: list[str] = []
    if STEPS_START in text and STEPS_END in text:
        inside = text.split(STEPS_START, 1)[1].split(STEPS_END, 1)[0]
        rows = [
            line
            for line in inside.splitlines()
            if line.startswith("| `") and _step_key(line) != (code, upstream)
        ]

    def fmt(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows.append(
        f"| {code} | {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')} | {upstream} "
        f"| {fmt(summary.ratio, 2)} | {summary.gateway_rps:.0f} | {fmt(summary.bare_rps, 0)} "
        f"| {fmt(summary.gateway_us_per_record, 1)} | {fmt(summary.postgres_us_per_record, 1)} "
        f"| {fmt(summary.bare_ms_per_request, 2)} | {load[0]:.1f} / {load[1]:.1f} |"
    )
    block = "\n".join(
        [
            STEPS_START,
            "## Governed throughput, step by step (`bench/proxy_overhead.py`, every run)",
            "",
            "One row per commit measured and upstream kind (static: nginx serving the page;"
            " sample: the bundled sample service), written by each run of"
            " `make bench`; medians of the run's rounds. Goals: c/b >= 0.5 against the static"
            " upstream, >= 0.85 against the sample service. CPU per released record counts"
            " every gateway process (workers and their audit writers) and every PostgreSQL"
            " process, from /proc. To measure an older commit, run this script from a"
            " worktree of it with PYTHONPATH pointing there (the gateway under test is then"
            " the worktree's); the row names that commit.",
            "",
            STEPS_HEADER,
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
            *rows,
            STEPS_END,
        ]
    )
    if STEPS_START in text and STEPS_END in text:
        head, rest = text.split(STEPS_START, 1)
        text = head + block + rest.split(STEPS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    results.write_text(text)


def _background_warning(targets: list[Target]) -> list[str]:
    others = [run.cpu.other for t in targets for run in t.runs if run.cpu is not None]
    if not others or max(others) < 0.2:
        return []
    return [
        f"**Noise warning:** processes outside this benchmark (other sessions' test runs) used"
        f" {min(others):.2f}-{max(others):.2f} of the {len(os.sched_getaffinity(0))} cores"
        " during the measurements (see the per-round table), so req/s and latency figures"
        " are depressed and noisy; the CPU-per-request columns are the steadier comparison.",
        "",
    ]


def _cores(cpu: CpuUse | None, attribute: str) -> str:
    # Processes that exit between two samples take their ticks with them: clamp at 0.
    return "-" if cpu is None else f"{max(0.0, getattr(cpu, attribute)):.2f}"


def _git_state() -> str:
    """The commit measured, and whether gateway/ differed from it (others edit it live)."""
    head, changed = git_head("gateway", "wsgi.py", "config", "policies")
    head = head if len(head) <= 90 else head[:89] + "…"
    state = f"`{head}`"
    if changed:
        state += f"; uncommitted changes in {', '.join(changed)}"
    return state


def _versions() -> str:
    from importlib.metadata import version

    names = ("gunicorn", "flask", "werkzeug", "urllib3", "pycasbin", "sqlalchemy", "psycopg")
    found = []
    for name in names:
        with contextlib.suppress(Exception):
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


def write_results(
    args: argparse.Namespace,
    *,
    tool: LoadTool,
    database: Database,
    stats: PolicyStats,
    import_seconds: float,
    targets: list[Target],
    table: str,
    audit: dict[str, Any],
    profile_text: str | None,
    elapsed: float,
) -> None:
    command = ".venv/bin/python bench/proxy_overhead.py" + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""
    )
    per_round = [
        "| round | target | req/s | p50 (ms) | p99 (ms) | requests | proxy CPU ms/req "
        "| upstream CPU ms/req | CPU busy | this bench | PostgreSQL | other processes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i in range(args.rounds):
        for target in targets:
            if i < len(target.runs):
                r = target.runs[i]
                per_round.append(
                    f"| {i + 1} | {target.key} | {r.rps:.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
                    f"| {r.requests} "
                    f"| {fmt_ms(cpu_ms_per_request(r, target.proxy) if target.proxy and r.cpu else None)} "
                    f"| {fmt_ms(cpu_ms_per_request(r, 'upstream') if r.cpu else None)} "
                    f"| {_cores(r.cpu, 'busy')} | {_cores(r.cpu, 'ours')} "
                    f"| {_cores(r.cpu, 'postgres')} | {_cores(r.cpu, 'other')} |"
                )
    gunicorn = " ".join(gunicorn_settings(args.workers, args.threads))
    section = [
        SECTION_START,
        "## Proxy overhead: gateway vs bare Flask proxy vs direct (`bench/proxy_overhead.py`)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- versions: {_versions()}",
        f"- code measured: {_git_state()}",
        f"- command: `{command}` (whole run {elapsed:.0f}s)",
        f"- request: `GET /api/projects/{args.project}/tasks/{args.task}/records?limit=50`"
        f" ({PAGE_RECORDS} records, identical body from all targets). The sample service"
        " (`gateway demo-upstream`: 3 projects x 2 tasks x 300 records, werkzeug threaded"
        f" server) has only proj-1..proj-3, so {args.project} is measured; the gateway still"
        " holds the full 1,000-project policy.",
        f"- gunicorn (both proxies, identical): `{gunicorn}`; gateway config from"
        " `tests.conftest.gateway_config()` (policy poll 0.5 s, two issuers)",
        f"- load: {tool.describe()}; {args.connections} connections; "
        f"{args.warmup:g}s warm-up + {args.duration:g}s measured per target; "
        f"{args.rounds} round(s) in the order a, b, c; median over rounds",
        f"- policy: {stats.total:,} rules via `gateway policy import` ({import_seconds:.1f}s):"
        f" {stats.projects:,} projects x {stats.p_allow // stats.projects} role rules,"
        f" {stats.memberships:,} memberships of {stats.contractors:,} contractors"
        f" (~{args.per_contractor} projects each), {stats.vendor_grants} vendor-group grants,"
        f" {stats.p_deny} deny rules; bench contractor"
        f" `{ISSUER_NAME}:{bench_contractor(stats.contractors)}` is an annotator on"
        f" {args.project} through its own membership",
        "- token: JWT access token from `tests.support.idp` via the authorization code flow"
        " (`tests.support.oidc_client.obtain_tokens`)",
        f"- audit store: {database.label}",
        "- everything (load generator, IdPs, sample service, both proxies, PostgreSQL) shares"
        " the same machine, so each figure includes competition for its CPUs",
        "",
        *_background_warning(targets),
        table,
        "",
        f"Audit check: {'OK' if audit['ok'] else 'FAILED'}. {audit['text']}",
        "",
        "Per round (CPU columns in cores, out of"
        f" {len(os.sched_getaffinity(0))}: whole machine; this benchmark's processes including"
        " the load generator; PostgreSQL (all its processes); everything else on the machine,"
        " e.g. other sessions' test runs, which the figures then share the CPUs with):",
        "",
        *per_round,
    ]
    if profile_text:
        section += [
            "",
            f"py-spy profile of the gateway workers under the same load ({args.profile:g}s,"
            " 250 Hz, only samples holding the GIL, i.e. the workers' Python CPU time):",
            "",
            "```",
            profile_text,
            "```",
        ]
    section.append(SECTION_END)
    start, end = SECTION_START, SECTION_END
    if args.upstream == "static":
        start, end = (m.replace("proxy_overhead", "proxy_overhead_static") for m in (start, end))
        section[0], section[-1] = start, end
        section[1] = section[1].replace(
            "(`bench", "against nginx serving the page statically (`bench"
        )
        section.insert(
            3,
            "- upstream: nginx (Debian's package, 1 worker) serving a snapshot of the sample"
            " service's page from disk, keep-alive closed by nginx every 1,000 requests",
        )
    block = "\n".join(section) + "\n"
    path: Path = args.results
    existing = path.read_text() if path.exists() else "# Benchmark results\n"
    if start in existing and end in existing:
        head, _, rest = existing.partition(start)
        _, _, tail = rest.partition(end)
        updated = head + block.rstrip("\n") + tail
    else:
        updated = existing.rstrip("\n") + "\n\n" + block
    path.write_text(updated if updated.endswith("\n") else updated + "\n")
