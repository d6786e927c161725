"""One soak run: clients, faults, and the analysis of what happened."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import random
import re
import secrets
import subprocess
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from sqlalchemy import text

from bench.soakkit.common import SUBJECTS, UA_PREFIX
from bench.soakkit.faults import Fault, FaultRunner, plan_faults
from bench.soakkit.reconcile import AccessRow, Reconciliation, reconcile
from bench.soakkit.traffic import Attempt, choose_call, perform
from tests.conftest import PYTHON, Database, Gateway

ROOT = Path(__file__).resolve().parents[2]

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
    # On a slow machine the admin commands can fall behind their plan; the load then goes on
    # past `duration` (at most this long) so that every planned fault still runs under load.
    fault_overrun: float = 60.0


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
    hard_deadline = deadline + options.fault_overrun
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
                hard_deadline,
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
        if faults.thread.is_alive():
            say(f"[{time.monotonic() - origin:6.1f}s] load goes on until the planned faults ran")
            faults.thread.join(max(0.0, hard_deadline - time.monotonic()))
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


def near_fault(attempt: Attempt, faults: list[Fault]) -> str:
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
        if a.end is not None and not a.healthy and near_fault(a, faults) == NEAR_NONE
    )
    if quiet:
        notes.append(
            "unhealthy outcomes with no fault nearby: "
            + ", ".join(f"{k}: {v}" for k, v in quiet.most_common())
        )
    unknown = Counter(
        a.outcome
        for a in attempts
        if a.error == "lock_state_unknown" and near_fault(a, faults) != NEAR_RESTART
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
