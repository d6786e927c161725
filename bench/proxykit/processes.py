"""Processes this benchmark starts, each in its own process group, and how to reach them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

ROOT = Path(__file__).resolve().parent.parent.parent


# --- processes ---------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log_path: Path
    url: str = ""

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


class Processes:
    """Everything started here, stopped in reverse order whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Proc:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # own process group: killpg reaches gunicorn workers
            )
        proc = Proc(name, process, log_path)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as error:
                print(f"warning: could not stop {proc.name}: {error}", file=sys.stderr)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_http = urllib3.PoolManager(num_pools=8, maxsize=4, retries=False)


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
    return _http.request("GET", url, headers=headers or {}, timeout=timeout)


def wait_until(proc: Proc, path: str, *, timeout: float, want: int | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.process.returncode}:\n{proc.log_tail()}"
            )
        try:
            response = http_get(proc.url + path, timeout=5)
            if want is None or response.status == want:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready at {path} after {timeout:.0f}s:\n{proc.log_tail()}")


def gunicorn_settings(workers: int, threads: int) -> list[str]:
    """The one gunicorn command line both proxies run under (as tests/conftest.py does)."""
    return [
        "-k",
        "gateway.serving.GatewayThreadWorker",
        "-w",
        str(workers),
        "--threads",
        str(threads),
        "--graceful-timeout",
        "2",
    ]


def worker_pids(master: int) -> list[int]:
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return []
    return [int(pid) for pid in children]
