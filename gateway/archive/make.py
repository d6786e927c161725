"""`gateway audit archive --before DATE`: old partitions of the access log → signed Parquet.

For each partition wholly before the date, oldest first (PostgreSQL, as the table's owner):

1. verify its rows' chains (`gateway.audit.verify`, bounded to the partition, linked to the
   rows before it in the table or the previous archive); a chain that does not verify
   stops the run before anything is written;
2. write its rows as Parquet (`gateway.archive.parquet`), noting each chain's span;
3. read the file back and check every row against its own row_hash, and the sequence of
   row hashes against the one read from the database;
4. sign the manifest (`gateway.archive.manifest`), put file and manifest in the store and
   check their sizes there;
5. in one transaction: check the partition still holds exactly the rows archived, list
   the archive in `audit_archives`, detach the partition and drop it.

A failure before step 5 leaves the partition in place (and removes what it uploaded).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine, select, text

from gateway.archive.catalogue import add_entry, entries
from gateway.archive.config import ArchiveConfig
from gateway.archive.manifest import ArchiveManifest, ChainSpan, sign_manifest
from gateway.archive.parquet import COLUMNS, ArchiveFileWriter
from gateway.archive.store import ArchiveStore, file_sha256
from gateway.audit.chain import canonical_time
from gateway.audit.partitions import is_partitioned, partitions
from gateway.audit.seal import CHECKPOINT_COLUMNS, Checkpoint, Signer
from gateway.audit.verify import ContentHash, VerifyReport, verify_log
from gateway.db.models import AuditCheckpoint
from gateway.keys.ring import KeyRing

_NAME = re.compile(r"^access_log_(p[0-9]{8}|legacy)$")
_BOUND = re.compile(r"FROM \((MINVALUE|'([^']+)')\) TO \('([^']+)'\)")
# Rows committed after the day they are stamped with: a request's commit waits at most
# the audit commit timeout, so a chain's rows of one day lie within this of it.
CHAIN_SLACK = timedelta(hours=1)
_READ_BATCH = 20_000


class ArchiveError(RuntimeError):
    pass


class ArchiveRefused(ArchiveError):
    def __init__(self, message: str, report: VerifyReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class PartitionRange:
    name: str
    time_from: datetime
    time_to: datetime
    rows_estimate: int


@dataclass(frozen=True)
class ArchiveResult:
    name: str
    rows: int
    file_key: str
    file_bytes: int
    file_sha256: str
    seconds: float
    verify_seconds: float


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def archivable(engine: Engine, before: datetime) -> list[PartitionRange]:
    """The partitions wholly before `before`, oldest first (never the default one)."""
    if not is_partitioned(engine):
        raise ArchiveError(
            "archives take partitions of the PostgreSQL access log (run `gateway db upgrade`;"
            " SQLite keeps one table)"
        )
    found = []
    for partition in partitions(engine):
        match = _BOUND.search(partition.bounds)
        if not _NAME.match(partition.name) or match is None:
            continue
        upper = _parse_time(match.group(3))
        if upper > before:
            continue
        if match.group(1) == "MINVALUE":
            with engine.connect() as connection:
                oldest = connection.execute(
                    text(f'SELECT min(time) FROM "{partition.name}"')  # noqa: S608 (checked name)
                ).scalar()
            lower = oldest.astimezone(UTC) if oldest is not None else upper
        else:
            lower = _parse_time(match.group(2))
        found.append(PartitionRange(partition.name, lower, upper, partition.rows))
    return sorted(found, key=lambda part: part.time_to)


def archive_partition(
    engine: Engine,
    part: PartitionRange,
    *,
    store: ArchiveStore,
    config: ArchiveConfig,
    sign: Signer,
    keys: KeyRing,
    progress: Callable[[str], None] | None = None,
) -> ArchiveResult:
    say = progress or (lambda _text: None)
    # One run at a time, partition by partition: a second run waits here, then finds the
    # partition gone (archived by the first).
    with engine.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(hashtext('gateway_audit_archive'))"))
        try:
            found = lock.execute(text("SELECT to_regclass(:n)"), {"n": part.name}).scalar()
            lock.commit()
            if found is None:
                raise ArchiveError(f"{part.name} is gone: another run archived it")
            return _archive(engine, part, store, config, sign, keys, say)
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(hashtext('gateway_audit_archive'))"))
            lock.commit()


def _archive(
    engine: Engine,
    part: PartitionRange,
    store: ArchiveStore,
    config: ArchiveConfig,
    sign: Signer,
    keys: KeyRing,
    say: Callable[[str], None],
) -> ArchiveResult:
    started = time.monotonic()
    say(f"{part.name}: verifying")
    report = _verify(engine, part, keys)
    verified = time.monotonic() - started
    if not report.ok:
        raise ArchiveRefused(f"{part.name} does not verify; nothing archived", report)
    cache = Path(config.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="archiving-") as scratch:
        path = Path(scratch) / f"{part.name}.parquet"
        say(f"{part.name}: writing Parquet")
        written = _write(engine, part, path, config.row_group_rows)
        say(f"{part.name}: checking the file")
        _check_file(path, written)
        sha256 = file_sha256(path)
        size = path.stat().st_size
        key = f"{part.name}-{sha256[:12]}.parquet"
        manifest = ArchiveManifest(
            name=part.name,
            time_from=canonical_time(part.time_from),
            time_to=canonical_time(part.time_to),
            rows=written.rows,
            file_key=key,
            file_sha256=sha256,
            file_bytes=size,
            row_hashes_sha256=written.row_hashes,
            created_at=canonical_time(datetime.now(UTC)),
            chains=tuple(written.spans()),
            checkpoints=tuple(c.as_json() for c in _checkpoints(engine, written.spans())),
        )
        signed = sign_manifest(sign, manifest)
        manifest_key = f"{part.name}-{sha256[:12]}.manifest.json"
        say(f"{part.name}: storing in {store.description}")
        store.put_file(key, path)
        document = signed.document()
        store.put_bytes(manifest_key, document)
        if store.size(key) != size or store.size(manifest_key) != len(document):
            raise ArchiveError(f"{part.name}: the store does not hold what was put there")
        say(f"{part.name}: dropping the partition")
        try:
            with engine.begin() as connection:
                _detach(connection, part, written.rows)
                add_entry(connection, signed, manifest_key)
        except Exception:
            # Another run may have archived the same rows under the same keys meanwhile:
            # what the catalogue lists stays.
            if not any(entry.file_key == key for entry in entries(engine)):
                for stored in (key, manifest_key):
                    store.delete(stored)
            raise
    return ArchiveResult(
        part.name, written.rows, key, size, sha256, time.monotonic() - started, verified
    )


def _verify(engine: Engine, part: PartitionRange, keys: KeyRing) -> VerifyReport:
    with engine.connect() as connection:
        chains = list(
            connection.execute(text(f'SELECT DISTINCT chain_id FROM "{part.name}"')).scalars()  # noqa: S608
        )
    if not chains:
        return VerifyReport()
    # The rows before the partition may be archived already: the previous day's archive
    # joins the walk so that the first rows link to their predecessors.
    previous = entries(engine, part.time_from - timedelta(days=1), part.time_from)
    return verify_log(
        engine,
        since=part.time_from,
        until=part.time_to + CHAIN_SLACK,
        chains=chains,
        keys=keys,
        archives=previous,
    )


@dataclass
class _Written:
    rows: int
    row_hashes: str
    chains: dict[str, list[Any]]  # chain -> [rows, first seq, its prev, last seq, its hash]

    def spans(self) -> list[ChainSpan]:
        return [
            ChainSpan(chain_id, rows, first, last, first_prev, last_hash)
            for chain_id, (rows, first, first_prev, last, last_hash) in sorted(self.chains.items())
        ]


_CHAIN, _SEQ, _PREV, _HASH = (
    COLUMNS.index(n) for n in ("chain_id", "seq", "prev_hash", "row_hash")
)


def _write(engine: Engine, part: PartitionRange, path: Path, row_group_rows: int) -> _Written:
    writer = ArchiveFileWriter(path, row_group_rows)
    digest = hashlib.sha256()
    chains: dict[str, list[Any]] = {}
    columns = ", ".join(f'"{name}"' for name in COLUMNS)
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        with raw.cursor(name=f"archive_{part.name}") as cursor:  # server-side
            cursor.execute(f'SELECT {columns} FROM "{part.name}" ORDER BY time, id')  # noqa: S608
            while rows := cursor.fetchmany(_READ_BATCH):
                for row in rows:
                    digest.update(row[_HASH].encode())
                    span = chains.get(row[_CHAIN])
                    seq = row[_SEQ]
                    if span is None:
                        chains[row[_CHAIN]] = [1, seq, row[_PREV], seq, row[_HASH]]
                        continue
                    span[0] += 1
                    if seq < span[1]:
                        span[1], span[2] = seq, row[_PREV]
                    if seq > span[3]:
                        span[3], span[4] = seq, row[_HASH]
                writer.add(rows)
        connection.rollback()
    writer.close()
    return _Written(writer.rows, digest.hexdigest(), chains)


def _check_file(path: Path, written: _Written) -> None:
    """Every row of the file hashes to its row_hash, in the order read from the table."""
    content_hash = ContentHash()
    digest = hashlib.sha256()
    rows = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65536):
        for row in zip(*(column.to_pylist() for column in batch.columns), strict=True):
            if content_hash(row) != row[-1]:
                raise ArchiveError(f"{path.name}: row {row[0]} does not match its hash")
            digest.update(row[-1].encode())
            rows += 1
    if rows != written.rows or digest.hexdigest() != written.row_hashes:
        raise ArchiveError(f"{path.name}: the file does not hold the rows read from the table")


def _checkpoints(engine: Engine, spans: list[ChainSpan]) -> list[Checkpoint]:
    """The stored checkpoints whose heads fall inside the archived spans."""
    found = []
    with engine.connect() as connection:
        for span in spans:
            query = (
                select(*CHECKPOINT_COLUMNS)
                .where(
                    AuditCheckpoint.chain_id == span.chain_id,
                    AuditCheckpoint.seq >= span.first_seq,
                    AuditCheckpoint.seq <= span.last_seq,
                )
                .order_by(AuditCheckpoint.seq, AuditCheckpoint.id)
            )
            found += [Checkpoint.from_row(row) for row in connection.execute(query)]
    return found


def _detach(connection: Connection, part: PartitionRange, rows: int) -> None:
    # Writers wait at most this long for the detach (it locks the table briefly).
    connection.execute(text("SET LOCAL lock_timeout = '10s'"))
    connection.execute(text(f'LOCK TABLE "{part.name}" IN SHARE MODE'))
    now = connection.execute(text(f'SELECT count(*) FROM "{part.name}"')).scalar()  # noqa: S608
    if now != rows:
        raise ArchiveError(
            f"{part.name} gained rows while it was archived ({now} now, {rows} archived);"
            " nothing dropped: run the archive again"
        )
    connection.execute(text(f'ALTER TABLE access_log DETACH PARTITION "{part.name}"'))
    connection.execute(text(f'DROP TABLE "{part.name}"'))
