"""Archives of the access log (PostgreSQL): `gateway audit archive` verifies old daily
partitions, writes them as signed Parquet to a directory or an S3-compatible bucket (a
local server in its own process), lists them and drops the partitions; every auditor read
then answers exactly as before archiving (exports byte-identical), `gateway audit verify`
follows the chains across the archive boundary and finds an altered or missing archive,
and a read that needs an archive it cannot get fails instead of answering from part of
the log."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from gateway.archive import reader as archives
from gateway.archive.catalogue import entries
from gateway.archive.config import ArchiveConfig
from gateway.archive.store import ArchiveUnavailable
from gateway.audit.export import ExportFilter, export_chunks
from gateway.audit.exposure import exposure_report, manifest_rows, parse_exposure_query
from gateway.audit.partitions import ensure, partitions
from gateway.audit.query import (
    Cursor,
    EventFilter,
    parse_record_query,
    query_events,
    record_provenance,
)
from gateway.audit.verify import verify_log
from gateway.cli import main as cli_main
from gateway.db.migrate import upgrade
from gateway.db.session import make_engine
from tests.conftest import signing_key_file
from tests.test_audit_integrity import CONFIG, access_row
from tests.test_audit_partitions import postgres_url, scalar, writer_for  # noqa: F401

DAYS = 5  # days of rows before today; the archive takes all but the last of them


@dataclass
class Log:
    engine: Engine
    now: datetime
    config_file: Path
    archive_config: ArchiveConfig

    def day(self, back: int) -> datetime:
        start = datetime.combine(self.now.date(), datetime.min.time(), UTC)
        return start - timedelta(days=back)

    def cli(self, *args: str) -> Any:
        result = CliRunner().invoke(cli_main, [*args, "--config", str(self.config_file)])
        return result


def _write_log(engine: Engine, now: datetime) -> None:
    """Two writers (two chains); three vendors; allowed, denied and filtered rows; records
    read again on later days (so that they straddle the archive boundary)."""
    writers = [writer_for(engine), writer_for(engine)]
    start = datetime.combine(now.date(), datetime.min.time(), UTC)
    for back in range(DAYS, -1, -1):
        day = start - timedelta(days=back)
        for hour in (1, 9, 17, 23):
            when = day + timedelta(hours=hour, minutes=back)
            if when > now:
                when = now - timedelta(minutes=5)
            for number, writer in enumerate(writers):
                vendor = ("acme", "globex", "initech")[(hour + number) % 3]
                rows = [
                    access_row(
                        f"req-{back}-{hour}-{number}-{i}",
                        (hour * 7 + i) % 13,
                        time=when + timedelta(seconds=i),
                        vendor=vendor,
                        subject=f"user-{number}-{i % 2}",
                        decision=("allow", "allow", "deny", "filtered")[i % 4],
                        reason=("released", "released", "policy_denied", "locked:3")[i % 4],
                        record_sha256=f"{back:02d}" + "ab" * 31,
                    )
                    for i in range(6)
                ]
                writer.write(rows)
        for writer in writers:  # a signed checkpoint inside each day
            assert writer.seal() is not None
    for writer in writers:
        assert writer.seal() is not None
        writer.close(seal=False)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A local S3-compatible server (moto's), in its own process on a real socket."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the S3-compatible test server did not start") from None
            time.sleep(0.1)
    yield endpoint
    process.terminate()
    process.wait(10)


def _archive_table(kind: str, tmp_path: Path, endpoint: str | None) -> tuple[str, ArchiveConfig]:
    if kind == "directory":
        path = tmp_path / "archives"
        table = f'[audit.archive]\nstore = "directory"\npath = "{path}"\n'
        return table, ArchiveConfig(store="directory", path=str(path))
    import boto3

    bucket = f"audit-{secrets.token_hex(4)}"
    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing-secret"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials).create_bucket(
        Bucket=bucket
    )
    cache = tmp_path / "cache"
    table = (
        f'[audit.archive]\nstore = "s3"\nbucket = "{bucket}"\nendpoint_url = "{endpoint}"\n'
        f'access_key_id = "testing"\nsecret_access_key = "testing-secret"\n'
        f'cache_dir = "{cache}"\n'
    )
    config = ArchiveConfig(
        store="s3",
        bucket=bucket,
        endpoint_url=endpoint,
        access_key_id="testing",
        secret_access_key="testing-secret",
        cache_dir=str(cache),
    )
    return table, config


@pytest.fixture(params=["directory", "s3"])
def log(
    request: pytest.FixtureRequest,
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> Iterator[Log]:
    endpoint = request.getfixturevalue("s3_server") if request.param == "s3" else None
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    now = datetime.now(UTC)
    ensure(engine, days_ahead=DAYS + 1, today=(now - timedelta(days=DAYS)).date())
    _write_log(engine, now)
    table, archive_config = _archive_table(request.param, tmp_path, endpoint)
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        CONFIG.format(url=postgres_url, key_file=signing_key_file(), retention=0) + table
    )
    archives.configure(archive_config)
    yield Log(engine, now, config_file, archive_config)
    archives.configure(ArchiveConfig())
    engine.dispose()


def _every_read(log: Log) -> dict[str, Any]:
    """What the auditors' reads answer, over a window that spans the archive boundary."""
    engine = log.engine
    since, until = log.day(DAYS), log.now + timedelta(hours=1)
    reads: dict[str, Any] = {}
    for fmt in ("csv", "jsonl", "ocsf"):
        reads[f"export.{fmt}"] = b"".join(export_chunks(engine, fmt, ExportFilter(), batch=7))
    window = ExportFilter(vendor="acme", since=log.day(3) + timedelta(hours=5), until=until)
    reads["export.window"] = b"".join(export_chunks(engine, "jsonl", window, batch=5))
    pages, cursor = [], None
    while True:  # a walk with the cursor, pages crossing the boundary
        page = query_events(engine, EventFilter(vendor="globex"), limit=7, cursor=cursor)
        pages.append(page.as_dict())
        if page.next_cursor is None:
            break
        cursor = Cursor.decode(page.next_cursor)
    reads["query.pages"] = pages
    reads["record"] = record_provenance(engine, parse_record_query("rec-4", {"limit": "50"}))
    for vendor in ("acme", "initech"):
        query = parse_exposure_query(
            {"vendor": vendor, "since": since.isoformat(), "until": until.isoformat()}
        )
        report = exposure_report(engine, query)
        report.pop("generated_at")
        reads[f"exposure.{vendor}"] = report
        reads[f"manifest.{vendor}"] = list(manifest_rows(engine, query, batch=3))
    return reads


def test_archive_round_trip_reads_the_same_and_verifies(log: Log) -> None:
    before = _every_read(log)
    verified = verify_log(log.engine)
    assert verified.ok and verified.archives == 0, verified.first_problem
    assert len(before["query.pages"]) > 3 and before["manifest.acme"]
    # A record received on both sides of the boundary, so that combining is exercised.
    assert {event["time"][:10] for event in before["record"]["accesses"]} >= {
        log.day(3).date().isoformat(),
        log.now.date().isoformat(),
    }

    cutoff = log.day(1)
    listed = log.cli("audit", "archive", "--before", cutoff.isoformat(), "--json")
    assert listed.exit_code == 0, listed.output
    planned = json.loads(listed.output)["partitions"]
    assert len(planned) == DAYS - 1 and not entries(log.engine)  # without --confirm: nothing
    done = log.cli("audit", "archive", "--before", cutoff.isoformat(), "--confirm", "--json")
    assert done.exit_code == 0, done.output
    archived = json.loads(done.output)["archived"]
    assert [a["name"] for a in archived] == planned
    remaining = {p.name for p in partitions(log.engine)}
    assert not remaining & set(planned)
    assert scalar(log.engine, "SELECT count(*) FROM access_log WHERE time < :t", t=cutoff) == 0
    catalogue = entries(log.engine)
    assert [e.name for e in catalogue] == planned
    assert sum(e.rows for e in catalogue) == sum(a["rows"] for a in archived) > 0
    # Each archived day's manifest is signed and lists the checkpoints inside it.
    store = archives.store()
    keys = set(store.list_keys())
    for entry in catalogue:
        assert {entry.file_key, entry.manifest_key} <= keys
    assert any(entry.manifest.checkpoints for entry in catalogue)

    after = _every_read(log)
    for name, value in before.items():
        assert after[name] == value, name  # exports compare as bytes
    report = verify_log(log.engine)
    assert report.ok, report.first_problem
    assert report.rows == verified.rows and report.archives == DAYS - 1
    assert report.archived_rows == sum(e.rows for e in catalogue)
    # The auditor's command says so too, and lists the archives.
    checked = log.cli("audit", "verify", "--json")
    assert checked.exit_code == 0, checked.output
    shown = log.cli("audit", "archives", "--json")
    assert [a["name"] for a in json.loads(shown.output)] == planned


def _tamper_with_archive(log: Log, path: Path) -> None:
    """Rewrite one row of an archived file (a reason edited), keeping it valid Parquet."""
    table = pq.read_table(path)
    reasons = table.column("reason").to_pylist()
    reasons[0] = "edited"
    import pyarrow as pa

    table = table.set_column(
        table.schema.get_field_index("reason"), table.schema.field("reason"), pa.array(reasons)
    )
    pq.write_table(table, path, compression="zstd")


def test_verify_finds_an_altered_or_missing_archive(log: Log) -> None:
    done = log.cli("audit", "archive", "--before", log.day(1).isoformat(), "--confirm")
    assert done.exit_code == 0, done.output
    catalogue = entries(log.engine)
    victim = next(entry for entry in catalogue if entry.rows)
    store = archives.store()
    altered = Path(store.local_file(victim.file_key, victim.file_sha256))
    if log.archive_config.store == "directory":
        _tamper_with_archive(log, altered)
    else:  # the bucket's object is replaced by an altered copy
        copy = altered.with_name("altered.parquet")
        copy.write_bytes(altered.read_bytes())
        _tamper_with_archive(log, copy)
        store.put_file(victim.file_key, copy)
        altered.unlink()  # the reader's cache: fetched again, and found altered
    report = verify_log(log.engine)
    assert not report.ok
    kinds = {(problem.kind, problem.chain_id) for problem in report.problems}
    assert ("archive", victim.name) in kinds, report.problems
    assert any(problem.kind == "deleted" for problem in report.problems), report.problems
    # The command exits 1 and names the archive.
    checked = log.cli("audit", "verify")
    assert checked.exit_code == 1 and victim.name in checked.output

    # A read that needs it fails closed rather than answering from part of the log.
    with pytest.raises(ArchiveUnavailable):
        list(export_chunks(log.engine, "jsonl", ExportFilter()))
    # A window after the archives does not need them.
    recent = ExportFilter(since=log.day(1))
    assert b"".join(export_chunks(log.engine, "jsonl", recent))

    store.delete(victim.file_key)
    report = verify_log(log.engine)
    assert not report.ok and ("archive", victim.name) in {
        (problem.kind, problem.chain_id) for problem in report.problems
    }


# Refusing happens before the store is touched: the directory store is enough.
@pytest.mark.parametrize("log", ["directory"], indirect=True)
def test_a_partition_that_does_not_verify_is_not_archived(log: Log) -> None:
    day = log.day(3)
    victim = f"access_log_p{day:%Y%m%d}"
    with log.engine.begin() as connection:
        connection.execute(text("SET LOCAL session_replication_role = replica"))  # no trigger
        connection.execute(
            text(f"UPDATE {victim} SET bytes = bytes + 1 WHERE id = (SELECT min(id) FROM {victim})")  # noqa: S608
        )
    done = log.cli("audit", "archive", "--before", log.day(1).isoformat(), "--confirm")
    assert done.exit_code == 1
    assert "does not verify" in done.output and "modified" in done.output
    names = {p.name for p in partitions(log.engine)}
    assert victim in names  # still there, with the older day archived before it
    assert [e.name for e in entries(log.engine)] == [
        f"access_log_p{log.day(back):%Y%m%d}" for back in range(DAYS, 3, -1)
    ]


def test_two_runs_at_once_archive_each_partition_once(log: Log) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gateway.archive.make import archivable, archive_partition
    from gateway.keys import GatewayKeys
    from gateway.keys.registry import registered_keys
    from gateway.keys.ring import KeyRing
    from gateway.keys.signer import Ed25519FileSigner

    signer = Ed25519FileSigner(signing_key_file())
    keys = GatewayKeys(log.engine, signer, audience="test")
    ring = KeyRing.from_registered(registered_keys(log.engine))
    parts = archivable(log.engine, log.day(1))

    def run() -> list[str]:
        outcomes = []
        for part in parts:
            try:
                result = archive_partition(
                    log.engine,
                    part,
                    store=archives.store(),
                    config=log.archive_config,
                    sign=keys.sign_detached,
                    keys=ring,
                )
                outcomes.append(f"archived {result.name}")
            except Exception as error:  # the other run got there first
                outcomes.append(f"refused {part.name}: {type(error).__name__}")
        return outcomes

    with ThreadPoolExecutor(2) as pool:
        results = [future.result() for future in [pool.submit(run), pool.submit(run)]]
    archived = [line for outcomes in results for line in outcomes if line.startswith("archived")]
    assert sorted(archived) == sorted(f"archived {part.name}" for part in parts), results
    catalogue = entries(log.engine)
    assert [entry.name for entry in catalogue] == [part.name for part in parts]
    store_keys = set(archives.store().list_keys())
    for entry in catalogue:
        assert {entry.file_key, entry.manifest_key} <= store_keys
    report = verify_log(log.engine)
    assert report.ok and report.archives == len(parts), report.first_problem
