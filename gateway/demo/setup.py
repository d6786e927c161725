"""Getting the demo's directory ready: checks, the lock, a fresh database, its config.

Before anything starts, `prepare` checks the installed programs and the ports, takes the
directory lock and writes `<var>/gateway.toml`; once the services are up,
`write_env_file` writes `<var>/demo.env` for the reader's shell.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from gateway.demo.errors import DemoError
from gateway.demo.paths import BASE_CONFIG, display, venv_bin
from gateway.demo.processes import HOST, Demo, DirectoryLock, Ports, port_taken
from gateway.keys.signer import generate_key_file

DEFAULT_IDP_PORT = 9400
DEFAULT_UPSTREAM_PORT = 9000
DEFAULT_GATEWAY_PORT = 8080

DEMO_ISSUER = "lab-idp"


def prepare(demo: Demo) -> None:
    for name in ("oidc-provider-mock", "gateway"):
        if not venv_bin(name).exists():
            raise DemoError(
                f"{venv_bin(name)} is missing: run `make install` first "
                "(it installs the project with its dev extras)"
            )
    ports = [
        ("OIDC provider", "--idp-port", demo.ports.idp),
        ("dataset service", "--upstream-port", demo.ports.upstream),
        ("gateway", "--gateway-port", demo.ports.gateway),
    ]
    if len({port for _, _, port in ports}) != len(ports):
        raise DemoError(f"the three ports must differ, got {[p for _, _, p in ports]}")
    demo.var.mkdir(parents=True, exist_ok=True)
    # Before anything in the directory is touched: another demo may be using it.
    lock = DirectoryLock(demo.var / "demo.lock")
    lock.acquire(f"pid {os.getpid()}, gateway {demo.ports.gateway_url}\n")
    demo.lock = lock
    for name, flag, port in ports:
        if port_taken(port):
            raise DemoError(
                f"port {port} on {HOST} is already in use, so the {name} cannot start "
                f"there.\nIs another `make demo` still running? Stop it, or choose another "
                f"port with {flag}."
            )
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{demo.db_path}{suffix}").unlink(missing_ok=True)
    demo.env_path.unlink(missing_ok=True)
    write_demo_config(demo.ports, demo.db_path, demo.config_path)


def write_env_file(demo: Demo) -> None:
    """`var/demo.env`: the CLI environment, for `source` (it holds the service token)."""
    lines = [
        "# The running demo's environment for the `gateway` CLI and the README examples:",
        f"#   source {display(demo.env_path)}",
        *(f"export {name}={shlex.quote(value)}" for name, value in demo.cli_environment()),
        f'export PATH={shlex.quote(str(venv_bin("gateway").parent))}:"$PATH"',
    ]
    fd = os.open(demo.env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    demo.env_file_written = True


def write_demo_config(ports: Ports, db_path: Path, path: Path) -> None:
    """config/gateway.toml as the demo runs it: its ports, its database, trusted roles.

    The issuer lives in an array of tables, which GATEWAY_<SECTION>__<KEY> cannot reach,
    so the file is written rather than overridden. The database path is absolute, so the
    CLI finds it from any directory. The demo's IdP is the lab's own (its `vendor_claim`
    says so already) and also holds the lab's admin and auditor, so its `roles` claim is
    trusted here; config/gateway.toml itself leaves `roles_trusted` off.
    """
    text = BASE_CONFIG.read_text(encoding="utf-8")
    key_file = path.parent / "gateway-signing.pem"
    if not key_file.exists():
        generate_key_file(key_file)
    replacements = [
        (
            'signing_key_file = "var/gateway-signing.pem"',
            f"signing_key_file = {_toml_string(str(key_file))}",
        ),
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
    text += (
        "\n# The console for the demo's admins and auditors, over plain HTTP (development only:\n"
        "# a deployment serves it over HTTPS with Secure cookies).\n"
        "[console]\n"
        "enabled = true\n"
        f'issuers = ["{DEMO_ISSUER}"]\n'
        'client_id = "gateway-console"\n'
        'client_secret = "demo-console-secret"\n'
        f'public_url = "{ports.gateway_url}"\n'
        "cookie_secure = false\n"
    )
    header = (
        "# Written by `python -m gateway.demo.runner` from config/gateway.toml for the running\n"
        "# demo (its ports, its database, its signing key, roles_trusted for its IdP);\n"
        "# rewritten on every start.\n"
    )
    path.write_text(header + text, encoding="utf-8")


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string
