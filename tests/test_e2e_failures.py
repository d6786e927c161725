"""Fail closed: audit store down, upstream down or slow — over real processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from tests.conftest import Gateway, Proc, launch_gateway, wait_ready


def _rename_access_log(gateway: Gateway, old: str, new: str) -> None:
    with gateway.db.engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


def test_audit_store_down_means_503_and_nothing_released(gateway: Gateway) -> None:
    path = "/api/projects/proj-1/tasks/task-1/records?limit=5"
    assert gateway.get(path, "alice").status_code == 200
    _rename_access_log(gateway, "access_log", "access_log_away")
    try:
        response = gateway.get(path, "alice")
        assert response.status_code == 503
        assert response.json()["error"] == "audit_unavailable"
        assert "rec-1-1" not in response.text
        ready = gateway.get("/_gateway/ready")
        assert ready.status_code == 503
    finally:
        _rename_access_log(gateway, "access_log_away", "access_log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = gateway.get(path, "alice")
        if response.status_code == 200:
            break
        time.sleep(0.2)
    assert response.status_code == 200
    rows = gateway.audit_rows(response.headers["X-Request-Id"])
    assert len([r for r in rows if r.decision == "allow"]) == 5
    wait_ready(gateway.url)


@pytest.fixture(scope="module")
def gateway_without_upstream(tmp_path_factory: pytest.TempPathFactory, gateway: Gateway):
    """A second gateway on the same database whose upstream port has nothing listening."""
    dead = Proc(process=None, url="http://127.0.0.1:9", log_path=Path("/dev/null"))  # type: ignore[arg-type]
    tmp = tmp_path_factory.mktemp("no-upstream")
    second = launch_gateway(tmp, gateway.db, gateway.idp, gateway.opaque_idp, dead)
    second._tokens = gateway._tokens
    yield second
    second.proc.stop()


def test_upstream_unreachable_is_502_json_and_logged(gateway_without_upstream: Gateway) -> None:
    response = gateway_without_upstream.get("/api/projects/proj-1/tasks/task-1/records", "alice")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unreachable"
    rows = gateway_without_upstream.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.reason) for r in rows] == [("deny", "upstream_unreachable")]


def test_upstream_too_slow_is_504(gateway: Gateway) -> None:
    # The test config gives the upstream a 2 s read timeout.
    response = gateway.get("/api/slow?seconds=3", "alice")
    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"
    rows = gateway.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.reason) for r in rows] == [("deny", "upstream_timeout")]


def test_gateway_never_answers_with_html(gateway: Gateway) -> None:
    for method in ("GET", "POST", "DELETE", "PATCH"):
        response = requests.request(method, gateway.url + "/_gateway/health", timeout=5)
        assert response.headers["Content-Type"].startswith("application/json")
