"""Policy changes reach every worker of every instance within 2 s (two gateway processes,
two workers each, one database), and requests in flight never get a wrong decision."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from gateway.config import load_config
from gateway.db.session import make_engine
from gateway.policy.admin import PolicyAdmin, PolicyValidationError
from tests.conftest import TEST_POLICY, UPSTREAM_TOKEN, Gateway, launch_gateway

PROPAGATION_BOUND = 2.0
GRANT = "p, acme-idp:alice, proj-3, *, read, allow"


@pytest.fixture(scope="module")
def second_instance(
    tmp_path_factory: pytest.TempPathFactory, gateway: Gateway
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("second-instance")
    other = launch_gateway(tmp, gateway.db, gateway.idp, gateway.opaque_idp, gateway.upstream)
    other._tokens = gateway._tokens
    yield other
    other.proc.stop()


@pytest.fixture(scope="module")
def admin(gateway: Gateway) -> PolicyAdmin:
    os.environ.setdefault("UPSTREAM_TOKEN", UPSTREAM_TOKEN)
    config = load_config(gateway.config_path)
    return PolicyAdmin(make_engine(config.database_url), config)


@pytest.fixture(autouse=True)
def _baseline_policy(admin: PolicyAdmin) -> None:
    """Start from the test policy, whatever other modules left behind."""
    try:
        admin.apply(actor="test", reason="baseline", text=TEST_POLICY)
    except PolicyValidationError:  # already the baseline
        return
    time.sleep(PROPAGATION_BOUND)


def _status(gw: Gateway, path: str) -> int:
    return gw.get(path, "alice").status_code


def _wait_for(instances: list[Gateway], path: str, expected: int, since: float) -> float:
    """Seconds from `since` until every instance answers `expected` three times running."""
    streak = {id(gw): 0 for gw in instances}
    while time.monotonic() - since < PROPAGATION_BOUND + 3:
        for gw in instances:
            streak[id(gw)] = streak[id(gw)] + 1 if _status(gw, path) == expected else 0
        if all(count >= 3 for count in streak.values()):
            return time.monotonic() - since
        time.sleep(0.02)
    raise AssertionError(f"{path} never answered {expected} on every instance")


def test_grant_and_revoke_reach_both_instances_within_two_seconds(
    gateway: Gateway, second_instance: Gateway, admin: PolicyAdmin
) -> None:
    instances = [gateway, second_instance]
    path = "/api/projects/proj-3/tasks/task-1/records?limit=1"
    assert {_status(gw, path) for gw in instances} == {403}
    admin.grant(
        actor="test",
        reason="propagation test",
        subject="acme-idp:alice",
        project="proj-3",
        action="read",
    )
    granted_at = time.monotonic()
    grant_lag = _wait_for(instances, path, 200, granted_at)
    admin.revoke(actor="test", reason="propagation test", lines=[GRANT])
    revoked_at = time.monotonic()
    revoke_lag = _wait_for(instances, path, 403, revoked_at)
    assert grant_lag <= PROPAGATION_BOUND, grant_lag
    assert revoke_lag <= PROPAGATION_BOUND, revoke_lag


def test_no_wrong_decision_while_policy_changes_under_load(
    gateway: Gateway, second_instance: Gateway, admin: PolicyAdmin
) -> None:
    stable = "/api/projects/proj-1/tasks/task-1/records?limit=1"  # never revoked
    toggled = "/api/projects/proj-3/tasks/task-1/records?limit=1"
    token = gateway.token("alice")
    stop = threading.Event()
    wrong: list[str] = []
    samples: list[tuple[float, float, int]] = []  # (start, end, status) for `toggled`

    def client(gw: Gateway) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while not stop.is_set():
            status = session.get(gw.url + stable, timeout=10).status_code
            if status != 200:
                wrong.append(f"stable path answered {status} on {gw.url}")
            start = time.monotonic()
            status = session.get(gw.url + toggled, timeout=10).status_code
            samples.append((start, time.monotonic(), status))

    threads = [
        threading.Thread(target=client, args=(gw,))
        for gw in (gateway, second_instance)
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    revocations: list[float] = []
    grants: list[float] = []
    try:
        for _ in range(2):
            # A grant may be visible from the moment its call starts; a revocation only
            # counts once its call has returned (both conservative for the check below).
            grants.append(time.monotonic())
            admin.grant(
                actor="test",
                reason="load test",
                subject="acme-idp:alice",
                project="proj-3",
                action="read",
            )
            time.sleep(PROPAGATION_BOUND + 0.5)
            admin.revoke(actor="test", reason="load test", lines=[GRANT])
            revocations.append(time.monotonic())
            time.sleep(PROPAGATION_BOUND + 0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    assert not wrong, wrong[:5]
    # After a revocation has had its propagation bound, nothing may be allowed until the
    # next grant; before any grant, nothing was allowed either.
    for start, _end, status in samples:
        if status != 200:
            continue
        revoked_before = [t for t in revocations if t + PROPAGATION_BOUND <= start]
        granted_before = [t for t in grants if t <= start]
        assert granted_before, "allowed before the first grant"
        if revoked_before:
            assert max(granted_before) > max(revoked_before), "allowed by a revoked rule"
    assert any(status == 200 for *_, status in samples)
    assert any(status == 403 for *_, status in samples)
