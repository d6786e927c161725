"""Soak with faults (issue 10, point 2): mixed traffic against two gateway instances while
workers are killed, locks and policy change, and PostgreSQL restarts; then an exact
reconciliation of what the clients received against the access log.

The system: the test IdPs and the bundled sample service (tests/conftest.py), a fresh
PostgreSQL database (`soak_<random>`, dropped at the end) and `--instances` gateway
instances (2: separate gunicorn masters, 2 workers each, as `launch_gateway` starts them).

The load: `--clients` threads (32), spread over the instances, each a contractor (alice and
bob of vendor acme with JWT access tokens, carol of vendor globex with an opaque token) on
its own keep-alive connection, without think time. Each picks its next request from a
weighted mix: task record pages, a project listing where records outside a task grant are
withheld, single records, a streamed NDJSON export, task metadata, annotation POSTs, and
denials (a project without a grant, an explicit deny, an unknown route). Every request
carries a User-Agent `soak/<run>/<client>/<n>`, which the gateway logs with each access
row: a row of a request whose response never reached the client (a worker killed
mid-request) can still be traced to the attempt that caused it.

The faults, once per `--fault-period` (60 s), at fixed offsets within it:
  10%  `kill -9` of one gunicorn worker (a child of the master, found in /proc; the
       instances take turns)
  25%  `gateway lock contractor acme-idp:bob` (even periods) or `gateway lock vendor
       acme` (odd periods) ...
  40%  ... and `gateway unlock <id>`
  50%  `gateway policy grant` alice read on proj-2/task-2 (even periods), `gateway policy
       revoke` of that grant (odd periods); alice requests that task all along
  62%  of the middle period: `pg_ctlcluster --skip-systemctl-redirect <ver> main restart`
       (not with --no-pg-restart; it first waits up to --pg-restart-wait s, 120, for other
       sessions' connections to the server to go, and reports any it cut)

Afterwards every access row and every client outcome is reconciled (see `reconcile`):
each record in a 2xx body has its `allow` row (same request id, record id, SHA-256 of
the record's canonical JSON); every row either belongs to a request id a client saw, or is
explained by the client's failure on that attempt (connection cut, timeout, client gone).
The run also reports outcomes, errors by kind and by nearby fault, HTTP 500s (with the
gateway's traceback), the recovery after the PostgreSQL restart, and requests answered
against a lock or policy change after its CLI command had returned.

    .venv/bin/python bench/soak.py                       # 10 minutes, writes nothing
    .venv/bin/python bench/soak.py --duration 60 --no-pg-restart
    .venv/bin/python bench/soak.py --write               # the `soak` section of bench/RESULTS.md

Exit status 0 when there are no unlogged releases, no unexplained or mismatched rows and no
HTTP 500; 1 otherwise. Every process this script starts is stopped on the way out.
`tests/test_soak.py` runs the same harness for 30 s in `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import requests
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import command_line, git_state, machine, write_section  # noqa: E402
from tests.conftest import (  # noqa: E402
    AUDIENCE,
    GATEWAY_BIN,
    OPAQUE_USERS,
    PYTHON,
    UPSTREAM_TOKEN,
    USERS,
    Database,
    Gateway,
    Proc,
    _drop_postgres_db,
    _make_postgres_db,
    free_port,
    launch_gateway,
    start,
)

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
UA_PREFIX = "soak"
RECORDS_PER_TASK = 300  # the sample service's default; an export chunk is one task's records
EXPORT_CHUNKS = 2
EXPORT_DELAY = 0.3
LOCKED_CONTRACTOR = "acme-idp:bob"
LOCKED_VENDOR = "acme"
# The grant the policy changes toggle, and the path whose answer it decides.
TOGGLED_GRANT = ("acme-idp:alice", "proj-2", "task-2", "read")
TOGGLED_RULE = "p, acme-idp:alice, proj-2, task-2, read, allow"
# Client i is SUBJECTS[i % 5]: 2/5 alice, 2/5 bob, 1/5 carol (opaque token, other vendor).
SUBJECTS = ("alice", "bob", "alice", "bob", "carol")


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


# --- faults -------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str  # kill_worker, lock, unlock, policy_grant, policy_revoke, pg_restart
    planned: float
    started: float = 0.0
    ended: float = 0.0
    instance: int | None = None
    ok: bool = False
    detail: str = ""
    target: str = ""  # lock target, or the killed pid
    respawned: float | None = None  # kill_worker: when a replacement worker appeared
    lifted: float | None = None  # lock: when the unlock command returned
    subjects: tuple[str, ...] = ()  # lock: the client subjects it locks


def plan_faults(duration: float, period: float, *, pg_restart: bool, instances: int) -> list[Fault]:
    """The fault timeline: offsets within each period, a PostgreSQL restart mid-run."""
    periods = max(1, int(duration // period))
    plan: list[Fault] = []
    for number in range(periods):
        base = number * period
        plan.append(Fault("kill_worker", base + 0.10 * period, instance=number % instances))
        plan.append(Fault("lock", base + 0.25 * period, target=str(number)))
        plan.append(Fault("unlock", base + 0.40 * period))
        plan.append(
            Fault("policy_grant" if number % 2 == 0 else "policy_revoke", base + 0.50 * period)
        )
    if pg_restart:
        plan.append(Fault("pg_restart", (periods // 2) * period + 0.62 * period))
    return sorted((f for f in plan if f.planned < duration - 1.0), key=lambda f: f.planned)


def worker_pids(master: int) -> list[int]:
    """The children of gunicorn master `master`, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == master:
            children.append(int(entry.name))
    return sorted(children)


def postgres_cluster_version() -> str:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir() if p.is_dir())
    if not versions:
        raise RuntimeError("no PostgreSQL cluster under /etc/postgresql")
    return versions[-1]


class FaultRunner:
    """Runs the planned faults at their times, from one thread, and records each."""

    def __init__(
        self,
        plan: list[Fault],
        gateways: list[Gateway],
        db: Database,
        origin: float,
        stop: threading.Event,
        say: Callable[[str], None],
        restart_wait: float = 0.0,
    ) -> None:
        self.plan = plan
        self.restart_wait = restart_wait
        self.gateways = gateways
        self.db = db
        self.origin = origin
        self.stop = stop
        self.say = say
        self.done: list[Fault] = []
        self.open_lock: str | None = None
        self._open_fault: Fault | None = None
        self.other_connections = 0
        self._rng = random.Random(4711)
        self._watchers: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._run, name="faults", daemon=True)

    def now(self) -> float:
        return time.monotonic() - self.origin

    def _run(self) -> None:
        for fault in self.plan:
            if self.stop.wait(max(0.0, fault.planned - self.now())):
                break
            fault.started = self.now()
            try:
                getattr(self, f"_{fault.kind}")(fault)
            except Exception as error:  # a fault that fails to happen is reported, not fatal
                fault.ok, fault.detail = False, f"{type(error).__name__}: {error}"
            fault.ended = self.now()
            self.done.append(fault)
            self.say(
                f"[{fault.started:6.1f}s] {fault.kind:<13} {'ok' if fault.ok else 'FAILED'}"
                f" ({fault.ended - fault.started:.1f}s) {fault.detail}"
            )

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        for watcher in self._watchers:
            watcher.join(max(0.0, timeout))

    def _cli(self, *args: str) -> subprocess.CompletedProcess:
        return self.gateways[0].cli(*args, check=False)

    def _kill_worker(self, fault: Fault) -> None:
        assert fault.instance is not None
        master = self.gateways[fault.instance].proc.process.pid
        workers = worker_pids(master)
        if not workers:
            fault.detail = f"instance {fault.instance + 1}: master {master} has no workers"
            return
        victim = self._rng.choice(workers)
        os.kill(victim, signal.SIGKILL)
        fault.ok, fault.target = True, str(victim)
        fault.detail = f"instance {fault.instance + 1}: worker {victim} of master {master}"
        watcher = threading.Thread(
            target=self._watch_respawn, args=(fault, master, set(workers)), daemon=True
        )
        self._watchers.append(watcher)
        watcher.start()

    def _watch_respawn(self, fault: Fault, master: int, before: set[int]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.stop.is_set():
            if set(worker_pids(master)) - before:
                fault.respawned = self.now()
                return
            time.sleep(0.05)

    def _lock(self, fault: Fault) -> None:
        number = int(fault.target or 0)
        kind, target = (
            ("contractor", LOCKED_CONTRACTOR) if number % 2 == 0 else ("vendor", LOCKED_VENDOR)
        )
        result = self._cli("lock", kind, target, "--reason", f"soak fault {number}", "--json")
        fault.target = f"{kind} {target}"
        if result.returncode != 0:
            fault.detail = (result.stderr or result.stdout).strip()[-300:]
            return
        lock = json.loads(result.stdout)
        self.open_lock = str(lock["id"])
        self._open_fault = fault
        fault.subjects = ("bob",) if kind == "contractor" else ("alice", "bob")
        fault.ok, fault.detail = True, f"{kind} {target}: lock {lock['id']}"

    def _unlock(self, fault: Fault) -> None:
        if self.open_lock is None:
            fault.detail = "no lock to lift"
            return
        result = self._cli("unlock", self.open_lock, "--reason", "soak fault over")
        fault.target = self.open_lock
        fault.ok = result.returncode == 0
        fault.detail = f"lock {self.open_lock}" + (
            "" if fault.ok else f": {(result.stderr or result.stdout).strip()[-300:]}"
        )
        if fault.ok:
            self.open_lock = None
            if self._open_fault is not None:
                self._open_fault.lifted = self.now()

    def _policy_grant(self, fault: Fault) -> None:
        sub, project, task, action = TOGGLED_GRANT
        result = self._cli(
            "policy", "grant", "--sub", sub, "--project", project, "--task", task,
            "--action", action, "--reason", "soak policy change",
        )  # fmt: skip
        fault.ok = result.returncode == 0
        fault.detail = (result.stdout if fault.ok else result.stderr or result.stdout).strip()
        fault.detail = fault.detail.splitlines()[-1][:200] if fault.detail else ""

    def _policy_revoke(self, fault: Fault) -> None:
        result = self._cli("policy", "revoke", TOGGLED_RULE, "--reason", "soak policy change")
        fault.ok = result.returncode == 0
        fault.detail = (result.stdout if fault.ok else result.stderr or result.stdout).strip()
        fault.detail = fault.detail.splitlines()[-1][:200] if fault.detail else ""

    def _pg_restart(self, fault: Fault) -> None:
        # Other sessions' connections to the server would be cut too: give them a while.
        waited = time.monotonic()
        while (
            other_postgres_clients(self.db)
            and time.monotonic() - waited < self.restart_wait
            and not self.stop.wait(1.0)
        ):
            pass
        waited = time.monotonic() - waited
        self.other_connections = other_postgres_clients(self.db)
        if self.other_connections:
            self.say(
                f"warning: {self.other_connections} other client connection(s) to this"
                " PostgreSQL server will be cut by the restart"
            )
        version = postgres_cluster_version()
        fault.started = self.now()
        result = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        fault.ok = result.returncode == 0
        fault.detail = (
            f"cluster {version}/main"
            + (
                f" (after waiting {waited:.0f} s for other sessions' connections)"
                if waited > 1
                else ""
            )
            + ("" if fault.ok else f": {(result.stderr or result.stdout).strip()[-300:]}")
        )

    def lift_leftover_lock(self) -> None:
        if self.open_lock is not None:
            self._cli("unlock", self.open_lock, "--reason", "soak over")
            self.open_lock = None


def other_postgres_clients(db: Database) -> int:
    """Client connections to other databases of the server (a restart cuts them too)."""
    with contextlib.suppress(Exception), db.engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND datname IS DISTINCT FROM current_database()"
                    " AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        )
    return 0


# --- reconciliation -------------------------------------------------------------------------


class AccessRow(NamedTuple):
    request_id: str
    user_agent: str | None
    record_id: str | None
    record_sha256: str | None
    decision: str
    reason: str | None


@dataclass
class Reconciliation:
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    records_released: int = 0  # records in 2xx bodies of record routes, as the clients hold them
    records_logged: int = 0  # ... of them with their allow row
    stream_lines: int = 0  # NDJSON lines received on streamed routes (logged per request)
    rows: int = 0
    rows_by_decision: Counter[str] = field(default_factory=Counter)
    rows_reached: int = 0  # rows of a request id some client saw
    rows_explained: Counter[str] = field(default_factory=Counter)
    # Failures (each entry says what and where):
    unlogged_records: list[str] = field(default_factory=list)
    unlogged_responses: list[str] = field(default_factory=list)  # a 2xx without its allow row
    unexplained_rows: list[str] = field(default_factory=list)
    mismatched_rows: list[str] = field(default_factory=list)  # rows contradicting the response
    # Information:
    responses_without_rows: Counter[str] = field(default_factory=Counter)
    logged_not_released: Counter[str] = field(default_factory=Counter)
    reached_reasons: Counter[str] = field(default_factory=Counter)
    http_500: list[Attempt] = field(default_factory=list)

    @property
    def unlogged(self) -> int:
        return len(self.unlogged_records) + len(self.unlogged_responses)

    @property
    def ok(self) -> bool:
        return not (self.unlogged or self.unexplained_rows or self.mismatched_rows or self.http_500)


_STREAM_REASONS = ("stream_cut:", "stream_broken:")


def reconcile(attempts: Iterable[Attempt], rows: Iterable[AccessRow]) -> Reconciliation:
    """Match every client outcome with the access log, and every access row with a client.

    - A 2xx of a record route: each record the client holds has an `allow` row of that
      request id with its id and SHA-256 (multiset equality; a missing row is an unlogged
      release, an extra allow row is a mismatch). Rows `filtered` are records withheld.
    - Any other 2xx (streams, metadata, annotations): at least one `allow` row.
    - A row whose request id a client saw has reached it. A row of an unseen request id is
      explained only when its User-Agent names an attempt that got no response (connection
      cut, refused, timed out) or never finished (client gone); anything else, e.g. a
      second request id for one attempt or an unknown User-Agent, is unexplained.
    """
    result = Reconciliation()
    by_request: dict[str, list[AccessRow]] = defaultdict(list)
    for row in rows:
        by_request[row.request_id].append(row)
        result.rows += 1
        result.rows_by_decision[row.decision] += 1
    by_tag: dict[str, Attempt] = {}
    seen: dict[str, Attempt] = {}
    for attempt in attempts:
        result.requests += 1
        result.outcomes[attempt.outcome] += 1
        by_tag[attempt.tag] = attempt
        if attempt.status == 500:
            result.http_500.append(attempt)
        if attempt.status is None:
            continue
        where = f"{attempt.tag} {attempt.method} {attempt.path} -> {attempt.outcome}"
        if attempt.request_id is None:
            if 200 <= attempt.status < 300:
                result.unlogged_responses.append(f"{where}: no X-Request-Id")
            result.responses_without_rows[attempt.outcome] += 1
            continue
        seen[attempt.request_id] = attempt
        mine = by_request.get(attempt.request_id, [])
        if not mine:
            result.responses_without_rows[attempt.outcome] += 1
        _check_response(result, attempt, mine, where)
    for request_id, group in by_request.items():
        if request_id in seen:
            result.rows_reached += len(group)
            for row in group:
                result.reached_reasons[f"{row.decision} {row.reason}"] += 1
            continue
        explanation = _explain(group, by_tag)
        if explanation is None:
            for row in group:
                result.unexplained_rows.append(
                    f"request {request_id} (user agent {row.user_agent!r}): {row.decision}"
                    f" {row.reason} record {row.record_id}"
                )
        else:
            result.rows_explained[explanation] += len(group)
    return result


def _check_response(
    result: Reconciliation, attempt: Attempt, rows: list[AccessRow], where: str
) -> None:
    status = attempt.status or 0
    allow = Counter(
        (row.record_id, row.record_sha256)
        for row in rows
        if row.decision == "allow" and row.record_id is not None
    )
    strangers = [row for row in rows if row.user_agent != f"{UA_PREFIX}/{attempt.tag}"]
    if strangers:
        result.mismatched_rows.append(
            f"{where}: {len(strangers)} row(s) of this request id carry another user agent"
            f" ({strangers[0].user_agent!r})"
        )
    if not 200 <= status < 300:
        released_rows = sum(1 for row in rows if row.decision == "allow" and row.record_sha256)
        if released_rows:  # logged as released, but the client got an error: over-logging
            result.logged_not_released[attempt.outcome] += released_rows
        return
    denied = [
        row
        for row in rows
        if row.decision == "deny" and not (row.reason or "").startswith(_STREAM_REASONS)
    ]
    if denied:
        result.mismatched_rows.append(f"{where}: a 2xx with a deny row ({denied[0].reason})")
    if attempt.records is not None:
        held = Counter(attempt.records)
        result.records_released += sum(held.values())
        missing, extra = held - allow, allow - held
        result.records_logged += sum(held.values()) - sum(missing.values())
        for (record_id, sha), count in missing.items():
            result.unlogged_records.append(
                f"{where}: record {record_id} sha256 {sha[:16]}… x{count} has no allow row"
            )
        for (record_id, sha), count in extra.items():
            result.mismatched_rows.append(
                f"{where}: allow row for record {record_id} sha256 {str(sha)[:16]}… x{count}"
                " that the client did not receive"
            )
        return
    if attempt.record_route:
        # The body of a record route broke off: whatever arrived came after the rows.
        if not any(row.decision == "allow" for row in rows):
            result.unlogged_responses.append(f"{where}: no allow row")
        return
    result.stream_lines += attempt.lines
    if not any(row.decision == "allow" for row in rows):
        result.unlogged_responses.append(f"{where}: no allow row")
    cut_rows = [row for row in rows if (row.reason or "").startswith(_STREAM_REASONS)]
    if cut_rows and attempt.failure is None:
        result.mismatched_rows.append(
            f"{where}: {cut_rows[0].reason} logged, but the client got the whole stream"
        )


def _explain(group: list[AccessRow], by_tag: dict[str, Attempt]) -> str | None:
    """Why rows of a request id no client saw exist, or None if nothing explains them."""
    agents = {row.user_agent for row in group}
    if len(agents) != 1:
        return None
    agent = agents.pop() or ""
    prefix = f"{UA_PREFIX}/"
    attempt = by_tag.get(agent[len(prefix) :]) if agent.startswith(prefix) else None
    if attempt is None:
        return None
    if attempt.end is None:
        return "client gone (in flight at the end)"
    if attempt.status is None:
        return f"client got no response: {attempt.failure}"
    return None


# --- the run --------------------------------------------------------------------------------


@dataclass
class SoakOptions:
    duration: float = 600.0
    clients: int = 32
    fault_period: float = 60.0
    pg_restart: bool = True
    seed: int = 10
    request_timeout: float = 15.0
    warmup_timeout: float = 60.0
    # How long the restart waits for other sessions' connections to the server to go.
    pg_restart_wait: float = 120.0
    # Fingerprint the sources before and after, to refuse a run whose code changed under it.
    check_code: bool = True


@dataclass
class Recovery:
    instance: int
    baseline: float  # healthy fraction over the 30 s before the restart
    first_failure: float | None  # seconds after the restart began
    first_200: float | None
    steady: float | None
    outage: Counter[str]  # unhealthy outcomes between the restart and the steady point
    bins: list[tuple[float, int, int, Counter[str]]]  # start, requests, healthy, unhealthy kinds


@dataclass
class LogFindings:
    tracebacks: Counter[str] = field(default_factory=Counter)
    worker_kills_seen: int = 0
    worker_timeouts: int = 0
    warnings: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # warning kind → its first line
    excerpts: dict[str, str] = field(default_factory=dict)  # request id → traceback text


@dataclass
class SoakResult:
    options: SoakOptions
    instances: int
    database: str
    origin_wall: dt.datetime
    elapsed: float
    attempts: list[Attempt]
    faults: list[Fault]
    reconciliation: Reconciliation
    recoveries: list[Recovery]
    enforcement: list[str]
    findings: list[str]
    logs: list[LogFindings]
    other_pg_connections: int = 0
    incomplete: list[str] = field(default_factory=list)  # why the run is not what was planned
    # Sources that changed under the run (a worker forked after a kill loads them as they are).
    code_changed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reconciliation.ok and not self.incomplete and not self.code_changed


def _client(
    index: int,
    gateway: Gateway,
    instance: int,
    sub: str,
    token: str,
    options: SoakOptions,
    run_id: str,
    origin: float,
    deadline: float,
    stop: threading.Event,
    sink: list[Attempt],
) -> None:
    rng = random.Random(options.seed * 1000 + index)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    number = 0
    with session:
        while not stop.is_set() and time.monotonic() < deadline and number < 10_000_000:
            call = choose_call(rng, sub)
            attempt = Attempt(
                f"{run_id}/{index}/{number}",
                index,
                instance,
                sub,
                call.kind,
                call.method,
                call.path,
                time.monotonic() - origin,
                record_route=call.records is not None,
            )
            sink.append(attempt)  # before it is sent: an attempt never finished is visible
            try:
                perform(session, gateway.url, call, attempt, origin, options.request_timeout)
            except Exception as error:  # the harness's own trouble: visible, never silent
                attempt.failure = f"client exception {type(error).__name__}: {error}"[:200]
                attempt.end = time.monotonic() - origin
            number += 1
            if attempt.status is None:
                time.sleep(0.05)  # a refused connection must not spin


def _warm_up(gateways: list[Gateway], tokens: dict[str, str], timeout: float, run_id: str) -> None:
    """Every instance answers every contractor before the clock starts."""
    deadline = time.monotonic() + timeout
    for index, gateway in enumerate(gateways):
        for sub, token in tokens.items():
            path = "/api/projects/proj-3/tasks/task-1/records?limit=1"
            path = path if sub == "carol" else path.replace("proj-3", "proj-1")
            while True:
                try:
                    response = requests.get(
                        gateway.url + path,
                        headers={
                            "Authorization": f"Bearer {token}",
                            "User-Agent": f"{UA_PREFIX}/{run_id}/warmup-{index}-{sub}",
                        },
                        timeout=10,
                    )
                    if response.status_code == 200:
                        break
                    problem = f"{response.status_code} {response.text[:200]}"
                except requests.RequestException as error:
                    problem = repr(error)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"warm-up of {sub} on {gateway.url}: {problem}")
                time.sleep(0.2)


# Parts of the package no gateway worker and none of the CLI commands used here load, unless
# a module they do load imports them (anomaly detection and simulation, the demo runner).
_OFF_THE_PATH = ("gateway/anomaly/", "gateway/demo/", "gateway/cli/anomalies.py")


def code_fingerprint() -> dict[str, str]:
    """SHA-256 of each source the gateway's workers and the soak's CLI commands can load,
    and of the test configuration they run with."""
    loaded = subprocess.run(
        [
            PYTHON,
            "-c",
            "import sys, gateway.config, gateway.api.alerts, gateway.services, gateway.cli\n"
            "print('\\n'.join(getattr(m, '__file__', None) or '' for m in list(sys.modules.values())))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.split()
    loaded_set = {str(Path(name).resolve()) for name in loaded}
    digests = {}
    paths = [
        *sorted((ROOT / "gateway").rglob("*.py")),
        ROOT / "tests" / "conftest.py",
        ROOT / "config" / "gateway.toml",
        ROOT / "wsgi.py",
    ]
    for path in paths:
        name = str(path.relative_to(ROOT))
        if name.startswith(_OFF_THE_PATH) and str(path.resolve()) not in loaded_set:
            continue
        with contextlib.suppress(OSError):
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def read_access_rows(db: Database) -> list[AccessRow]:
    db.engine.dispose()  # pooled connections may predate a PostgreSQL restart
    with db.engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=20_000).execute(
            text(
                "SELECT request_id, user_agent, record_id, record_sha256, decision, reason"
                " FROM access_log"
            )
        )
        return [AccessRow(*row) for row in result]


def run_soak(
    gateways: list[Gateway],
    db: Database,
    options: SoakOptions,
    *,
    say: Callable[[str], None] = print,
) -> SoakResult:
    """Run the load and the faults against running `gateways`, then reconcile."""
    run_id = secrets.token_hex(3)
    pg_restart = options.pg_restart and db.kind == "postgresql"
    code_at_start = code_fingerprint() if options.check_code else {}
    tokens = {sub: gateways[0].token(sub) for sub in sorted(set(SUBJECTS))}
    _warm_up(gateways, tokens, options.warmup_timeout, run_id)
    warm_tags = {f"warmup-{i}-{sub}" for i in range(len(gateways)) for sub in tokens}
    period = min(options.fault_period, options.duration)
    plan = plan_faults(options.duration, period, pg_restart=pg_restart, instances=len(gateways))
    stop = threading.Event()
    attempts: list[Attempt] = []
    origin = time.monotonic()
    origin_wall = dt.datetime.now(dt.UTC)
    deadline = origin + options.duration
    clients = [
        threading.Thread(
            target=_client,
            args=(
                index,
                gateways[index % len(gateways)],
                index % len(gateways),
                SUBJECTS[index % len(SUBJECTS)],
                tokens[SUBJECTS[index % len(SUBJECTS)]],
                options,
                run_id,
                origin,
                deadline,
                stop,
                attempts,
            ),
            name=f"soak-client-{index}",
            daemon=True,
        )
        for index in range(options.clients)
    ]
    faults = FaultRunner(plan, gateways, db, origin, stop, say, options.pg_restart_wait)
    for thread in clients:
        thread.start()
    faults.thread.start()
    try:
        _progress(attempts, origin, deadline, stop, say)
    finally:
        stop.set()
        end_by = time.monotonic() + options.request_timeout + 10
        for thread in clients:
            thread.join(max(0.1, end_by - time.monotonic()))
        faults.join(max(0.1, end_by - time.monotonic()))
        with contextlib.suppress(Exception):
            faults.lift_leftover_lock()
    elapsed = time.monotonic() - origin
    attempts = list(attempts)
    rows = read_access_rows(db)
    # The warm-up requests are the harness's own; count them as seen by a client.
    rows = [r for r in rows if (r.user_agent or "").split("/", 2)[-1] not in warm_tags]
    reconciliation = reconcile(attempts, rows)
    done = sorted(faults.done, key=lambda f: f.started)
    restart = next((f for f in done if f.kind == "pg_restart"), None)
    recoveries = (
        [recovery(attempts, i, restart, elapsed) for i in range(len(gateways))]
        if restart is not None
        else []
    )
    logs = [scan_gateway_log(gateway.proc.log()) for gateway in gateways]
    incomplete = [
        f"{f.kind} at {f.started:.0f} s did not happen: {f.detail}" for f in done if not f.ok
    ]
    if len(done) < len(plan):
        incomplete.append(f"only {len(done)} of {len(plan)} planned faults ran")
    for number, gateway in enumerate(gateways, 1):
        code = gateway.proc.process.poll()
        if code is not None:
            incomplete.append(f"instance {number}'s gunicorn master exited (status {code})")
    return SoakResult(
        options=options,
        instances=len(gateways),
        database=db.kind,
        origin_wall=origin_wall,
        elapsed=elapsed,
        attempts=attempts,
        faults=done,
        reconciliation=reconciliation,
        recoveries=recoveries,
        enforcement=enforcement(attempts, done),
        findings=findings(attempts, done, reconciliation, recoveries, logs),
        logs=logs,
        other_pg_connections=faults.other_connections,
        incomplete=incomplete,
        code_changed=(
            changed_files(code_at_start, code_fingerprint()) if options.check_code else []
        ),
    )


def _progress(
    attempts: list[Attempt],
    origin: float,
    deadline: float,
    stop: threading.Event,
    say: Callable[[str], None],
) -> None:
    reported = 0
    while not stop.wait(min(10.0, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            return
        now = time.monotonic() - origin
        recent = [a for a in list(attempts[reported:]) if a.end is not None]
        reported = len(attempts)
        statuses = Counter(a.outcome for a in recent)
        say(
            f"[{now:6.1f}s] {len(recent)} requests in the last ~10 s: "
            + ", ".join(f"{k}: {v}" for k, v in statuses.most_common(6))
        )


# --- analysis --------------------------------------------------------------------------------


def recovery(
    attempts: list[Attempt],
    instance: int,
    restart: Fault,
    elapsed: float,
    *,
    bin_seconds: float = 1.0,
    hold_seconds: float = 5.0,
    threshold: float = 0.9,
    horizon_seconds: float = 120.0,
) -> Recovery:
    """Recovery of one instance after the restart that began at `restart.started`.

    first failure: the first unhealthy outcome (5xx or no response) completed after the
    restart began; first 200: the first 200 of a request started after that failure;
    steady: the start of the first `hold_seconds` of 1-s bins (by request start) in which
    every bin has requests and a healthy fraction ≥ `threshold` x the 30 s before the restart
    (looked for up to `horizon_seconds` after the restart).
    """
    t0 = restart.started
    mine = sorted(
        (a for a in attempts if a.instance == instance and a.end is not None),
        key=lambda a: a.start,
    )
    before = [a for a in mine if t0 - 30 <= a.start < t0]
    baseline = sum(a.healthy for a in before) / len(before) if before else 1.0
    failures = sorted(a.end for a in mine if a.end >= t0 and not a.healthy)  # type: ignore[operator]
    first_failure = failures[0] if failures else None
    since = first_failure if first_failure is not None else t0
    ok_ends = [a.end for a in mine if a.status == 200 and a.start >= since]
    first_200 = min(ok_ends) if ok_ends else None  # type: ignore[type-var]
    starts = [a.start for a in mine]
    bins: list[tuple[float, int, int, Counter[str]]] = []
    start = t0 - 2 * bin_seconds
    while start < min(elapsed, t0 + horizon_seconds):
        inside = mine[bisect_left(starts, start) : bisect_left(starts, start + bin_seconds)]
        bad = Counter(a.outcome for a in inside if not a.healthy)
        bins.append((start - t0, len(inside), len(inside) - sum(bad.values()), bad))
        start += bin_seconds
    steady = None
    hold = round(hold_seconds / bin_seconds)
    first_ok = first_200 - t0 if first_200 is not None else None
    for index in range(len(bins) - hold + 1):
        if first_ok is None or bins[index][0] + bin_seconds <= first_ok:
            continue
        window = bins[index : index + hold]
        if all(n > 0 and good / n >= threshold * baseline for _, n, good, _ in window):
            steady = window[0][0]
            break
    outage: Counter[str] = Counter()
    horizon = t0 + (steady if steady is not None else horizon_seconds)
    for a in mine[bisect_left(starts, t0) : bisect_left(starts, horizon)]:
        if not a.healthy:
            outage[a.outcome] += 1
    cut = round((steady if steady is not None else 20.0) / bin_seconds) + 5
    return Recovery(
        instance=instance,
        baseline=baseline,
        first_failure=first_failure - t0 if first_failure is not None else None,
        first_200=first_ok,
        steady=steady,
        outage=outage,
        bins=bins[: cut + 2],
    )


def enforcement(attempts: list[Attempt], faults: list[Fault]) -> list[str]:
    """Answers that contradict a lock or policy change whose CLI command had returned."""
    lines = []
    locks = [f for f in faults if f.kind == "lock" and f.ok]
    unlocks = [f for f in faults if f.kind == "unlock" and f.ok]
    for lock in locks:
        lifted = next((u.started for u in unlocks if u.started > lock.ended), float("inf"))
        subs = set(lock.subjects)
        served = [
            a
            for a in attempts
            if a.sub in subs
            and lock.ended <= a.start < lifted
            and a.status is not None
            and 200 <= a.status < 300
        ]
        refused = sum(
            1
            for a in attempts
            if a.sub in subs and lock.ended <= a.start < lifted and a.error == "locked"
        )
        worst = max((a.start - lock.ended for a in served), default=None)
        lines.append(
            f"lock {lock.target} at {lock.ended:.1f}s (CLI returned), lifted at {lifted:.1f}s:"
            f" {refused} refused `locked`; {len(served)} answered 2xx although started after"
            f" the CLI returned"
            + (f" (latest started {worst * 1000:.0f} ms after)" if served else "")
        )
    for change in (f for f in faults if f.kind.startswith("policy_") and f.ok):
        granted = change.kind == "policy_grant"
        stale = [
            a
            for a in attempts
            if a.kind == "toggled"
            and a.start >= change.ended
            and a.start < change.ended + 20
            and a.status in ((403,) if granted else (200,))
            and (a.error in (None, "forbidden"))
        ]
        stale = [a for a in stale if a.error != "locked"]
        lines.append(
            f"{change.kind} at {change.ended:.1f}s (CLI returned): {len(stale)} answer(s) by the"
            " old policy to requests started in the next 20 s"
            + (
                f" (latest started {max(a.start - change.ended for a in stale) * 1000:.0f} ms after)"
                if stale
                else ""
            )
        )
    return lines


_TRACEBACK_START = "Traceback (most recent call last):"
_REQUEST_FAILED = re.compile(r"request ([0-9a-f]{24}) failed")


def scan_gateway_log(log_text: str) -> LogFindings:
    """Tracebacks (by their final line), worker kills and timeouts, warnings by kind."""
    found = LogFindings()
    lines = log_text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if "was sent SIGKILL" in line:
            found.worker_kills_seen += 1
        if "WORKER TIMEOUT" in line:
            found.worker_timeouts += 1
        for needle in (
            "audit commit failed",
            "lock refresh failed",
            "connection lost",
            "upstream stream broke off",
            "audit seal failed",
            "opaque token check failed",
            "issuer keys unavailable",
            "Worker failed to boot",
        ):
            if needle in line:
                found.warnings[needle] += 1
                found.examples.setdefault(needle, line.strip()[:300])
        if line.startswith(_TRACEBACK_START):
            request = _REQUEST_FAILED.search(lines[index - 1]) if index else None
            block = [lines[index - 1]] if index else []
            index += 1
            while index < len(lines) and (
                lines[index].startswith((" ", "\t"))
                or not lines[index].strip()
                or lines[index].startswith(("During handling", "The above exception"))
                or lines[index].startswith(_TRACEBACK_START)
            ):
                block.append(lines[index])
                index += 1
            final = lines[index] if index < len(lines) else "(end of log)"
            block.append(final)
            found.tracebacks[final.strip()[:200]] += 1
            if request and len(found.excerpts) < 20:
                found.excerpts[request.group(1)] = "\n".join(block[-40:])
            continue
        index += 1
    return found


NEAR_KILL = "kill -9 of a worker of its instance"
NEAR_RESTART = "PostgreSQL restart (up to 30 s after it returned)"
NEAR_LOCK = "a lock of its contractor"
NEAR_NONE = "no fault nearby"
NEAR = (NEAR_KILL, NEAR_RESTART, NEAR_LOCK, NEAR_NONE)


def _near(attempt: Attempt, faults: list[Fault]) -> str:
    """The fault an unhealthy attempt overlapped, if any."""
    end = attempt.end if attempt.end is not None else float("inf")
    near = set()
    for fault in faults:
        if (
            fault.kind == "kill_worker"
            and fault.instance == attempt.instance
            and attempt.start - 0.5 <= fault.started <= end + 0.05
        ):
            near.add(NEAR_KILL)
        if (
            fault.kind == "pg_restart"
            and fault.started - 0.5 <= end
            and (attempt.start <= fault.ended + 30)
        ):
            near.add(NEAR_RESTART)
        if (
            fault.kind == "lock"
            and attempt.sub in fault.subjects
            and fault.started <= end
            and attempt.start <= (fault.lifted if fault.lifted is not None else float("inf"))
        ):
            near.add(NEAR_LOCK)
    # The narrowest explanation first: a kill of its own worker, its own lock, the restart.
    return next((kind for kind in (NEAR_KILL, NEAR_LOCK, NEAR_RESTART) if kind in near), NEAR_NONE)


def findings(
    attempts: list[Attempt],
    faults: list[Fault],
    rec: Reconciliation,
    recoveries: list[Recovery],
    logs: list[LogFindings],
) -> list[str]:
    notes = []
    if rec.unlogged:
        notes.append(f"UNLOGGED RELEASES: {rec.unlogged}")
    if rec.unexplained_rows:
        notes.append(f"unexplained access rows: {len(rec.unexplained_rows)}")
    if rec.mismatched_rows:
        notes.append(f"rows contradicting the response the client got: {len(rec.mismatched_rows)}")
    if rec.http_500:
        notes.append(f"HTTP 500: {len(rec.http_500)} response(s)")
    quiet = Counter(
        a.outcome
        for a in attempts
        if a.end is not None and not a.healthy and _near(a, faults) == NEAR_NONE
    )
    if quiet:
        notes.append(
            "unhealthy outcomes with no fault nearby: "
            + ", ".join(f"{k}: {v}" for k, v in quiet.most_common())
        )
    unknown = Counter(
        a.outcome
        for a in attempts
        if a.error == "lock_state_unknown" and _near(a, faults) != NEAR_RESTART
    )
    if unknown:
        notes.append(
            f"503 lock_state_unknown outside the PostgreSQL restart: {sum(unknown.values())}"
        )
    short = sum(1 for a in attempts if a.failure == "stream ended short without an error")
    if short:
        notes.append(f"streams that ended short but looked complete to the client: {short}")
    for rec_ in recoveries:
        if rec_.steady is None:
            notes.append(f"instance {rec_.instance + 1} never reached a steady success rate")
    for number, log in enumerate(logs, 1):
        if log.tracebacks:
            notes.append(
                f"instance {number} log: {sum(log.tracebacks.values())} traceback(s): "
                + "; ".join(f"{k} x{v}" for k, v in log.tracebacks.most_common(5))
            )
        if log.worker_timeouts:
            notes.append(f"instance {number} log: {log.worker_timeouts} WORKER TIMEOUT(s)")
    return notes


# --- report ---------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(result: SoakResult) -> list[str]:
    rec = result.reconciliation
    attempts = result.attempts
    finished = [a for a in attempts if a.end is not None]
    verdict = "PASS" if rec.ok else "FAIL"
    kinds = Counter(a.kind for a in attempts)
    lines = [
        f"**Reconciliation: {verdict}** — unlogged releases **{rec.unlogged}**, unexplained"
        f" rows **{len(rec.unexplained_rows)}**, rows contradicting a response"
        f" **{len(rec.mismatched_rows)}**, HTTP 500 **{len(rec.http_500)}**.",
        "",
        *(
            ["**RUN INCOMPLETE** — the figures below are not those of the planned soak:", ""]
            + [f"- {line}" for line in result.incomplete]
            + (
                [
                    "- files of the gateway or its test config changed in the working tree"
                    " during the run (workers forked after a kill load them as they are then): "
                    + ", ".join(result.code_changed)
                ]
                if result.code_changed
                else []
            )
            + [""]
            if result.incomplete or result.code_changed
            else []
        ),
        f"- requests: {rec.requests} in {result.elapsed:.0f} s"
        f" ({len(finished) / max(result.elapsed, 1e-9):.0f}/s) from {result.options.clients}"
        f" clients; by kind: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()),
        f"- records released in 2xx record bodies: {rec.records_released}, each with its allow"
        f" row: {rec.records_logged}",
        f"- NDJSON lines received on the streamed export route: {rec.stream_lines} (that route"
        " has no `records` spec, so it is logged as one row per request, not per record)",
        f"- access rows: {rec.rows} ("
        + ", ".join(f"{k} {v}" for k, v in rec.rows_by_decision.most_common())
        + f"); of a request id a client saw: {rec.rows_reached}; explained: "
        + (", ".join(f"{k} {v}" for k, v in rec.rows_explained.most_common()) or "none")
        + f"; unexplained: {len(rec.unexplained_rows)}",
        "- rows of requests the clients saw, by decision and reason: "
        + ", ".join(f"{k} {v}" for k, v in rec.reached_reasons.most_common(12)),
        "- responses without any access row: "
        + (", ".join(f"{k} {v}" for k, v in rec.responses_without_rows.most_common()) or "none"),
        "- allow rows of records whose response was an error (logged, not released): "
        + (", ".join(f"{k} {v}" for k, v in rec.logged_not_released.most_common()) or "none"),
        "",
        "Requests by outcome, and the fault each unhealthy one overlapped:",
        "",
        "| outcome | requests | with a worker kill | with the PostgreSQL restart"
        " | with a lock of its contractor | no fault nearby |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    near: dict[str, Counter[str]] = defaultdict(Counter)
    for attempt in attempts:
        if not attempt.healthy:
            near[attempt.outcome][_near(attempt, result.faults)] += 1
    for outcome, count in rec.outcomes.most_common():
        spread = near.get(outcome, Counter())
        cells = [str(spread.get(key, 0)) if outcome in near else "" for key in NEAR]
        lines.append(f"| {outcome} | {count} | {' | '.join(cells)} |")
    lines += ["", "Faults (seconds since the load started):", ""]
    lines += ["| at | fault | took | outcome |", "|---:|---|---:|---|"]
    for fault in result.faults:
        extra = ""
        if fault.kind == "kill_worker" and fault.respawned is not None:
            extra = f"; replacement worker forked {fault.respawned - fault.started:.1f} s later"
        lines.append(
            f"| {fault.started:.1f} | {fault.kind} | {fault.ended - fault.started:.1f} s"
            f" | {'ok' if fault.ok else 'FAILED'}: {fault.detail}{extra} |"
        )
    if result.recoveries:
        lines += _recovery_lines(result)
    lines += ["", "Locks and policy changes (requests started after the CLI command returned):", ""]
    lines += [f"- {line}" for line in result.enforcement] or ["- none"]
    lines += ["", "Gateway logs:", ""]
    for number, log in enumerate(result.logs, 1):
        lines.append(
            f"- instance {number}: {log.worker_kills_seen} worker SIGKILL(s) noted by the master,"
            f" {log.worker_timeouts} worker timeout(s); tracebacks: "
            + ("; ".join(f"`{k}` x{v}" for k, v in log.tracebacks.most_common(6)) or "none")
            + "; warnings: "
            + (", ".join(f"{k} x{v}" for k, v in log.warnings.most_common()) or "none")
        )
        lines += [f"  - first `{k}`: `{v}`" for k, v in sorted(log.examples.items())]
    lines += ["", "Findings:", ""]
    lines += [f"- {note}" for note in result.findings] or ["- none"]
    return lines


def _recovery_lines(result: SoakResult) -> list[str]:
    restart = next(f for f in result.faults if f.kind == "pg_restart")
    lines = [
        "",
        f"PostgreSQL restart at {restart.started:.1f} s; `pg_ctlcluster ... restart` returned"
        f" after {restart.ended - restart.started:.1f} s"
        + (
            f" ({result.other_pg_connections} other client connection(s) to the server were"
            " cut too)"
            if result.other_pg_connections
            else ""
        )
        + ". Recovery per instance (seconds after the restart began):",
        "",
        "| instance | healthy before | first failure | first 200 after it | steady (5 s ≥ 90% of"
        " before) | unhealthy outcomes until steady |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for rec in result.recoveries:
        lines.append(
            f"| {rec.instance + 1} | {rec.baseline:.1%} | {_seconds(rec.first_failure)}"
            f" | {_seconds(rec.first_200)} | {_seconds(rec.steady)} | "
            + (", ".join(f"{k} {v}" for k, v in rec.outage.most_common()) or "none")
            + " |"
        )
    lines += [
        "",
        "Per second around the restart (requests by start time; healthy = answered below 500):",
        "",
        "| s after restart | "
        + " | ".join(
            f"instance {r.instance + 1}: requests / healthy / unhealthy" for r in result.recoveries
        )
        + " |",
        "|---:|" + "---|" * len(result.recoveries),
    ]
    for row in range(min(len(r.bins) for r in result.recoveries)):
        cells = []
        for rec in result.recoveries:
            _start, count, good, bad = rec.bins[row]
            cells.append(
                f"{count} / {good} / "
                + (", ".join(f"{k} {v}" for k, v in bad.most_common(3)) or "-")
            )
        lines.append(f"| {rec.bins[row][0]:.0f} | " + " | ".join(cells) + " |")
    return lines


def print_details(result: SoakResult, say: Callable[[str], None] = print) -> None:
    """The individual failures (first 20 of each), and the gateway's traceback per 500."""
    rec = result.reconciliation
    for title, items in (
        ("unlogged records", rec.unlogged_records),
        ("unlogged responses", rec.unlogged_responses),
        ("unexplained rows", rec.unexplained_rows),
        ("rows contradicting a response", rec.mismatched_rows),
    ):
        if items:
            say(f"--- {title} ({len(items)}) ---")
            for item in items[:20]:
                say(f"  {item}")
    if rec.http_500:
        say(f"--- HTTP 500 ({len(rec.http_500)}) ---")
        excerpts: dict[str, str] = {}
        for log in result.logs:
            excerpts.update(log.excerpts)
        for attempt in rec.http_500[:20]:
            say(
                f"  {attempt.tag} instance {attempt.instance + 1} {attempt.method} {attempt.path}"
                f" at {attempt.start:.1f}s request {attempt.request_id}: {attempt.body}"
            )
            if attempt.request_id in excerpts:
                say("    " + excerpts[attempt.request_id].replace("\n", "\n    "))


# --- the standalone benchmark ---------------------------------------------------------------


@dataclass
class System:
    procs: list[Proc] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    server: str | None = None
    db_name: str | None = None
    db: Database | None = None

    def stop(self) -> None:
        for gateway in self.gateways:
            if gateway.proc is not None:
                with contextlib.suppress(Exception):
                    gateway.proc.stop()
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        if self.db is not None:
            self.db.engine.dispose()
        if self.server and self.db_name:
            with contextlib.suppress(Exception):
                _drop_postgres_db(self.server, self.db_name)


def start_supporting(tmp: Path) -> list[Proc]:
    """The JWT IdP, the opaque-token IdP and the sample service, as in tests/conftest.py."""
    procs = []
    port = free_port()
    argv = [PYTHON, "-m", "tests.support.idp", "--port", str(port), "--jwt-audience", AUDIENCE]
    for user in USERS:
        argv += ["--user-claims", json.dumps(user)]
    procs.append(
        start(argv, f"http://127.0.0.1:{port}", tmp / "idp.log",
              ready_path="/.well-known/openid-configuration")
    )  # fmt: skip
    port = free_port()
    argv = [str(Path(PYTHON).with_name("oidc-provider-mock")), "--port", str(port)]
    for user in OPAQUE_USERS:
        argv += ["--user-claims", json.dumps(user)]
    procs.append(
        start(argv, f"http://127.0.0.1:{port}", tmp / "opaque-idp.log",
              ready_path="/.well-known/openid-configuration")
    )  # fmt: skip
    port = free_port()
    procs.append(
        start(
            [GATEWAY_BIN, "demo-upstream", "--port", str(port), "--token", UPSTREAM_TOKEN],
            f"http://127.0.0.1:{port}",
            tmp / "upstream.log",
        )
    )
    return procs


def launch_instances(
    tmp: Path, db: Database, idp: Proc, opaque: Proc, upstream: Proc, count: int
) -> list[Gateway]:
    """`count` gateway instances (2 workers each, `launch_gateway`) on one database."""
    gateways: list[Gateway] = []
    try:
        for index in range(count):
            where = tmp / f"gateway-{index + 1}"
            where.mkdir(parents=True, exist_ok=True)
            gateways.append(launch_gateway(where, db, idp, opaque, upstream, workers=2))
    except BaseException:
        for gateway in gateways:
            with contextlib.suppress(Exception):
                gateway.proc.stop()
        raise
    return gateways


@contextlib.contextmanager
def running_system(server: str, instances: int) -> Iterator[System]:
    system = System()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        try:
            system.procs = start_supporting(Path(tmp))
            system.server = server
            system.db_name = f"soak_{secrets.token_hex(4)}"
            system.db = Database(_make_postgres_db(server, system.db_name), "postgresql")
            idp, opaque, upstream = system.procs
            system.gateways = launch_instances(
                Path(tmp), system.db, idp, opaque, upstream, instances
            )
            yield system
        except BaseException:
            for gateway in system.gateways:
                with contextlib.suppress(Exception):
                    print(f"--- {gateway.url} log tail ---\n{gateway.proc.log()[-3000:]}")
            raise
        finally:
            system.stop()


def gunicorn_command(gateway: Gateway) -> str:
    """How an instance's gunicorn master was started (from /proc), without the bind address."""
    try:
        argv = Path(f"/proc/{gateway.proc.process.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gunicorn (command line unavailable)"
    words = [word.decode(errors="replace") for word in argv if word]
    words = words[words.index("gunicorn") :] if "gunicorn" in words else words
    if "-b" in words:
        at = words.index("-b")
        del words[at : at + 2]
    return " ".join(words)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--clients", type=int, default=32, help="client threads (32)")
    parser.add_argument("--instances", type=int, default=2, help="gateway instances (2)")
    parser.add_argument(
        "--fault-period", type=float, default=60.0, help="seconds between rounds of faults (60)"
    )
    parser.add_argument(
        "--no-pg-restart", action="store_true", help="do not restart PostgreSQL mid-run"
    )
    parser.add_argument(
        "--pg-restart-wait",
        type=float,
        default=120.0,
        help="seconds the restart waits for other sessions' connections to the server to go",
    )
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument(
        "--server",
        default=os.environ.get("GATEWAY_TEST_POSTGRES", DEFAULT_SERVER),
        help="PostgreSQL server (a database on it is created and dropped)",
    )
    parser.add_argument(
        "--write", action="store_true", help="write the `soak` section of bench/RESULTS.md"
    )
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.clients < 1 or args.instances < 1 or args.duration <= 0:
        raise SystemExit("--clients, --instances and --duration must be positive")
    options = SoakOptions(
        duration=args.duration,
        clients=args.clients,
        fault_period=args.fault_period,
        pg_restart=not args.no_pg_restart,
        seed=args.seed,
        pg_restart_wait=args.pg_restart_wait,
    )
    loadavg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    began = time.monotonic()
    with running_system(args.server, args.instances) as system:
        assert system.db is not None
        with system.db.engine.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar_one()
        served_by = gunicorn_command(system.gateways[0])
        print(f"{args.instances} instance(s) up; {args.clients} clients for {args.duration:g} s")
        result = run_soak(system.gateways, system.db, options)
    whole = time.monotonic() - began
    body = report(result)
    print()
    print("\n".join(body))
    print_details(result)
    if args.write:
        header = [
            "## Soak with faults: two instances, worker kills, locks, policy changes, a"
            " PostgreSQL restart (`bench/soak.py`)",
            "",
            f"- date: {result.origin_wall.strftime('%Y-%m-%d %H:%M UTC')}",
            f"- machine: {machine()}",
            f"- code measured: {git_state()}",
            f"- command: `{command_line('soak.py')}` (whole run {whole:.0f} s)",
            f"- setup: {args.instances} gateway instances, each `{served_by}`"
            " (`tests.conftest.launch_gateway`: lockout stale bound 2 s, policy"
            " poll 0.5 s, upstream read timeout 2 s), on one fresh PostgreSQL"
            f" {version} database (dropped at the end); test IdPs and sample service from"
            " tests/conftest.py; everything on this machine",
            f"- load: {args.clients} client threads (alice and bob of acme with JWTs, carol of"
            " globex with an opaque token), keep-alive, no think time; mix of task pages,"
            " a filtered project listing, single records, a streamed export"
            f" (`chunks={EXPORT_CHUNKS}&delay={EXPORT_DELAY}`), task metadata, annotation"
            " POSTs, and denials (no grant, explicit deny, unknown route); a User-Agent per"
            " attempt ties access rows to attempts that got no response",
            f"- faults every {min(args.fault_period, args.duration):g} s: kill -9 of one"
            " worker (instances in turn), lock (contractor bob / vendor acme in turn) and"
            " unlock 15% of a period later, policy grant/revoke of alice on proj-2/task-2 (CLI)"
            + ("; one PostgreSQL restart mid-run" if options.pg_restart else ""),
            f"- load average at start: {loadavg}",
            "",
        ]
        write_section("soak", "\n".join(header + body))
        print("\nwritten to bench/RESULTS.md (section `soak`)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
