"""Fixtures that run the real parts as real processes on loopback sockets.

- `idp`: oidc-provider-mock issuing RFC 9068 JWT access tokens (tests/support/idp.py)
- `opaque_idp`: the stock `oidc-provider-mock` command, whose access tokens are opaque
- `upstream`: the bundled sample dataset service (`gateway demo-upstream`)
- `gateway`: the gateway under gunicorn (2 workers of `gateway.serving.GatewayThreadWorker`,
  gthread with client timeouts), on SQLite and on PostgreSQL

PostgreSQL runs when GATEWAY_TEST_POSTGRES names a server (CI sets it); otherwise those
tests are skipped and the summary says so. With GATEWAY_TEST_REQUIRE_POSTGRES=1 an
unreachable server is an error instead of a skip.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, create_engine, text

from tests.support.oidc_client import obtain_tokens

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GATEWAY_BIN = str(Path(PYTHON).with_name("gateway"))
AUDIENCE = "https://gateway.test"
UPSTREAM_TOKEN = "upstream-service-token-for-tests"

# Contractors known to the test IdPs: two vendors on the JWT IdP, one on the opaque one.
USERS = [
    {"sub": "alice", "email": "alice@acme.example", "roles": []},
    {"sub": "bob", "email": "bob@acme.example"},
    {"sub": "admin-ann", "email": "ann@lab.example", "roles": ["admin", "auditor"]},
]
OPAQUE_USERS = [
    {"sub": "carol", "vendor": "globex", "email": "carol@globex.example"},
    # The lab's own IdP is trusted for roles (roles_trusted in the test config).
    {"sub": "ann", "vendor": "lab", "email": "ann@lab.example", "roles": ["admin"]},
    {"sub": "audrey", "vendor": "lab", "email": "audrey@lab.example", "roles": ["auditor"]},
    # A second admin, for the two-person rule.
    {"sub": "adam", "vendor": "lab", "email": "adam@lab.example", "roles": ["admin"]},
]

TEST_POLICY = """\
p, role:annotator, proj-1, *, read, allow
p, role:annotator, proj-1, *, annotate, allow
g, vendor:acme, role:annotator, proj-1
p, acme-idp:alice, proj-2, task-1, read, allow
p, acme-idp:bob, proj-1, task-2, read, deny
p, lab-idp:carol, proj-3, *, read, allow
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


@dataclass
class Proc:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def start(
    argv: list[str], url: str, log_path: Path, *, env: dict | None = None, ready_path: str = "/"
) -> Proc:
    log_file = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        argv,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        wait_http(url + ready_path, process=process)
    except RuntimeError:
        process.kill()
        raise RuntimeError(f"{argv[:4]} failed to start:\n{log_path.read_text()[-3000:]}") from None
    return Proc(process, url, log_path)


@pytest.fixture(scope="session")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    port = free_port()
    argv = [PYTHON, "-m", "tests.support.idp", "--port", str(port), "--jwt-audience", AUDIENCE]
    for user in USERS:
        argv += ["--user-claims", json.dumps(user)]
    proc = start(
        argv,
        f"http://127.0.0.1:{port}",
        tmp_path_factory.mktemp("idp") / "idp.log",
        ready_path="/.well-known/openid-configuration",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def opaque_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    port = free_port()
    argv = [str(Path(PYTHON).with_name("oidc-provider-mock")), "--port", str(port)]
    for user in OPAQUE_USERS:
        argv += ["--user-claims", json.dumps(user)]
    proc = start(
        argv,
        f"http://127.0.0.1:{port}",
        tmp_path_factory.mktemp("opaque-idp") / "idp.log",
        ready_path="/.well-known/openid-configuration",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    port = free_port()
    proc = start(
        [GATEWAY_BIN, "demo-upstream", "--port", str(port), "--token", UPSTREAM_TOKEN],
        f"http://127.0.0.1:{port}",
        tmp_path_factory.mktemp("upstream") / "up.log",
    )
    yield proc
    proc.stop()


# --- databases -------------------------------------------------------------------------


def _postgres_server() -> str | None:
    url = os.environ.get("GATEWAY_TEST_POSTGRES")
    if not url:
        return None
    try:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return url
    except Exception as error:
        if os.environ.get("GATEWAY_TEST_REQUIRE_POSTGRES"):
            raise RuntimeError(f"PostgreSQL required but unreachable: {error}") from None
        return None


@dataclass
class Database:
    url: str
    kind: str
    engine: Engine = field(init=False)

    def __post_init__(self) -> None:
        self.engine = create_engine(self.url)

    def rows(self, sql: str, **params: object) -> list:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))


def _make_postgres_db(server: str, name: str) -> str:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    base, _, _ = server.rpartition("/")
    return f"{base}/{name}"


def _drop_postgres_db(server: str, name: str) -> None:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def new_database(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """An empty database of this kind (the test is skipped when PostgreSQL is not set up)."""
    if kind == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "gateway.db"
        yield Database(f"sqlite:///{path}", "sqlite")
        return
    server = _postgres_server()
    if server is None:
        pytest.skip(
            "PostgreSQL not configured: set GATEWAY_TEST_POSTGRES to run these on PostgreSQL"
        )
    name = f"gw_test_{secrets.token_hex(4)}"
    db = Database(_make_postgres_db(server, name), "postgresql")
    try:
        yield db
    finally:
        db.engine.dispose()
        _drop_postgres_db(server, name)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    with new_database(request.param, tmp_path_factory) as db:
        yield db


# --- the gateway -----------------------------------------------------------------------

EXTRA_TEST_ROUTES = """
[[routes]]
methods = ["GET", "POST"]
path = "/api/echo"
action = "read"
project = "proj-1"
query_params = ["m", "sentinel", "x", "project"]

[[routes]]
methods = ["GET"]
path = "/api/redirect"
action = "read"
project = "proj-1"
query_params = []

[[routes]]
methods = ["GET"]
path = "/api/garbage"
action = "read"
project = "proj-1"
query_params = []
records = "records"
record_id = "id"

[[routes]]
methods = ["GET"]
path = "/api/slow"
action = "read"
project = "proj-1"
query_params = ["seconds"]

[[routes]]
methods = ["GET"]
path = "/api/projects/{project}/tasks/{task}/export"
action = "read"

# Routes of the misbehaving upstream (tests/support/misbehaving.py); the sample service 404s
# them.
[[routes]]
methods = ["GET", "HEAD", "POST"]
path = "/fault/projects/{project}/records"
action = "read"
records = "records"
record_id = "id"

[[routes]]
methods = ["GET"]
path = "/fault/projects/{project}/items/{record}"
action = "read"
records = "@"
record_id = "id"

[[routes]]
methods = ["GET"]
path = "/fault/records/{record}"
action = "read"
records = "@"
record_id = "id"
record_project = "project"

[[routes]]
methods = ["GET", "POST"]
path = "/fault/projects/{project}/stream"
action = "read"
"""


_SIGNING_KEY: list[Path] = []


def signing_key_file() -> Path:
    """One Ed25519 signing key for every test gateway of the session (a temp file)."""
    if not _SIGNING_KEY:
        from gateway.keys.signer import generate_key_file

        path = Path(tempfile.mkdtemp(prefix="gateway-test-keys-")) / "signing.pem"
        generate_key_file(path)
        _SIGNING_KEY.append(path)
    return _SIGNING_KEY[0]


def gateway_config(
    *,
    db_url: str,
    idp_url: str,
    opaque_idp_url: str,
    upstream_url: str,
    opaque_mode: str = "userinfo",
    extra_routes: str = "",
    routes: str | None = None,
    acme_issuer_keys: str = "jwks_min_refresh_seconds = 30",
    upstream_extra: str = "",
    upstream_headers: str = 'headers = { Authorization = "Token ${UPSTREAM_TOKEN}" }',
    extra: str = "",
    two_person_lift: str = "[]",
) -> str:
    """The test gateway's config; `routes` replaces the sample routes and the test routes,
    `acme_issuer_keys` the JWT issuer's key-refresh settings; `upstream_extra` adds keys
    to [upstream]; `extra` more tables at the end."""
    if routes is None:
        base = (ROOT / "config" / "gateway.toml").read_text()
        routes = base[base.index("[[routes]]") :] + EXTRA_TEST_ROUTES
    return f"""
[database]
url = "{db_url}"

[[issuers]]
name = "acme-idp"
issuer = "{idp_url}"
audience = "{AUDIENCE}"
vendor = "acme"
roles_claim = "roles"
{acme_issuer_keys}

[[issuers]]
name = "lab-idp"
issuer = "{opaque_idp_url}"
audience = "{AUDIENCE}"
vendor_claim = "vendor"
roles_trusted = true
opaque_tokens = "{opaque_mode}"
client_id = "gateway"
client_secret = "gateway-secret"
opaque_cache_seconds = 5

[upstream]
url = "{upstream_url}"
{upstream_headers}
read_timeout = 2.0
{upstream_extra}

[keys]
signing_key_file = "{signing_key_file()}"

[policy]
poll_interval_seconds = 0.5

[lockout]
stale_after_seconds = 2.0
# Lifting mechanics are tested with one admin; the two-person rule has its own tests.
two_person_lift = {two_person_lift}

{routes}
{extra_routes}
{extra}
"""


@dataclass
class Gateway:
    proc: Proc
    db: Database
    config_path: Path
    idp: Proc
    opaque_idp: Proc
    upstream: Proc
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proc.url

    def token(self, sub: str) -> str:
        if sub not in self._tokens:
            issuer = self.opaque_idp if sub in {u["sub"] for u in OPAQUE_USERS} else self.idp
            self._tokens[sub] = obtain_tokens(issuer.url, sub)["access_token"]
        return self._tokens[sub]

    def get(self, path: str, sub: str | None = None, **kwargs: object) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[arg-type]
        if sub:
            headers["Authorization"] = f"Bearer {self.token(sub)}"
        return requests.get(self.url + path, headers=headers, timeout=15, **kwargs)  # type: ignore[arg-type]

    def cli(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [GATEWAY_BIN, *args],
            capture_output=True,
            text=True,
            input=input,
            cwd=ROOT,
            env={
                **os.environ,
                "GATEWAY_CONFIG": str(self.config_path),
                "UPSTREAM_TOKEN": UPSTREAM_TOKEN,
            },
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"gateway {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def audit_rows(self, request_id: str) -> list:
        return self.db.rows(
            "SELECT record_id, record_sha256, decision, reason, subject, vendor, project, task, "
            "policy_version, bytes FROM access_log WHERE request_id = :rid ORDER BY seq",
            rid=request_id,
        )


def launch_gateway(
    tmp: Path,
    db: Database,
    idp: Proc,
    opaque_idp: Proc,
    upstream: Proc,
    *,
    workers: int = 2,
    opaque_mode: str = "userinfo",
    extra_routes: str = "",
    routes: str | None = None,
    acme_issuer_keys: str = "jwks_min_refresh_seconds = 30",
    upstream_extra: str = "",
    upstream_headers: str = 'headers = { Authorization = "Token ${UPSTREAM_TOKEN}" }',
    extra: str = "",
    two_person_lift: str = "[]",
    serve: bool = False,
    env: dict[str, str] | None = None,
) -> Gateway:
    """A gateway under gunicorn; `{gateway_url}` in `extra` becomes its own address.

    `serve`: started as production starts it, `gateway serve` (gateway/gunicorn.conf.py),
    instead of a bare gunicorn command line."""
    port = free_port()
    config_path = tmp / "gateway.toml"
    config_path.write_text(
        gateway_config(
            db_url=db.url,
            idp_url=idp.url,
            opaque_idp_url=opaque_idp.url,
            upstream_url=upstream.url,
            opaque_mode=opaque_mode,
            extra_routes=extra_routes,
            routes=routes,
            acme_issuer_keys=acme_issuer_keys,
            upstream_extra=upstream_extra,
            upstream_headers=upstream_headers,
            extra=extra.replace("{gateway_url}", f"http://127.0.0.1:{port}"),
            two_person_lift=two_person_lift,
        )
    )
    gateway = Gateway(None, db, config_path, idp, opaque_idp, upstream)  # type: ignore[arg-type]
    gateway.cli("db", "upgrade")
    policy_file = tmp / "policy.csv"
    policy_file.write_text(TEST_POLICY)
    gateway.cli("policy", "import", str(policy_file), "--reason", "test policy")
    argv = [
        PYTHON,
        "-m",
        "gunicorn",
        "-k",
        "gateway.serving.GatewayThreadWorker",
        "-w",
        str(workers),
        "--threads",
        "8",
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "2",
        "gateway.wsgi:app",
    ]
    if serve:
        argv = [GATEWAY_BIN, "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    gateway.proc = start(
        argv,
        f"http://127.0.0.1:{port}",
        tmp / "gateway.log",
        env={"GATEWAY_CONFIG": str(config_path), "UPSTREAM_TOKEN": UPSTREAM_TOKEN, **(env or {})},
        ready_path="/_gateway/health",
    )
    wait_ready(gateway.url)
    return gateway


@contextmanager
def dedicated_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    idp: Proc,
    opaque_idp: Proc,
    upstream: Proc,
    name: str,
    **options: Any,
) -> Iterator[Gateway]:
    """A gateway of its own on its own SQLite database, for tests that change what others
    rely on (lock whole vendors, grant, fuzz); stopped when the block ends."""
    with new_database("sqlite", tmp_path_factory) as db:
        gw = launch_gateway(tmp_path_factory.mktemp(name), db, idp, opaque_idp, upstream, **options)
        try:
            yield gw
        finally:
            gw.proc.stop()


def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(url + "/_gateway/ready", timeout=5).status_code == 200:
            return
        time.sleep(0.2)
    raise RuntimeError("gateway never became ready")


@pytest.fixture(scope="session")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    database: Database,
    idp: Proc,
    opaque_idp: Proc,
    upstream: Proc,
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp(f"gateway-{database.kind}")
    gw = launch_gateway(tmp, database, idp, opaque_idp, upstream)
    yield gw
    gw.proc.stop()
