"""Unit tests for the group-commit audit writer and its hash chains (SQLite)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text

from gateway.audit import AuditUnavailable, AuditWriter
from gateway.audit.chain import GENESIS, HASHED_FIELDS, canonical_time, row_hash
from gateway.db.migrate import upgrade
from gateway.db.models import AccessEvent
from gateway.db.session import make_engine

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


_TEXT = st.one_of(st.none(), st.text(max_size=40))


@settings(max_examples=60, deadline=None)
@given(
    texts=st.fixed_dictionaries(
        {
            **{name: _TEXT for name in ("subject", "user_agent", "record_id", "reason")},
            "path": st.text(max_size=40),
        }
    ),
    numbers=st.fixed_dictionaries(
        {name: st.one_of(st.none(), st.integers(0, 2**31 - 1)) for name in ("bytes",)}
    ),
)
def test_writer_hash_is_the_chain_hash_of_any_row(
    texts: dict[str, Any], numbers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The writer hashes from a JSON prefix made in the request thread: for any values
    (quotes, backslashes, control characters, non-ASCII, None) it must equal
    chain.row_hash, which `gateway audit verify` recomputes."""
    url = f"sqlite:///{tmp_path_factory.mktemp('hash') / 'audit.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        writer = AuditWriter(engine)
        rows = [access_row("p1", 1, **texts, **numbers), access_row("p1", 2, **texts)]
        writer.write(rows)
        writer.close(seal=False)
        stored = stored_rows(engine)
        assert check_chains(stored) == {writer.chain_id: 2}
        for written, row in zip(rows, stored, strict=True):
            expected = row_hash(
                {
                    **written,
                    "chain_id": row["chain_id"],
                    "seq": row["seq"],
                    "prev_hash": row["prev_hash"],
                }
            )
            assert row["row_hash"] == expected
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
