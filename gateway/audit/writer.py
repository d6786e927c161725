"""Group-commit audit writer: many requests' rows, one transaction, before any release.

Each request hands its rows to the writer thread and waits. The thread takes everything
queued at that moment, commits it in one transaction and wakes all the waiters at once, so
under load one fsync pays for many requests. A request whose rows did not commit gets an
error and releases nothing.

The same thread seals its chain: every `checkpoint_interval` seconds (and once more when the
process exits) it signs a checkpoint of its chain head, also when nothing was written since
the last one (gateway/audit/seal.py). It owns the sequence, so a seal never races a commit.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import Connection, Engine

from gateway import metrics
from gateway.audit.chain import GENESIS, HASHED_FIELDS, ROW_FIELDS, canonical_time
from gateway.audit.seal import SEAL, Checkpoint, Signer, make_checkpoint, store_checkpoint

log = logging.getLogger(__name__)


COLUMNS = (*HASHED_FIELDS, "row_hash")
# Column names are constants of this module, never input.
_COPY_SQL = f"COPY access_log ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# Binary COPY with declared types skips per-value type lookup: about 4x less CPU per row
# than text COPY, and this runs once for every record released.
_INTEGER_COLUMNS = {
    "policy_version": "int4",
    "upstream_status": "int4",
    "bytes": "int8",
    "seq": "int8",
}
_COPY_TYPES = [
    "timestamptz" if name == "time" else _INTEGER_COLUMNS.get(name, "text") for name in COLUMNS
]
# One C-level call picks a row's ROW_FIELDS values (the chain code hashes these + 3 more).
_ROW_VALUES = itemgetter(*ROW_FIELDS)
# orjson writes a NUL character as this escape: one search of a row's hashed text finds
# the rows worth looking at value by value.
_ESCAPED_NUL = b"\\u0000"
_PLACEHOLDERS = ", ".join("?" for _ in COLUMNS)
_INSERT_SQL = f"INSERT INTO access_log ({', '.join(COLUMNS)}) VALUES ({_PLACEHOLDERS})"  # noqa: S608


# A kept connection idle longer than this is returned to the pool and a pinged one taken.
KEPT_CONNECTION_IDLE_SECONDS = 2.0


class AuditUnavailable(Exception):
    pass


class UnloggableValue(ValueError):
    """A value the access log cannot hold or hash: its request fails, not its batch."""


def _has_nul(values: tuple[Any, ...]) -> bool:
    return any(isinstance(value, str) and "\x00" in value for value in values)


def insert_rows(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Bulk insert at driver level: COPY on PostgreSQL, executemany on SQLite.

    The ORM's per-row bookkeeping would cost more than the rest of a request, and this
    runs for every record released.
    """
    driver = connection.connection.driver_connection
    if connection.dialect.name == "postgresql":
        with driver.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:  # type: ignore[union-attr]
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row(row)
    else:
        cursor = driver.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(_INSERT_SQL, rows)
        finally:
            cursor.close()


@dataclass
class _Pending:
    rows: list[dict[str, Any]]
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    seal: bool = False  # a request to seal the chain head now (no rows)
    stop: bool = False  # ... and then end the writer thread
    sealed: Checkpoint | None = None


class AuditWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        batch_max_rows: int = 5000,
        commit_timeout: float = 10.0,
        sign: Signer | None = None,
        checkpoint_interval: float = 10.0,
    ) -> None:
        """`sign` (GatewayKeys.sign_detached) turns sealing on, every `checkpoint_interval` s."""
        self._db = engine
        self._refuse_nul = engine.dialect.name == "postgresql"
        self._batch_max = batch_max_rows
        self._timeout = commit_timeout
        # The writer keeps one connection while it is busy: a pool checkout per commit
        # (with its liveness ping, a round trip) sat on the path every request waits on.
        self._connection: Connection | None = None
        self._connection_used = 0.0
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self.chain_id = uuid.uuid4().hex
        self._seq = 0
        self._prev = GENESIS
        self.healthy = True
        self.last_error: str | None = None
        self.commits = 0
        self._sign = sign
        self._interval = checkpoint_interval
        self._next_seal = time.monotonic() + checkpoint_interval
        self.last_checkpoint: Checkpoint | None = None
        self.seal_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._started = False
        self._start_lock = threading.Lock()

    def start(self) -> None:
        with self._start_lock:
            if not self._started:
                self._started = True
                self._thread.start()
                if self._sign is not None:
                    # A clean shutdown leaves the chain sealed up to its last row.
                    atexit.register(self._seal_at_exit)

    def seal(self, timeout: float | None = None) -> Checkpoint | None:
        """Seal the chain head now (through the writer thread); the checkpoint, or None if
        sealing is off, the chain is still empty or the seal could not be stored."""
        if self._sign is None:
            return None
        self.start()
        pending = _Pending([], seal=True)
        self._queue.put(pending)
        if not pending.done.wait(self._timeout if timeout is None else timeout):
            return None
        return pending.sealed

    def close(self, *, seal: bool = True, timeout: float = 2.0) -> None:
        """Seal the chain head one last time (unless `seal` is False) and end the thread."""
        atexit.unregister(self._seal_at_exit)
        with self._start_lock:
            if not self._started or not self._thread.is_alive():
                return
        pending = _Pending([], seal=seal and self._sign is not None, stop=True)
        self._queue.put(pending)
        pending.done.wait(timeout)
        self._thread.join(timeout)

    def _seal_at_exit(self) -> None:
        try:
            self.seal(timeout=2.0)
        except Exception:  # never let an exit hook raise
            log.exception("final audit seal failed")

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Block until `rows` are durably committed; raise AuditUnavailable otherwise."""
        if not rows:
            return
        self.start()
        pending = _Pending(rows)
        self._queue.put(pending)
        if not pending.done.wait(self._timeout):
            raise AuditUnavailable("audit commit timed out")
        if pending.error is not None:
            raise AuditUnavailable(pending.error)

    def _run(self) -> None:
        sealing = self._sign is not None
        while True:
            try:
                first = self._queue.get(timeout=self._seal_wait() if sealing else None)
            except queue.Empty:  # idle: the seal below proves that nothing was added
                self._seal_if_due()
                continue
            control = first.seal or first.stop
            batch, seals = ([], [first]) if control else ([first], [])
            count = len(first.rows)
            while count < self._batch_max and not seals:
                try:
                    pending = self._queue.get_nowait()
                except queue.Empty:
                    break
                if pending.seal or pending.stop:
                    seals.append(pending)
                    break
                batch.append(pending)
                count += len(pending.rows)
            if batch:
                metrics.AUDIT_QUEUE_DEPTH.set(self._queue.qsize())
                try:
                    self._commit(batch)
                except Exception as error:  # nothing of this batch is durable; the thread lives on
                    self._fail(batch, error)
            sealed = self._seal_if_due(force=any(p.seal for p in seals)) if sealing else None
            for pending in seals:
                pending.sealed = sealed
                pending.done.set()
                if pending.stop:
                    self._drop_connection()
                    return

    def _seal_wait(self) -> float:
        return max(0.0, self._next_seal - time.monotonic())

    def _seal_if_due(self, *, force: bool = False) -> Checkpoint | None:
        """Sign and store a checkpoint of the chain head if one is due (or `force`)."""
        now = time.monotonic()
        if self._sign is None or (not force and now < self._next_seal):
            return None
        self._next_seal = now + self._interval
        if self._seq == 0:  # an empty chain has nothing to vouch for
            return None
        try:
            checkpoint = make_checkpoint(
                self._sign, kind=SEAL, chain_id=self.chain_id, seq=self._seq, head_hash=self._prev
            )
            with self._db.begin() as connection:
                checkpoint_id = store_checkpoint(connection, checkpoint)
        except Exception as error:  # rows are unaffected; the next interval tries again
            self.seal_error = type(error).__name__
            log.error("audit seal failed: %s", error)
            return None
        self.last_checkpoint = replace(checkpoint, id=checkpoint_id)
        self.seal_error = None
        return self.last_checkpoint

    def _commit(self, batch: list[_Pending]) -> None:
        seq, prev = self._seq, self._prev
        values: list[tuple[Any, ...]] = []
        time_texts: dict[Any, str] = {}
        refused = []
        for pending in batch:
            try:
                rows, seq, prev = self._chain(pending.rows, seq, prev, time_texts)
            except UnloggableValue as error:
                # Only this request's rows; the chain goes on from the request before it.
                pending.error = str(error)
                refused.append(pending)
                continue
            values += rows
        if refused:
            batch = [pending for pending in batch if pending.error is None]
            for pending in refused:
                pending.done.set()
            if not values:
                return
        connection = self._kept_connection()
        try:
            with connection.begin():
                insert_rows(connection, values)
        except Exception:
            self._drop_connection()
            raise
        self._connection_used = time.monotonic()
        metrics.AUDIT_BATCH_ROWS.observe(len(values))
        metrics.AUDIT_ROWS.inc(len(values))
        self._seq, self._prev = seq, prev
        self.healthy = True
        self.last_error = None
        self.commits += 1
        for pending in batch:
            pending.done.set()

    def _chain(
        self, rows: list[dict[str, Any]], seq: int, prev: str, time_texts: dict[Any, str]
    ) -> tuple[list[tuple[Any, ...]], int, str]:
        """One request's rows with their chain fields; (rows, last seq, last hash).

        Raises UnloggableValue for text that is not valid Unicode (it can be neither
        hashed nor stored) and, on PostgreSQL (its text cannot hold one), for a NUL.
        """
        chain_id, chained = self.chain_id, []
        append, row_values, dumps, sha256 = (
            chained.append,
            _ROW_VALUES,
            orjson.dumps,
            hashlib.sha256,
        )
        try:
            for row in rows:
                seq += 1
                stored = row_values(row)
                stamp = stored[0]
                time_text = time_texts.get(stamp) or time_texts.setdefault(
                    stamp, canonical_time(stamp)
                )
                # chain.hash_values inlined: this loop runs once for every record released.
                text = dumps([time_text, *stored[1:], chain_id, seq, prev])
                if self._refuse_nul and _ESCAPED_NUL in text and _has_nul(stored):
                    raise UnloggableValue("text with a NUL character cannot be stored")
                head = sha256(text).hexdigest()
                append((*stored, chain_id, seq, prev, head))
                prev = head
        except TypeError:  # orjson's JSONEncodeError: a lone surrogate is not UTF-8
            raise UnloggableValue("text that is not valid Unicode cannot be stored") from None
        return chained, seq, prev

    def _kept_connection(self) -> Connection:
        """The writer's connection; after a pause, a fresh (pinged) one from the pool, so
        that a connection the server closed while idle does not fail a batch."""
        if (
            self._connection is not None
            and time.monotonic() - self._connection_used > KEPT_CONNECTION_IDLE_SECONDS
        ):
            self._drop_connection()
        if self._connection is None:
            self._connection = self._db.connect()
        return self._connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # already broken: the pool discards it
                log.debug("closing the audit connection failed", exc_info=True)

    def _fail(self, batch: list[_Pending], error: Exception) -> None:
        self.healthy = False
        self.last_error = type(error).__name__
        metrics.AUDIT_COMMIT_FAILURES.inc()
        log.error("audit commit failed: %s", error)
        # The outcome of a failed commit can be unknown (the connection may drop after the
        # server committed), so continue on a fresh chain rather than risk reusing sequence
        # numbers of rows that did land.
        self.chain_id, self._seq, self._prev = uuid.uuid4().hex, 0, GENESIS
        for pending in batch:
            if pending.done.is_set():  # already refused on its own (UnloggableValue)
                continue
            pending.error = "audit store unavailable"
            pending.done.set()
