"""What does PostgreSQL spend per access row, and on what?

The gateway writes one access row per released record (50 for a task page). This measures
the PostgreSQL side of one such row: the backend's CPU (from /proc) and the WAL it writes,
for COPY batches shaped like the audit writer's (binary COPY of 50-row requests, ~8
requests per commit), into

  1. the access log as migrated (`gateway db upgrade`: every index and the guard trigger);
  2. the same table with each secondary index dropped in turn: what that index costs;
  3. a narrow per-record table (a request reference, the record's own fields, its chain
     position) with only the record-id and request indexes: the candidate design of one
     request-level row plus narrow record rows (issue 16), for the rows it would carry.

    .venv/bin/python bench/audit_row_cost.py               # writes its section of RESULTS.md
    .venv/bin/python bench/audit_row_cost.py --rows 200000 --no-results
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from bench.report import command_line, git_state, machine, write_section  # noqa: E402
from gateway.audit.writer import insert_rows  # noqa: E402
from gateway.db.migrate import upgrade  # noqa: E402

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PER_REQUEST = 50
REQUESTS_PER_COMMIT = 8
SECONDARY_INDEXES = (
    "ix_access_log_time",
    "ix_access_log_vendor_time",
    "ix_access_log_project_time",
    "ix_access_log_subject_time",
    "ix_access_log_record",
    "ix_access_log_request",
)
NARROW_DDL = (
    "CREATE TABLE access_record_rows (id bigserial PRIMARY KEY, request bigint NOT NULL,"
    " project varchar(255), task varchar(255), record_id varchar(255),"
    " record_sha256 varchar(64), decision varchar(16), reason varchar(255), bytes bigint,"
    " chain_id varchar(64), seq bigint, row_hash varchar(64))",
    "CREATE UNIQUE INDEX ux_record_rows_chain_seq ON access_record_rows (chain_id, seq)",
    "CREATE INDEX ix_record_rows_record ON access_record_rows (record_id)",
    "CREATE INDEX ix_record_rows_request ON access_record_rows (request)",
)
NARROW_COPY = (
    "COPY access_record_rows (request, project, task, record_id, record_sha256, decision,"
    " reason, bytes, chain_id, seq, row_hash) FROM STDIN (FORMAT BINARY)"
)
NARROW_TYPES = ["int8", *["text"] * 6, "int8", "text", "int8", "text"]


def wide_rows(requests: int, start: int, chain: str) -> list[tuple[Any, ...]]:
    """Rows as the audit writer stores them (the COLUMNS of gateway/audit/writer.py)."""
    rows = []
    now = dt.datetime.now(dt.UTC)
    seq = start * PER_REQUEST
    prev = "0" * 64
    for request in range(start, start + requests):
        request_id = f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"
        contractor = f"acme-idp:c{request % 500:04d}"
        project = f"proj-{request % 200}"
        for record in range(PER_REQUEST):
            seq += 1
            head = hashlib.sha256(f"{chain}{seq}".encode()).hexdigest()
            rows.append(
                (
                    now,
                    request_id,
                    "acme-idp",
                    contractor,
                    "acme",
                    "10.0.0.7",
                    "annotation-client/1.0",
                    "GET",
                    f"/api/projects/{project}/tasks/task-1/records",
                    project,
                    "task-1",
                    f"rec-{request % 200}-{(request * PER_REQUEST + record) % 10_000}",
                    hashlib.sha256(f"{request}/{record}".encode()).hexdigest(),
                    "read",
                    "allow",
                    "released",
                    7,
                    200,
                    260 + record,
                    chain,
                    seq,
                    prev,
                    head,
                )
            )
            prev = head
    return rows


def narrow_rows(wide: list[tuple[Any, ...]], request_key: int) -> list[tuple[Any, ...]]:
    out = []
    for index, row in enumerate(wide):
        out.append(
            (
                request_key + index // PER_REQUEST,
                row[9],
                row[10],
                row[11],
                row[12],
                row[14],
                row[15],
                row[18],
                row[19],
                row[20],
                row[22],
            )
        )
    return out


class Backend:
    """One connection whose server process's CPU and WAL are read around each load."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, pool_size=1, max_overflow=0)
        self.connection = self.engine.connect()
        self.pid = self.connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        self.connection.commit()

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wal(self) -> int:
        value = self.connection.exec_driver_sql(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
        ).scalar()
        self.connection.commit()
        return int(value)

    def load(self, batches: list[list[tuple[Any, ...]]], narrow: bool) -> tuple[float, float]:
        """(backend CPU µs per row, WAL bytes per row) for COPYing these batches."""
        rows = sum(len(batch) for batch in batches)
        cpu0, wal0 = self.cpu(), self.wal()
        for batch in batches:
            if narrow:
                driver = self.connection.connection.driver_connection
                with driver.cursor() as cursor, cursor.copy(NARROW_COPY) as copy:
                    copy.set_types(NARROW_TYPES)
                    for row in batch:
                        copy.write_row(row)
            else:
                insert_rows(self.connection, batch)
            self.connection.commit()
        cpu1, wal1 = self.cpu(), self.wal()
        return 1e6 * (cpu1 - cpu0) / rows, (wal1 - wal0) / rows

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()


def batches_of(rows: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    size = PER_REQUEST * REQUESTS_PER_COMMIT
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=DEFAULT_SERVER, help="PostgreSQL server URL")
    parser.add_argument("--rows", type=int, default=300_000, help="rows per measurement")
    parser.add_argument("--base-rows", type=int, default=1_000_000, help="rows loaded first")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    name = f"bench_rowcost_{secrets.token_hex(4)}"
    admin = create_engine(args.server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{args.server.rpartition('/')[0]}/{name}"
    try:
        upgrade(url)
        backend = Backend(url)
        version = backend.connection.exec_driver_sql("SHOW server_version").scalar()
        backend.connection.commit()
        requests = args.rows // PER_REQUEST
        chain = secrets.token_hex(16)
        position = 0

        def next_rows(count: int) -> list[tuple[Any, ...]]:
            nonlocal position
            rows = wide_rows(count, position, chain)
            position += count
            return rows

        # A table that already holds rows: index pages beyond the first few are realistic.
        backend.load(batches_of(next_rows(args.base_rows // PER_REQUEST)), narrow=False)
        results: list[tuple[str, float, float]] = []
        cpu, wal = backend.load(batches_of(next_rows(requests)), narrow=False)
        results.append(("access_log as migrated (7 indexes + primary key)", cpu, wal))
        full_cpu, full_wal = cpu, wal
        for index in SECONDARY_INDEXES:
            backend.connection.exec_driver_sql(f"DROP INDEX {index}")
            backend.connection.commit()
            cpu, wal = backend.load(batches_of(next_rows(requests)), narrow=False)
            results.append((f"... and without {index}", cpu, wal))
        for statement in NARROW_DDL:
            backend.connection.exec_driver_sql(statement)
        backend.connection.commit()
        wide = next_rows(args.base_rows // PER_REQUEST)
        backend.load(batches_of(narrow_rows(wide, 0)), narrow=True)
        wide = next_rows(requests)
        cpu, wal = backend.load(batches_of(narrow_rows(wide, 10**9)), narrow=True)
        results.append(("narrow record rows (record_id, request, chain indexes)", cpu, wal))
        backend.close()
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    lines = [
        "| table | backend CPU µs/row | WAL bytes/row | CPU vs as migrated |",
        "|---|---:|---:|---:|",
    ]
    for label, cpu, wal in results:
        lines.append(f"| {label} | {cpu:.1f} | {wal:,.0f} | {cpu / full_cpu:.2f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_results:
        write_section(
            "audit_row_cost",
            "\n".join(
                [
                    "## PostgreSQL's cost per access row (`bench/audit_row_cost.py`)",
                    "",
                    f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
                    f"- machine: {machine()}; PostgreSQL {version}",
                    f"- code measured: {git_state()}",
                    f"- command: `{command_line('audit_row_cost.py')}`"
                    f" (whole run {time.monotonic() - started:.0f}s)",
                    f"- load: binary COPY of {PER_REQUEST}-row requests,"
                    f" {REQUESTS_PER_COMMIT} requests per commit (the audit writer's shape);"
                    f" {args.base_rows:,} rows loaded first, then {args.rows:,} rows per"
                    " measurement; CPU of the one backend from /proc, WAL from"
                    " pg_current_wal_lsn. Each 'without' row drops one more index (so the"
                    " differences between consecutive rows are each index's cost).",
                    "",
                    table,
                    "",
                    f"As migrated, a 50-record page costs PostgreSQL ~{full_cpu * 50 / 1000:.2f}"
                    f" ms of backend CPU and ~{full_wal * 50 / 1024:.0f} KiB of WAL.",
                ]
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
