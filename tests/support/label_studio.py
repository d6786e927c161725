"""A real Label Studio for the tests: installed into its own virtual environment, started once.

    python -m tests.support.label_studio --install   # what .ci/run does before `make test`

Label Studio pins its own Django and friends, so it never shares the gateway's environment.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import urllib3

VERSION = "1.23.2"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = ROOT / ".label-studio-venv"
INSTALL_SECONDS = 900
START_SECONDS = 240

# Text classification over an image-or-text task: `$image` holds an uploaded file's path.
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image"><Choice value="yes"/><Choice value="no"/></Choices>'
    "</View>"
)


def find_or_install(venv_dir: Path = DEFAULT_VENV) -> tuple[Path | None, str]:
    """The `label-studio` executable, installing it when missing; or None and why not."""
    named = os.environ.get("GATEWAY_TEST_LABEL_STUDIO_BIN")
    if named:
        return (Path(named), "") if Path(named).exists() else (None, f"{named} does not exist")
    binary = venv_dir / "bin" / "label-studio"
    if binary.exists():
        return binary, ""
    log = venv_dir.with_suffix(".install.log")
    try:
        with open(log, "wb") as out:
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv_dir)],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
            subprocess.run(
                [
                    str(venv_dir / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    f"label-studio=={VERSION}",
                ],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_SECONDS,
            )
    except (OSError, subprocess.SubprocessError) as error:
        tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
        return None, f"label-studio=={VERSION} could not be installed ({error}): {tail}"
    return (binary, "") if binary.exists() else (None, "installed, but no label-studio script")


@dataclass
class LabelStudio:
    binary: Path
    data_dir: Path
    port: int
    token: str = field(default_factory=lambda: secrets.token_hex(20))
    process: subprocess.Popen | None = None
    http: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(maxsize=4))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "label-studio.log", "wb")  # noqa: SIM115 - the process's
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "DJANGO_DB": "sqlite",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false",
        }
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "start",
                "--no-browser",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--username",
                "service@lab.example",
                "--password",
                secrets.token_urlsafe(16),
                "--user-token",
                self.token,
                "--enable-legacy-api-token",
                "--log-level",
                "ERROR",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.data_dir,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"label-studio exited: {self._log_tail()}")
            try:
                status, _ = self.request("GET", "/api/current-user/whoami", timeout=2)
                if status == 200:
                    return
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"label-studio not ready in {START_SECONDS}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        path = self.data_dir / "label-studio.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    # --- the API, as the lab's service account -----------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, bytes]:
        all_headers = {"Authorization": f"Token {self.token}", **(headers or {})}
        data = None
        if body is not None and not isinstance(body, bytes):
            data = orjson.dumps(body)
            all_headers["Content-Type"] = "application/json"
        elif body is not None:
            data = body
        response = self.http.request(
            method, self.url + path, body=data, headers=all_headers, timeout=timeout
        )
        return response.status, response.data

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.request(method, path, body)
        if not 200 <= status < 300:
            raise RuntimeError(f"{method} {path}: {status} {data[:300]!r}")
        return orjson.loads(data) if data else None

    def create_project(self, title: str) -> int:
        return self._json("POST", "/api/projects/", {"title": title, "label_config": LABEL_CONFIG})[
            "id"
        ]

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        answer = self._json(
            "POST",
            f"/api/projects/{project_id}/import?return_task_ids=true",
            [{"image": item} if isinstance(item, str) else item for item in tasks],
        )
        return list(answer["task_ids"])

    def create_annotation(self, task_id: int, choice: str = "yes") -> dict[str, Any]:
        return self._json("POST", f"/api/tasks/{task_id}/annotations/", {"result": result(choice)})

    def create_prediction(self, task_id: int, choice: str = "no") -> dict[str, Any]:
        return self._json(
            "POST",
            "/api/predictions/",
            {"task": task_id, "result": result(choice), "score": 0.5, "model_version": "m1"},
        )

    def upload_file(self, project_id: int, filename: str, content: bytes) -> tuple[int, str]:
        """A file imported as a task: (task id, the path Label Studio serves it at)."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file";'
                f' filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, data = self.request(
            "POST",
            f"/api/projects/{project_id}/import?return_task_ids=true",
            body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        if status != 201:
            raise RuntimeError(f"upload: {status} {data[:300]!r}")
        [task_id] = orjson.loads(data)["task_ids"]
        task = self._json("GET", f"/api/tasks/{task_id}/")
        return task_id, task["data"]["image"]

    def annotation_count(self, task_id: int) -> int:
        return len(self._json("GET", f"/api/tasks/{task_id}/annotations/"))


def result(choice: str) -> list[dict[str, Any]]:
    return [
        {
            "from_name": "label",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [choice]},
        }
    ]


def tiny_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


if __name__ == "__main__":
    if "--install" in sys.argv:
        found, why = find_or_install()
        print(found or f"not installed: {why}")
        sys.exit(0 if found else 1)
    import socket
    import tempfile

    found, why = find_or_install()
    if found is None:
        sys.exit(why)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as scratch:
        began = time.monotonic()
        tool = LabelStudio(found, Path(scratch), port)
        tool.start()
        print(f"ready in {time.monotonic() - began:.1f}s at {tool.url}")
        project = tool.create_project("Smoke test")
        tasks = tool.import_tasks(project, ["a", "b"])
        print("tasks", tasks, tool.create_annotation(tasks[0])["id"])
        print("upload", tool.upload_file(project, "dot.png", tiny_png()))
        tool.stop()
