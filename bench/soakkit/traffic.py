"""The load: which request each client sends next, and how its answer is read."""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson
import requests

from bench.soakkit.common import EXPORT_CHUNKS, EXPORT_DELAY, RECORDS_PER_TASK, UA_PREFIX

# --- traffic -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    kind: str
    method: str
    path: str
    records: str | None = None  # "records": body["records"]; "@": the body is one record
    body: bytes | None = None


def _page(rng: random.Random, project: str, task: str, kind: str = "page") -> Call:
    offset, limit = rng.randrange(0, 290), rng.randint(1, 20)
    return Call(
        kind,
        "GET",
        f"/api/projects/{project}/tasks/{task}/records?offset={offset}&limit={limit}",
        "records",
    )


def _listing(rng: random.Random, project: str) -> Call:
    # Straddles the task-1/task-2 boundary now and then, so task grants filter records.
    offset = rng.choice([rng.randrange(0, 590), rng.randrange(285, 300)])
    return Call(
        "listing",
        "GET",
        f"/api/projects/{project}/records?offset={offset}&limit={rng.randint(1, 20)}",
        "records",
    )


def _single(rng: random.Random, project: int, task: int) -> Call:
    return Call("single", "GET", f"/api/records/rec-{project}-{task}-{rng.randrange(300):04d}", "@")


def _export(project: str, task: str) -> Call:
    return Call(
        "export",
        "GET",
        f"/api/projects/{project}/tasks/{task}/export?chunks={EXPORT_CHUNKS}&delay={EXPORT_DELAY}",
    )


def _annotate(rng: random.Random) -> Call:
    record = f"rec-1-1-{rng.randrange(300):04d}"
    label = rng.choice(["positive", "negative", "neutral", "mixed"])
    return Call(
        "annotate",
        "POST",
        f"/api/projects/proj-1/tasks/task-1/records/{record}/annotations",
        None,
        orjson.dumps({"label": label}),
    )


def choose_call(rng: random.Random, sub: str) -> Call:
    """The next request of contractor `sub`, from a fixed weighted mix."""
    roll = rng.random()
    if sub == "carol":  # globex: reads proj-3 only
        if roll < 0.45:
            return _page(rng, "proj-3", rng.choice(["task-1", "task-2"]))
        if roll < 0.65:
            return _single(rng, 3, rng.choice([1, 2]))
        if roll < 0.75:
            return _export("proj-3", "task-1")
        if roll < 0.90:
            return _page(rng, "proj-1", "task-1", "no_grant")
        return Call("unknown_route", "GET", "/api/unknown/things")
    if roll < 0.30:
        return _page(
            rng, "proj-1", rng.choice(["task-1", "task-2"]) if sub == "alice" else "task-1"
        )
    if roll < 0.42:
        return _single(rng, 1, rng.choice([1, 2]) if sub == "alice" else 1)
    if roll < 0.50:
        return _annotate(rng)
    if roll < 0.57:
        return _export("proj-1", "task-1")
    if roll < 0.62:
        return Call("tasks", "GET", "/api/projects/proj-1/tasks")
    if roll < 0.70:
        return _page(rng, "proj-3", "task-1", "no_grant")
    if roll < 0.75:
        return Call("unknown_route", "GET", "/api/unknown/things")
    if sub == "bob":
        if roll < 0.85:
            return _page(rng, "proj-1", "task-2", "explicit_deny")
        return _listing(rng, "proj-1")
    # alice: proj-2 task-1 is granted; task-2 only while the toggled grant is in force.
    if roll < 0.83:
        return _page(rng, "proj-2", "task-2", "toggled")
    if roll < 0.91:
        return _listing(rng, "proj-2")
    return _single(rng, 2, rng.choice([1, 2]))


@dataclass(slots=True)
class Attempt:
    """One request as its client saw it."""

    tag: str
    client: int
    instance: int
    sub: str
    kind: str
    method: str
    path: str
    start: float  # seconds since the run's origin
    end: float | None = None  # None: the client never finished it (client gone)
    status: int | None = None  # None: no response (connection cut, refused, timed out)
    request_id: str | None = None
    error: str | None = None  # the gateway's JSON `error` field of a non-2xx answer
    failure: str | None = None  # what went wrong on the client's side, if anything
    record_route: bool = False  # the route's body is accounted record by record
    records: list[tuple[str, str]] | None = None  # (id, sha256) of each record of a 2xx body
    lines: int = 0  # NDJSON lines of a stream received
    expected_lines: int = 0
    body: str | None = None  # first bytes of a 5xx body

    @property
    def outcome(self) -> str:
        if self.end is None:
            return "client gone (in flight at the end)"
        if self.status is None:
            return f"error: {self.failure}"
        answer = f"{self.status} {self.error}" if self.error else str(self.status)
        return f"{answer} then {self.failure}" if self.failure else answer

    @property
    def healthy(self) -> bool:
        return (
            self.end is not None
            and self.status is not None
            and self.status < 500
            and (self.failure is None)
        )


def record_sha256(record: Any) -> str:
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()


def classify_failure(error: BaseException) -> str:
    """A short kind for a client-side failure, from the exception chain."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return "connect_timeout"
    if isinstance(error, requests.exceptions.ReadTimeout):
        return "read_timeout"
    textual = repr(error)
    for needle, kind in (
        ("Connection reset", "connection_reset"),
        ("ConnectionResetError", "connection_reset"),
        ("RemoteDisconnected", "remote_disconnected"),
        ("Connection refused", "connection_refused"),
        ("BrokenPipe", "broken_pipe"),
        ("IncompleteRead", "incomplete_read"),
        ("InvalidChunkLength", "invalid_chunk_length"),
        ("Response ended prematurely", "response_ended_prematurely"),
        ("Connection aborted", "connection_aborted"),
    ):
        if needle in textual:
            return kind
    return f"{type(error).__name__}"


def perform(
    session: requests.Session,
    url: str,
    call: Call,
    attempt: Attempt,
    origin: float,
    timeout: float,
) -> None:
    """Send one request and fill `attempt` with what the client got."""
    headers = {"User-Agent": f"{UA_PREFIX}/{attempt.tag}"}
    if call.body is not None:
        headers["Content-Type"] = "application/json"
    try:
        response = session.request(
            call.method,
            url + call.path,
            data=call.body,
            headers=headers,
            timeout=(3.0, timeout),
            stream=True,
            allow_redirects=False,
        )
    except requests.RequestException as error:
        attempt.failure = classify_failure(error)
        attempt.end = time.monotonic() - origin
        return
    with response:
        attempt.status = response.status_code
        attempt.request_id = response.headers.get("X-Request-Id")
        content = b""
        try:
            if call.kind == "export" and response.status_code == 200:
                attempt.expected_lines = EXPORT_CHUNKS * RECORDS_PER_TASK
                for chunk in response.iter_content(chunk_size=None):
                    attempt.lines += chunk.count(b"\n")
            else:
                content = response.content
        except requests.RequestException as error:
            attempt.failure = f"body cut ({classify_failure(error)})"
        if attempt.failure is None:
            _read_body(attempt, call, content)
    attempt.end = time.monotonic() - origin


def _read_body(attempt: Attempt, call: Call, content: bytes) -> None:
    status = attempt.status or 0
    if call.kind == "export" and status == 200:
        if attempt.lines < attempt.expected_lines:
            attempt.failure = "stream ended short without an error"
        return
    if status >= 500:
        attempt.body = content[:300].decode("utf-8", "replace")
    if status >= 400:
        with contextlib.suppress(Exception):
            attempt.error = str(orjson.loads(content).get("error"))
        return
    if not 200 <= status < 300 or call.records is None:
        return
    try:
        body = orjson.loads(content)
        records = body if call.records == "@" else body["records"]
        records = records if isinstance(records, list) else [records]
        attempt.records = [(str(record["id"]), record_sha256(record)) for record in records]
    except Exception as error:  # a 2xx record body the client cannot read is a finding
        attempt.failure = f"unreadable record body ({type(error).__name__})"
