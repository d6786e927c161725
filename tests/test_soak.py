"""A 30-second soak with faults, and checks that its reconciliation can fail.

The harness is bench/soak.py (its full run: 10 minutes, with a PostgreSQL restart). Here
it runs for 30 s with 24 clients against two gateway instances (2 workers each, as
`launch_gateway` starts them) on one fresh database — SQLite, and PostgreSQL when the
`database` fixture has one — with one `kill -9` of a worker, one contractor lock and its
lift, and one policy change (all through the CLI), then reconciles every client outcome
with the access log.

PostgreSQL is NOT restarted here: the other tests of this pytest session (and anything
else using GATEWAY_TEST_POSTGRES) share that server, and a restart would cut their
connections. The restart is exercised by `bench/soak.py` only.

The soak gets a database of its own (a file, or a `gw_soak_<random>` database on the
same server) rather than the session's, so its rows, locks and policy change never reach
other tests.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.soak import launch_instances
from bench.soakkit.common import UA_PREFIX
from bench.soakkit.reconcile import AccessRow, reconcile
from bench.soakkit.report import print_details, report
from bench.soakkit.run import SoakOptions, run_soak
from bench.soakkit.traffic import Attempt, record_sha256
from tests.conftest import Database, Proc, _drop_postgres_db, _make_postgres_db

SOAK_SECONDS = 30.0
SOAK_CLIENTS = 24

RECORD = {"id": "rec-1-1-0001", "project": "proj-1", "task": "task-1", "text": "x"}
OTHER = {"id": "rec-1-1-0002", "project": "proj-1", "task": "task-1", "text": "y"}


def _attempt(tag: str, **fields: object) -> Attempt:
    attempt = Attempt(tag, 0, 0, "alice", "page", "GET", "/api/x", 0.0, 1.0)
    attempt.record_route = True
    for name, value in fields.items():
        setattr(attempt, name, value)
    return attempt


def _row(request_id: str, tag: str, record: dict | None, decision: str = "allow") -> AccessRow:
    return AccessRow(
        request_id,
        f"{UA_PREFIX}/{tag}",
        record["id"] if record else None,
        record_sha256(record) if record else None,
        decision,
        "released" if decision == "allow" else "policy_denied",
    )


def _held(*records: dict) -> list[tuple[str, str]]:
    return [(r["id"], record_sha256(r)) for r in records]


# --- the reconciler must be able to fail --------------------------------------------------


def test_reconciliation_passes_when_every_record_has_its_row() -> None:
    attempt = _attempt("r/0/0", status=200, request_id="a" * 24, records=_held(RECORD, OTHER))
    rows = [_row("a" * 24, "r/0/0", RECORD), _row("a" * 24, "r/0/0", OTHER)]
    result = reconcile([attempt], rows)
    assert result.ok
    assert result.records_released == result.records_logged == 2


def test_a_record_in_a_clients_hands_without_its_row_is_an_unlogged_release() -> None:
    attempt = _attempt("r/0/0", status=200, request_id="a" * 24, records=_held(RECORD, OTHER))
    result = reconcile([attempt], [_row("a" * 24, "r/0/0", RECORD)])
    assert not result.ok
    assert result.unlogged == 1
    assert "rec-1-1-0002" in result.unlogged_records[0]


def test_a_row_with_another_hash_does_not_account_for_the_record() -> None:
    changed = {**RECORD, "text": "what the log says"}
    attempt = _attempt("r/0/0", status=200, request_id="a" * 24, records=_held(RECORD))
    result = reconcile([attempt], [_row("a" * 24, "r/0/0", changed)])
    assert result.unlogged == 1
    assert len(result.mismatched_rows) == 1  # and the logged hash was never released


def test_a_row_no_client_saw_or_failed_on_is_unexplained() -> None:
    ok = _attempt("r/0/0", status=200, request_id="a" * 24, records=_held(RECORD))
    rows = [
        _row("a" * 24, "r/0/0", RECORD),
        _row("b" * 24, "r/0/0", RECORD),  # a second request id for an answered attempt
        _row("c" * 24, "r/9/9", OTHER),  # an attempt no client made
    ]
    result = reconcile([ok], rows)
    assert not result.ok
    assert len(result.unexplained_rows) == 2


def test_rows_of_an_attempt_that_got_no_response_are_explained() -> None:
    killed = _attempt("r/0/1", failure="connection_reset")
    gone = _attempt("r/0/2", end=None)
    rows = [_row("d" * 24, "r/0/1", RECORD), _row("e" * 24, "r/0/2", OTHER)]
    result = reconcile([killed, gone], rows)
    assert result.ok
    assert sum(result.rows_explained.values()) == 2


def test_a_2xx_without_any_row_and_a_500_fail_the_reconciliation() -> None:
    stream = _attempt("r/0/3", kind="export", status=200, request_id="f" * 24, lines=600)
    stream.record_route = False
    broken = _attempt("r/0/4", kind="tasks", status=500, request_id="0" * 24)
    result = reconcile([stream, broken], [_row("0" * 24, "r/0/4", None, "deny")])
    assert result.unlogged == 1
    assert len(result.http_500) == 1
    assert not result.ok


# --- the soak --------------------------------------------------------------------------


@pytest.fixture
def soak_database(database: Database, tmp_path: Path) -> Iterator[Database]:
    """A fresh database of the same kind as `database`, for the soak alone."""
    if database.kind == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'soak.db'}", "sqlite")
        yield db
        db.engine.dispose()
        return
    server = os.environ["GATEWAY_TEST_POSTGRES"]
    name = f"gw_soak_{secrets.token_hex(4)}"
    db = Database(_make_postgres_db(server, name), "postgresql")
    try:
        yield db
    finally:
        db.engine.dispose()
        _drop_postgres_db(server, name)


def test_soak_with_a_worker_kill_a_lock_and_a_policy_change(
    soak_database: Database,
    idp: Proc,
    opaque_idp: Proc,
    upstream: Proc,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    gateways = launch_instances(tmp_path, soak_database, idp, opaque_idp, upstream, 2)
    lines: list[str] = []
    try:
        result = run_soak(
            gateways,
            soak_database,
            SoakOptions(
                duration=SOAK_SECONDS,
                clients=SOAK_CLIENTS,
                fault_period=SOAK_SECONDS,
                pg_restart=False,
                check_code=False,
            ),
            say=lines.append,
        )
    finally:
        for gateway in gateways:
            gateway.proc.stop()
    print_details(result, say=lines.append)
    story = "\n".join(lines + report(result))
    print(story)
    rec = result.reconciliation
    assert rec.unlogged == 0, story
    assert rec.unexplained_rows == [], story
    assert rec.mismatched_rows == [], story
    assert rec.http_500 == [], story
    # (Sources edited during the test are no defect of the gateway, so check_code is off
    # here; bench/soak.py refuses such a run.)
    assert result.incomplete == [], story
    kinds = sorted(f.kind for f in result.faults if f.ok)
    assert kinds == ["kill_worker", "lock", "policy_grant", "unlock"], story
    assert rec.records_released > 1000 and rec.outcomes["403 locked"] > 0, story
    assert time.monotonic() - began < 150, story
