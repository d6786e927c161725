"""Opaque access tokens: RFC 7662 introspection and userinfo, cached only briefly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import (
    AUDIENCE,
    OPAQUE_USERS,
    PYTHON,
    Gateway,
    free_port,
    launch_gateway,
    start,
)


@pytest.fixture(scope="module")
def introspection_gateway(
    tmp_path_factory: pytest.TempPathFactory, gateway: Gateway
) -> Iterator[Gateway]:
    port = free_port()
    argv = [PYTHON, "-m", "tests.support.idp", "--port", str(port)]
    argv += ["--introspection-audience", AUDIENCE]
    for user in OPAQUE_USERS:
        argv += ["--user-claims", json.dumps(user)]
    tmp = tmp_path_factory.mktemp("introspection")
    idp = start(
        argv,
        f"http://127.0.0.1:{port}",
        tmp / "idp.log",
        ready_path="/.well-known/openid-configuration",
    )
    second = launch_gateway(
        tmp, gateway.db, gateway.idp, idp, gateway.upstream, opaque_mode="introspection"
    )
    yield second
    second.proc.stop()
    idp.stop()


def test_opaque_token_accepted_through_introspection(introspection_gateway: Gateway) -> None:
    response = introspection_gateway.get(
        "/api/projects/proj-3/tasks/task-1/records?limit=2", "carol"
    )
    assert response.status_code == 200, response.text
    rows = introspection_gateway.audit_rows(response.headers["X-Request-Id"])
    assert {(r.subject, r.vendor) for r in rows} == {("carol", "globex")}
    assert "POST /oauth2/introspect" in introspection_gateway.opaque_idp.log()
    assert "GET /userinfo" not in introspection_gateway.opaque_idp.log()


def test_unknown_opaque_token_is_refused(introspection_gateway: Gateway) -> None:
    response = requests.get(
        introspection_gateway.url + "/api/projects/proj-3/tasks/task-1/records",
        headers={"Authorization": "Bearer " + "x" * 40},
        timeout=10,
    )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("which", ["userinfo", "introspection"])
def test_revoked_opaque_token_stops_working_within_the_cache_bound(
    which: str, gateway: Gateway, introspection_gateway: Gateway
) -> None:
    gw = gateway if which == "userinfo" else introspection_gateway
    gw._tokens.pop("carol", None)
    path = "/api/projects/proj-3/tasks/task-1/records?limit=1"
    assert gw.get(path, "carol").status_code == 200
    revoked = requests.post(gw.opaque_idp.url + "/users/carol/revoke-tokens", timeout=5)
    assert revoked.status_code == 204
    # opaque_cache_seconds is 5 in the test config; both workers must notice.
    deadline = time.monotonic() + 8
    statuses = []
    while time.monotonic() < deadline:
        statuses.append(gw.get(path, "carol").status_code)
        if statuses[-3:] == [401, 401, 401]:
            break
        time.sleep(0.3)
    assert statuses[-3:] == [401, 401, 401], statuses
    gw._tokens.pop("carol", None)
