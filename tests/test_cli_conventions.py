"""One command line: `--json` on every command that prints a result, `--format` only where an
export file is written, one time format (RFC 3339 UTC `Z`), `--config` before or after the
command, `--version`, shell completion. Run as an operator would: the installed script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import pytest

from gateway.cli import main
from tests.conftest import signing_key_file

GATEWAY = str(Path(sys.executable).parent / "gateway")

# Commands whose output is itself the document (or that run until stopped).
WITHOUT_JSON = {
    "serve": "runs the gateway",
    "demo-upstream": "runs the sample service",
    "config schema": "prints a JSON Schema",
    "policy export": "prints the policy as Casbin CSV",
    "audit export": "writes an export (--format csv, jsonl, ocsf)",
    "audit checkpoint export": "writes checkpoints as JSON lines",
    "keys export-jwks": "prints a JWKS",
    "anomalies watch": "runs until stopped, logging each scan",
}
# Where --format names the format of a file written.
WITH_FORMAT = {"audit export", "audit exposure"}

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
LOOKS_LIKE_TIME = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


def commands(group: click.Group, path: tuple[str, ...] = ()) -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= commands(command, (*path, name))
        else:
            found[" ".join((*path, name))] = command
    return found


def visible_options(command: click.Command) -> set[str]:
    return {
        opt
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden
        for opt in param.opts
    }


def test_every_command_that_prints_a_result_takes_json() -> None:
    every = commands(main)
    assert set(WITHOUT_JSON) <= set(every), set(WITHOUT_JSON) - set(every)
    missing = [
        name for name, command in every.items()
        if name not in WITHOUT_JSON and "--json" not in visible_options(command)
    ]  # fmt: skip
    assert missing == []
    formats = {name for name, command in every.items() if "--format" in visible_options(command)}
    assert formats == WITH_FORMAT


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAY, *args], capture_output=True, text=True, timeout=120, env=env or {"PATH": "/bin"}
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gateway, version {version('contractor-gateway')}"


def test_shell_completion_script() -> None:
    # The README's recipe: eval "$(_GATEWAY_COMPLETE=bash_source gateway)".
    script = run(env={"PATH": "/bin", "_GATEWAY_COMPLETE": "bash_source"})
    assert script.returncode == 0
    assert "complete" in script.stdout and "_GATEWAY_COMPLETE" in script.stdout
    words = run(
        env={
            "PATH": "/bin",
            "_GATEWAY_COMPLETE": "bash_complete",
            "COMP_WORDS": "gateway pol",
            "COMP_CWORD": "1",
        }
    )
    assert "policy" in words.stdout


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "gateway.db"}"

[[issuers]]
name = "acme-idp"
issuer = "https://idp.acme.example"
audience = "https://gateway.test"
vendor = "acme"

[upstream]
url = "http://127.0.0.1:9"

[keys]
signing_key_file = "{signing_key_file()}"

[[projects]]
name = "proj-1"
"""
    )
    return path


def times_in(value: Any, found: list[str]) -> list[str]:
    if isinstance(value, dict):
        for item in value.values():
            times_in(item, found)
    elif isinstance(value, list):
        for item in value:
            times_in(item, found)
    elif isinstance(value, str) and LOOKS_LIKE_TIME.match(value):
        found.append(value)
    return found


def test_config_before_the_command_and_one_time_format(config: Path) -> None:
    def ok(*args: str) -> Any:
        result = run("--config", str(config), *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert ok("db", "upgrade") == {"ok": True, "revision": "head"}
    assert ok("config", "check") == {"ok": True, "issuers": 1, "routes": 0}
    granted = ok(
        "policy", "grant", "--sub", "acme-idp:alice", "--project", "proj-1",
        "--action", "read", "--until", "8h", "--reason", "conventions", "--actor", "ann",
    )  # fmt: skip
    assert granted["version"] == 1 and granted["dry_run"] is False
    outputs = [
        granted,
        ok("policy", "list"),
        ok("policy", "history"),
        ok("keys", "list"),
        ok("lock", "contractor", "acme-idp:alice", "--reason", "drill", "--ttl", "1h"),
        ok("locks"),
        ok("audit", "verify"),
    ]
    found: list[str] = []
    for output in outputs:
        times_in(output, found)
    # A grant's expiry, a version's time, a key's validity, a lock's times at least.
    assert len(found) >= 5, outputs
    assert [t for t in found if not TIME.match(t)] == [], found
    # --config after the command still wins over the one before it.
    elsewhere = config.with_name("missing.toml")
    result = run("--config", str(elsewhere), "policy", "list", "--config", str(config))
    assert result.returncode == 0, result.stderr
    result = run("--config", str(elsewhere), "policy", "list")
    assert result.returncode == 1 and "missing.toml does not exist" in result.stderr


def test_json_output_carries_nothing_else(config: Path) -> None:
    # Progress and notes go to stderr: stdout must parse as one JSON document.
    assert run("--config", str(config), "db", "upgrade").returncode == 0
    result = run("--config", str(config), "audit", "query", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"events": [], "next_cursor": None}
    table = run("--config", str(config), "audit", "query")
    assert table.stdout.split()[:2] == ["time", "contractor"]
