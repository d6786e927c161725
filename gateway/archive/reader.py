"""Reading archived rows: DuckDB over the archives' Parquet files, as a table `access_log`.

The auditors' reads (`gateway.audit.query`, `exposure`, `export`, `verify`) run their own
SQLAlchemy statements on the database and, where archives overlap their time window, the
same statements on a DuckDB connection whose `access_log` is a view over those files; they
then merge (streams in a shared order) or combine (partial aggregates) the answers. So an
archived partition answers as the table did, and an auditor never gets part of the log:
an archive that cannot be read fails the read (`ArchiveUnavailable`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.pool import NullPool

from gateway.archive.catalogue import ArchiveEntry, entries
from gateway.archive.config import ArchiveConfig
from gateway.archive.store import ArchiveStore, open_store

_lock = threading.Lock()
_config = ArchiveConfig()
_store: ArchiveStore | None = None
_duckdb: Engine | None = None


def configure(config: ArchiveConfig) -> None:
    """The process's archive store (the gateway's services and the CLI call this)."""
    global _config, _store
    with _lock:
        _config, _store = config, None


def archive_config() -> ArchiveConfig:
    return _config


def store() -> ArchiveStore:
    global _store
    with _lock:
        if _store is None:
            _store = open_store(_config)
        return _store


def _duck() -> Engine:
    global _duckdb
    with _lock:
        if _duckdb is None:
            # Each connection is its own in-memory database: nothing shared between reads.
            _duckdb = create_engine("duckdb:///:memory:", poolclass=NullPool)
        return _duckdb


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


@contextmanager
def files_connection(paths: Sequence[Path]) -> Iterator[Connection]:
    """A DuckDB connection where `access_log` reads these Parquet files."""
    with _duck().connect() as connection:
        connection.exec_driver_sql("SET TimeZone = 'UTC'")
        # DDL takes no parameters: the file names are quoted as SQL literals.
        files = ", ".join(_literal(path) for path in paths)
        view = f"CREATE TEMP VIEW access_log AS SELECT * FROM read_parquet([{files}])"  # noqa: S608
        connection.exec_driver_sql(view)
        yield connection


def local_files(found: Sequence[ArchiveEntry]) -> list[Path]:
    archive_store = store()
    return [archive_store.local_file(entry.file_key, entry.file_sha256) for entry in found]


@contextmanager
def archive_connection(
    db: Engine | Connection, since: datetime | None = None, until: datetime | None = None
) -> Iterator[Connection | None]:
    """DuckDB over the archives overlapping [since, until), or None when there are none."""
    found = entries(db, since, until)
    if not found:
        yield None
        return
    with files_connection(local_files(found)) as connection:
        yield connection


@contextmanager
def log_connections(
    db: Engine | Connection, since: datetime | None = None, until: datetime | None = None
) -> Iterator[list[Connection]]:
    """The database's connection (or `db` itself), then the archives' if any overlap."""
    with ExitStack() as stack:
        live = db if isinstance(db, Connection) else stack.enter_context(db.connect())
        archived = stack.enter_context(archive_connection(live, since, until))
        yield [live] if archived is None else [live, archived]


def register_rows(connection: Connection, table: Any, rows: Sequence[Sequence[Any]]) -> None:
    """Hand rows of the database to a DuckDB connection as the table `table` (an Arrow
    table, read in place)."""
    names = [column.name for column in table.columns]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    arrow = pa.table({name: pa.array(values) for name, values in zip(names, columns, strict=True)})
    connection.connection.driver_connection.register(table.name, arrow)
