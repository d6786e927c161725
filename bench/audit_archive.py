"""Archives at scale: throughput and size of `gateway audit archive`, and auditor reads
that span archives and the table, against the same reads with every row in PostgreSQL.

Creates a fresh database on postgresql+psycopg://postgres@127.0.0.1:5432/test (dropped at
the end unless --keep), brings it to the newest schema, makes the daily partitions of the
whole history and COPYs synthetic rows into them: the world and request mix of
`bench/audit_scale.py` (100 vendors, Zipf-skewed, ~10,000 contractors), but with real
chains (every row_hash the SHA-256 of its content, linked), so that the archive's
verification passes as it would on a real log. Then, in one run:

1. baseline with every row in the table: the exposure report of the largest vendor over
   the whole window, the same over the last `--live-days` days, a full `audit verify`;
   the raw read of one partition (`COPY (SELECT ...) TO STDOUT`, the floor of any
   archiving);
2. `archive_partition` for every day but the last `--live-days` (directory store): rows/s
   per partition (verification, Parquet, re-read and re-hash, store, drop), Parquet bytes
   per million rows against the partition's heap + index size, CPU of this process;
3. the same reads with most days archived.

    .venv/bin/python bench/audit_archive.py                  # 3,000,000 rows over 30 days
    .venv/bin/python bench/audit_archive.py --rows 500000    # a quick run
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import audit_scale  # noqa: E402
from bench.report import command_line, git_state, machine, write_section  # noqa: E402
from gateway.archive import reader as archives  # noqa: E402
from gateway.archive.config import ArchiveConfig  # noqa: E402
from gateway.archive.make import archivable, archive_partition  # noqa: E402
from gateway.archive.store import DirectoryStore  # noqa: E402
from gateway.audit import exposure  # noqa: E402
from gateway.audit.partitions import ensure  # noqa: E402
from gateway.audit.verify import verify_log  # noqa: E402
from gateway.db.migrate import upgrade  # noqa: E402
from gateway.db.session import make_engine  # noqa: E402
from gateway.keys import GatewayKeys  # noqa: E402
from gateway.keys.registry import register_key, registered_keys  # noqa: E402
from gateway.keys.ring import KeyRing  # noqa: E402
from gateway.keys.signer import Ed25519FileSigner, generate_key_file  # noqa: E402

_INTS = {16, 17, 18, 20}  # policy_version, upstream_status, bytes, seq (of the copy line)


def hashed(lines: Iterator[str]) -> Iterator[str]:
    """audit_scale's COPY lines with real row hashes and links (per chain)."""
    heads: dict[str, str] = {}
    for line in lines:
        fields = line.rstrip("\n").split("\t")
        chain_id = fields[19]
        prev = heads.get(chain_id, "0" * 64)
        values: list[Any] = [None if f == "\\N" else f for f in fields[:21]] + [prev]
        for index in _INTS:
            if values[index] is not None:
                values[index] = int(values[index])
        stamp = fields[0]  # "YYYY-mm-dd HH:MM:SS.ffffff+00"
        values[0] = f"{stamp[:10]}T{stamp[11:26]}Z"
        row_hash = hashlib.sha256(orjson.dumps(values)).hexdigest()
        heads[chain_id] = row_hash
        fields[21], fields[22] = prev, row_hash
        yield "\t".join(fields) + "\n"


def timed(function: Callable[[], Any], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cpu() -> float:
    return time.process_time()


def partition_bytes(engine: Any, name: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(text("SELECT pg_total_relation_size(:n)"), {"n": name}).scalar()
        )


def raw_read_seconds(engine: Any, name: str) -> float:
    """COPY (SELECT every column ORDER BY time, id) TO STDOUT: reading the rows, no more."""
    raw = engine.raw_connection()
    try:
        started = time.perf_counter()
        with raw.driver_connection.cursor() as cursor:
            sql = f'COPY (SELECT * FROM "{name}" ORDER BY time, id) TO STDOUT'  # noqa: S608
            with cursor.copy(sql) as copy:
                for _chunk in copy:
                    pass
        return time.perf_counter() - started
    finally:
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--live-days", type=int, default=4)
    parser.add_argument("--server", default=audit_scale.DEFAULT_SERVER)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    rng = random.Random(20261204)
    name = f"gw_archive_bench_{secrets.token_hex(3)}"
    url = audit_scale.create_database(args.server, name)
    scratch = Path(tempfile.mkdtemp(prefix="gateway-archive-bench-"))
    try:
        upgrade(url)
        engine = make_engine(url, pool_size=4)
        end = time.time()
        end_day = dt.datetime.fromtimestamp(end, dt.UTC).date()
        ensure(engine, days_ahead=args.days + 1, today=end_day - dt.timedelta(days=args.days))
        world = audit_scale.build_world(rng)
        requests = audit_scale.plan_requests(rng, world, args.rows)
        times = audit_scale.request_times(rng, len(requests), end, days=args.days)
        print(f"loading {args.rows} rows ...", flush=True)
        started = time.perf_counter()
        lines = hashed(audit_scale.copy_lines(world, requests, times, args.rows))
        loaded = audit_scale.copy_rows(
            engine, lines, batch_rows=500_000, report=lambda n: print(f"  {n}", flush=True)
        )
        load_seconds = time.perf_counter() - started
        with engine.begin() as connection:
            connection.execute(text("ANALYZE access_log"))

        key_file = scratch / "signing.pem"
        generate_key_file(key_file)
        signer = Ed25519FileSigner(key_file)
        register_key(engine, signer)
        keys = GatewayKeys(engine, signer, audience="bench")
        ring = KeyRing.from_registered(registered_keys(engine))
        config = ArchiveConfig(
            store="directory", path=str(scratch / "archives"), cache_dir=str(scratch / "cache")
        )
        archives.configure(config)

        with engine.connect() as connection:
            largest = connection.execute(
                text("SELECT vendor FROM access_log GROUP BY vendor ORDER BY count(*) DESC LIMIT 1")
            ).scalar()
        window_start = dt.datetime.fromtimestamp(end, dt.UTC) - dt.timedelta(days=args.days + 1)
        live_start = dt.datetime.combine(
            end_day - dt.timedelta(days=args.live_days - 1), dt.time(), dt.UTC
        )
        until = dt.datetime.fromtimestamp(end + 60, dt.UTC)

        def report(since: dt.datetime) -> Callable[[], Any]:
            query = exposure.parse_exposure_query(
                {"vendor": largest, "since": since.isoformat(), "until": until.isoformat()}
            )
            return lambda: exposure.exposure_report(engine, query)

        whole = report(window_start)
        recent = report(live_start)
        first = whole()
        before = {
            "whole": timed(whole),
            "recent": timed(recent),
            "verify": timed(lambda: verify_log(engine), repeat=1),
        }
        parts = archivable(engine, live_start)
        sample = max(parts, key=lambda part: part.rows_estimate)
        raw_seconds = raw_read_seconds(engine, sample.name)
        sample_bytes = partition_bytes(engine, sample.name)

        print(f"archiving {len(parts)} partitions ...", flush=True)
        results = []
        cpu_before, wall_before = cpu(), time.perf_counter()
        for part in parts:
            results.append(
                archive_partition(
                    engine,
                    part,
                    store=DirectoryStore(config.path or ""),
                    config=config,
                    sign=keys.sign_detached,
                    keys=ring,
                )
            )
            print(f"  {results[-1].name}: {results[-1].rows} rows", flush=True)
        archive_wall, archive_cpu = time.perf_counter() - wall_before, cpu() - cpu_before
        archived_rows = sum(r.rows for r in results)
        archived_bytes = sum(r.file_bytes for r in results)
        sample_result = next(r for r in results if r.name == sample.name)

        after_first = whole()
        assert orjson.dumps({**after_first, "generated_at": 0}) == orjson.dumps(
            {**first, "generated_at": 0}
        ), "the report changed after archiving"
        after = {
            "whole": timed(whole),
            "recent": timed(recent),
            "verify": timed(lambda: verify_log(engine), repeat=1),
        }
        verified = verify_log(engine)
        assert verified.ok, verified.first_problem
    finally:
        archives.configure(ArchiveConfig())
        if not args.keep:
            audit_scale.drop_database(args.server, name)

    per_million = archived_bytes / archived_rows * 1_000_000
    table_per_million = sample_bytes / sample_result.rows * 1_000_000
    lines_out = [
        "## Access-log archives (`bench/audit_archive.py`)",
        "",
        f"Command: `{command_line('audit_archive.py')}`  ",
        f"Code: {git_state()}  ",
        f"Machine: {machine()}; PostgreSQL on the same machine; directory store on local disk",
        "",
        f"{loaded:,} rows over {args.days} days (loaded in {load_seconds:.0f} s with real row"
        f" hashes), {len(world.contractors):,} contractors; {len(results)} daily partitions"
        f" archived ({archived_rows:,} rows), the last {args.live_days} days left in the table."
        f" Largest vendor: {largest} ({first['totals']['times_received']:,} receipts,"
        f" {first['totals']['distinct_records']:,} distinct records in the window).",
        "",
        "| | all rows in PostgreSQL | days archived | ratio |",
        "|---|---:|---:|---:|",
        f"| exposure, largest vendor, whole window | {before['whole'] * 1000:,.0f} ms"
        f" | {after['whole'] * 1000:,.0f} ms | {after['whole'] / before['whole']:.2f} |",
        f"| exposure, largest vendor, last {args.live_days} days (no archive read) |"
        f" {before['recent'] * 1000:,.0f} ms | {after['recent'] * 1000:,.0f} ms |"
        f" {after['recent'] / before['recent']:.2f} |",
        f"| `audit verify`, every chain | {before['verify']:.1f} s | {after['verify']:.1f} s"
        f" | {after['verify'] / before['verify']:.2f} |",
        "",
        f"Archiving: {archived_rows / archive_wall:,.0f} rows/s over all partitions"
        f" ({archive_wall:.1f} s wall, {archive_cpu:.1f} s CPU of this process:"
        f" {archive_cpu / archived_rows * 1e6:.1f} µs per row; PostgreSQL's own CPU not"
        " included). Largest partition"
        f" ({sample_result.rows:,} rows): {sample_result.seconds:.1f} s, of which"
        f" verification {sample_result.verify_seconds:.1f} s; the raw read of the same"
        f" partition (`COPY (SELECT ... ORDER BY time, id) TO STDOUT`) takes"
        f" {raw_seconds:.1f} s, so archiving costs {sample_result.seconds / raw_seconds:.1f}"
        " times reading the rows.",
        "",
        f"Size: {per_million / 1e6:.1f} MB of Parquet per million rows (zstd), against"
        f" {table_per_million / 1e6:.0f} MB of table and indexes per million rows in"
        f" PostgreSQL ({table_per_million / per_million:.1f} times). The report was identical"
        " before and after archiving (checked by the run), and `audit verify` passed.",
    ]
    block = "\n".join(lines_out)
    print(block)
    if not args.no_write:
        write_section("audit_archive", block)


if __name__ == "__main__":
    main()
