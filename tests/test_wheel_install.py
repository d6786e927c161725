"""The gateway as an operator installs it: a wheel built from this tree, installed with the
hash-pinned runtime lock into a fresh virtual environment outside the repository, then
used from a directory that holds no source: check-config, db upgrade, policy import and
explain, and a real request through `gateway serve` (gunicorn) to the sample service.

The demo package is deleted from the installed copy first, as the Dockerfile does, so
the runtime is proven not to need it. Runs once (SQLite); the wheel and the venv cost
~30 s with pip's cache warm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    ROOT,
    TEST_POLICY,
    UPSTREAM_TOKEN,
    Proc,
    free_port,
    gateway_config,
    wait_http,
    wait_ready,
)
from tests.support.oidc_client import obtain_tokens

LOCK = ROOT / "requirements" / "runtime.lock"


@dataclass
class Installed:
    wheel: Path
    venv: Path
    workdir: Path

    @property
    def gateway(self) -> str:
        return str(self.venv / "bin" / "gateway")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def env(self, config: Path | None = None) -> dict[str, str]:
        # Nothing from the test run's environment that could point back at the repository.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "VIRTUAL_ENV", "GATEWAY_CONFIG"}
            and not k.startswith("GATEWAY_TEST")
        }
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env["UPSTREAM_TOKEN"] = UPSTREAM_TOKEN
        if config is not None:
            env["GATEWAY_CONFIG"] = str(config)
        return env

    def run(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.gateway, *args],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=self.env(config),
            timeout=120,
        )
        assert result.returncode == 0, f"gateway {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result


def _pip(python: str, *args: str) -> None:
    result = subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)}:\n{result.stdout[-3000:]}{result.stderr}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    _pip(sys.executable, "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dist), str(ROOT))
    (wheel,) = dist.glob("contractor_gateway-*.whl")
    venv = base / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # As the Dockerfile does: the locked dependencies by hash, then the wheel alone.
    _pip(python, "install", "--quiet", "--require-hashes", "-r", str(LOCK))
    _pip(python, "install", "--quiet", "--no-deps", str(wheel))
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shutil.rmtree(Path(site) / "gateway" / "demo")
    workdir = base / "work"
    workdir.mkdir()
    yield Installed(wheel, venv, workdir)


def test_the_wheel_carries_what_the_runtime_reads(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for needed in (
        "gateway/wsgi.py",
        "gateway/policy/model.conf",
        "gateway/db/migrations/env.py",
        "gateway/db/migrations/versions/0001_initial.py",
        "gateway/audit/ocsf_api_activity_1.3.0.json",
    ):
        assert needed in names, needed
    # Nothing outside the package: no top-level wsgi.py, tests or benchmarks.
    assert not {n for n in names if not n.startswith(("gateway/", "contractor_gateway-"))}


def test_installed_gateway_runs_outside_the_repository(
    installed: Installed, idp: Proc, opaque_idp: Proc, upstream: Proc
) -> None:
    where = subprocess.run(
        [installed.python, "-c", "import gateway; print(gateway.__file__)"],
        capture_output=True,
        text=True,
        cwd=installed.workdir,
        env=installed.env(),
        check=True,
    ).stdout.strip()
    assert where.startswith(str(installed.venv)), where
    assert not Path(where).is_relative_to(ROOT)

    config = installed.workdir / "gateway.toml"
    routes = (ROOT / "config" / "gateway.toml").read_text()
    config.write_text(
        gateway_config(
            db_url=f"sqlite:///{installed.workdir / 'gateway.db'}",
            idp_url=idp.url,
            opaque_idp_url=opaque_idp.url,
            upstream_url=upstream.url,
            routes=routes[routes.index("[[routes]]") :],
        )
    )
    assert installed.run("check-config", config=config).stdout.startswith("ok:")
    installed.run("db", "upgrade", config=config)
    policy = installed.workdir / "policy.csv"
    policy.write_text(TEST_POLICY)
    installed.run("policy", "import", str(policy), "--reason", "wheel test", config=config)
    explained = installed.run(
        "policy",
        "explain",
        "--sub",
        "acme-idp:alice",
        "--project",
        "proj-1",
        "--action",
        "read",
        config=config,
    )
    assert "allow" in explained.stdout.lower(), explained.stdout
    # The demo is gone from this install, and so is its command.
    assert "demo-upstream" not in installed.run("--help").stdout

    port = free_port()
    log = open(installed.workdir / "serve.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [installed.gateway, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=installed.workdir,
        env=installed.env(config),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc = Proc(server, f"http://127.0.0.1:{port}", installed.workdir / "serve.log")
    try:
        wait_http(proc.url + "/_gateway/health", process=server)
        wait_ready(proc.url)
        token = obtain_tokens(idp.url, "alice")["access_token"]
        response = requests.get(
            proc.url + "/api/projects/proj-1/records?limit=2",
            headers={"Authorization": f"Bearer {token}"},
            timeout=15,
        )
        assert response.status_code == 200, (response.status_code, response.text, proc.log)
        assert len(response.json()["records"]) == 2
        assert UPSTREAM_TOKEN not in response.text
        refused = requests.get(proc.url + "/api/projects/proj-1/records", timeout=15)
        assert refused.status_code == 401
    finally:
        proc.stop()
        log.close()
    listed = installed.run(
        "audit", "query", "--contractor", "acme-idp:alice", "--jsonl", config=config
    )
    events = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    released = [e for e in events if e["decision"] == "allow" and e["record_id"]]
    assert len(released) == 2, events


def test_the_lock_pins_every_runtime_dependency_by_hash() -> None:
    """requirements/runtime.lock is `make lock` of pyproject.toml: each direct runtime
    dependency is pinned there, at a version its bound admits, with hashes."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned: dict[str, str] = {}
    hashes: dict[str, int] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith((" ", "#")) and "==" in line:
            name, version = line.split(" ")[0].split("==")
            current = canonicalize_name(name.split("[")[0])
            pinned[current] = version
            hashes[current] = 0
        elif "--hash=sha256:" in line and current:
            hashes[current] += 1
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} missing from {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(pinned[name]), (name, pinned[name], spec)
    assert all(count >= 1 for count in hashes.values()), hashes


def test_the_dockerfile_installs_the_wheel_as_locked() -> None:
    """No Docker daemon in CI: the image's contract is read off the Dockerfile."""
    from gateway.config import ServerConfig

    text = (ROOT / "Dockerfile").read_text()
    base = next(line for line in text.splitlines() if line.startswith("ARG PYTHON_IMAGE="))
    tag = base.split(":", 1)[1]
    assert tag[0].isdigit() and tag.count(".") >= 2, f"base image not pinned: {base}"
    assert "--require-hashes -r /tmp/runtime.lock" in text
    assert "--no-deps /tmp/dist/*.whl" in text
    assert "pip install -e" not in text and "COPY wsgi.py" not in text
    assert "'demo')" in text  # the demo package is removed from the image
    assert 'VOLUME ["/var/lib/gateway"]' in text
    assert "--start-period=" in text
    assert 'CMD ["gateway", "serve"]' in text
    # Docker stops with SIGKILL 10 s after SIGTERM unless told otherwise.
    assert ServerConfig().graceful_timeout < 10
