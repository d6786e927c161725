"""Tamper evidence: hash chains, signed checkpoints, `gateway audit verify`, retention.

Tampering runs on throwaway databases (a migrated SQLite file, and a fresh PostgreSQL
database when GATEWAY_TEST_POSTGRES is set) filled by AuditWriters driven directly; the
shared e2e database is only ever verified, read-only. On PostgreSQL the append-only
trigger is switched off for the tampering itself (`session_replication_role = replica`,
as a superuser could), which is exactly the attacker the hash chain is there for.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, text

from gateway.audit import AuditWriter
from gateway.audit.chain import HASHED_FIELDS, canonical_time
from gateway.audit.seal import Checkpoint
from gateway.audit.verify import (
    BAD_CHECKPOINT,
    DELETED,
    INSERTED,
    MODIFIED,
    REWRITTEN,
    TRUNCATED,
    VerifyReport,
    verify_log,
)
from gateway.cli import main as cli_main
from gateway.db.migrate import upgrade
from gateway.db.models import AccessEvent
from gateway.db.session import make_engine
from gateway.keys import GatewayKeys
from gateway.keys.registry import register_key
from gateway.keys.signer import Ed25519FileSigner
from tests.conftest import (
    Gateway,
    _drop_postgres_db,
    _make_postgres_db,
    _postgres_server,
    signing_key_file,
)


@dataclass
class Store:
    kind: str
    url: str
    engine: Engine
    keys: GatewayKeys
    config_path: Path
    writers: list[AuditWriter] = field(default_factory=list)

    def writer(self, **kwargs: Any) -> AuditWriter:
        kwargs.setdefault("checkpoint_interval", 3600)  # seal only when the test says so
        writer = AuditWriter(self.engine, sign=self.keys.sign_detached, **kwargs)
        self.writers.append(writer)
        return writer

    def tamper(self, sql: str, **params: Any) -> None:
        """Change the log as someone with write access to the database would."""
        with self.engine.begin() as connection:
            if self.kind == "postgresql":
                connection.execute(text("SET LOCAL session_replication_role = replica"))
            connection.execute(text(sql), params)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))

    def row(self, chain_id: str, seq: int) -> Any:
        """One row, typed as the gateway reads it (the time as a datetime on SQLite too)."""
        table = AccessEvent.__table__
        with self.engine.connect() as connection:
            (row,) = connection.execute(
                select(table).where(table.c.chain_id == chain_id, table.c.seq == seq)
            ).all()
        return row

    def verify(self, **kwargs: Any) -> VerifyReport:
        return verify_log(self.engine, **kwargs)

    def cli(self, *args: str) -> Any:
        return CliRunner().invoke(cli_main, [*args, "--config", str(self.config_path)])


CONFIG = """
[database]
url = "{url}"
[[issuers]]
name = "acme-idp"
issuer = "https://idp.acme.example"
audience = "https://gateway.test"
vendor = "acme"
[upstream]
url = "http://127.0.0.1:9"
[keys]
signing_key_file = "{key_file}"
[audit]
retention_days = {retention}
[[routes]]
methods = ["GET"]
path = "/api/projects/{{project}}/records"
action = "read"
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    server = name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        server = _postgres_server()
        if server is None:
            pytest.skip("PostgreSQL not configured: set GATEWAY_TEST_POSTGRES")
        name = f"gw_integrity_{secrets.token_hex(4)}"
        url = _make_postgres_db(server, name)
    upgrade(url)
    engine = make_engine(url)
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(CONFIG.format(url=url, retention=0, key_file=signing_key_file()))
    signer = Ed25519FileSigner(signing_key_file())
    register_key(engine, signer)
    keys = GatewayKeys(engine, signer, audience="test")
    store = Store(request.param, url, engine, keys, config_path)
    yield store
    for writer in store.writers:
        writer.close(seal=False)
    engine.dispose()
    if server is not None and name is not None:
        _drop_postgres_db(server, name)


def access_row(request_id: str, record: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "time": datetime.now(UTC),
        "request_id": request_id,
        "issuer": "acme-idp",
        "subject": "alice",
        "vendor": "acme",
        "client_ip": "10.0.0.1",
        "user_agent": "integrity-test",
        "method": "GET",
        "path": "/api/projects/proj-1/tasks/task-1/records",
        "project": "proj-1",
        "task": "task-1",
        "record_id": f"rec-{record}",
        "record_sha256": hashlib.sha256(str(record).encode()).hexdigest(),
        "action": "read",
        "decision": "allow",
        "reason": "released",
        "policy_version": 3,
        "upstream_status": 200,
        "bytes": 100 + record,
        **fields,
    }


def fill(writer: AuditWriter, requests: int, per_request: int = 3, start: int = 0) -> None:
    for number in range(start, start + requests):
        writer.write([access_row(f"req-{number}", number * 10 + i) for i in range(per_request)])


def hashed_row(chain_id: str, seq: int, prev: str, **fields: Any) -> dict[str, Any]:
    """A new row with a correct hash, as a forger who knows the format would make it."""
    row = {**access_row("forged", 999, **fields), "chain_id": chain_id, "seq": seq}
    return rehash({**row, "prev_hash": prev})


def rehash(row: Any, **changes: Any) -> dict[str, Any]:
    """`row` (a mapping or a stored row) with `changes` and a row_hash that matches them."""
    values = {**(row._mapping if hasattr(row, "_mapping") else row), **changes}
    hashed = [values[name] for name in HASHED_FIELDS]
    hashed[0] = canonical_time(values["time"])
    return {**values, "row_hash": hashlib.sha256(orjson.dumps(hashed)).hexdigest()}


INSERT = (
    f"INSERT INTO access_log ({', '.join((*HASHED_FIELDS, 'row_hash'))}) "  # noqa: S608
    f"VALUES ({', '.join(':' + n for n in (*HASHED_FIELDS, 'row_hash'))})"
)


def only_problem(report: VerifyReport) -> Any:
    assert not report.ok
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


# --- an untouched log ------------------------------------------------------------------


def test_untouched_log_verifies_clean_with_counts(store: Store) -> None:
    one, two = store.writer(), store.writer()
    fill(one, 5)
    fill(two, 4)
    assert one.seal() is not None and two.seal() is not None
    fill(one, 2, start=100)  # an unsealed tail: hash-linked, not yet vouched for
    report = store.verify()
    assert report.ok, report.problems
    assert (report.chains, report.rows) == (2, 33)
    assert report.checkpoints == 2
    assert (report.sealed_rows, report.unsealed_rows, report.unsealed_chains) == (27, 6, 1)
    assert report.never_sealed_chains == 0

    result = store.cli("audit", "verify")
    assert result.exit_code == 0, result.output
    assert "verified 33 rows in 2 chains against 2 signed checkpoints" in result.output
    assert "unsealed tail: 6 rows in 1 chains" in result.output
    assert "OK:" in result.output


def test_writer_seals_on_its_interval_also_when_idle(store: Store) -> None:
    writer = store.writer(checkpoint_interval=0.2)
    fill(writer, 3)
    time.sleep(1.0)  # idle: each interval still proves that nothing was added
    seals = store.rows(
        "SELECT seq, head_hash, time FROM audit_checkpoints WHERE chain_id = :c ORDER BY id",
        c=writer.chain_id,
    )
    assert len(seals) >= 3
    assert {(s.seq, s.head_hash) for s in seals} == {(9, store.row(writer.chain_id, 9).row_hash)}
    assert len({s.time for s in seals}) == len(seals)
    fill(writer, 1, start=50)
    time.sleep(0.5)
    assert (
        store.rows(
            "SELECT max(seq) AS seq FROM audit_checkpoints WHERE chain_id = :c", c=writer.chain_id
        )[0].seq
        == 12
    )
    report = store.verify()
    assert report.ok and report.unsealed_rows == 0, report


def test_a_dead_writers_chain_keeps_its_last_checkpoint(store: Store) -> None:
    dead = store.writer()
    fill(dead, 3)
    dead.seal()
    fill(dead, 1, start=10)  # written, then the process died before the next seal
    live = store.writer()
    fill(live, 2)
    live.seal()
    report = store.verify()
    assert report.ok, report.problems
    assert (report.chains, report.unsealed_rows, report.unsealed_chains) == (2, 3, 1)


def test_a_chain_that_was_never_sealed_is_reported_not_failed(store: Store) -> None:
    fill(AuditWriter(store.engine), 2)
    report = store.verify()
    assert report.ok and report.never_sealed_chains == 1 and report.unsealed_rows == 6


# --- every kind of tampering -----------------------------------------------------------


@pytest.fixture
def sealed(store: Store) -> tuple[Store, AuditWriter]:
    """One chain of 30 rows, all sealed (checkpoint at seq 30)."""
    writer = store.writer()
    fill(writer, 10)
    assert writer.seal() is not None
    return store, writer


def test_edit_of_one_field_names_the_row(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    target = store.row(writer.chain_id, 12)
    store.tamper("UPDATE access_log SET record_id = 'rec-other' WHERE id = :id", id=target.id)
    problem = only_problem(store.verify())
    assert (problem.kind, problem.seq, problem.row_id) == (MODIFIED, 12, target.id)
    assert "content does not match" in problem.message

    result = store.cli("audit", "verify")
    assert result.exit_code == 1
    assert f"first bad row: chain {writer.chain_id} seq 12 (row id {target.id})" in result.output


def test_edit_with_recomputed_hash_breaks_the_link(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    target = store.row(writer.chain_id, 12)
    forged = rehash(target, record_id="rec-other")
    store.tamper(
        "UPDATE access_log SET record_id = :r, row_hash = :h WHERE id = :id",
        r=forged["record_id"],
        h=forged["row_hash"],
        id=target.id,
    )
    problem = store.verify().first_problem
    assert problem is not None and problem.seq == 13 and problem.kind == MODIFIED
    assert "seq 12" in problem.message


def test_rewrite_of_the_whole_tail_is_caught_by_the_checkpoint(store: Store) -> None:
    writer = store.writer()
    fill(writer, 2)
    writer.seal()  # checkpoint at seq 6
    fill(writer, 4, start=10)
    writer.seal()  # checkpoint at seq 18
    # The attacker edits seq 9 and recomputes every hash after it: all links hold.
    prev = store.row(writer.chain_id, 8).row_hash
    for seq in range(9, 19):
        row = store.row(writer.chain_id, seq)
        changes = {"record_id": "rec-rewritten"} if seq == 9 else {}
        forged = rehash(row, prev_hash=prev, **changes)
        store.tamper(
            "UPDATE access_log SET record_id = :r, prev_hash = :p, row_hash = :h WHERE id = :id",
            r=forged["record_id"],
            p=prev,
            h=forged["row_hash"],
            id=row.id,
        )
        prev = forged["row_hash"]
    problem = only_problem(store.verify())
    seventh = store.row(writer.chain_id, 7)
    assert (problem.kind, problem.seq, problem.row_id) == (REWRITTEN, 7, seventh.id)
    assert "rows after seq 6 were rewritten" in problem.message


def test_deleted_row_leaves_a_gap(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    store.tamper("DELETE FROM access_log WHERE chain_id = :c AND seq = 17", c=writer.chain_id)
    problem = only_problem(store.verify())
    after = store.row(writer.chain_id, 18)
    assert (problem.kind, problem.seq, problem.row_id) == (DELETED, 18, after.id)
    assert "rows 17..17 are missing" in problem.message


def test_deleted_tail_is_caught_against_the_last_checkpoint(
    sealed: tuple[Store, AuditWriter],
) -> None:
    store, writer = sealed
    last_kept = store.row(writer.chain_id, 26)
    store.tamper("DELETE FROM access_log WHERE chain_id = :c AND seq > 26", c=writer.chain_id)
    problem = only_problem(store.verify())
    assert (problem.kind, problem.seq) == (TRUNCATED, 27)
    assert f"ends at seq 26 (row id {last_kept.id})" in problem.message
    assert "vouches for seq 30" in problem.message


def test_deleted_head_rows_without_a_prune_checkpoint(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    store.tamper("DELETE FROM access_log WHERE chain_id = :c AND seq <= 4", c=writer.chain_id)
    problem = only_problem(store.verify())
    assert (problem.kind, problem.seq) == (DELETED, 5)
    assert "rows 1..4 are missing" in problem.message


def test_deleted_chain_is_caught_by_its_checkpoints(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    store.tamper("DELETE FROM access_log WHERE chain_id = :c", c=writer.chain_id)
    problem = only_problem(store.verify())
    assert (problem.kind, problem.chain_id, problem.seq) == (TRUNCATED, writer.chain_id, 30)


def test_deleted_tail_and_checkpoints_are_caught_by_an_exported_anchor(
    sealed: tuple[Store, AuditWriter], tmp_path: Path
) -> None:
    store, writer = sealed
    anchor = tmp_path / "anchor.jsonl"
    assert store.cli("audit", "checkpoint", "export", "--output", str(anchor)).exit_code == 0
    store.tamper("DELETE FROM access_log WHERE chain_id = :c AND seq > 20", c=writer.chain_id)
    store.tamper("DELETE FROM audit_checkpoints WHERE chain_id = :c", c=writer.chain_id)
    assert store.verify().ok  # nothing left in the database vouches for the tail
    anchors = [Checkpoint.from_json(json.loads(line)) for line in anchor.read_text().split()]
    problem = only_problem(store.verify(anchors=anchors))
    assert (problem.kind, problem.seq) == (TRUNCATED, 21)
    result = store.cli("audit", "verify", "--anchor", str(anchor))
    assert result.exit_code == 1 and "truncated" in result.output


def test_naive_forged_row_is_named(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    forged = {**hashed_row(writer.chain_id, 31, "f" * 64), "row_hash": "e" * 64}
    store.tamper(INSERT, **forged)
    (forged_id,) = [r.id for r in store.rows("SELECT id FROM access_log WHERE seq = 31")]
    problem = only_problem(store.verify())
    assert (problem.kind, problem.seq, problem.row_id) == (MODIFIED, 31, forged_id)


def test_forged_row_inserted_mid_chain_is_named(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    # Make room at seq 15 (two steps keep the unique index happy), then insert a row
    # whose hash and link to seq 14 are both correct.
    chain = writer.chain_id
    store.tamper("UPDATE access_log SET seq = -seq - 1 WHERE chain_id = :c AND seq >= 15", c=chain)
    store.tamper("UPDATE access_log SET seq = -seq WHERE chain_id = :c AND seq < 0", c=chain)
    store.tamper(INSERT, **hashed_row(chain, 15, store.row(chain, 14).row_hash))
    forged = store.row(chain, 15)
    assert forged.request_id == "forged"
    problem = store.verify().first_problem
    assert problem is not None
    assert (problem.kind, problem.seq, problem.row_id) == (INSERTED, 15, forged.id)


def test_duplicate_seq_is_an_insertion(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    store.tamper("DROP INDEX ux_access_log_chain_seq")
    original = store.row(writer.chain_id, 8)
    store.tamper(INSERT, **hashed_row(writer.chain_id, 8, original.prev_hash))
    forged = store.rows(
        "SELECT id FROM access_log WHERE chain_id = :c AND seq = 8 AND id != :id",
        c=writer.chain_id,
        id=original.id,
    )[0]
    problem = only_problem(store.verify())
    assert (problem.kind, problem.seq, problem.row_id) == (INSERTED, 8, forged.id)


def test_reordered_rows_are_named(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    chain = writer.chain_id
    seventh, eighth = store.row(chain, 7), store.row(chain, 8)
    store.tamper("UPDATE access_log SET seq = -1 WHERE id = :id", id=seventh.id)
    store.tamper("UPDATE access_log SET seq = 7 WHERE id = :id", id=eighth.id)
    store.tamper("UPDATE access_log SET seq = 8 WHERE id = :id", id=seventh.id)
    problem = only_problem(store.verify())
    assert (problem.seq, problem.row_id) == (7, eighth.id)
    assert problem.kind == MODIFIED


def test_forged_checkpoint_vouches_for_nothing(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    store.tamper(
        "UPDATE audit_checkpoints SET head_hash = :h WHERE chain_id = :c",
        h="d" * 64,
        c=writer.chain_id,
    )
    problem = only_problem(store.verify())
    assert problem.kind == BAD_CHECKPOINT and "no valid signature" in problem.message


def test_first_bad_row_of_each_chain_is_reported(store: Store) -> None:
    one, two = store.writer(), store.writer()
    fill(one, 3)
    fill(two, 3)
    one.seal()
    two.seal()
    for writer, seq in ((one, 2), (two, 5)):
        store.tamper(
            "UPDATE access_log SET vendor = 'globex' WHERE chain_id = :c AND seq >= :s",
            c=writer.chain_id,
            s=seq,
        )
    report = store.verify()
    assert report.problem_count >= 2
    assert {(p.chain_id, p.seq) for p in report.problems} == {
        (one.chain_id, 2),
        (two.chain_id, 5),
    }
    assert report.first_problem == min(report.problems, key=lambda p: p.chain_id)


def test_verify_since_checks_only_the_recent_rows(sealed: tuple[Store, AuditWriter]) -> None:
    store, writer = sealed
    cutoff = datetime.now(UTC)
    time.sleep(0.01)
    fill(writer, 2, start=50)
    writer.seal()
    store.tamper(
        "UPDATE access_log SET vendor = 'x' WHERE chain_id = :c AND seq = 3", c=writer.chain_id
    )
    recent = store.verify(since=cutoff)
    assert recent.ok, recent.problems
    assert recent.rows == 7  # the six new rows and the anchor before them
    assert not store.verify().ok
    result = store.cli("audit", "verify", "--since", cutoff.isoformat(), "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["rows"] == 7


# --- retention -------------------------------------------------------------------------


def test_prune_keeps_the_rest_verifiable(store: Store, tmp_path: Path) -> None:
    writer = store.writer()
    old = datetime.now(UTC) - timedelta(days=40)
    writer.write([access_row("old", i, time=old + timedelta(seconds=i)) for i in range(12)])
    writer.seal()
    fill(writer, 3)
    writer.seal()
    other = store.writer()  # a chain that is old from start to end
    other.write([access_row("old-2", i, time=old) for i in range(5)])
    other.seal()
    before = (old + timedelta(days=1)).isoformat()

    dry = store.cli("audit", "prune", "--before", before)
    assert dry.exit_code == 0, dry.output
    assert "17 in 2 chains" in dry.output and "nothing deleted" in dry.output
    assert store.rows("SELECT count(*) AS n FROM access_log")[0].n == 26

    saved = tmp_path / "pruned.jsonl"
    result = store.cli(
        "audit", "prune", "--before", before, "--confirm", "--checkpoint-output", str(saved)
    )
    assert result.exit_code == 0, result.output
    assert store.rows("SELECT count(*) AS n FROM access_log")[0].n == 9
    exported = [json.loads(line) for line in saved.read_text().splitlines()]
    prunes = {(c["chain_id"], c["seq"]) for c in exported if c["kind"] == "prune"}
    assert prunes == {(writer.chain_id, 12), (other.chain_id, 5)}
    assert {c["seq"] for c in exported if c["kind"] == "seal"} == {12, 5}

    report = store.verify()
    assert report.ok, report.problems
    assert (report.rows, report.pruned_chains, report.chains) == (9, 1, 1)
    # The writer carries on where it was; the chain still verifies.
    fill(writer, 1, start=77)
    writer.seal()
    assert store.verify().ok
    assert store.cli("audit", "verify").exit_code == 0
    # Also against the exported checkpoints of what was pruned.
    anchors = [Checkpoint.from_json(c) for c in exported]
    assert store.verify(anchors=anchors).ok
    # A later prune of everything still leaves a verifiable (empty) log.
    assert (
        store.cli(
            "audit",
            "prune",
            "--before",
            "2999-01-01",
            "--confirm",
            "--checkpoint-output",
            str(tmp_path / "all.jsonl"),
        ).exit_code
        == 0
    )
    assert store.verify().ok and store.verify().rows == 0
    events = store.rows("SELECT action, target FROM admin_events WHERE action = 'audit.prune'")
    assert len(events) == 2 and json.loads(events[0].target)["rows"] == 17


def test_prune_in_small_batches(store: Store, tmp_path: Path) -> None:
    from gateway.audit.seal import apply_prune, plan_prune, prune_checkpoints

    writer = store.writer()
    old = datetime.now(UTC) - timedelta(days=3)
    writer.write([access_row("old", i, time=old) for i in range(25)])
    fill(writer, 2)
    plans = plan_prune(store.engine, old + timedelta(hours=1))
    checkpoints = prune_checkpoints(store.engine, plans, store.keys.sign_detached, batch_rows=10)
    assert [c.seq for c in checkpoints] == [10, 20, 25]
    seen: list[int] = []

    def after_batch(checkpoint: Checkpoint, rows: int) -> None:
        seen.append(rows)
        assert store.verify().ok  # verifiable after every batch

    assert apply_prune(store.engine, checkpoints, on_batch=after_batch) == 25
    assert seen == [10, 10, 5]
    assert store.rows("SELECT count(*) AS n FROM audit_checkpoints")[0].n == 1


def test_prune_refuses_a_log_that_does_not_verify(store: Store) -> None:
    writer = store.writer()
    old = datetime.now(UTC) - timedelta(days=3)
    writer.write([access_row("old", i, time=old) for i in range(5)])
    store.tamper("UPDATE access_log SET vendor = 'x' WHERE seq = 2")
    result = store.cli("audit", "prune", "--before", datetime.now(UTC).isoformat(), "--confirm")
    assert result.exit_code == 1
    assert "refusing to delete the evidence" in result.output
    assert store.rows("SELECT count(*) AS n FROM access_log")[0].n == 5


def test_prune_uses_retention_days(store: Store) -> None:
    result = store.cli("audit", "prune")
    assert result.exit_code == 2 and "retention_days" in result.output
    store.config_path.write_text(
        CONFIG.format(url=store.url, retention=30, key_file=signing_key_file())
    )
    writer = store.writer()
    writer.write([access_row("old", 1, time=datetime.now(UTC) - timedelta(days=31))])
    writer.write([access_row("new", 2)])
    result = store.cli("audit", "prune")
    assert result.exit_code == 0 and "1 in 1 chains" in result.output


# --- PostgreSQL: the log is append-only ------------------------------------------------


def test_postgres_refuses_update_and_delete_of_audit_rows(store: Store) -> None:
    if store.kind != "postgresql":
        pytest.skip("the append-only trigger and the runtime role are PostgreSQL's")
    writer = store.writer()
    fill(writer, 2)
    writer.seal()
    for sql in (
        "UPDATE access_log SET vendor = 'x'",
        "DELETE FROM access_log",
        "TRUNCATE access_log",
        "UPDATE audit_checkpoints SET seq = 1",
        "DELETE FROM audit_checkpoints",
    ):
        with pytest.raises(Exception, match="append-only"), store.engine.begin() as connection:
            connection.execute(text(sql))
    assert store.rows("SELECT count(*) AS n FROM access_log")[0].n == 6
    privileges = store.rows(
        "SELECT has_table_privilege('gateway_runtime', 'access_log', 'INSERT'), "
        "has_table_privilege('gateway_runtime', 'access_log', 'SELECT'), "
        "has_table_privilege('gateway_runtime', 'access_log', 'UPDATE'), "
        "has_table_privilege('gateway_runtime', 'access_log', 'DELETE'), "
        "has_table_privilege('gateway_runtime', 'audit_checkpoints', 'UPDATE'), "
        "has_table_privilege('gateway_runtime', 'audit_checkpoints', 'DELETE')"
    )[0]
    assert tuple(privileges) == (True, True, False, False, False, False)
    login = store.rows("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'gateway_runtime'")
    assert login[0].rolcanlogin is False


def test_postgres_runtime_role_cannot_delete_even_with_the_prune_guard(store: Store) -> None:
    if store.kind != "postgresql":
        pytest.skip("PostgreSQL roles")
    fill(store.writer(), 1)
    with store.engine.begin() as connection:
        connection.execute(text("SET LOCAL gateway.prune = 'on'"))
        connection.execute(text("SET LOCAL ROLE gateway_runtime"))
        # The gateway's own work, INSERT, is allowed; DELETE is not, guard or no guard.
        connection.execute(text(INSERT), hashed_row("runtime-chain", 1, "0" * 64))
        with pytest.raises(Exception, match="permission denied"), connection.begin_nested():
            connection.execute(text("DELETE FROM access_log"))
        # It reads public keys but may not add, change or remove one.
        connection.execute(text("SELECT kid, public_jwk FROM signing_keys"))
        for statement in (
            "INSERT INTO signing_keys (kid, public_jwk, created_at, not_before, source)"
            " VALUES ('forged', '{}', now(), now(), 'file')",
            "UPDATE signing_keys SET not_after = NULL",
            "DELETE FROM signing_keys",
        ):
            with pytest.raises(Exception, match="permission denied"), connection.begin_nested():
                connection.execute(text(statement))
    assert store.rows("SELECT count(*) AS n FROM access_log")[0].n == 4
    columns = store.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'signing_keys'"
    )
    assert "private_jwk" not in {c.column_name for c in columns}


# --- the shared e2e database, read-only ------------------------------------------------


def test_the_e2e_log_verifies_clean(gateway: Gateway) -> None:
    for _ in range(3):
        assert gateway.get("/api/projects/proj-1/tasks/task-1/records?limit=5", "alice").ok
    result = gateway.cli("audit", "verify", "--json", check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"], report["problems"]
    assert report["rows"] >= 15 and report["chains"] >= 1
