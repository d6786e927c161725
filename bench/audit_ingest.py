"""Ingest rate of the audit writer on PostgreSQL, hash chain and sealing on.

Like the gateway: P worker processes, each with one AuditWriter (group commit, binary
COPY, per-writer hash chain, a signed checkpoint every --checkpoint-interval seconds)
and T producer threads that each build 50-row batches the way the pipeline builds its
rows (one dict per record) and block in `AuditWriter.write` until their batch commits.
A fresh database (`bench_ingest_<random>`, dropped at the end unless --keep) is migrated
first, so the append-only trigger is in place as in production.

Reported: committed rows/s over the measured window, CPU µs per row of the worker
processes (producers + writer thread), of the writer threads alone (chain hashes + COPY)
and of PostgreSQL (all its processes on this machine), rows per commit; afterwards
`gateway audit verify` runs over the whole log (every chain recomputed) and must be clean.

    .venv/bin/python bench/audit_ingest.py                   # 2 processes x 16 threads, 20 s
    .venv/bin/python bench/audit_ingest.py --processes 4 --threads 8 --seconds 30 --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import secrets
import shlex
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import git_head, machine  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- audit_ingest:start -->"
SECTION_END = "<!-- audit_ingest:end -->"
DEFAULT_SERVER = os.environ.get(
    "GATEWAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CLOCK = os.sysconf("SC_CLK_TCK")


# --- CPU accounting from /proc ----------------------------------------------------------


def _ticks(stat_path: str) -> int:
    with open(stat_path) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def thread_cpu(tid: int) -> float:
    return _ticks(f"/proc/self/task/{tid}/stat") / CLOCK


def postgres_cpu() -> float:
    """CPU seconds used so far by every process called postgres on this machine."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as handle:
                if handle.read().strip() != "postgres":
                    continue
            total += _ticks(f"/proc/{pid}/stat")
        except OSError:
            continue
    return total / CLOCK


# --- one worker process ------------------------------------------------------------------


def _base_row(process: int) -> dict[str, Any]:
    return {
        "issuer": "acme-idp",
        "subject": f"contractor-{process}",
        "vendor": f"vendor-{process % 100}",
        "client_ip": "10.20.30.40",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) annotation-client/2.3",
        "method": "GET",
        "path": "/api/projects/proj-17/tasks/task-3/records",
        "project": "proj-17",
        "task": "task-3",
        "action": "read",
        "decision": "allow",
        "reason": "released",
        "policy_version": 42,
        "upstream_status": 200,
    }


def worker(
    number: int,
    url: str,
    args: dict[str, Any],
    start_at: float,
    results: multiprocessing.Queue,
) -> None:
    import tempfile
    from pathlib import Path

    from gateway.audit import AuditWriter
    from gateway.db.session import make_engine
    from gateway.keys import GatewayKeys
    from gateway.keys.registry import register_key
    from gateway.keys.signer import Ed25519FileSigner, generate_key_file

    engine = make_engine(url)
    key_file = Path(tempfile.mkdtemp(prefix="audit-ingest-")) / "signing.pem"
    generate_key_file(key_file)
    signer = Ed25519FileSigner(key_file)
    register_key(engine, signer)
    keys = GatewayKeys(engine, signer, audience="bench")
    keys.sign_detached(b"warm")  # load the key before the clock starts
    writer = AuditWriter(
        engine,
        sign=keys.sign_detached,
        checkpoint_interval=args["checkpoint_interval"],
        batch_max_rows=args["batch_max_rows"],
    )
    writer.start()
    base = _base_row(number)
    batch = args["batch"]
    warm_until = start_at + args["warmup"]
    stop_at = warm_until + args["seconds"]
    counts = [0] * args["threads"]
    errors: list[str] = []

    def produce(slot: int) -> None:
        sequence = 0
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < stop_at:
            request_id = uuid.uuid4().hex
            now = dt.datetime.now(dt.UTC)
            rows = []
            for i in range(batch):
                sequence += 1
                rows.append(
                    {
                        **base,
                        "time": now,
                        "request_id": request_id,
                        "record_id": f"rec-{number}-{slot}-{sequence}",
                        "record_sha256": f"{sequence:064x}",
                        "bytes": 700 + i,
                    }
                )
            try:
                writer.write(rows)
            except Exception as error:
                errors.append(type(error).__name__)
                continue
            counts[slot] += batch

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(args["threads"])]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, warm_until - time.time()))
    rows0, commits0 = sum(counts), writer.commits
    cpu0, writer_cpu0, t0 = os.times(), thread_cpu(writer._thread.native_id), time.time()
    time.sleep(max(0.0, stop_at - time.time()))
    rows1, commits1 = sum(counts), writer.commits
    cpu1, writer_cpu1, t1 = os.times(), thread_cpu(writer._thread.native_id), time.time()
    for thread in threads:
        thread.join()
    writer.close()  # final seal, as a gateway worker does on a clean shutdown
    engine.dispose()
    results.put(
        {
            "rows": rows1 - rows0,
            "commits": commits1 - commits0,
            "seconds": t1 - t0,
            "cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "writer_cpu": writer_cpu1 - writer_cpu0,
            "errors": len(errors),
            "total_rows": sum(counts),
        }
    )


# --- the run ----------------------------------------------------------------------------


def make_database(server: str) -> tuple[str, str]:
    name = f"bench_ingest_{secrets.token_hex(4)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, f"{server.rpartition('/')[0]}/{name}"


def drop_database(server: str, name: str) -> None:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.audit.verify import verify_log
    from gateway.db.migrate import upgrade
    from gateway.db.session import make_engine

    name, url = make_database(args.server)
    try:
        upgrade(url)
        engine = make_engine(url)
        with engine.connect() as connection:
            server_version = connection.execute(text("SHOW server_version")).scalar()
        context = multiprocessing.get_context("fork")
        results: multiprocessing.Queue = context.Queue()
        start_at = time.time() + 2.0
        settings = {
            "threads": args.threads,
            "batch": args.batch,
            "warmup": args.warmup,
            "seconds": args.seconds,
            "checkpoint_interval": args.checkpoint_interval,
            "batch_max_rows": args.batch_max_rows,
        }
        processes = [
            context.Process(target=worker, args=(i, url, settings, start_at, results))
            for i in range(args.processes)
        ]
        for process in processes:
            process.start()
        time.sleep(max(0.0, start_at + args.warmup - time.time()))
        pg0, wall0 = postgres_cpu(), time.time()
        time.sleep(max(0.0, start_at + args.warmup + args.seconds - time.time()))
        pg1, wall1 = postgres_cpu(), time.time()
        workers = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(30)
        started = time.perf_counter()
        report = verify_log(engine)
        verify_seconds = time.perf_counter() - started
        with engine.connect() as connection:
            stored = connection.execute(text("SELECT count(*) FROM access_log")).scalar()
            checkpoints = connection.execute(
                text("SELECT count(*) FROM audit_checkpoints")
            ).scalar()
        engine.dispose()
    finally:
        if not args.keep:
            drop_database(args.server, name)
    rows = sum(w["rows"] for w in workers)
    seconds = max(w["seconds"] for w in workers)
    commits = sum(w["commits"] for w in workers)
    return {
        "database": f"PostgreSQL {server_version} (database {name}"
        + (", kept)" if args.keep else ", dropped after the run)"),
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "commits": commits,
        "rows_per_commit": rows / max(1, commits),
        "cpu_us": 1e6 * sum(w["cpu"] for w in workers) / rows,
        "writer_cpu_us": 1e6 * sum(w["writer_cpu"] for w in workers) / rows,
        "postgres_cpu_us": 1e6 * (pg1 - pg0) / rows,
        "postgres_cores": (pg1 - pg0) / (wall1 - wall0),
        "worker_cores": sum(w["cpu"] for w in workers) / seconds,
        "errors": sum(w["errors"] for w in workers),
        "total_rows": sum(w["total_rows"] for w in workers),
        "stored": stored,
        "checkpoints": checkpoints,
        "verify": report,
        "verify_seconds": verify_seconds,
    }


def _git_state() -> str:
    head, dirty = git_head("gateway/audit")
    return head + ("; uncommitted changes in gateway/audit" if dirty else "")


def section(args: argparse.Namespace, result: dict[str, Any], elapsed: float) -> str:
    command = ".venv/bin/python bench/audit_ingest.py" + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""
    )
    report = result["verify"]
    goal = "meets" if result["rows_per_s"] >= 20_000 else "MISSES"
    lines = [
        SECTION_START,
        "## Audit ingest: rows/s through AuditWriter, hash chain on (`bench/audit_ingest.py`)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- code measured: {_git_state()}",
        f"- command: `{command}` (whole run {elapsed:.0f}s)",
        f"- store: {result['database']}, migrated to head (append-only trigger on)",
        f"- load: {args.processes} processes x {args.threads} producer threads, each writing"
        f" {args.batch}-row batches and waiting for the commit (as a gateway request does);"
        f" one AuditWriter per process (group commit, binary COPY, batch_max_rows"
        f" {args.batch_max_rows}), checkpoint every {args.checkpoint_interval:g}s;"
        f" {args.warmup:g}s warm-up + {args.seconds:g}s measured",
        "- everything (producers, writers, PostgreSQL) shares the machine",
        "",
        "| rows/s | rows in window | commits | rows/commit | worker CPU µs/row "
        "| of which writer thread µs/row | PostgreSQL CPU µs/row |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| **{result['rows_per_s']:,.0f}** | {result['rows']:,} | {result['commits']:,} "
        f"| {result['rows_per_commit']:.0f} | {result['cpu_us']:.1f} "
        f"| {result['writer_cpu_us']:.1f} | {result['postgres_cpu_us']:.1f} |",
        "",
        f"- goal >= 20,000 rows/s: **{goal}** ({result['rows_per_s']:,.0f} rows/s)",
        f"- cores busy during the window: workers {result['worker_cores']:.2f},"
        f" PostgreSQL {result['postgres_cores']:.2f}",
        "- worker CPU = producers building row dicts + the writer thread (chain hash per row,"
        " COPY encoding, commit); PostgreSQL CPU = every postgres process on the machine",
        f"- afterwards: {result['stored']:,} rows stored ({result['total_rows']:,} acknowledged"
        f" to producers, {result['errors']} write errors), {result['checkpoints']} signed"
        f" checkpoints; `verify` recomputed {report.rows:,} rows in {report.chains} chains"
        f" against {report.checkpoints} checkpoints in {result['verify_seconds']:.1f}s:"
        f" {'clean' if report.ok else 'FAILED: ' + str(report.first_problem)}",
        SECTION_END,
    ]
    return "\n".join(lines)


def write_section(text_block: str) -> None:
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if SECTION_START in current and SECTION_END in current:
        before = current.split(SECTION_START, 1)[0]
        after = current.split(SECTION_END, 1)[1]
        RESULTS.write_text(before + text_block + after)
    else:
        RESULTS.write_text(current.rstrip("\n") + "\n\n" + text_block + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=DEFAULT_SERVER, help="PostgreSQL server URL")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16, help="producer threads per process")
    parser.add_argument("--batch", type=int, default=50, help="rows per write (one request)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--checkpoint-interval", type=float, default=10.0)
    parser.add_argument("--batch-max-rows", type=int, default=5000)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args)
    block = section(args, result, time.perf_counter() - started)
    print(block)
    if args.write:
        write_section(block)
    return 0 if result["verify"].ok and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
