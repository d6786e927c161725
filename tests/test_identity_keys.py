"""Identity hygiene against a real IdP process that rotates its signing key.

A key the IdP withdraws stops validating within the key TTL: the JWKS's own
`Cache-Control: max-age` bounds it, and without one `jwks_ttl_seconds` does. Tokens
already validated and cached are not honoured past the keys' refresh. A new key is
picked up at once (unknown `kid`). When the IdP cannot be reached, the last keys serve
for `jwks_stale_seconds` past their time, then the issuer's tokens are refused 503.

Each case has its own IdP and gateway (on SQLite) so one IdP's rotation cannot leak into
another case; the bounds asserted are correctness bounds with generous slack.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from gateway.identity.issuer import cache_lifetime
from tests.conftest import (
    AUDIENCE,
    PYTHON,
    USERS,
    Database,
    Gateway,
    Proc,
    free_port,
    launch_gateway,
    start,
)
from tests.support.oidc_client import obtain_tokens

PATH = "/api/projects/proj-1/records?limit=1"


def start_idp(log_dir: Path, jwks_max_age: int | None) -> Proc:
    port = free_port()
    argv = [PYTHON, "-m", "tests.support.idp", "--port", str(port), "--jwt-audience", AUDIENCE]
    for user in USERS:
        argv += ["--user-claims", json.dumps(user)]
    if jwks_max_age is not None:
        argv += ["--jwks-max-age", str(jwks_max_age)]
    return start(
        argv,
        f"http://127.0.0.1:{port}",
        log_dir / "idp.log",
        ready_path="/.well-known/openid-configuration",
    )


def fetch(gateway: Gateway, token: str) -> requests.Response:
    return requests.get(
        gateway.url + PATH, headers={"Authorization": f"Bearer {token}"}, timeout=15
    )


def until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` held (polling every 0.2 s); fails after `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


@pytest.fixture
def rig(
    tmp_path_factory: pytest.TempPathFactory, opaque_idp: Proc, upstream: Proc
) -> Iterator[Callable[..., tuple[Proc, Gateway]]]:
    started: list[Proc] = []

    def make(jwks_max_age: int | None, keys: str, workers: int = 2) -> tuple[Proc, Gateway]:
        tmp = tmp_path_factory.mktemp("keys")
        idp = start_idp(tmp, jwks_max_age)
        started.append(idp)
        db = Database(f"sqlite:///{tmp / 'gateway.db'}", "sqlite")
        gateway = launch_gateway(
            tmp, db, idp, opaque_idp, upstream, acme_issuer_keys=keys, workers=workers
        )
        started.append(gateway.proc)
        return idp, gateway

    yield make
    for proc in started:
        proc.stop()


def rotate(idp: Proc) -> dict:
    response = requests.post(idp.url + "/test/rotate-key", timeout=5)
    response.raise_for_status()
    rotated = response.json()
    assert rotated["withdrawn"] and rotated["withdrawn"] != rotated["current"]
    return rotated


@pytest.mark.parametrize(
    ("jwks_max_age", "keys", "bound"),
    [
        # The IdP's max-age (2 s) shortens the configured 600 s.
        (2, "jwks_min_refresh_seconds = 1\njwks_ttl_seconds = 600", 2 + 1),
        # No Cache-Control: the configured TTL decides.
        (None, "jwks_min_refresh_seconds = 1\njwks_ttl_seconds = 3", 3 + 1),
    ],
    ids=["cache-control", "ttl"],
)
def test_a_withdrawn_key_stops_validating_within_the_ttl(
    rig: Callable[..., tuple[Proc, Gateway]], jwks_max_age: int | None, keys: str, bound: float
) -> None:
    idp, gateway = rig(jwks_max_age, keys)
    old_token = obtain_tokens(idp.url, "alice")["access_token"]
    assert fetch(gateway, old_token).status_code == 200
    rotate(idp)
    rotated_at = time.monotonic()
    # Each of the two workers fetched its keys before the rotation, so each holds them at
    # most `bound` seconds after it (plus the refresh on its next request). Till then the
    # old token may still pass; after it, no worker may accept it.
    time.sleep(max(rotated_at + bound + 1.5 - time.monotonic(), 0))
    for _ in range(8):
        response = fetch(gateway, old_token)
        assert response.status_code == 401, (response.status_code, response.text)
        assert "unknown key" in response.headers.get("WWW-Authenticate", ""), response.headers
    new_token = obtain_tokens(idp.url, "alice")["access_token"]
    assert fetch(gateway, new_token).status_code == 200


def test_a_new_key_is_picked_up_at_once(rig: Callable[..., tuple[Proc, Gateway]]) -> None:
    idp, gateway = rig(None, "jwks_min_refresh_seconds = 1\njwks_ttl_seconds = 600")
    assert fetch(gateway, obtain_tokens(idp.url, "alice")["access_token"]).status_code == 200
    rotate(idp)
    time.sleep(1.1)  # past jwks_min_refresh_seconds: an unknown kid may refetch
    new_token = obtain_tokens(idp.url, "alice")["access_token"]
    assert all(fetch(gateway, new_token).status_code == 200 for _ in range(6))


def test_last_keys_serve_while_the_idp_is_down_then_fail_closed(
    rig: Callable[..., tuple[Proc, Gateway]],
) -> None:
    # One worker, so the keys the first request loaded are the ones every request uses.
    idp, gateway = rig(
        None, "jwks_min_refresh_seconds = 1\njwks_ttl_seconds = 2\njwks_stale_seconds = 4", 1
    )
    token = obtain_tokens(idp.url, "alice")["access_token"]
    assert fetch(gateway, token).status_code == 200
    idp.stop()
    stopped_at = time.monotonic()
    # Past the TTL the IdP cannot be reached: the last keys still serve (stale) ...
    time.sleep(2.5)
    assert fetch(gateway, token).status_code == 200
    # ... until jwks_stale_seconds past their time; then the token is unverifiable.
    until(lambda: fetch(gateway, token).status_code == 503, timeout=15)
    assert time.monotonic() - stopped_at >= 4
    response = fetch(gateway, token)
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable", response.text


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 600.0),
        ("public, max-age=120", 120.0),
        ("max-age=5", 30.0),  # never below the refresh floor
        ("s-maxage=9, max-age=7200", 600.0),
        ("no-store", 30.0),
        ('max-age="90"', 90.0),
        ("max-age=abc", 600.0),
    ],
)
def test_cache_lifetime(header: str | None, expected: float) -> None:
    assert cache_lifetime(header, 600.0, 30.0) == expected
