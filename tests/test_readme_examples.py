"""Every shell example in README.md runs, as written, against a running demo.

The examples are the ```sh, ```bash, ```shell and ```console blocks of README.md (in a
console block, the lines after a `$ ` prompt). One demo (`python -m gateway.demo.runner`,
on free ports) serves the whole module; the examples run one after another in README
order, each as one `bash -e -o pipefail` script, in a scratch copy of the checkout whose
`var/` is the demo's directory, so `source var/demo.env` and the files examples write
work as they would for a reader. The environment is the demo's CLI environment
(GATEWAY_CONFIG, UPSTREAM_TOKEN, GATEWAY_URL, DEMO_IDP_URL, .venv/bin on PATH). Each block
must exit 0.

An HTML comment on the line before a block says otherwise:

    <!-- example: production-only -->    not run, and why (also: docker, needs-postgres,
                                         long-running; text after the tag is added)
    <!-- example: expect-exit 1 -->      must exit 1
    <!-- example: requires jq -->        not run when jq is not installed

Examples change the demo (grants, locks, alerts), so a later block may rely on an
earlier one, as a reader following the README would. The last test starts a second
demo on the same directory and checks that it refuses instead of deleting the
database the first one is using.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV = Path(sys.executable).parent.parent  # not resolved: scripts live beside the link
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
SKIP_TAGS = {
    "production-only": "production deployment, not the demo",
    "docker": "builds or runs the Docker image",
    "needs-postgres": "needs a PostgreSQL server of its own",
    "long-running": "runs until it is stopped",
}
# Left out of the scratch copy: the package is imported from the checkout itself.
NOT_COPIED = {".venv", ".git", "var", "gateway", "tests", "__pycache__", ".pytest_cache"}
DEMO_START_SECONDS = 120
EXAMPLE_SECONDS = 120

_FENCE = re.compile(r"^(\s*)```([A-Za-z0-9_+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*example:\s*(?P<tag>[a-z-]+)(?:\s+(?P<arg>.*?))?\s*-->\s*$")


@dataclass
class Example:
    line: int  # of the opening fence, 1-based
    language: str
    script: str
    markers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        first = next((ln for ln in self.script.splitlines() if ln.strip()), "")
        words = re.sub(r"[^A-Za-z0-9._-]+", "-", " ".join(first.split()[:4])).strip("-")
        return f"L{self.line}-{words[:48]}"

    def skip_reason(self) -> str | None:
        for tag, arg in self.markers:
            if tag in SKIP_TAGS:
                return f"README line {self.line}: {tag}: {arg or SKIP_TAGS[tag]}"
            if tag == "requires":
                missing = [tool for tool in arg.replace(",", " ").split() if not shutil.which(tool)]
                if missing:
                    return f"README line {self.line}: needs {', '.join(missing)}, not installed"
        return None

    def expected_exit(self) -> int:
        codes = [int(arg) for tag, arg in self.markers if tag == "expect-exit"]
        return codes[-1] if codes else 0

    def unknown_markers(self) -> list[str]:
        known = {*SKIP_TAGS, "expect-exit", "requires"}
        wrong = [f"{tag} {arg}".strip() for tag, arg in self.markers if tag not in known]
        wrong += [
            f"expect-exit {arg}"
            for tag, arg in self.markers
            if tag == "expect-exit" and not re.fullmatch(r"[0-9]{1,3}", arg)
        ]
        wrong += [
            "requires (names no tool)"
            for tag, arg in self.markers
            if tag == "requires" and not arg.strip()
        ]
        return wrong


def console_commands(text: str) -> str:
    """The commands of a console transcript: `$ ` lines and their `\\` continuations."""
    commands: list[str] = []
    continuing = False
    for line in text.splitlines():
        if continuing:
            commands.append(line)
        elif line.startswith("$ "):
            commands.append(line[2:])
        else:
            continue
        continuing = line.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def extract_examples(text: str) -> list[Example]:
    examples: list[Example] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, language = fence.group(1), fence.group(2).lower()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]]
        if language in SHELL_LANGUAGES:
            markers = []
            above = i - 1
            while above >= 0 and not lines[above].strip():
                above -= 1
            while above >= 0 and (marker := _MARKER.match(lines[above])):
                markers.insert(0, (marker.group("tag"), marker.group("arg") or ""))
                above -= 1
            script = "\n".join(body) + "\n"
            if language == "console":
                script = console_commands(script)
            examples.append(Example(i + 1, language, script, markers))
        i = end + 1
    return examples


EXAMPLES = extract_examples(README.read_text(encoding="utf-8"))


# --- the demo ----------------------------------------------------------------------------


@dataclass
class RunningDemo:
    process: subprocess.Popen[bytes]
    workdir: Path
    var: Path
    log_path: Path
    env: dict[str, str]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _demo_environment(env_file: Path) -> dict[str, str]:
    """The `export NAME=value` lines of var/demo.env (PATH is set by the caller)."""
    values = {}
    for line in env_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("export ") and not line.startswith("export PATH="):
            name, _, value = line[len("export ") :].partition("=")
            values[name] = shlex.split(value)[0]
    return values


def _clean_environ() -> dict[str, str]:
    # The reader's shell, not the test runner's overrides: no inherited GATEWAY_* settings.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "DEMO_", "PYTEST_")) and k != "UPSTREAM_TOKEN"
    }


def _start_demo(workdir: Path, var: Path, log_path: Path, ports: list[int]) -> RunningDemo:
    argv = [sys.executable, "-m", "gateway.demo.runner", "--var-dir", str(var)]
    for flag, port in zip(("--idp-port", "--upstream-port", "--gateway-port"), ports, strict=True):
        argv += [flag, str(port)]
    log_file = open(log_path, "wb")  # noqa: SIM115 - the child writes it while it runs
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=_clean_environ(),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log_file.close()
    env_file = var / "demo.env"
    deadline = time.monotonic() + DEMO_START_SECONDS
    while not env_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"the demo did not come up:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)
    env = _clean_environ()
    env.update(_demo_environment(env_file))
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return RunningDemo(process, workdir, var, log_path, env)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the runner (it stops its children in order); its process group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    base = tmp_path_factory.mktemp("readme")
    workdir = base / "work"
    shutil.copytree(
        ROOT,
        workdir,
        symlinks=True,
        ignore=lambda _dir, names: [
            n for n in names if n in NOT_COPIED or n.endswith((".egg-info", ".pyc"))
        ],
    )
    (workdir / ".venv").symlink_to(VENV, target_is_directory=True)
    ports = [free_port() for _ in range(3)]
    running = _start_demo(workdir, workdir / "var", base / "demo.log", ports)
    yield running
    _stop(running.process)


# --- the tests ---------------------------------------------------------------------------


def test_readme_has_runnable_examples_and_only_known_markers() -> None:
    assert [e for e in EXAMPLES if e.skip_reason() is None], "no runnable example found"
    wrong = {e.line: e.unknown_markers() for e in EXAMPLES if e.unknown_markers()}
    assert not wrong, f"unknown <!-- example: ... --> markers (README line: markers): {wrong}"
    placeholders = [
        e.line
        for e in EXAMPLES
        if e.skip_reason() is None and re.search(r"(?<![.\w])\.\.\.(?![.\w])|<[A-Z_]+>", e.script)
    ]
    assert not placeholders, f"runnable examples with placeholders at README lines {placeholders}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_readme_example(example: Example, demo: RunningDemo) -> None:
    reason = example.skip_reason()
    if reason:
        pytest.skip(reason)
    if demo.process.poll() is not None:
        pytest.fail(f"the demo has stopped:\n{demo.log()[-4000:]}")
    try:
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", example.script],
            cwd=demo.workdir,
            env=demo.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"README line {example.line}: still running after {EXAMPLE_SECONDS}s")
    expected = example.expected_exit()
    assert result.returncode == expected, (
        f"README line {example.line}: exit {result.returncode}, expected {expected}\n"
        f"--- script ---\n{example.script}--- stdout ---\n{result.stdout[-4000:]}"
        f"--- stderr ---\n{result.stderr[-4000:]}"
    )


def test_second_demo_on_the_same_directory_refuses(demo: RunningDemo) -> None:
    """A second runner, on other ports, must not delete the database the first one uses."""
    database = demo.var / "gateway.db"
    before = database.stat()
    ports = [free_port() for _ in range(3)]
    argv = [sys.executable, "-m", "gateway.demo.runner", "--check", "--var-dir", str(demo.var)]
    for flag, port in zip(("--idp-port", "--upstream-port", "--gateway-port"), ports, strict=True):
        argv += [flag, str(port)]
    result = subprocess.run(
        argv,
        cwd=ROOT,
        env=_clean_environ(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "another demo (or a process it started) is running" in output, output
    assert str(demo.var) in output, output
    after = database.stat()
    assert (after.st_ino, after.st_dev) == (before.st_ino, before.st_dev), "database replaced"
    assert (demo.var / "demo.env").exists(), "the running demo's env file was removed"
    gateway_url = demo.env["GATEWAY_URL"]
    assert requests.get(f"{gateway_url}/_gateway/ready", timeout=10).status_code == 200
