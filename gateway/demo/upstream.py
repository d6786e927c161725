"""Bundled sample dataset service: the upstream the gateway proxies to.

It stands in for a real annotation platform so the gateway can be developed and
tested without one. Everything is synthetic and derived from a seed, so two
instances with the same parameters serve byte-identical data; no database and
no startup cost, because each record is rebuilt on demand from its own RNG.

Besides the dataset API it has a few deliberately awkward endpoints (echo,
redirect, garbage, slow streamed export) that exist only so the gateway's
defensive behaviour can be exercised.
"""

from __future__ import annotations

import datetime as dt
import hmac
import itertools
import math
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

JSON_MIMETYPE = "application/json"
NDJSON_MIMETYPE = "application/x-ndjson"

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_EXPORT_CHUNKS = 10_000
MAX_EXPORT_DELAY = 1.0
MAX_LABEL_LENGTH = 200
MAX_BODY_BYTES = 64 * 1024

LABELS = ("positive", "negative", "neutral", "mixed")
SOURCES = ("forum", "support-ticket", "news", "product-review", "chat-log")
# Kept as one block of text so the word list stays compact and easy to edit.
_VOCABULARY_TEXT = """
    the a customer agent model order delivery screen battery update was is seems never
    always quickly slowly really broken great late helpful confusing refund price support
    team app crashed after before during login and but with without my their every new old
    service response arrived
"""
VOCABULARY = tuple(_VOCABULARY_TEXT.split())
NAME_ADJECTIVES = ("Amber", "Cobalt", "Crimson", "Jade", "Silver", "Violet", "Ochre", "Teal")
NAME_NOUNS = ("Harbor", "Meadow", "Summit", "Canyon", "Delta", "Grove", "Ridge", "Atlas")

# Spreads "created" dates over one year so the field looks realistic but stays seeded.
_CREATED_EPOCH = dt.date(2024, 1, 1)
_CREATED_SPAN_DAYS = 366
# Minimum zero-padding of the record counter, so ids look like rec-1-2-0042.
_MIN_RECORD_DIGITS = 4
# Digits only: int() would otherwise also accept "+5", " 5" and "1_000".
_UINT_RE = re.compile(r"[0-9]{1,18}")
_PROJECT_RE = re.compile(r"proj-([1-9][0-9]{0,8})")
_TASK_RE = re.compile(r"task-([1-9][0-9]{0,8})")
_RECORD_RE = re.compile(r"rec-([1-9][0-9]{0,8})-([1-9][0-9]{0,8})-([0-9]{1,18})")


class ApiError(Exception):
    """Raised by handlers to produce a JSON error response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TaskRef:
    project: int
    task: int


class SyntheticDataset:
    """Seeded, lazily generated projects/tasks/records."""

    def __init__(
        self, *, seed: int, projects: int, tasks_per_project: int, records_per_task: int
    ) -> None:
        if projects < 1 or tasks_per_project < 1 or records_per_task < 1:
            raise ValueError("projects, tasks_per_project and records_per_task must be >= 1")
        self.seed = seed
        self.projects = projects
        self.tasks_per_project = tasks_per_project
        self.records_per_task = records_per_task
        self._digits = max(_MIN_RECORD_DIGITS, len(str(records_per_task - 1)))

    # -- identifiers -------------------------------------------------------

    def _rng(self, *parts: object) -> random.Random:
        # A string seed is hashed with SHA-512 by random.Random, so the stream is
        # stable across processes (unlike hash()) and independent per entity.
        return random.Random("/".join(str(p) for p in (self.seed, *parts)))

    def record_id(self, project: int, task: int, n: int) -> str:
        return f"rec-{project}-{task}-{n:0{self._digits}d}"

    def parse_project(self, name: str) -> int | None:
        match = _PROJECT_RE.fullmatch(name)
        if match is None or int(match.group(1)) > self.projects:
            return None
        return int(match.group(1))

    def parse_task(self, project_name: str, task_name: str) -> TaskRef | None:
        project = self.parse_project(project_name)
        match = _TASK_RE.fullmatch(task_name)
        if project is None or match is None or int(match.group(1)) > self.tasks_per_project:
            return None
        return TaskRef(project, int(match.group(1)))

    def parse_record(self, record_id: str) -> tuple[TaskRef, int] | None:
        match = _RECORD_RE.fullmatch(record_id)
        if match is None:
            return None
        project, task, n = (int(g) for g in match.groups())
        in_range = (
            project <= self.projects
            and task <= self.tasks_per_project
            and n < self.records_per_task
        )
        # Re-rendering rejects aliases such as different zero-padding, so every
        # record has exactly one spelling (the gateway's policy keys on it).
        if not in_range or self.record_id(project, task, n) != record_id:
            return None
        return TaskRef(project, task), n

    # -- content -----------------------------------------------------------

    def project_summary(self, project: int) -> dict[str, Any]:
        # A seeded shuffle of all adjective/noun pairs keeps names distinct; the
        # number suffix only kicks in once the pairs run out.
        pairs = [f"{adj} {noun}" for adj in NAME_ADJECTIVES for noun in NAME_NOUNS]
        self._rng("project-names").shuffle(pairs)
        cycle, index = divmod(project - 1, len(pairs))
        name = f"{pairs[index]} Corpus" + (f" {cycle + 1}" if cycle else "")
        tasks = [f"task-{t}" for t in range(1, self.tasks_per_project + 1)]
        return {"id": f"proj-{project}", "name": name, "tasks": tasks}

    def task_summary(self, ref: TaskRef) -> dict[str, Any]:
        return {
            "id": f"task-{ref.task}",
            "project": f"proj-{ref.project}",
            "records": self.records_per_task,
        }

    def record(self, ref: TaskRef, n: int) -> dict[str, Any]:
        rng = self._rng("record", ref.project, ref.task, n)
        words = [rng.choice(VOCABULARY) for _ in range(rng.randint(10, 30))]
        text = " ".join(words).capitalize() + "."
        # Roughly 40% unlabelled so annotation work remains to be done.
        label = None if rng.random() < 0.4 else rng.choice(LABELS)
        created = _CREATED_EPOCH + dt.timedelta(days=rng.randrange(_CREATED_SPAN_DAYS))
        return {
            "id": self.record_id(ref.project, ref.task, n),
            "project": f"proj-{ref.project}",
            "task": f"task-{ref.task}",
            "text": text,
            "label": label,
            "meta": {"source": rng.choice(SOURCES), "lang": "en", "created": created.isoformat()},
        }

    def task_records(self, ref: TaskRef, offset: int, limit: int) -> list[dict[str, Any]]:
        stop = min(offset + limit, self.records_per_task)
        return [self.record(ref, n) for n in range(offset, stop)]

    def project_records(self, project: int, offset: int, limit: int) -> list[dict[str, Any]]:
        # Tasks are concatenated in order, so a flat index maps to (task, n).
        stop = min(offset + limit, self.project_total())
        return [
            self.record(TaskRef(project, i // self.records_per_task + 1), i % self.records_per_task)
            for i in range(offset, stop)
        ]

    def project_total(self) -> int:
        return self.tasks_per_project * self.records_per_task


class AnnotationStore:
    """In-memory annotation log; ids increase monotonically across all records."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._items: list[dict[str, Any]] = []

    def add(self, record_id: str, label: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            item = {
                "annotation_id": next(self._ids),
                "record": record_id,
                "label": label,
                "body": body,
            }
            self._items.append(item)
            return dict(item)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(item) for item in self._items]


# -- request helpers -------------------------------------------------------


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, mimetype=JSON_MIMETYPE)


def _uint_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _UINT_RE.fullmatch(raw):
        raise ApiError(400, f"{name} must be a non-negative integer")
    return int(raw)


def _page_args() -> tuple[int, int]:
    offset = _uint_arg("offset", 0)
    # Oversized pages are clamped rather than rejected; the response echoes the
    # effective limit so callers can tell.
    limit = min(_uint_arg("limit", DEFAULT_LIMIT), MAX_LIMIT)
    return offset, limit


def _delay_arg() -> float:
    raw = request.args.get("delay")
    if raw is None:
        return 0.0
    try:
        delay = float(raw)
    except ValueError:
        raise ApiError(400, "delay must be a number of seconds") from None
    if not math.isfinite(delay) or delay < 0:
        raise ApiError(400, "delay must be a finite, non-negative number")
    return min(delay, MAX_EXPORT_DELAY)


def _chunks_arg() -> int:
    chunks = _uint_arg("chunks", 1)
    if chunks < 1:
        raise ApiError(400, "chunks must be >= 1")
    return min(chunks, MAX_EXPORT_CHUNKS)


def _annotation_label() -> tuple[str, dict[str, Any]]:
    try:
        body = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError:
        raise ApiError(400, "body must be valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    label = body.get("label")
    if not isinstance(label, str) or not 0 < len(label) <= MAX_LABEL_LENGTH:
        raise ApiError(400, f"label must be a string of 1-{MAX_LABEL_LENGTH} characters")
    return label, body


def _is_authorized(service_token: bytes) -> bool:
    header = request.headers.get("Authorization", "")
    # WSGI header strings are latin-1 decoded bytes; re-encoding recovers them
    # exactly, and compare_digest on bytes avoids its ASCII-only str restriction.
    return hmac.compare_digest(header.encode("latin-1", "replace"), service_token)


def _stream_export(lines: bytes, chunks: int, delay: float) -> Iterator[bytes]:
    for i in range(chunks):
        yield lines
        # No sleep after the final chunk: the delay only spaces chunks apart.
        if delay and i + 1 < chunks:
            time.sleep(delay)


# -- application -----------------------------------------------------------


def create_upstream_app(
    service_token: str,
    *,
    seed: int = 7,
    projects: int = 3,
    tasks_per_project: int = 2,
    records_per_task: int = 300,
    idor: bool = False,
) -> Flask:
    """Build the sample dataset service; every request needs ``Token <service_token>``.

    ``idor`` makes it behave like many real dataset APIs: a record addressed under a
    project's path is served (and annotated) whichever project it belongs to, and records
    carry no project field, so only a record catalogue can tell where they belong.
    """
    if not service_token:
        # An empty token would make the service effectively open.
        raise ValueError("service_token must not be empty")
    dataset = SyntheticDataset(
        seed=seed,
        projects=projects,
        tasks_per_project=tasks_per_project,
        records_per_task=records_per_task,
    )
    store = AnnotationStore()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["demo_upstream"] = {"dataset": dataset, "annotations": store}
    expected_header = f"Token {service_token}".encode()

    @app.before_request
    def require_service_token() -> Response | None:
        # Runs before dispatch, so unknown paths also answer 401 to strangers.
        if not _is_authorized(expected_header):
            return json_response({"error": "unauthorized"}, 401)
        return None

    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError) -> Response:
        return json_response({"error": exc.message}, exc.status)

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Response:
        response = json_response({"error": exc.name.lower()}, exc.code or 500)
        # Keep protocol headers such as Allow (405) that clients rely on.
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value
        return response

    _register_dataset_routes(app, dataset, store, idor)
    _register_test_routes(app)
    return app


def _require_project(dataset: SyntheticDataset, project: str) -> int:
    number = dataset.parse_project(project)
    if number is None:
        raise ApiError(404, "unknown project")
    return number


def _require_task(dataset: SyntheticDataset, project: str, task: str) -> TaskRef:
    ref = dataset.parse_task(project, task)
    if ref is None:
        raise ApiError(404, "unknown project or task")
    return ref


def _register_dataset_routes(
    app: Flask, dataset: SyntheticDataset, store: AnnotationStore, idor: bool
) -> None:
    def shown(record: dict[str, Any]) -> dict[str, Any]:
        if idor:
            record.pop("project", None)
        return record

    @app.get("/api/projects")
    def list_projects() -> Response:
        summaries = [dataset.project_summary(p) for p in range(1, dataset.projects + 1)]
        return json_response({"projects": summaries})

    @app.get("/api/projects/<project>/tasks")
    def list_tasks(project: str) -> Response:
        number = _require_project(dataset, project)
        tasks = [
            dataset.task_summary(TaskRef(number, t))
            for t in range(1, dataset.tasks_per_project + 1)
        ]
        return json_response({"tasks": tasks})

    @app.get("/api/projects/<project>/tasks/<task>/records")
    def list_task_records(project: str, task: str) -> Response:
        ref = _require_task(dataset, project, task)
        offset, limit = _page_args()
        return json_response(
            {
                "project": project,
                "task": task,
                "offset": offset,
                "limit": limit,
                "total": dataset.records_per_task,
                "records": [shown(r) for r in dataset.task_records(ref, offset, limit)],
            }
        )

    @app.get("/api/projects/<project>/records")
    def list_project_records(project: str) -> Response:
        number = _require_project(dataset, project)
        offset, limit = _page_args()
        return json_response(
            {
                "project": project,
                "offset": offset,
                "limit": limit,
                "total": dataset.project_total(),
                "records": [shown(r) for r in dataset.project_records(number, offset, limit)],
            }
        )

    @app.get("/api/records/<record_id>")
    def get_record(record_id: str) -> Response:
        parsed = dataset.parse_record(record_id)
        if parsed is None:
            raise ApiError(404, "unknown record")
        return json_response(shown(dataset.record(*parsed)))

    @app.get("/api/projects/<project>/tasks/<task>/records/<record_id>")
    def get_nested_record(project: str, task: str, record_id: str) -> Response:
        ref = _require_task(dataset, project, task)
        parsed = dataset.parse_record(record_id)
        # The nested-path IDOR: with `idor`, the parents in the path are not checked.
        if parsed is None or (parsed[0] != ref and not idor):
            raise ApiError(404, "unknown record in this project/task")
        return json_response(shown(dataset.record(*parsed)))

    @app.post("/api/projects/<project>/tasks/<task>/records/<record_id>/annotations")
    def annotate(project: str, task: str, record_id: str) -> Response:
        ref = _require_task(dataset, project, task)
        parsed = dataset.parse_record(record_id)
        if parsed is None or (parsed[0] != ref and not idor):
            raise ApiError(404, "unknown record in this project/task")
        label, body = _annotation_label()
        item = store.add(record_id, label, body)
        payload = {"record": record_id, "annotation_id": item["annotation_id"], "label": label}
        return json_response(payload, 201)

    @app.post("/api/records/<record_id>/annotations")
    def annotate_record(record_id: str) -> Response:
        # Addressed by the record alone: the service knows where it belongs.
        parsed = dataset.parse_record(record_id)
        if parsed is None:
            raise ApiError(404, "unknown record")
        label, body = _annotation_label()
        item = store.add(record_id, label, body)
        payload = {"record": record_id, "annotation_id": item["annotation_id"], "label": label}
        return json_response(payload, 201)

    @app.get("/api/projects/<project>/tasks/<task>/export")
    def export_task(project: str, task: str) -> Response:
        ref = _require_task(dataset, project, task)
        chunks, delay = _chunks_arg(), _delay_arg()
        # Rendered once up front: the generator then only repeats bytes, and it
        # needs no request context while streaming.
        records = dataset.task_records(ref, 0, dataset.records_per_task)
        lines = b"".join(orjson.dumps(r) + b"\n" for r in records)
        response = Response(_stream_export(lines, chunks, delay), mimetype=NDJSON_MIMETYPE)
        response.headers["Content-Disposition"] = f'attachment; filename="{project}-{task}.ndjson"'
        return response


def _register_test_routes(app: Flask) -> None:
    @app.get("/api/echo")
    def echo() -> Response:
        return json_response(
            {
                "method": request.method,
                "headers": dict(request.headers),
                "path": request.path,
                "query": request.query_string.decode("latin-1"),
                "args": request.args.to_dict(flat=False),
            }
        )

    @app.get("/api/redirect")
    def redirect_elsewhere() -> Response:
        # The gateway must pass this through (or refuse it), never follow it.
        response = json_response({"redirect": "http://example.invalid/"}, 302)
        response.headers["Location"] = "http://example.invalid/"
        return response

    @app.get("/api/garbage")
    def garbage() -> Response:
        return Response(b"not json{{", status=200, mimetype=JSON_MIMETYPE)

    @app.get("/api/slow")
    def slow() -> Response:
        # Sleeps before any header is sent, to exercise the proxy's read timeout.
        time.sleep(min(float(request.args.get("seconds", "1") or 1), 10.0))
        return json_response({"slow": True})


def serve(host: str, port: int, service_token: str, *, idor: bool = False) -> None:
    """Run the sample service with werkzeug's dev server, for manual poking only."""
    from werkzeug.serving import run_simple

    run_simple(host, port, create_upstream_app(service_token, idor=idor), threaded=True)
