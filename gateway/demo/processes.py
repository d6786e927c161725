"""The demo's child processes: the IdP, the dataset service and the gateway.

Each child runs in its own session with its output in a log under the demo's directory;
the demo starts them in order, waits until each answers, watches them and stops them in
reverse order. The directory lock, inherited by the long-lived children, keeps a second
demo off a directory (and database) in use.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import click
import urllib3

from gateway.demo.errors import DemoError
from gateway.demo.paths import DEMO_POLICY, ROOT, VAR, display, venv_bin

HOST = "127.0.0.1"
DEMO_USERS = [
    {"sub": "alice", "vendor": "acme", "email": "alice@acme.example"},
    {"sub": "bob", "vendor": "acme", "email": "bob@acme.example"},
    {"sub": "carol", "vendor": "globex", "email": "carol@globex.example"},
    # The lab's own people: roles count because the demo config trusts this issuer's.
    {"sub": "ann", "vendor": "lab", "email": "ann@lab.example", "roles": ["admin"]},
    {"sub": "audrey", "vendor": "lab", "email": "audrey@lab.example", "roles": ["auditor"]},
    # A second admin: lifting a vendor lock takes two.
    {"sub": "adam", "vendor": "lab", "email": "adam@lab.example", "roles": ["admin"]},
]
TAIL_LINES = 40


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
        log = display(self.log_path)
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
            var = display(self.path.parent)
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
        argv = [str(venv_bin("gateway")), *args]
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
        idp_argv = [str(venv_bin("oidc-provider-mock")), "--host", HOST]
        idp_argv += ["--port", str(self.ports.idp)]
        for user in DEMO_USERS:
            idp_argv += ["--user-claims", json.dumps(user)]
        idp_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        idp = self.start("OIDC provider", "idp.log", idp_argv, {**idp_env, "PYTHONUNBUFFERED": "1"})

        upstream_argv = [str(venv_bin("gateway")), "demo-upstream", "--host", HOST]
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
        gateway_argv += ["--threads", "8", "-b", f"{HOST}:{self.ports.gateway}", "gateway.wsgi:app"]
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


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the servers use, so a lingering TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False
