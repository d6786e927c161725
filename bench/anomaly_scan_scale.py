"""How long an anomaly scan takes over a large access log on PostgreSQL.

Builds a fresh database with `--contractors` simulated contractors over `--days` days, in
chunks of 200 contractors (each chunk a simulation of its own, seeded `--seed + chunk`,
vendors renamed per chunk so peer groups stay ~40 contractors; `--jobs` chunks are
simulated and written at once, through the audit writer's COPY into the real schema with
every index and the append-only trigger). Then it runs the command an operator runs, as a
subprocess, and times it:

1. `gateway anomalies scan --since <day 10> --until <end> --rebuild --json`: the first
   scan over the whole period (the hourly rollup built from the raw log, then every
   detector over every contractor, alerts stored);
2. `gateway anomalies scan --since <end - 48h> --until <end> --json`: what one `watch`
   round does (the rollup refreshed for the late hours only); it must add no alert the
   first scan already made (idempotence at scale).

    .venv/bin/python bench/anomaly_scan_scale.py --contractors 10000 --write

The database is dropped at the end unless `--keep`; `--database NAME` scans an existing
one (built by an earlier `--keep` run) instead of building.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import command_line, git_state, machine, write_section  # noqa: E402
from gateway.anomaly.store import add_canaries  # noqa: E402
from gateway.db.session import make_engine  # noqa: E402

CHUNK = 200
# Measured on this schema (every index of access_log): ~900 bytes per row on disk, and
# ~225 rows per simulated contractor-day.
BYTES_PER_ROW = 950
ROWS_PER_CONTRACTOR_DAY = 230


def build_chunk(url: str, chunk: int, days: int, seed: int) -> tuple[int, float, float, list[str]]:
    """Simulate one chunk of contractors and append its rows; (rows, start, end, canaries)."""
    from gateway.anomaly.simulate import Simulator, write_requests
    from gateway.db.session import make_engine

    simulation = Simulator(seed + chunk, contractors=CHUNK, vendors=5, days=days).run()
    # Every chunk is a simulation of its own with the same naming: vendors, subjects and
    # record ids are made unique per chunk, as they are in a real log (one chunk's canary
    # records must not be another chunk's ordinary records, and a subject index must be
    # as selective as it is with real IdP subjects).
    tag = f"c{chunk:03d}"
    renamed = []
    for request in simulation.requests:
        ids = tuple(f"{tag}-{r}" if r is not None else None for r in request.record_ids)
        request = request._replace(record_ids=ids)
        if request.vendor is not None:
            vendor = f"{request.vendor}-{chunk:03d}"
            request = request._replace(vendor=vendor, issuer=f"{vendor}-idp")
        if request.subject is not None:
            request = request._replace(subject=f"{request.subject}-{tag}")
        renamed.append(request)
    engine = make_engine(url)
    try:
        rows = write_requests(engine, renamed, chain=f"scale-{chunk}")
    finally:
        engine.dispose()
    return rows, simulation.start, simulation.end, [f"{tag}-{r}" for r in simulation.canaries]


def build(url: str, contractors: int, days: int, seed: int, jobs: int) -> dict[str, Any]:
    started = time.monotonic()
    rows, span, canaries = 0, None, []
    chunks = contractors // CHUNK
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(build_chunk, url, chunk, days, seed) for chunk in range(chunks)]
        for done, future in enumerate(as_completed(futures), start=1):
            chunk_rows, start, end, chunk_canaries = future.result()
            rows += chunk_rows
            span = (start, end)
            canaries += chunk_canaries
            print(
                f"  {done}/{chunks} chunks: {rows:,} rows, {time.monotonic() - started:.0f}s",
                flush=True,
            )
    assert span is not None
    engine = make_engine(url)
    # The simulations' canary records, marked as an admin would have before the period.
    add_canaries(
        engine,
        canaries,
        reason="simulated canary records",
        actor="anomaly-scale-bench",
        created_at=dt.datetime.fromtimestamp(span[0], dt.UTC),
    )
    with engine.connect() as connection:
        connection.execute(text("ANALYZE access_log"))
    engine.dispose()
    return {"rows": rows, "seconds": time.monotonic() - started, "start": span[0], "end": span[1]}


def run_scan(config_path: str, log_path: Path, *args: str) -> dict[str, Any]:
    """One `gateway anomalies scan` as a subprocess: its JSON summary, wall time, CPU, RSS."""
    started = time.monotonic()
    peak_kib = 0
    with open(log_path, "ab") as log, tempfile.TemporaryFile() as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "gateway"), "anomalies", "scan", "--json", *args],
            env={**os.environ, "GATEWAY_CONFIG": config_path},
            stdout=out,
            stderr=log,
        )
        status = Path(f"/proc/{process.pid}/status")
        while True:
            # Reaped here (not by Popen) to get the scan process's own CPU time.
            pid, code, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            # VmHWM: the process's peak resident set so far.
            with contextlib.suppress(OSError):
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
            time.sleep(0.2)
        process.returncode = os.waitstatus_to_exitcode(code)
        wall = time.monotonic() - started
        out.seek(0)
        stdout = out.read()
    if process.returncode != 0:
        raise SystemExit(f"scan failed (exit {process.returncode}); see {log_path}")
    summary = json.loads(stdout)
    summary["wall"] = wall
    summary["cpu"] = usage.ru_utime + usage.ru_stime
    summary["max_rss_mib"] = peak_kib / 1024
    return summary


def incremental_rounds(url: str, end_hour: int) -> dict[str, Any]:
    """In this process, as `watch` runs: a first round at 14:00 UTC of the log's last full
    day (everyone scored), the round one hour later (the incremental one), and the full
    round over that same window for comparison; their findings must be equal."""
    from gateway.anomaly.config import AnomalyConfig
    from gateway.anomaly.incremental import IncrementalDetector
    from gateway.anomaly.rollup import SqlSource
    from gateway.anomaly.scan import scan

    engine = make_engine(url)
    config = AnomalyConfig()
    hour = (end_hour // 24 - 1) * 24 + 15
    detector = IncrementalDetector(SqlSource(engine), config, late_hours=config.rollup_late_hours)
    out: dict[str, Any] = {"at": iso(hour * 3600)}
    try:
        for label, until_hour, incremental in (
            ("first", hour - 1, detector),
            ("next", hour, detector),
            ("full", hour, None),
        ):
            until = dt.datetime.fromtimestamp(until_hour * 3600, dt.UTC)
            since = out["next"]["result"].since if label == "full" else None
            cpu, wall = time.process_time(), time.perf_counter()
            result = scan(engine, config, since=since, until=until, incremental=incremental)
            out[label] = {
                "wall": time.perf_counter() - wall,
                "cpu": time.process_time() - cpu,
                "result": result,
                "detection": dict(result.detection),
            }
            print(f"  {label} round: {out[label]['wall']:.1f}s {result.detection}")
        same = [f.dedup_key for f in out["next"]["result"].findings] == [
            f.dedup_key for f in out["full"]["result"].findings
        ]
        out["same"] = same and len(out["next"]["result"].findings) == len(
            out["full"]["result"].findings
        )
    finally:
        engine.dispose()
    return out


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def database_facts(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    with engine.connect() as connection:
        facts = {
            "rows": connection.execute(text("SELECT count(*) FROM access_log")).scalar_one(),
            "size": connection.execute(
                # The parent of a partitioned table holds nothing: sum its partitions.
                text(
                    "SELECT pg_size_pretty(pg_total_relation_size('access_log') + coalesce(("
                    "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                    " WHERE inhparent = 'access_log'::regclass), 0)::bigint)"
                )
            ).scalar_one(),
            "span": connection.execute(
                text(
                    "SELECT extract(epoch FROM min(time)), extract(epoch FROM max(time)) "
                    "FROM access_log"
                )
            ).one(),
            "contractors": connection.execute(
                text("SELECT count(DISTINCT (issuer, subject)) FROM access_log")
            ).scalar_one(),
            "server": connection.execute(text("SHOW server_version")).scalar_one(),
        }
    engine.dispose()
    return facts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contractors", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=2, help="chunks built at once")
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database", help="scan this existing database instead of building")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument(
        "--section", default="anomaly_scan_scale", help="the bench/RESULTS.md section written"
    )
    args = parser.parse_args()
    if args.contractors % CHUNK:
        parser.error(f"--contractors must be a multiple of {CHUNK}")
    started = time.monotonic()
    name = args.database or f"anomaly_scale_{secrets.token_hex(3)}"
    admin = create_engine(args.server, isolation_level="AUTOCOMMIT")
    url = args.server.rsplit("/", 1)[0] + f"/{name}"
    built: dict[str, Any] | None = None
    workdir = Path(tempfile.mkdtemp(prefix="anomaly-scale-"))
    try:
        if args.database is None:
            with admin.connect() as connection:
                data_dir = connection.execute(text("SHOW data_directory")).scalar_one()
            need = args.contractors * args.days * ROWS_PER_CONTRACTOR_DAY * BYTES_PER_ROW
            free = shutil.disk_usage(data_dir).free
            if need > free * 0.9:
                raise SystemExit(
                    f"about {need / 2**30:.0f} GiB needed for the log, {free / 2**30:.0f} GiB free"
                )
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            from gateway.db.migrate import upgrade

            upgrade(url)
            print(f"building {args.contractors:,} contractors x {args.days} days in {name}")
            built = build(url, args.contractors, args.days, args.seed, args.jobs)
        facts = database_facts(url)
        first, last = (float(v) for v in facts["span"])
        config_path = workdir / "gateway.toml"
        config_path.write_text(
            f'[database]\nurl = "{url}"\n\n'
            '[[issuers]]\nname = "bench-idp"\nissuer = "https://idp.bench.example"\n'
            'audience = "https://gateway.bench"\nvendor = "bench"\n\n'
            '[upstream]\nurl = "http://127.0.0.1:9"\n\n'
            '[[routes]]\nmethods = ["GET"]\npath = "/api/projects/{project}/tasks"\n'
            'action = "read"\n'
        )
        log_path = workdir / "scan.log"
        end_hour = int(last // 3600) + 1
        since = (int(first // 86400) + 10) * 86400
        print(f"first scan: {iso(since)} .. {iso(end_hour * 3600)} (log in {log_path})")
        full = run_scan(
            str(config_path),
            log_path,
            "--since",
            iso(since),
            "--until",
            iso(end_hour * 3600),
            "--rebuild",
        )
        print(f"  {full['wall']:.0f}s, {full['findings']} findings")
        watch = run_scan(
            str(config_path),
            log_path,
            "--since",
            iso((end_hour - 48) * 3600),
            "--until",
            iso(end_hour * 3600),
        )
        print(f"watch round: {watch['wall']:.1f}s, {len(watch['new_alerts'])} new alerts")
        rounds = incremental_rounds(url, end_hour)
        progress_shown = "scanning contractors" in log_path.read_text(errors="replace")
    finally:
        if not args.keep and args.database is None:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(workdir, ignore_errors=True)

    def phases(summary: dict[str, Any]) -> str:
        p = summary["phase_seconds"]
        return (
            f"rollup {p['rollup']:.0f}s, detectors {p['detectors']:.0f}s, "
            f"storing alerts {p['store']:.1f}s"
        )

    scored_days = (end_hour * 3600 - since) / 86400
    minutes = full["wall"] / 60
    lines = [
        "## Anomaly scan at scale (`bench/anomaly_scan_scale.py`)",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}",
        f"- machine: {machine()}; PostgreSQL {facts['server']} on the same machine",
        f"- code measured: {git_state()}",
        f"- command: `{command_line('anomaly_scan_scale.py')}` "
        f"(whole run {(time.monotonic() - started) / 60:.0f} min)",
        f"- log: **{facts['rows']:,} access_log rows** ({facts['size']} with its indexes), "
        f"{facts['contractors']:,} contractors over {(last - first) / 86400:.0f} days, "
        f"{args.contractors // CHUNK * 5} vendors"
        + (
            f"; built in {built['seconds'] / 60:.0f} min "
            f"({built['rows'] / built['seconds']:,.0f} rows/s, {args.jobs} chunks at once)"
            if built
            else ""
        ),
        "",
        "| run | period scored | wall | phases | CPU of the scan process | peak RSS | alerts |",
        "|---|---|---:|---|---:|---:|---|",
        f"| first scan, `--rebuild` | {scored_days:.0f} days (+ "
        f"{full['rollup'].get('aggregated_hours', 0) // 24 - round(scored_days)} days history) "
        f"| **{minutes:.1f} min** | {phases(full)} | {full['cpu'] / 60:.1f} min "
        f"| {full['max_rss_mib']:,.0f} MiB | {len(full['new_alerts'])} new |",
        f"| watch round | 48 h | {watch['wall']:.0f}s | {phases(watch)} "
        f"| {watch['cpu']:.0f}s | {watch['max_rss_mib']:,.0f} MiB "
        f"| {len(watch['new_alerts'])} new, {len(watch['updated_alerts'])} updated, "
        f"{watch['unchanged_alerts']} unchanged |",
        "",
        "",
        f"Incremental watch rounds (in-process, as `watch` runs them, {rounds['at']}):",
        "",
        "| round | wall | CPU of this process | contractors scored |",
        "|---|---:|---:|---|",
        *[
            f"| {name} | {rounds[key]['wall']:.1f}s | {rounds[key]['cpu']:.1f}s "
            f"| {rounds[key]['detection'].get('rescored_contractors', 'all')} of "
            f"{rounds[key]['detection'].get('contractors', facts['contractors'])} |"
            for key, name in (
                ("first", "first watch round (everyone scored)"),
                ("next", "the round one hour later (incremental)"),
                ("full", "full round over the same window (before this change)"),
            )
        ],
        "",
        f"- the incremental round's findings equal the full round's: "
        f"{'yes' if rounds['same'] else 'NO'}; one hour later/full: "
        f"{rounds['next']['wall'] / rounds['full']['wall']:.2f} of the wall time",
        f"- rollup: {full['rollup'].get('rollup_rows', 0):,} hourly rows built from the log "
        f"in one pass; the watch round re-aggregated "
        f"{watch['rollup'].get('aggregated_hours', 0)} hours",
        f"- the CLI showed its progress bar: {'yes' if progress_shown else 'NO'}",
        "- the scan process and PostgreSQL share the machine's 2 cores; the detectors run "
        "in the scan process, one vendor's contractors at a time",
    ]
    block = "\n".join(lines)
    print(block)
    if args.write:
        write_section(args.section, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
