"""Kill switch over real processes: two instances, locks pushed within a second, running
downloads cut off, fail closed when lock state cannot be confirmed."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests
from sqlalchemy import text

from gateway.db.session import make_engine
from gateway.lockout import create_lock, lift_lock
from tests.conftest import Gateway, launch_gateway

LOCK_BOUND = 1.0
RECORDS = "/api/projects/proj-1/tasks/task-1/records?limit=2"


@pytest.fixture(scope="module")
def second_instance(
    tmp_path_factory: pytest.TempPathFactory, gateway: Gateway
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("lock-second-instance")
    other = launch_gateway(tmp, gateway.db, gateway.idp, gateway.opaque_idp, gateway.upstream)
    other._tokens = gateway._tokens
    yield other
    other.proc.stop()


@pytest.fixture(scope="module")
def db(gateway: Gateway):
    engine = make_engine(gateway.db.url)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _no_active_locks(db) -> None:
    """Start without locks, whatever other modules left behind."""
    from gateway.lockout import list_locks

    leftovers = list_locks(db)
    for lock in leftovers:
        lift_lock(db, lock["id"], actor="test", reason="clean start")
    if leftovers:
        time.sleep(LOCK_BOUND)


def _wait_for_access(gateway: Gateway, sub: str) -> None:
    streak, deadline = 0, time.monotonic() + 5
    while streak < 6:
        assert time.monotonic() < deadline, f"{sub} never regained access"
        streak = streak + 1 if gateway.get(RECORDS, sub).status_code == 200 else 0


def _lift_all(db, target: str) -> None:
    from gateway.lockout import list_locks

    for lock in list_locks(db):
        if lock["target"] == target:
            lift_lock(db, lock["id"], actor="test", reason="cleanup")


def _last_success_after_lock(instances: list[Gateway], sub: str) -> float:
    """Lock the vendor while clients hammer both instances; seconds from the lock's commit
    to the last successful response on any instance."""
    token = instances[0].token(sub)
    successes: list[float] = []
    stop = threading.Event()

    def client(gw: Gateway) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while not stop.is_set():
            started = time.monotonic()
            if session.get(gw.url + RECORDS, timeout=10).status_code == 200:
                successes.append(started)

    threads = [threading.Thread(target=client, args=(gw,)) for gw in instances for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    db = make_engine(instances[0].db.url)
    try:
        create_lock(db, kind="vendor", target="acme", reason="breach drill", actor="test")
        committed = time.monotonic()
        time.sleep(LOCK_BOUND + 0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    try:
        return max(successes) - committed
    finally:
        _lift_all(db, "acme")
        db.dispose()


def test_vendor_lock_stops_every_instance_within_a_second(
    gateway: Gateway, second_instance: Gateway
) -> None:
    lags = []
    for _ in range(3):
        lags.append(_last_success_after_lock([gateway, second_instance], "alice"))
        # Lifting restores access; wait for it before the next trial.
        deadline = time.monotonic() + 3
        while gateway.get(RECORDS, "alice").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    print(f"lock lag p50={statistics.median(lags):.3f}s max={max(lags):.3f}s")
    assert max(lags) <= LOCK_BOUND, lags


def test_locked_contractor_gets_locked_error_and_attempts_are_logged(gateway: Gateway, db) -> None:
    # Earlier locks on acme must have left every worker before this one is made: one
    # worker answering is not all of them (each drops a lift within a second).
    _wait_for_access(gateway, "bob")
    time.sleep(1.0)
    lock = create_lock(
        db, kind="contractor", target="acme-idp:bob", reason="suspicious", actor="test"
    )
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            response = gateway.get(RECORDS, "bob")
            if response.status_code == 403:
                break
            time.sleep(0.05)
        assert response.status_code == 403
        body = response.json()
        assert body["error"] == "locked"
        assert "suspicious" not in response.text and str(lock["id"]) not in body["message"]
        rows = gateway.audit_rows(response.headers["X-Request-Id"])
        assert [(r.decision, r.reason) for r in rows] == [("deny", f"locked:{lock['id']}")]
        # Another contractor of the same vendor is unaffected.
        assert gateway.get(RECORDS, "alice").status_code == 200
    finally:
        lift_lock(db, lock["id"], actor="test", reason="cleared")
    deadline = time.monotonic() + LOCK_BOUND + 1
    while gateway.get(RECORDS, "bob").status_code != 200:
        assert time.monotonic() < deadline, "lift did not restore access in time"
        time.sleep(0.05)


def test_lock_with_ttl_expires_on_its_own(gateway: Gateway, db) -> None:
    create_lock(
        db,
        kind="project",
        target="proj-1",
        reason="maintenance",
        actor="test",
        ttl=timedelta(seconds=2),
    )
    deadline = time.monotonic() + 2
    while gateway.get(RECORDS, "alice").status_code != 403:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    deadline = time.monotonic() + 4
    while gateway.get(RECORDS, "alice").status_code != 200:
        assert time.monotonic() < deadline, "TTL lock did not expire"
        time.sleep(0.1)


def test_long_download_is_cut_off_within_a_second_of_the_lock(gateway: Gateway, db) -> None:
    url = gateway.url + "/api/projects/proj-1/tasks/task-1/export?chunks=200&delay=0.1"
    headers = {"Authorization": f"Bearer {gateway.token('alice')}"}
    received: list[float] = []
    outcome: dict[str, object] = {}

    def download() -> None:
        try:
            with requests.get(url, headers=headers, stream=True, timeout=30) as response:
                for chunk in response.iter_content(chunk_size=None):
                    if chunk:
                        received.append(time.monotonic())
            outcome["completed"] = True
        except requests.RequestException as error:
            outcome["error"] = type(error).__name__

    thread = threading.Thread(target=download)
    thread.start()
    time.sleep(1.0)
    assert received, "download did not start"
    lock = create_lock(db, kind="vendor", target="acme", reason="cut test", actor="test")
    locked_at = time.monotonic()
    try:
        thread.join(25)
        assert not thread.is_alive()
        assert max(received) - locked_at <= LOCK_BOUND, max(received) - locked_at
        assert len(received) < 200
    finally:
        lift_lock(db, lock["id"], actor="test", reason="done")
        time.sleep(LOCK_BOUND)


def test_fails_closed_when_lock_state_cannot_be_confirmed(gateway: Gateway) -> None:
    assert gateway.get(RECORDS, "alice").status_code == 200
    with gateway.db.engine.begin() as connection:
        connection.execute(text("ALTER TABLE locks RENAME TO locks_away"))
    try:
        # stale_after_seconds is 2 in the test config.
        deadline = time.monotonic() + 6
        while True:
            response = gateway.get(RECORDS, "alice")
            if response.status_code == 503:
                break
            assert time.monotonic() < deadline, "never failed closed"
            time.sleep(0.2)
        assert response.json()["error"] == "lock_state_unknown"
    finally:
        with gateway.db.engine.begin() as connection:
            connection.execute(text("ALTER TABLE locks_away RENAME TO locks"))
    deadline = time.monotonic() + 5
    while gateway.get(RECORDS, "alice").status_code != 200:
        assert time.monotonic() < deadline, "traffic did not resume"
        time.sleep(0.1)
