"""Unit tests for the group-commit audit writer and its hash chains (SQLite)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text

from gateway.audit import AuditUnavailable, AuditWriter
from gateway.audit.chain import GENESIS, HASHED_FIELDS, canonical_time, row_hash
from gateway.audit.writer import KEPT_CONNECTION_IDLE_SECONDS
from gateway.db.migrate import upgrade
from gateway.db.models import AccessEvent
from gateway.db.session import make_engine
from tests.conftest import new_database

COLUMNS = [*HASHED_FIELDS, "row_hash"]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def access_row(request_id: str, record: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "time": datetime.now(UTC),
        "request_id": request_id,
        "issuer": "acme-idp",
        "subject": "acme-idp:alice",
        "vendor": "acme",
        "client_ip": "10.0.0.1",
        "user_agent": "unit-test",
        "method": "GET",
        "path": "/api/projects/proj-1/tasks/task-1/records",
        "project": "proj-1",
        "task": "task-1",
        "record_id": f"rec-{record}",
        "record_sha256": "ab" * 32,
        "action": "read",
        "decision": "allow",
        "reason": "allowed",
        "policy_version": 3,
        "upstream_status": 200,
        "bytes": 120 + record,
        **fields,
    }


def stored_rows(db: Engine) -> list[dict[str, Any]]:
    columns = [getattr(AccessEvent, name) for name in COLUMNS]
    with db.connect() as connection:
        result = connection.execute(select(*columns).order_by(AccessEvent.id))
        return [dict(row._mapping) for row in result]


def check_chains(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Assert every chain is gapless from 1 and hash-linked; return chain id → length."""
    chains: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        chains.setdefault(row["chain_id"], []).append(row)
    for chain_id, chain in chains.items():
        chain.sort(key=lambda r: r["seq"])
        assert [r["seq"] for r in chain] == list(range(1, len(chain) + 1)), chain_id
        prev = GENESIS
        for row in chain:
            assert row["prev_hash"] == prev, (chain_id, row["seq"])
            assert row_hash(row) == row["row_hash"], (chain_id, row["seq"])
            prev = row["row_hash"]
    return {chain_id: len(chain) for chain_id, chain in chains.items()}


def test_single_write_is_committed_and_chained(db: Engine) -> None:
    writer = AuditWriter(db)
    writer.write([access_row("r1", 1), access_row("r1", 2)])
    rows = stored_rows(db)
    assert [r["record_id"] for r in rows] == ["rec-1", "rec-2"]
    assert check_chains(rows) == {writer.chain_id: 2}
    assert rows[0]["prev_hash"] == GENESIS
    assert writer.commits == 1
    assert writer.healthy


def test_empty_write_is_a_no_op(db: Engine) -> None:
    writer = AuditWriter(db)
    writer.write([])
    assert stored_rows(db) == []
    assert writer.commits == 0


def test_concurrent_writers_all_land_with_group_commit(db: Engine) -> None:
    writer = AuditWriter(db)
    threads_count, writes_per_thread, rows_per_write = 20, 10, 3
    barrier = threading.Barrier(threads_count)
    failures: list[BaseException] = []

    def work(number: int) -> None:
        try:
            barrier.wait(10)
            for i in range(writes_per_thread):
                rows = [access_row(f"t{number}-w{i}", r) for r in range(rows_per_write)]
                writer.write(rows)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    writes = threads_count * writes_per_thread
    rows = stored_rows(db)
    assert len(rows) == writes * rows_per_write
    # each write's rows all landed, in order
    by_request: dict[str, list[str]] = {}
    for row in rows:
        by_request.setdefault(row["request_id"], []).append(row["record_id"])
    assert len(by_request) == writes
    assert all(ids == ["rec-0", "rec-1", "rec-2"] for ids in by_request.values())
    assert check_chains(rows) == {writer.chain_id: len(rows)}
    assert 0 < writer.commits < writes
    assert writer.healthy


def test_batch_max_rows_splits_commits(db: Engine) -> None:
    writer = AuditWriter(db, batch_max_rows=2)
    barrier = threading.Barrier(8)

    def work(number: int) -> None:
        barrier.wait(10)
        writer.write([access_row(f"b{number}", 0)])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    rows = stored_rows(db)
    assert len(rows) == 8
    assert writer.commits >= 4  # never more than 2 rows per transaction
    check_chains(rows)


def test_stored_row_hash_recomputes_from_what_sqlite_returns(db: Engine) -> None:
    writer = AuditWriter(db)
    when = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)
    writer.write([access_row("h1", 1, time=when, task=None, record_sha256=None, bytes=None)])
    (row,) = stored_rows(db)
    # Depending on the SQLAlchemy version SQLite hands back a naive or an aware value;
    # either way it is the same instant and hashes to the stored row_hash.
    stored_time = row["time"]
    if stored_time.tzinfo is None:
        stored_time = stored_time.replace(tzinfo=UTC)
    assert stored_time == when
    assert row_hash(row) == row["row_hash"]
    assert row_hash({**row, "record_id": "rec-2"}) != row["row_hash"]
    assert row_hash({**row, "time": row["time"] + timedelta(microseconds=1)}) != row["row_hash"]


# Any text a row can hold: no NUL (PostgreSQL text) and no lone surrogates (not UTF-8),
# both refused per request (test_unstorable_text_fails_only_its_own_request).
_STORABLE = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
_TEXT = st.one_of(st.none(), st.text(_STORABLE, max_size=40))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    with new_database(request.param, tmp_path_factory) as database:
        upgrade(database.url)
        engine = make_engine(database.url)
        yield engine
        engine.dispose()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.fixed_dictionaries(
        {
            **{name: _TEXT for name in ("subject", "user_agent", "record_id", "reason")},
            "path": st.text(_STORABLE, max_size=40),
        }
    ),
    size=st.one_of(st.none(), st.integers(0, 2**62)),
    status=st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    when=st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)
def test_writer_rows_hash_and_store_exactly_for_any_values(
    any_store: Engine, texts: dict[str, Any], size: int | None, status: int | None, when: datetime
) -> None:
    """The writer hashes and stores rows (binary COPY on PostgreSQL): for
    any values (quotes, backslashes, control characters, non-ASCII, None, extreme numbers
    and times) the stored row is the row written and its hash is chain.row_hash, which
    `gateway audit verify` recomputes."""
    writer = AuditWriter(any_store)
    rows = [
        access_row("p1", 1, time=when, bytes=size, upstream_status=status, **texts),
        access_row("p1", 2, time=when, **texts),
    ]
    writer.write(rows)
    writer.close(seal=False)
    with any_store.connect() as connection:
        stored = [
            dict(row._mapping)
            for row in connection.execute(
                select(*[getattr(AccessEvent, name) for name in COLUMNS])
                .where(AccessEvent.chain_id == writer.chain_id)
                .order_by(AccessEvent.seq)
            )
        ]
    assert check_chains(stored) == {writer.chain_id: 2}
    for written, row in zip(rows, stored, strict=True):
        stored_time = row["time"] if row["time"].tzinfo else row["time"].replace(tzinfo=UTC)
        assert stored_time == written["time"]
        assert {name: row[name] for name in written if name != "time"} == {
            name: value for name, value in written.items() if name != "time"
        }
        assert row["row_hash"] == row_hash(
            written | {k: row[k] for k in ("chain_id", "seq", "prev_hash")}
        )


@pytest.mark.parametrize(
    ("refuse_nul", "value"), [(True, "rec\x00evil"), (True, "rec\ud800"), (False, "rec\ud800")]
)
def test_unstorable_text_fails_only_its_own_request(
    db: Engine, refuse_nul: bool, value: str
) -> None:
    """A NUL (PostgreSQL text cannot hold it) or a lone surrogate (not UTF-8) fails its
    own request, not the batch it joined: requests committed with it land, chained."""
    writer = AuditWriter(db)
    writer._refuse_nul = refuse_nul  # as for PostgreSQL, or as for SQLite
    results: dict[str, str] = {}
    start = threading.Barrier(3)

    def write(name: str, rows: list[dict[str, Any]]) -> None:
        start.wait()
        try:
            writer.write(rows)
            results[name] = "ok"
        except AuditUnavailable as error:
            results[name] = str(error)

    threads = [
        threading.Thread(target=write, args=("good-1", [access_row("good-1", 1)])),
        threading.Thread(
            target=write,
            args=("bad", [access_row("bad", 1), access_row("bad", 2, record_id=value)]),
        ),
        threading.Thread(target=write, args=("good-2", [access_row("good-2", 1)])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.write([access_row("good-3", 1)])
    assert results["good-1"] == results["good-2"] == "ok"
    assert "cannot be stored" in results["bad"]
    stored = stored_rows(db)
    assert sorted(row["request_id"] for row in stored) == ["good-1", "good-2", "good-3"]
    check_chains(stored)
    assert writer.healthy


def test_the_text_of_an_escaped_nul_is_not_a_nul(db: Engine) -> None:
    writer = AuditWriter(db)
    writer._refuse_nul = True
    writer.write([access_row("ok", 1, record_id="rec\\u0000", user_agent="\\\\u0000")])
    assert [row["record_id"] for row in stored_rows(db)] == ["rec\\u0000"]


def _terminate_writer_connection(engine: Engine, writer: AuditWriter) -> None:
    assert writer._connection is not None
    pid = writer._connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    writer._connection.rollback()
    with engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_kept_connection_closed_by_the_server(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The writer keeps its connection while busy. One the server closed fails the batch
    that meets it (fail closed, new chain), and the next batch succeeds; one closed while
    the writer was idle is replaced before use, so no batch fails."""
    with new_database("postgresql", tmp_path_factory) as database:
        upgrade(database.url)
        engine = make_engine(database.url)
        try:
            writer = AuditWriter(engine)
            writer.write([access_row("k1", 1)])
            first_chain = writer.chain_id
            _terminate_writer_connection(engine, writer)
            with pytest.raises(AuditUnavailable):
                writer.write([access_row("k2", 1)])
            writer.write([access_row("k3", 1)])
            assert writer.chain_id != first_chain and writer.healthy
            _terminate_writer_connection(engine, writer)
            time.sleep(KEPT_CONNECTION_IDLE_SECONDS + 0.2)
            writer.write([access_row("k4", 1)])
            writer.close(seal=False)
            assert [row["request_id"] for row in stored_rows(engine)] == ["k1", "k3", "k4"]
            check_chains(stored_rows(engine))
        finally:
            engine.dispose()


def test_canonical_time_of_utc_and_naive_values() -> None:
    utc = datetime(2024, 5, 1, 10, 0, 0, 5, tzinfo=UTC)
    assert canonical_time(utc) == "2024-05-01T10:00:00.000005Z"
    assert canonical_time(utc.replace(tzinfo=None)) == "2024-05-01T10:00:00.000005Z"


def test_canonical_time_converts_other_offsets_to_utc() -> None:
    utc = datetime(2024, 5, 1, 10, 0, 0, 5, tzinfo=UTC)
    # The same instant in another offset is the same canonical text (PostgreSQL may hand
    # back a timestamptz in the session time zone).
    plus_two = utc.astimezone(timezone(timedelta(hours=2)))
    assert canonical_time(plus_two) == "2024-05-01T10:00:00.000005Z"


def test_table_unavailable_fails_closed_then_recovers_on_new_chain(db: Engine) -> None:
    writer = AuditWriter(db, commit_timeout=10)
    writer.write([access_row("ok-1", 1)])
    first_chain = writer.chain_id
    with db.begin() as connection:
        connection.execute(text("ALTER TABLE access_log RENAME TO access_log_away"))
    try:
        with pytest.raises(AuditUnavailable):
            writer.write([access_row("lost-1", 1)])
        assert writer.healthy is False
        assert writer.last_error
        with pytest.raises(AuditUnavailable):
            writer.write([access_row("lost-2", 1)])
        assert writer.healthy is False
    finally:
        with db.begin() as connection:
            connection.execute(text("ALTER TABLE access_log_away RENAME TO access_log"))
    writer.write([access_row("ok-2", 1), access_row("ok-2", 2)])
    assert writer.healthy is True
    assert writer.last_error is None
    assert writer.chain_id != first_chain
    rows = stored_rows(db)
    assert [r["request_id"] for r in rows] == ["ok-1", "ok-2", "ok-2"]
    chains = check_chains(rows)
    assert chains == {first_chain: 1, writer.chain_id: 2}
    assert rows[1]["seq"] == 1 and rows[1]["prev_hash"] == GENESIS


def test_failed_batch_fails_every_waiter(db: Engine) -> None:
    writer = AuditWriter(db)
    writer.write([access_row("warm", 0)])
    with db.begin() as connection:
        connection.execute(text("ALTER TABLE access_log RENAME TO access_log_away"))
    results: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def work(number: int) -> None:
        barrier.wait(10)
        try:
            writer.write([access_row(f"f{number}", 0)])
            outcome = "ok"
        except AuditUnavailable:
            outcome = "unavailable"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        with db.begin() as connection:
            connection.execute(text("ALTER TABLE access_log_away RENAME TO access_log"))
    assert results == ["unavailable"] * 6
    assert [r["request_id"] for r in stored_rows(db)] == ["warm"]


def test_two_writers_keep_separate_chains(db: Engine) -> None:
    one, two = AuditWriter(db), AuditWriter(db)
    for i in range(3):
        one.write([access_row(f"one-{i}", i)])
        two.write([access_row(f"two-{i}", i)])
    assert one.chain_id != two.chain_id
    assert check_chains(stored_rows(db)) == {one.chain_id: 3, two.chain_id: 3}


def test_tampering_is_visible_in_the_chain(db: Engine) -> None:
    writer = AuditWriter(db)
    writer.write([access_row("t", i) for i in range(3)])
    with db.begin() as connection:
        connection.execute(
            text("UPDATE access_log SET record_id = 'rec-x' WHERE seq = 2 AND chain_id = :c"),
            {"c": writer.chain_id},
        )
    with pytest.raises(AssertionError):
        check_chains(stored_rows(db))


def test_chain_ids_are_unique_per_writer(db: Engine) -> None:
    ids = {AuditWriter(db).chain_id for _ in range(5)}
    assert len(ids) == 5
    assert all(uuid.UUID(chain_id) for chain_id in ids)
