"""`make demo`: the whole system on one machine, with real processes and a real login.

    python -m gateway.demo.runner            # start everything, show it working, wait for Ctrl-C
    python -m gateway.demo.runner --check    # same, then verify the outcomes and exit 0/1

What runs (all on 127.0.0.1, logs in var/):

- the stock `oidc-provider-mock` as the lab's IdP, with contractors alice and bob of
  vendor `acme` and carol of vendor `globex`, and the lab's own ann (role `admin`) and
  audrey (role `auditor`); it hands out opaque tokens, which the gateway checks at the
  IdP's userinfo endpoint. The demo's config marks this issuer `roles_trusted`, so ann's
  and audrey's tokens open the admin and auditor APIs;
- the bundled sample dataset service (`gateway demo-upstream`), which only answers
  requests carrying the service token that the gateway alone holds;
- the gateway under gunicorn, on a fresh SQLite database `var/gateway.db` seeded with
  `policies/demo.csv`, configured by `var/gateway.toml` (config/gateway.toml with the
  demo's ports, database and trusted roles).

Then it logs in as alice (authorization code flow), makes the requests a newcomer would
try, calls the admin and auditor APIs as ann and audrey, reads the audit rows and prints
the outcomes, the commands to repeat them by hand and the environment for the `gateway`
CLI (also written to `var/demo.env`, to `source`).

The demo owns its directory (`var/`, or `--var-dir`) while it runs: it holds an exclusive
lock on `demo.lock` there, which its long-lived children inherit. A second demo started
on the same directory, on whatever ports, refuses to start instead of deleting the
database the first one is using.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
import orjson
import urllib3

from gateway.demo.token import TokenFlowError, obtain_access_token

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var"
BASE_CONFIG = ROOT / "config" / "gateway.toml"
DEMO_POLICY = ROOT / "policies" / "demo.csv"
HOST = "127.0.0.1"
DEFAULT_IDP_PORT = 9400
DEFAULT_UPSTREAM_PORT = 9000
DEFAULT_GATEWAY_PORT = 8080

DEMO_ISSUER = "lab-idp"
DEMO_USERS = [
    {"sub": "alice", "vendor": "acme", "email": "alice@acme.example"},
    {"sub": "bob", "vendor": "acme", "email": "bob@acme.example"},
    {"sub": "carol", "vendor": "globex", "email": "carol@globex.example"},
    # The lab's own people: roles count because the demo config trusts this issuer's.
    {"sub": "ann", "vendor": "lab", "email": "ann@lab.example", "roles": ["admin"]},
    {"sub": "audrey", "vendor": "lab", "email": "audrey@lab.example", "roles": ["auditor"]},
]
AUDIT_SQL = (
    "select time, subject, vendor, project, record_id, decision "
    "from access_log order by id desc limit 20"
)
TAIL_LINES = 40


class DemoError(Exception):
    """Something the newcomer must fix or know about; printed without a traceback."""


# --- child processes ---------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def running(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = TAIL_LINES) -> str:
        self.log_file.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(log is empty)"

    def failure(self, problem: str) -> DemoError:
        log = _display(self.log_path)
        return DemoError(f"{self.name} {problem}\n--- last lines of {log} ---\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM the child's process group (it runs in its own session), then SIGKILL."""
        if self.running():
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
            except ProcessLookupError:
                pass
        self.log_file.close()


@dataclass
class Ports:
    idp: int
    upstream: int
    gateway: int

    @property
    def idp_url(self) -> str:
        return f"http://{HOST}:{self.idp}"

    @property
    def upstream_url(self) -> str:
        return f"http://{HOST}:{self.upstream}"

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.gateway}"


class DirectoryLock:
    """An exclusive `flock` on `<var>/demo.lock`: this demo owns the directory and its database.

    The lock belongs to the open file, so the long-lived children, which inherit the
    descriptor, keep holding it: a gateway left running by a runner that was killed still
    protects its database. It goes away with the last process holding it; the file stays.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, description: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.path.read_text(errors="replace").strip() or "unknown"
            os.close(fd)
            var = _display(self.path.parent)
            raise DemoError(
                f"another demo (or a process it started) is running on {var}/ ({holder}).\n"
                f"Its database {var}/gateway.db is left as it is. Stop that demo first "
                f"(Ctrl-C where it runs), or give this one a directory of its own with "
                f"--var-dir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, description.encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class Demo:
    ports: Ports
    timeout: float
    var: Path = VAR
    upstream_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    children: list[Child] = field(default_factory=list)
    http: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(num_pools=4))
    lock: DirectoryLock | None = None
    env_file_written: bool = False

    @property
    def db_path(self) -> Path:
        return self.var / "gateway.db"

    @property
    def config_path(self) -> Path:
        return self.var / "gateway.toml"

    @property
    def env_path(self) -> Path:
        return self.var / "demo.env"

    # --- environment -------------------------------------------------------------------

    def gateway_env(self) -> dict[str, str]:
        # Inherited GATEWAY_* overrides would silently change the demo; it uses its own.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            PYTHONUNBUFFERED="1",
            GATEWAY_CONFIG=str(self.config_path),
            UPSTREAM_TOKEN=self.upstream_token,
        )
        return env

    def cli_environment(self) -> list[tuple[str, str]]:
        """What a shell needs to run the `gateway` CLI and the README examples on this demo."""
        return [
            ("GATEWAY_CONFIG", str(self.config_path)),
            ("UPSTREAM_TOKEN", self.upstream_token),
            ("GATEWAY_URL", self.ports.gateway_url),
            ("DEMO_IDP_URL", self.ports.idp_url),
        ]

    def prepare(self) -> None:
        for name in ("oidc-provider-mock", "gateway"):
            if not _venv_bin(name).exists():
                raise DemoError(
                    f"{_venv_bin(name)} is missing: run `make install` first "
                    "(it installs the project with its dev extras)"
                )
        ports = [
            ("OIDC provider", "--idp-port", self.ports.idp),
            ("dataset service", "--upstream-port", self.ports.upstream),
            ("gateway", "--gateway-port", self.ports.gateway),
        ]
        if len({port for _, _, port in ports}) != len(ports):
            raise DemoError(f"the three ports must differ, got {[p for _, _, p in ports]}")
        self.var.mkdir(parents=True, exist_ok=True)
        # Before anything in the directory is touched: another demo may be using it.
        lock = DirectoryLock(self.var / "demo.lock")
        lock.acquire(f"pid {os.getpid()}, gateway {self.ports.gateway_url}\n")
        self.lock = lock
        for name, flag, port in ports:
            if _port_taken(port):
                raise DemoError(
                    f"port {port} on {HOST} is already in use, so the {name} cannot start "
                    f"there.\nIs another `make demo` still running? Stop it, or choose another "
                    f"port with {flag}."
                )
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        self.env_path.unlink(missing_ok=True)
        _write_demo_config(self.ports, self.db_path, self.config_path)

    def write_env_file(self) -> None:
        """`var/demo.env`: the CLI environment, for `source` (it holds the service token)."""
        lines = [
            "# The running demo's environment for the `gateway` CLI and the README examples:",
            f"#   source {_display(self.env_path)}",
            *(f"export {name}={shlex.quote(value)}" for name, value in self.cli_environment()),
            f'export PATH={shlex.quote(str(_venv_bin("gateway").parent))}:"$PATH"',
        ]
        fd = os.open(self.env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write("\n".join(lines) + "\n")
        self.env_file_written = True

    # --- processes ---------------------------------------------------------------------

    def start(self, name: str, log_name: str, argv: list[str], env: dict[str, str]) -> Child:
        log_path = self.var / log_name
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed by Child.stop
        try:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C reaches only us, and we stop the children in order.
                start_new_session=True,
                # The directory lock: held while any of them runs, even if we are killed.
                pass_fds=(self.lock.fd,) if self.lock and self.lock.fd is not None else (),
            )
        except OSError as error:
            log_file.close()
            raise DemoError(f"cannot start the {name} ({argv[0]}): {error}") from None
        child = Child(name, process, log_path, log_file)
        self.children.append(child)
        return child

    def wait_for(
        self,
        child: Child,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        what: str = "answer",
    ) -> None:
        """Poll `url` until it answers 200, failing fast if the child exits."""
        deadline = time.monotonic() + self.timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not child.running():
                raise child.failure(f"exited with code {child.process.returncode} while starting")
            try:
                response = self.http.request(
                    "GET", url, headers=headers, timeout=2.0, retries=False, redirect=False
                )
            except urllib3.exceptions.HTTPError:
                last = "connection refused"
            else:
                if response.status == 200:
                    return
                body = " ".join(response.data[:300].decode("utf-8", "replace").split())
                last = f"HTTP {response.status} {body}"
            time.sleep(0.2)
        raise child.failure(f"did not {what} within {self.timeout:g}s ({url}: {last})")

    def cli(self, *args: str) -> str:
        argv = [str(_venv_bin("gateway")), *args]
        try:
            result = subprocess.run(
                argv,
                cwd=ROOT,
                env=self.gateway_env(),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DemoError(f"`gateway {' '.join(args)}` did not finish in 120s") from None
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise DemoError(f"`gateway {shlex.join(args)}` failed:\n{output}")
        return result.stdout.strip()

    def start_all(self) -> None:
        idp_argv = [str(_venv_bin("oidc-provider-mock")), "--host", HOST]
        idp_argv += ["--port", str(self.ports.idp)]
        for user in DEMO_USERS:
            idp_argv += ["--user-claims", json.dumps(user)]
        idp_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        idp = self.start("OIDC provider", "idp.log", idp_argv, {**idp_env, "PYTHONUNBUFFERED": "1"})

        upstream_argv = [str(_venv_bin("gateway")), "demo-upstream", "--host", HOST]
        upstream_argv += ["--port", str(self.ports.upstream)]
        # The service token goes by environment (UPSTREAM_TOKEN), not argv, so `ps` shows none.
        upstream = self.start("dataset service", "upstream.log", upstream_argv, self.gateway_env())

        self.wait_for(idp, f"{self.ports.idp_url}/.well-known/openid-configuration", what="come up")
        self.wait_for(
            upstream,
            f"{self.ports.upstream_url}/api/projects",
            headers={"Authorization": f"Token {self.upstream_token}"},
            what="come up",
        )

        click.echo("  " + self.cli("db", "upgrade"))
        click.echo("  " + self.cli("policy", "import", str(DEMO_POLICY), "--reason", "demo seed"))

        gateway_argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gateway.serving.GatewayThreadWorker",
            "-w",
            "2",
        ]
        gateway_argv += ["--threads", "8", "-b", f"{HOST}:{self.ports.gateway}", "wsgi:app"]
        gateway = self.start("gateway", "gateway.log", gateway_argv, self.gateway_env())
        self.wait_for(gateway, f"{self.ports.gateway_url}/_gateway/ready", what="become ready")

    def stop_all(self) -> None:
        self.http.clear()
        if self.env_file_written:
            # Whoever sources it later must not aim the CLI at a demo that is gone.
            self.env_path.unlink(missing_ok=True)
            self.env_file_written = False
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def watch(self) -> None:
        """Block until Ctrl-C / SIGTERM; a child that dies on its own ends the demo."""
        while True:
            for child in self.children:
                if not child.running():
                    raise child.failure(f"exited unexpectedly (code {child.process.returncode})")
            time.sleep(0.5)

    # --- the walk-through --------------------------------------------------------------

    def get(self, path: str, token: str) -> urllib3.BaseHTTPResponse:
        try:
            return self.http.request(
                "GET",
                self.ports.gateway_url + path,
                headers={"Authorization": f"Bearer {token}"},
                timeout=15.0,
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as error:
            raise DemoError(f"GET {path} through the gateway failed: {error}") from None

    def walkthrough(self) -> list[str]:
        """Run the newcomer's requests once; print outcomes; return the failed expectations."""
        problems: list[str] = []
        click.echo("\nRan once for you, as alice (vendor acme):")
        try:
            token = obtain_access_token(self.ports.idp_url, "alice")
        except TokenFlowError as error:
            raise DemoError(f"logging in as alice failed: {error}") from None
        _outcome("log in", f"authorization code flow -> opaque access token ({len(token)} chars)")

        steps = [
            Step(TASK_PAGE, "proj-1/task-1, limit 5", expect_page),
            Step(DENIED, "proj-3 (no grant)", expect_denied),
            Step(FILTERED, "proj-2, records 298-301", expect_filtered),
        ]
        released_total = allow_rows_total = rows_total = 0
        for step in steps:
            response = self.get(step.path, token)
            rows = audit_rows(self.db_path, response.headers.get("X-Request-Id", ""))
            result = step.check(response, rows)
            released_total += result.released
            allow_rows_total += sum(1 for r in rows if r["decision"] == "allow" and r["record_id"])
            rows_total += len(rows)
            _outcome(step.label, result.summary, ok=not result.problems)
            problems += [f"{step.label}: {p}" for p in result.problems]
        balanced = released_total == allow_rows_total
        _outcome(
            "access log",
            f"{rows_total} rows for these 3 requests; {released_total} records released, "
            f"{allow_rows_total} 'allow' rows (ids and SHA-256 checked)",
            ok=balanced and not problems,
        )
        if not balanced:
            problems.append(
                f"audit: {released_total} records released but {allow_rows_total} 'allow' rows"
            )
        return problems + self.lab_walkthrough(token, rows_total)

    def lab_walkthrough(self, alice_token: str, access_rows: int) -> list[str]:
        """The admin and auditor APIs, as ann and audrey; alice's token must not open them."""
        click.echo(
            f"\nThe lab's own APIs, as admin ann and auditor audrey ({DEMO_ISSUER} is trusted "
            "for roles):"
        )
        tokens = {}
        for sub in ("ann", "audrey"):
            try:
                tokens[sub] = obtain_access_token(self.ports.idp_url, sub)
            except TokenFlowError as error:
                raise DemoError(f"logging in as {sub} failed: {error}") from None
        checks = [
            ("ann: policy explain", EXPLAIN, tokens["ann"], expect_explained),
            (
                "audrey: audit events",
                EVENTS,
                tokens["audrey"],
                lambda response: expect_events(response, access_rows),
            ),
            ("alice: policy explain", EXPLAIN, alice_token, expect_no_role),
        ]
        problems: list[str] = []
        for label, path, token, check in checks:
            result = check(self.get(path, token))
            _outcome(label, result.summary, ok=not result.problems)
            problems += [f"{label}: {p}" for p in result.problems]
        return problems

    # --- what to type --------------------------------------------------------------------

    def print_commands(self) -> None:
        python = _display(Path(sys.executable))
        idp = "" if self.ports.idp == DEFAULT_IDP_PORT else f" --idp {self.ports.idp_url}"
        gw = self.ports.gateway_url
        auth = '-H "Authorization: Bearer $TOKEN"'
        db = _display(self.db_path)
        where = "" if Path.cwd().resolve() == ROOT else f" (from {ROOT})"
        python_sql = (
            f"{python} -c \"import sqlite3; [print(*r, sep=' | ') for r in "
            f"sqlite3.connect('{db}').execute('{AUDIT_SQL}')]\""
        )
        lines = [
            f"\nTry it yourself{where}:",
            "  # log in as alice (also: bob of acme, carol of globex)",
            f"  TOKEN=$({python} -m gateway.demo.token{idp} --sub alice)",
            "  # a page of records from a task alice's vendor may read",
            f"  curl -s {auth} '{gw}{TASK_PAGE}'",
            "  # a project alice has no grant for: 403, and the denial is logged",
            f"  curl -s -w '\\nHTTP %{{http_code}}\\n' {auth} '{gw}{DENIED}'",
            "  # a project listing spanning task-1 and task-2: alice may read task-1 only,",
            "  # so the task-2 records are removed and logged as 'filtered'",
            f"  curl -s {auth} '{gw}{FILTERED}'",
            "  # the per-record access log",
        ]
        sqlite_cli = f'  sqlite3 {db} "{AUDIT_SQL}"'
        if shutil.which("sqlite3"):
            lines += [sqlite_cli, "  # or, without the sqlite3 command:", f"  {python_sql}"]
        else:
            lines += [
                f"  {python_sql}",
                "  # (or, once the sqlite3 command is installed:)",
                sqlite_cli,
            ]
        lines += [
            "  # the lab's admin ann and auditor audrey (roles from the trusted IdP)",
            f"  TOKEN=$({python} -m gateway.demo.token{idp} --sub ann)",
            f"  curl -s {auth} '{gw}{EXPLAIN}'",
            f"  TOKEN=$({python} -m gateway.demo.token{idp} --sub audrey)",
            f"  curl -s {auth} '{gw}{EVENTS}'",
        ]
        click.echo("\n".join(lines))

    def print_cli_environment(self) -> None:
        """The exact lines that point the `gateway` CLI (and the README examples) at this demo."""
        env = self.cli_environment()
        first = " ".join(f"{name}={shlex.quote(value)}" for name, value in env[:2])
        second = " ".join(f"{name}={shlex.quote(value)}" for name, value in env[2:])
        bin_dir = shlex.quote(str(_venv_bin("gateway").parent))
        # Relative to the checkout only when the reader's shell is there.
        here = Path.cwd().resolve() == ROOT
        env_file = shlex.quote(_display(self.env_path) if here else str(self.env_path))
        click.echo(
            "\nThe `gateway` CLI and the README examples on this demo need its environment:\n"
            f"  export {first}\n"
            f"  export {second}\n"
            f'  export PATH={bin_dir}:"$PATH"\n'
            f"or, the same: source {env_file}   (removed when the demo stops)\n"
            "  gateway policy list --project proj-2\n"
            "  gateway audit query --vendor acme --format table"
        )


# --- the requests and what they must show ------------------------------------------------

TASK_PAGE = "/api/projects/proj-1/tasks/task-1/records?limit=5"
DENIED = "/api/projects/proj-3/tasks/task-1/records?limit=5"
FILTERED = "/api/projects/proj-2/records?offset=298&limit=4"
EXPLAINED_RULE = f"p, {DEMO_ISSUER}:alice, proj-2, task-1, read, allow"
EXPLAIN = (
    f"/_gateway/admin/policy/explain?sub={DEMO_ISSUER}:alice&vendor=acme"
    "&project=proj-2&task=task-1&action=read"
)
EVENTS = "/_gateway/audit/events?vendor=acme&limit=100"


@dataclass
class StepResult:
    summary: str
    released: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Step:
    path: str
    label: str
    check: Callable[[urllib3.BaseHTTPResponse, list[dict[str, Any]]], StepResult]


def _records(response: urllib3.BaseHTTPResponse) -> list[dict[str, Any]]:
    try:
        body = orjson.loads(response.data)
    except orjson.JSONDecodeError:
        return []
    records = body.get("records") if isinstance(body, dict) else None
    return records if isinstance(records, list) else []


def canonical_sha256(record: dict[str, Any]) -> str:
    """The gateway's record fingerprint: SHA-256 of the record's canonical JSON."""
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _logged_release_problems(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list:
    """Every record the client received has exactly one 'allow' row with its id and hash."""
    released = sorted((r["id"], canonical_sha256(r)) for r in records)
    logged = sorted(
        (r["record_id"], r["record_sha256"])
        for r in rows
        if r["decision"] == "allow" and r["record_id"]
    )
    if released != logged:
        return [f"records released {released} do not match 'allow' audit rows {logged}"]
    return []


def _identity_problems(rows: list[dict[str, Any]]) -> list[str]:
    wrong = {(r["issuer"], r["subject"], r["vendor"]) for r in rows} - {
        ("lab-idp", "alice", "acme")
    }
    return [f"audit rows name {sorted(wrong)}, expected lab-idp/alice/acme"] if wrong else []


def expect_page(response: urllib3.BaseHTTPResponse, rows: list[dict[str, Any]]) -> StepResult:
    records = _records(response) if response.status == 200 else []
    summary = (
        f"HTTP {response.status}, {len(records)} records released, "
        f"{len(rows)} audit rows ({_decisions(rows)})"
    )
    problems = []
    if response.status != 200 or len(records) != 5:
        problems.append(f"expected HTTP 200 with 5 records, got {response.status}/{len(records)}")
    problems += _logged_release_problems(records, rows) + _identity_problems(rows)
    return StepResult(summary, len(records), problems)


def expect_denied(response: urllib3.BaseHTTPResponse, rows: list[dict[str, Any]]) -> StepResult:
    reason = rows[0]["reason"] if len(rows) == 1 else "?"
    summary = f"HTTP {response.status}, {len(rows)} audit row ({_decisions(rows)}, {reason})"
    problems = []
    if response.status != 403:
        problems.append(f"expected HTTP 403, got {response.status}")
    if [(r["decision"], r["record_id"]) for r in rows] != [("deny", None)]:
        problems.append(f"expected one 'deny' row without a record, got {_decisions(rows)}")
    problems += _identity_problems(rows)
    return StepResult(summary, 0, problems)


def expect_filtered(response: urllib3.BaseHTTPResponse, rows: list[dict[str, Any]]) -> StepResult:
    records = _records(response) if response.status == 200 else []
    filtered = [r for r in rows if r["decision"] == "filtered"]
    summary = (
        f"HTTP {response.status}, {len(records)} of 4 records released "
        f"({', '.join(sorted({r.get('task', '?') for r in records})) or 'none'}), "
        f"{len(filtered)} withheld; audit: {_decisions(rows)}"
    )
    problems = []
    if response.status != 200 or [r.get("task") for r in records] != ["task-1", "task-1"]:
        problems.append("expected HTTP 200 with exactly the two task-1 records")
    if [r["task"] for r in filtered] != ["task-2", "task-2"]:
        problems.append(f"expected two 'filtered' task-2 rows, got {_decisions(rows)}")
    problems += _logged_release_problems(records, rows) + _identity_problems(rows)
    return StepResult(summary, len(records), problems)


def _json_object(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    try:
        body = orjson.loads(response.data)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def expect_explained(response: urllib3.BaseHTTPResponse) -> StepResult:
    body = _json_object(response)
    decision = body.get("decision", "?")
    summary = f"HTTP {response.status}, {decision}, by: {', '.join(body.get('allow_rules', []))}"
    problems = []
    if response.status != 200 or decision != "allow":
        problems.append(f"expected HTTP 200 and 'allow', got {response.status}/{decision}")
    elif EXPLAINED_RULE not in body.get("allow_rules", []):
        problems.append(f"expected the rule {EXPLAINED_RULE!r} among {body.get('allow_rules')}")
    return StepResult(summary, 0, problems)


def expect_events(response: urllib3.BaseHTTPResponse, expected: int) -> StepResult:
    events = _json_object(response).get("events")
    count = len(events) if isinstance(events, list) else 0
    summary = f"HTTP {response.status}, {count} access-log events of vendor acme (the rows above)"
    problems = []
    if response.status != 200 or count != expected:
        problems.append(f"expected HTTP 200 with {expected} events, got {response.status}/{count}")
    return StepResult(summary, 0, problems)


def expect_no_role(response: urllib3.BaseHTTPResponse) -> StepResult:
    error = _json_object(response).get("error", "?")
    summary = f"HTTP {response.status} {error}: a contractor's token carries no admin role"
    problems = []
    if response.status != 403:
        problems.append(f"expected HTTP 403, got {response.status}")
    return StepResult(summary, 0, problems)


def _outcome(label: str, summary: str, *, ok: bool = True) -> None:
    click.echo(f"  {'ok  ' if ok else 'FAIL'}  {label:<24} {summary}")


def _decisions(rows: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["decision"]] = counts.get(row["decision"], 0) + 1
    return ", ".join(f"{n} {decision}" for decision, n in sorted(counts.items())) or "none"


def audit_rows(db_path: Path, request_id: str) -> list[dict[str, Any]]:
    """The access-log rows of one request (committed before the response was released)."""
    if not request_id:
        return []
    connection = sqlite3.connect(db_path, timeout=30)
    try:
        connection.row_factory = sqlite3.Row
        cursor = connection.execute(
            "select issuer, subject, vendor, project, task, record_id, record_sha256, "
            "decision, reason from access_log where request_id = ? order by seq",
            (request_id,),
        )
        return [dict(row) for row in cursor]
    finally:
        connection.close()


# --- helpers -----------------------------------------------------------------------------


def _venv_bin(name: str) -> Path:
    # Not resolved: a venv's python is a symlink, and its scripts live beside the link.
    return Path(sys.executable).with_name(name)


def _display(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(ROOT))
    except ValueError:
        return str(path)


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the servers use, so a lingering TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _write_demo_config(ports: Ports, db_path: Path, path: Path) -> None:
    """config/gateway.toml as the demo runs it: its ports, its database, trusted roles.

    The issuer lives in an array of tables, which GATEWAY_<SECTION>__<KEY> cannot reach,
    so the file is written rather than overridden. The database path is absolute, so the
    CLI finds it from any directory. The demo's IdP is the lab's own (its `vendor_claim`
    says so already) and also holds the lab's admin and auditor, so its `roles` claim is
    trusted here; config/gateway.toml itself leaves `roles_trusted` off.
    """
    text = BASE_CONFIG.read_text(encoding="utf-8")
    replacements = [
        (f'"http://{HOST}:{DEFAULT_IDP_PORT}"', f'"{ports.idp_url}"'),
        (f'"http://{HOST}:{DEFAULT_UPSTREAM_PORT}"', f'"{ports.upstream_url}"'),
        ('url = "sqlite:///var/gateway.db"', f"url = {_toml_string(f'sqlite:///{db_path}')}"),
        (
            f'name = "{DEMO_ISSUER}"\n',
            f'name = "{DEMO_ISSUER}"\n'
            "roles_trusted = true   # the demo: ann (admin) and audrey (auditor) log in here\n",
        ),
    ]
    for old, new in replacements:
        if text.count(old) != 1:
            raise DemoError(f"{BASE_CONFIG} does not contain {old.strip()!r} once; cannot adapt it")
        text = text.replace(old, new)
    header = (
        "# Written by `python -m gateway.demo.runner` from config/gateway.toml for the running\n"
        "# demo (its ports, its database, roles_trusted for its IdP); rewritten on every start.\n"
    )
    path.write_text(header + text, encoding="utf-8")


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --- entry point -------------------------------------------------------------------------


@click.command()
@click.option("--check", is_flag=True, help="verify the outcomes and exit 0/1 instead of waiting")
@click.option("--idp-port", default=DEFAULT_IDP_PORT, show_default=True)
@click.option("--upstream-port", default=DEFAULT_UPSTREAM_PORT, show_default=True)
@click.option("--gateway-port", default=DEFAULT_GATEWAY_PORT, show_default=True)
@click.option("--timeout", default=30.0, show_default=True, help="seconds each service may take")
@click.option(
    "--var-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=VAR,
    help="directory for the database, logs, config and env file  [default: var/]",
)
def main(
    check: bool,
    idp_port: int,
    upstream_port: int,
    gateway_port: int,
    timeout: float,
    var_dir: Path,
) -> None:
    """Run the IdP, the sample dataset service and the gateway, and show them working."""
    # Installed explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    demo = Demo(Ports(idp_port, upstream_port, gateway_port), timeout, var_dir.absolute())
    code = 0
    try:
        demo.prepare()
        click.echo(f"Starting the demo (logs and database in {_display(demo.var)}/):")
        demo.start_all()
        ports = demo.ports
        click.echo(
            "\nUp and running:\n"
            f"  OIDC provider    {ports.idp_url}  alice, bob (vendor acme), carol (globex);\n"
            "                   the lab's ann (admin) and audrey (auditor)\n"
            f"  dataset service  {ports.upstream_url}  (answers only the gateway's token)\n"
            f"  gateway          {ports.gateway_url}  policy: {_display(DEMO_POLICY)}\n"
            f"  access log       {_display(demo.db_path)}"
        )
        problems = demo.walkthrough()
        demo.print_commands()
        demo.write_env_file()
        demo.print_cli_environment()
        if check:
            if problems:
                click.echo("\nCHECK FAILED:\n" + "\n".join(f"  - {p}" for p in problems))
                code = 1
            else:
                click.echo("\nCHECK PASSED: every expected outcome was observed.")
        else:
            if problems:
                click.echo(
                    "\nSome outcomes were not as expected:\n"
                    + "\n".join(f"  - {p}" for p in problems)
                )
            click.echo("\nPress Ctrl-C to stop the demo.")
            demo.watch()
    except KeyboardInterrupt:
        click.echo("\nStopping the demo...")
        code = 130 if check else 0
    except DemoError as error:
        click.echo(f"\ndemo failed: {error}", err=True)
        code = 1
    finally:
        # A second Ctrl-C must not leave children behind half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.stop_all()
    sys.exit(code)


if __name__ == "__main__":
    main()
