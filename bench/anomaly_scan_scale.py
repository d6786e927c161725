"""How long an anomaly scan takes over a large access log (PostgreSQL).

Builds a fresh database with `--contractors` simulated contractors over `--days` days
(in chunks of 200 contractors, each chunk a simulation of its own with vendors renamed
per chunk, so peer groups stay ~40 contractors), then times:

1. the first scan over the whole period (the hourly rollup is built from the raw log:
   one GROUP BY over every row, then the detectors over the rollup);
2. a `watch` round right after (scan window 48 h: the rollup re-aggregates only the last
   `rollup_late_hours`, the detectors read the rollup).

    .venv/bin/python bench/anomaly_scan_scale.py --contractors 2000 --days 30 \\
        --server postgresql+psycopg://postgres@127.0.0.1:5432/postgres

The database is dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import resource
import secrets
import time
from datetime import UTC, datetime

from sqlalchemy import create_engine, text

from gateway.anomaly.config import AnomalyConfig
from gateway.anomaly.detectors import detect, lookback_days
from gateway.anomaly.rollup import SqlSource, refresh_rollup
from gateway.anomaly.simulate import Simulator, write_requests
from gateway.anomaly.store import upsert_findings
from gateway.db.migrate import upgrade
from gateway.db.session import make_engine

CHUNK = 200


def build(url: str, contractors: int, days: int, seed: int) -> tuple[int, float, float, float]:
    engine = make_engine(url)
    rows = 0
    started = time.monotonic()
    first = last = None
    for chunk in range(contractors // CHUNK):
        simulation = Simulator(seed + chunk, contractors=CHUNK, vendors=5, days=days).run()
        renamed = []
        for request in simulation.requests:
            if request.vendor is not None:
                vendor = f"{request.vendor}-{chunk:03d}"
                request = request._replace(vendor=vendor, issuer=f"{vendor}-idp")
            renamed.append(request)
        rows += write_requests(
            engine,
            renamed,
            canaries=simulation.canaries,
            chain=f"scale-{chunk}",
            canaries_since=datetime.fromtimestamp(simulation.start, UTC),
        )
        first, last = simulation.start, simulation.end
        print(f"  chunk {chunk + 1}: {rows:,} rows, {time.monotonic() - started:.0f}s", flush=True)
    with engine.connect() as connection:
        connection.execute(text("ANALYZE access_log"))
    engine.dispose()
    assert first is not None and last is not None
    return rows, time.monotonic() - started, first, last


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--contractors", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()
    name = f"anomaly_scale_{secrets.token_hex(3)}"
    admin = create_engine(args.server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.server.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        print(f"building {args.contractors:,} contractors x {args.days} days in {name}")
        rows, build_seconds, start, end = build(url, args.contractors, args.days, args.seed)
        engine = make_engine(url)
        config = AnomalyConfig()
        since_hour = int(start // 3600) + 24 * 10
        end_hour = int(end // 3600)

        t0 = time.monotonic()
        rollup = refresh_rollup(
            engine, since_hour - 24 * lookback_days(config), end_hour, rebuild=True
        )
        t1 = time.monotonic()
        counted: list[int] = []
        findings = detect(
            SqlSource(engine),
            config,
            since_hour * 3600,
            end_hour * 3600,
            on_start=counted.append,
        )
        t2 = time.monotonic()
        stored = upsert_findings(engine, findings)
        t3 = time.monotonic()

        # A watch round: the last 48 h, the rollup refreshed for the late hours only.
        w0 = time.monotonic()
        watch_rollup = refresh_rollup(engine, end_hour - 48 - 24 * lookback_days(config), end_hour)
        w1 = time.monotonic()
        watch = detect(SqlSource(engine), config, (end_hour - 48) * 3600, end_hour * 3600)
        w2 = time.monotonic()
        upsert_findings(engine, watch)
        w3 = time.monotonic()
        with engine.connect() as connection:
            size = connection.execute(
                text("SELECT pg_size_pretty(pg_total_relation_size('access_log'))")
            ).scalar_one()
        engine.dispose()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print()
        print(
            f"- rows: {rows:,} access_log rows ({size} with indexes), built in {build_seconds:.0f}s"
        )
        print(
            f"- first scan ({(end_hour - since_hour) // 24} days scored, "
            f"{lookback_days(config)} days of history): rollup {t1 - t0:.1f}s "
            f"({rollup['rollup_rows']:,} rollup rows), detectors {t2 - t1:.1f}s over "
            f"{counted[0]:,} contractors, storing {len(stored.new)} alerts {t3 - t2:.1f}s; "
            f"total {t3 - t0:.1f}s"
        )
        print(
            f"- watch round (48 h): rollup {w1 - w0:.1f}s ({watch_rollup['aggregated_hours']} "
            f"hours re-aggregated), detectors {w2 - w1:.1f}s, storing {w3 - w2:.1f}s; "
            f"total {w3 - w0:.1f}s"
        )
        print(f"- peak RSS of this process: {peak:,.0f} MiB")
    finally:
        if not args.keep:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
