"""The archive file: one access-log partition as Parquet (zstd), rows in (time, id) order.

The columns are the access log's own, with the same names and meaning (docs/DESIGN.md §6),
so a lab's warehouse (Spark, Trino, ClickHouse, DuckDB) reads an archive as it reads the
table, and `row_hash` can be recomputed from a row exactly as `gateway audit verify` does.
Times are UTC microseconds (`timestamp[us, tz=UTC]`), as the database keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gateway.db.models import AccessEvent

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("issuer", pa.string()),
        pa.field("subject", pa.string()),
        pa.field("vendor", pa.string()),
        pa.field("client_ip", pa.string()),
        pa.field("user_agent", pa.string()),
        pa.field("method", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("project", pa.string()),
        pa.field("task", pa.string()),
        pa.field("record_id", pa.string()),
        pa.field("record_sha256", pa.string()),
        pa.field("action", pa.string()),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("policy_version", pa.int32()),
        pa.field("upstream_status", pa.int32()),
        pa.field("bytes", pa.int64()),
        pa.field("chain_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("prev_hash", pa.string(), nullable=False),
        pa.field("row_hash", pa.string(), nullable=False),
    ],
    metadata={b"gateway.schema": b"gateway.audit.access_log.v1"},
)
COLUMNS = tuple(SCHEMA.names)
# Every column of the table is archived, in the table's order: a new column is a new
# schema version, not a silent omission.
assert tuple(column.name for column in AccessEvent.__table__.columns) == COLUMNS
# Hashes and ids are unique per row: dictionaries would only cost.
_PLAIN = ["id", "request_id", "record_id", "record_sha256", "seq", "prev_hash", "row_hash"]


class ArchiveFileWriter:
    """Rows (tuples in COLUMNS order) → one Parquet file, a row group at a time."""

    def __init__(self, path: Path, row_group_rows: int) -> None:
        self._writer = pq.ParquetWriter(
            str(path),
            SCHEMA,
            compression="zstd",
            compression_level=3,
            use_dictionary=[name for name in COLUMNS if name not in _PLAIN],
            write_statistics=True,
        )
        self._row_group_rows = row_group_rows
        self._pending: list[Sequence[Any]] = []
        self.rows = 0

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        self._pending.extend(rows)
        while len(self._pending) >= self._row_group_rows:
            self._flush(self._pending[: self._row_group_rows])
            del self._pending[: self._row_group_rows]

    def _flush(self, rows: list[Sequence[Any]]) -> None:
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        arrays = [
            pa.array(values, type=field.type) for values, field in zip(columns, SCHEMA, strict=True)
        ]
        table = pa.Table.from_arrays(arrays, schema=SCHEMA)
        self._writer.write_table(table, row_group_size=len(rows))
        self.rows += len(rows)

    def close(self) -> None:
        self._flush(self._pending)
        self._pending = []
        self._writer.close()
