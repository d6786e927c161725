"""The access log partitioned by day on PostgreSQL (migration 0011): an existing log is
converted in place and still verifies, every partition is append-only and granted to the
runtime role, partitions are made ahead of time (once, even by concurrent makers), rows
that arrive before their day's partition are caught and moved, and time filters read
only the partitions they need."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from gateway.audit import AuditWriter
from gateway.audit.partitions import ensure, is_partitioned, partitions
from gateway.audit.verify import verify_log
from gateway.cli import main as cli_main
from gateway.db.migrate import current_revision, upgrade
from gateway.db.session import make_engine
from gateway.keys import GatewayKeys
from gateway.keys.registry import register_key
from gateway.keys.signer import Ed25519FileSigner
from tests.conftest import _drop_postgres_db, _make_postgres_db, _postgres_server, signing_key_file
from tests.test_audit_integrity import CONFIG, access_row


@pytest.fixture
def postgres_url() -> Iterator[str]:
    server = _postgres_server()
    if server is None:
        pytest.skip("PostgreSQL not configured: set GATEWAY_TEST_POSTGRES (SQLite keeps one table)")
    name = f"gw_partitions_{secrets.token_hex(4)}"
    url = _make_postgres_db(server, name)
    yield url
    _drop_postgres_db(server, name)


def writer_for(engine: Engine) -> AuditWriter:
    signer = Ed25519FileSigner(signing_key_file())
    register_key(engine, signer)
    keys = GatewayKeys(engine, signer, audience="test")
    writer = AuditWriter(engine, sign=keys.sign_detached, checkpoint_interval=3600)
    writer.start()
    return writer


def write_days(writer: AuditWriter, days: list[datetime], per_day: int = 5) -> None:
    for number, day in enumerate(days):
        writer.write(
            [
                access_row(f"req-{number}-{i}", i, time=day + timedelta(minutes=i))
                for i in range(per_day)
            ]
        )
    assert writer.seal() is not None


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as connection:
        return connection.execute(text(sql), params).scalar()


def test_an_existing_log_is_partitioned_in_place_and_still_verifies(postgres_url: str) -> None:
    upgrade(postgres_url, "0010")
    engine = make_engine(postgres_url)
    now = datetime.now(UTC)
    writer = writer_for(engine)
    write_days(writer, [now - timedelta(days=3), now - timedelta(days=1), now])
    writer.close(seal=False)
    before = verify_log(engine)
    assert before.ok and before.rows == 15
    assert not is_partitioned(engine)

    upgrade(postgres_url)
    assert current_revision(postgres_url) == "0012"
    assert is_partitioned(engine)
    names = [p.name for p in partitions(engine)]
    tomorrow = (now + timedelta(days=1)).date()
    assert "access_log_legacy" in names and "access_log_default" in names
    assert f"access_log_p{tomorrow:%Y%m%d}" in names
    assert len([n for n in names if n.startswith("access_log_p2")]) == 8
    # No row moved or rewritten: the old table is the legacy partition.
    assert scalar(engine, "SELECT count(*) FROM access_log_legacy") == 15
    after = verify_log(engine)
    assert after.ok and after.rows == 15

    # New rows go where their day says, under a new chain, and everything verifies.
    writer = writer_for(engine)
    write_days(writer, [now, now + timedelta(days=2)])
    writer.close(seal=False)
    day_after = f"access_log_p{(now + timedelta(days=2)).date():%Y%m%d}"
    assert scalar(engine, f"SELECT count(*) FROM {day_after}") == 5  # noqa: S608
    assert scalar(engine, "SELECT count(*) FROM access_log") == 25
    report = verify_log(engine)
    assert report.ok and report.rows == 25, report.first_problem
    engine.dispose()


def test_rows_before_their_partition_are_caught_then_moved(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    later = datetime.now(UTC) + timedelta(days=40)
    writer = writer_for(engine)
    write_days(writer, [later])  # no partition that far ahead: the default takes them
    assert scalar(engine, "SELECT count(*) FROM access_log_default") == 5
    made = ensure(engine, days_ahead=0, today=later.date())
    assert made == [f"access_log_p{later.date():%Y%m%d}"]
    assert scalar(engine, "SELECT count(*) FROM access_log_default") == 0
    assert scalar(engine, f"SELECT count(*) FROM {made[0]}") == 5  # noqa: S608
    # The writer keeps writing into the new partition, on the same chain.
    write_days(writer, [later])
    writer.close(seal=False)
    report = verify_log(engine)
    assert report.ok and report.rows == 10, report.first_problem
    engine.dispose()


def test_every_partition_is_append_only_and_granted(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    writer = writer_for(engine)
    write_days(writer, [datetime.now(UTC)])
    writer.close(seal=False)
    names = [p.name for p in partitions(engine)]
    runtime = scalar(engine, "SELECT count(*) FROM pg_roles WHERE rolname = 'gateway_runtime'")
    for name in ["access_log", *names]:
        for statement in (
            f"UPDATE {name} SET reason = 'edited'",  # noqa: S608
            f"DELETE FROM {name}",  # noqa: S608
            f"TRUNCATE {name}",
        ):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(statement))
        if runtime:
            grants = {
                privilege: scalar(
                    engine,
                    "SELECT has_table_privilege('gateway_runtime', :t, :p)",
                    t=name,
                    p=privilege,
                )
                for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
            }
            assert grants == {
                "SELECT": True,
                "INSERT": True,
                "UPDATE": False,
                "DELETE": False,
                "TRUNCATE": False,
            }, name
    assert scalar(engine, "SELECT count(*) FROM access_log") == 5
    engine.dispose()


def test_concurrent_makers_make_each_partition_once(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url, pool_size=8)
    start = datetime.now(UTC).date() + timedelta(days=100)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def make() -> None:
        try:
            results.append(ensure(engine, days_ahead=9, today=start))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=make) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    made = sorted(name for names in results for name in names)
    assert made == [f"access_log_p{start + timedelta(days=d):%Y%m%d}" for d in range(10)]
    assert ensure(engine, days_ahead=9, today=start) == []
    engine.dispose()


def test_a_time_window_reads_only_its_partitions(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    ensure(engine, days_ahead=3)
    with engine.connect() as connection:
        plan = "\n".join(
            row[0]
            for row in connection.execute(
                text(
                    "EXPLAIN SELECT record_id FROM access_log WHERE vendor = 'acme'"
                    " AND time >= :since AND time < :until"
                ),
                {"since": today + timedelta(days=2), "until": today + timedelta(days=2, hours=1)},
            )
        )
    scanned = {word for word in plan.replace("(", " ").split() if word.startswith("access_log_")}
    target = f"access_log_p{(today + timedelta(days=2)).date():%Y%m%d}"
    assert any(word.startswith(target) for word in scanned), plan
    assert not any(word.startswith("access_log_legacy") for word in scanned), plan
    engine.dispose()


def test_the_partition_commands(postgres_url: str, tmp_path: Path) -> None:
    upgrade(postgres_url)
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(url=postgres_url, retention=0, key_file=signing_key_file()))
    runner = CliRunner()
    where = ["--json", "--config", str(config)]
    made = runner.invoke(cli_main, ["audit", "partitions", "ensure", "--days-ahead", "12", *where])
    assert made.exit_code == 0, made.output
    # A new install has today and the next 7 days: days 8..12 are made.
    assert len(json.loads(made.output)["made"]) == 5
    listed = runner.invoke(cli_main, ["audit", "partitions", "list", *where])
    assert listed.exit_code == 0, listed.output
    names = [p["name"] for p in json.loads(listed.output)]
    assert "access_log_default" in names and "access_log_legacy" not in names
    assert len(names) == 14  # the default and days 0..12


def test_sqlite_says_it_keeps_one_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    upgrade(url)
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(url=url, retention=0, key_file=signing_key_file()))
    result = CliRunner().invoke(
        cli_main, ["audit", "partitions", "ensure", "--config", str(config)]
    )
    assert result.exit_code == 1
    assert "not partitioned" in result.output
    assert ensure(make_engine(url)) == []
