"""TLS to the IdP and the upstream with the operator's own CA, mutual TLS to the upstream,
secrets read from files, and W3C Trace Context passed to the upstream.

Real processes over real sockets: the test IdP serving HTTPS with a certificate of a
throwaway CA, the sample dataset service behind TLS that requires a client certificate,
and the gateway under gunicorn (SQLite) trusting that CA through `ca_file`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.config import IssuerConfig
from gateway.identity.issuer import Issuer, IssuerUnavailable
from gateway.identity.verifier import TokenVerifier
from tests.conftest import (
    AUDIENCE,
    PYTHON,
    UPSTREAM_TOKEN,
    USERS,
    Database,
    Gateway,
    Proc,
    free_port,
    launch_gateway,
    start,
)
from tests.support.misbehaving import MisbehavingUpstream, Reply
from tests.support.oidc_client import obtain_tokens
from tests.support.pki import Pki, make_pki

RECORDS = "/api/projects/proj-1/records?limit=2"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def trusting(pki: Pki) -> Iterator[None]:
    """requests in this process (token fetches, readiness polls) trust the test CA."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))
        yield


@pytest.fixture(scope="module")
def tls_idp(pki: Pki, trusting: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    port = free_port()
    argv = [PYTHON, "-m", "tests.support.idp", "--port", str(port), "--jwt-audience", AUDIENCE]
    argv += ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    for user in USERS:
        argv += ["--user-claims", json.dumps(user)]
    proc = start(
        argv,
        f"https://127.0.0.1:{port}",
        tmp_path_factory.mktemp("tls-idp") / "idp.log",
        ready_path="/.well-known/openid-configuration",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def mtls_upstream(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("mtls-upstream") / "up.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "tests.support.tls_upstream",
            "--port",
            str(port),
            "--token",
            UPSTREAM_TOKEN,
            "--cert",
            str(pki.server_cert),
            "--key",
            str(pki.server_key),
            "--client-ca",
            str(pki.ca),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # Without a client certificate no HTTP request gets through: wait for the port.
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(log_path.read_text()) from None
            time.sleep(0.1)
    proc = Proc(process, f"https://127.0.0.1:{port}", log_path)
    yield proc
    proc.stop()
    log.close()


def secret_file(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def tls_gateway(
    tmp: Path, pki: Pki, idp: Proc, opaque_idp: Proc, upstream: Proc, *, client_cert: bool
) -> Gateway:
    header = secret_file(tmp, "upstream-authorization", f"Token {UPSTREAM_TOKEN}")
    upstream_keys = f'ca_file = "{pki.ca}"\n'
    if client_cert:
        upstream_keys += (
            f'client_cert_file = "{pki.client_cert}"\nclient_key_file = "{pki.client_key}"\n'
        )
    gateway = launch_gateway(
        tmp,
        Database(f"sqlite:///{tmp / 'gateway.db'}", "sqlite"),
        idp,
        opaque_idp,
        upstream,
        workers=1,
        acme_issuer_keys=f'ca_file = "{pki.ca}"',
        upstream_extra=upstream_keys,
        # The service token is read from a file (a mounted secret), not the environment.
        upstream_headers=f'header_files = {{ Authorization = "{header}" }}',
    )
    assert UPSTREAM_TOKEN not in gateway.config_path.read_text()
    return gateway


@pytest.fixture(scope="module")
def mtls_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    pki: Pki,
    tls_idp: Proc,
    opaque_idp: Proc,
    mtls_upstream: Proc,
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("mtls-gateway")
    gateway = tls_gateway(tmp, pki, tls_idp, opaque_idp, mtls_upstream, client_cert=True)
    yield gateway
    gateway.proc.stop()


def test_records_over_mutual_tls_with_the_operators_ca(
    mtls_gateway: Gateway, tls_idp: Proc
) -> None:
    token = obtain_tokens(tls_idp.url, "alice")["access_token"]
    response = requests.get(
        mtls_gateway.url + RECORDS, headers={"Authorization": f"Bearer {token}"}, timeout=15
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["records"]) == 2
    assert UPSTREAM_TOKEN not in response.text


def test_without_the_client_certificate_the_upstream_refuses_and_the_gateway_says_502(
    tmp_path_factory: pytest.TempPathFactory,
    pki: Pki,
    tls_idp: Proc,
    opaque_idp: Proc,
    mtls_upstream: Proc,
) -> None:
    tmp = tmp_path_factory.mktemp("no-client-cert")
    gateway = tls_gateway(tmp, pki, tls_idp, opaque_idp, mtls_upstream, client_cert=False)
    try:
        token = obtain_tokens(tls_idp.url, "alice")["access_token"]
        response = requests.get(
            gateway.url + RECORDS, headers={"Authorization": f"Bearer {token}"}, timeout=15
        )
        assert response.status_code == 502, response.text
        assert response.json()["error"].startswith("upstream"), response.text
        assert "Traceback" not in gateway.proc.log()
    finally:
        gateway.proc.stop()


def test_an_idp_certificate_from_another_ca_is_not_trusted(pki: Pki, tls_idp: Proc) -> None:
    def issuer(ca_file: Path | None) -> Issuer:
        config = IssuerConfig(
            name="tls-idp",
            issuer=tls_idp.url,
            audience=AUDIENCE,
            vendor="acme",
            ca_file=str(ca_file) if ca_file else None,
        )
        return TokenVerifier((config,)).issuers[0]

    assert issuer(pki.ca).keys_for(None).keys  # the operator's CA: keys load
    for wrong in (pki.other_ca, None):  # another CA, or the system's store
        with pytest.raises(IssuerUnavailable):
            issuer(wrong).keys_for(None)


# --- W3C Trace Context ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, idp: Proc, opaque_idp: Proc
) -> Iterator[tuple[Gateway, MisbehavingUpstream]]:
    server = MisbehavingUpstream().start()
    tmp = tmp_path_factory.mktemp("trace")
    gateway = launch_gateway(
        tmp,
        Database(f"sqlite:///{tmp / 'gateway.db'}", "sqlite"),
        idp,
        opaque_idp,
        server,  # type: ignore[arg-type]
        workers=1,
    )
    yield gateway, server
    gateway.proc.stop()
    server.stop()


def upstream_headers(
    traced: tuple[Gateway, MisbehavingUpstream], headers: dict[str, str]
) -> dict[str, str]:
    gateway, server = traced
    key = server.register(Reply())
    response = requests.get(
        f"{gateway.url}/fault/projects/proj-1/stream?case={key}",
        headers={"Authorization": f"Bearer {gateway.token('alice')}", **headers},
        timeout=15,
    )
    assert response.status_code == 200, response.text
    (hit,) = server.hits(key)
    return hit.headers


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_the_clients_trace_continues_upstream_with_the_gateway_as_parent(
    traced: tuple[Gateway, MisbehavingUpstream],
) -> None:
    seen = upstream_headers(
        traced, {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=abc"}
    )
    version, trace, span, flags = seen["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert span != PARENT and len(span) == 16
    assert seen["tracestate"] == "vendor=abc"


@pytest.mark.parametrize(
    "sent",
    [
        {},
        {"traceparent": f"00-{'0' * 32}-{PARENT}-01"},  # all-zero trace id: invalid
        {"traceparent": "garbage", "tracestate": "vendor=abc"},
        {"traceparent": f"00-{TRACE.upper()}-{PARENT}-01"},  # upper case: invalid
    ],
    ids=["none", "zero-trace", "garbage", "upper-case"],
)
def test_without_a_valid_trace_the_gateway_starts_one(
    traced: tuple[Gateway, MisbehavingUpstream], sent: dict[str, str]
) -> None:
    seen = upstream_headers(traced, sent)
    version, trace, span, flags = seen["traceparent"].split("-")
    assert version == "00" and len(trace) == 32 and len(span) == 16 and flags == "00"
    assert trace not in (TRACE, "0" * 32, TRACE.upper())
    assert "tracestate" not in seen
