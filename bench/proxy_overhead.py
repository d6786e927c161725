"""What does the gateway cost per request, compared with a bare Flask proxy?

One run measures the same 50-record task page fetched three ways, with the same load:

  (a) straight from the sample dataset service (`gateway demo-upstream`);
  (b) through `bench/bare_proxy.py`, a pass-through Flask proxy (no auth, policy or audit),
      under exactly the gunicorn settings of the gateway;
  (c) through the full gateway: JWT access token from the test IdP (real code flow),
      a ~100k-rule Casbin policy (1,000 projects x 10,000 contractors) imported with
      `gateway policy import`, and per-record audit rows committed to PostgreSQL
      (a fresh `bench_<random>` database, dropped at the end; SQLite if no server).

Afterwards it checks through the database that the gateway wrote one 'allow' row per
released record (50 per successful request) and writes the figures to bench/RESULTS.md.

    .venv/bin/python bench/proxy_overhead.py                 # what `make bench` runs
    .venv/bin/python bench/proxy_overhead.py --rounds 3 --duration 10 --profile 10

Load comes from `wrk` when it is on PATH, else from a Python load generator in separate
processes (threads with one keep-alive connection each). Every process this script starts
runs in its own process group and is stopped on the way out, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import machine  # noqa: E402
from tests.conftest import AUDIENCE, UPSTREAM_TOKEN, USERS, gateway_config  # noqa: E402
from tests.support.oidc_client import obtain_tokens  # noqa: E402

PYTHON = sys.executable
GATEWAY_BIN = str(Path(PYTHON).with_name("gateway"))
PY_SPY_BIN = str(Path(PYTHON).with_name("py-spy"))
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- proxy_overhead:start -->"
SECTION_END = "<!-- proxy_overhead:end -->"
DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

ISSUER_NAME = "acme-idp"  # the JWT issuer of gateway_config(); it binds vendor "acme"
PAGE_RECORDS = 50
PROFILE_RATE = 250  # py-spy samples per second


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


# --- CPU accounting ----------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: str) -> tuple[str, int, int, int] | None:
    """(comm, process group, utime, stime in ticks) of one process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, int(fields[2]), int(fields[11]), int(fields[12])


@dataclass
class CpuSample:
    at: float
    busy: int  # machine-wide busy ticks
    ours: int  # this script, its waited-for children (load generator) and its process groups
    postgres: int
    groups: dict[str, tuple[int, int]]  # (user, system) ticks per process started here


@dataclass
class CpuUse:
    """CPU used during one measurement, in cores (nproc = fully busy machine)."""

    busy: float
    ours: float
    postgres: float
    groups: dict[str, tuple[float, float]]  # (user, system) cores per process started here

    @property
    def other(self) -> float:
        # Processes of nobody in this benchmark (e.g. other test runs on the machine).
        return max(0.0, self.busy - self.ours - self.postgres)

    def group(self, name: str) -> float:
        user, system = self.groups.get(name, (0.0, 0.0))
        return user + system


class CpuMeter:
    def __init__(self, procs: Processes) -> None:
        self.procs = procs

    def sample(self) -> CpuSample:
        with open("/proc/stat") as stat:
            cpu = [int(v) for v in stat.readline().split()[1:9]]
        busy = sum(cpu) - cpu[3] - cpu[4]  # everything but idle and iowait
        names = {p.process.pid: p.name for p in self.procs.procs}
        groups: dict[str, tuple[int, int]] = {}
        ours = postgres = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            info = _proc_stat(pid)
            if info is None:
                continue
            comm, pgrp, user, system = info
            if pgrp in names:
                ours += user + system
                u, s = groups.get(names[pgrp], (0, 0))
                groups[names[pgrp]] = (u + user, s + system)
            elif comm == "postgres":
                postgres += user + system
        own = os.times()
        ours += round((own.user + own.system + own.children_user + own.children_system) * _TICKS)
        return CpuSample(time.monotonic(), busy, ours, postgres, groups)

    @staticmethod
    def use(before: CpuSample, after: CpuSample) -> CpuUse:
        seconds = max(after.at - before.at, 1e-6) * _TICKS
        groups = {}
        for name, (user, system) in after.groups.items():
            u0, s0 = before.groups.get(name, (0, 0))
            groups[name] = ((user - u0) / seconds, (system - s0) / seconds)
        return CpuUse(
            (after.busy - before.busy) / seconds,
            (after.ours - before.ours) / seconds,
            (after.postgres - before.postgres) / seconds,
            groups,
        )


def wait_for_quiet(meter: CpuMeter, max_seconds: float, threshold: float) -> None:
    """Wait (at most max_seconds) until processes outside this benchmark use < threshold cores."""
    deadline = time.monotonic() + max_seconds
    while True:
        before = meter.sample()
        time.sleep(1.0)
        other = CpuMeter.use(before, meter.sample()).other
        if other < threshold:
            return
        if time.monotonic() >= deadline:
            print(
                f"  (machine still busy: other processes use {other:.2f} cores; measuring anyway)"
            )
            return


# --- database ----------------------------------------------------------------------------


@dataclass
class Database:
    url: str
    label: str
    drop: Any = None  # callable that removes it

    def scalar_rows(self, sql: str) -> list[Any]:
        engine = create_engine(self.url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(sql)))
        finally:
            engine.dispose()


def make_database(server: str, workdir: Path) -> Database:
    try:
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar_one()
            name = f"bench_{secrets.token_hex(4)}"
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as error:
        print(
            f"PostgreSQL at {server} is NOT reachable ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); falling back to SQLite",
            file=sys.stderr,
        )
        path = workdir / "gateway.db"
        return Database(f"sqlite:///{path}", "SQLite (fallback: PostgreSQL unreachable)")

    def drop() -> None:
        engine = create_engine(server, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    base, _, _ = server.rpartition("/")
    return Database(f"{base}/{name}", f"PostgreSQL {version} (database {name})", drop)


# --- policy ------------------------------------------------------------------------------


@dataclass
class PolicyStats:
    projects: int
    contractors: int
    p_allow: int = 0
    p_deny: int = 0
    memberships: int = 0
    vendor_grants: int = 0

    @property
    def total(self) -> int:
        return self.p_allow + self.p_deny + self.memberships + self.vendor_grants


def contractor_name(index: int, contractors: int) -> str:
    return f"c{index:0{max(4, len(str(contractors - 1)))}d}"


def bench_contractor(contractors: int) -> str:
    """The benchmark's own contractor: one of the generated ones (c4242 of 10,000)."""
    return contractor_name(min(4242, contractors - 1), contractors)


def generate_policy(
    path: Path, *, projects: int, contractors: int, per_contractor: int, project: str, seed: int
) -> PolicyStats:
    """Casbin CSV in the gateway's model: roles per project, memberships, vendor grants, denies.

    The bench contractor is an annotator on the measured project through its own
    membership (not through its vendor), and no deny rule touches the measured task.
    """
    rng = random.Random(seed)
    stats = PolicyStats(projects, contractors)
    lines: list[str] = []
    for n in range(1, projects + 1):
        lines += [
            f"p, role:annotator, proj-{n}, *, read, allow",
            f"p, role:annotator, proj-{n}, *, annotate, allow",
            f"p, role:reviewer, proj-{n}, *, read, allow",
            f"p, role:reviewer, proj-{n}, *, review, allow",
            f"p, role:task1-viewer, proj-{n}, task-1, read, allow",
        ]
        stats.p_allow += 5
    bench_subject = f"{ISSUER_NAME}:{bench_contractor(contractors)}"
    measured = int(project.removeprefix("proj-"))
    all_projects = range(1, projects + 1)
    memberships: dict[str, list[int]] = {}
    for c in range(contractors):
        subject = f"{ISSUER_NAME}:{contractor_name(c, contractors)}"
        chosen = rng.sample(all_projects, min(per_contractor, projects))
        if subject == bench_subject and measured not in chosen:
            chosen[0] = measured
        memberships[subject] = chosen
        for n in chosen:
            if subject == bench_subject and n == measured:
                role = "annotator"
            else:
                role = rng.choices(("annotator", "reviewer", "task1-viewer"), (80, 15, 5))[0]
            lines.append(f"g, {subject}, role:{role}, proj-{n}")
            stats.memberships += 1
    # Vendor-wide grants (some for acme, never on the measured project, so the bench
    # contractor's decision goes through its own membership).
    for n in range(1, projects + 1, 5):
        vendor = "acme" if n % 50 == 1 and n != measured else f"v{rng.randrange(40)}"
        role = rng.choice(("annotator", "reviewer"))
        lines.append(f"g, vendor:{vendor}, role:{role}, proj-{n}")
        stats.vendor_grants += 1
    # Deny rules: individual contractors on one task, and whole vendors on an action.
    subjects = list(memberships)
    for _ in range(max(1, contractors // 10)):
        subject = rng.choice(subjects)
        n = rng.choice(memberships[subject])
        task = (
            "task-2"
            if subject == bench_subject and n == measured
            else rng.choice(("task-1", "task-2", "task-3"))
        )
        lines.append(f"p, {subject}, proj-{n}, {task}, read, deny")
        stats.p_deny += 1
    for n in range(3, projects + 1, 10):
        lines.append(f"p, vendor:v{rng.randrange(40)}, proj-{n}, *, annotate, deny")
        stats.p_deny += 1
    unique = list(dict.fromkeys(lines))
    path.write_text("\n".join(unique) + "\n")
    # Duplicates are possible only among deny rules; keep the count exact.
    stats.p_deny -= len(lines) - len(unique)
    return stats


# --- load generation ---------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int  # responses received (any status)
    errors: int  # non-200 responses + socket errors/timeouts
    rps: float
    p50_ms: float
    p99_ms: float
    seconds: float
    detail: str = ""
    cpu: CpuUse | None = None


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _wrk_ms(value: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", value.strip())
    if match is None:
        raise ValueError(f"unparsable wrk latency {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> LoadResult:
    total = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m)", output, re.M)
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", output, re.M)
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.M)
    if not (total and rps and p50 and p99):
        raise RuntimeError(f"could not parse wrk output:\n{output}")
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return LoadResult(
        requests=int(total.group(1)),
        errors=errors,
        rps=float(rps.group(1)),
        p50_ms=_wrk_ms(p50.group(1)),
        p99_ms=_wrk_ms(p99.group(1)),
        seconds=_wrk_ms(total.group(2) + total.group(3)) / 1e3,
        detail=output,
    )


def _py_load_process(
    url: str,
    headers: dict[str, str],
    threads: int,
    barrier: Any,
    duration: float,
    out: Any,
) -> None:
    """One load process: `threads` threads, each with its own one-connection pool."""
    parsed = urllib3.util.parse_url(url)
    target = parsed.request_uri
    results: list[tuple[list[float], int, int, float]] = []
    lock = threading.Lock()

    def run() -> None:
        pool = urllib3.HTTPConnectionPool(
            parsed.host, parsed.port, maxsize=1, block=True, retries=False, timeout=30.0
        )
        latencies: list[float] = []
        ok = errors = 0
        barrier.wait(120)  # every thread of every process starts together
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            began = time.perf_counter()
            try:
                response = pool.urlopen("GET", target, headers=headers, preload_content=True)
                latencies.append(time.perf_counter() - began)
                if response.status == 200:
                    ok += 1
                else:
                    errors += 1
            except urllib3.exceptions.HTTPError:
                errors += 1
        ended = time.time()
        pool.close()
        with lock:
            results.append((latencies, ok, errors, ended))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies = [x for r in results for x in r[0]]
    ended = max((r[3] for r in results), default=time.time())
    out.put((latencies, sum(r[1] for r in results), sum(r[2] for r in results), ended))


def python_load(
    url: str, headers: dict[str, str], *, connections: int, processes: int, duration: float
) -> LoadResult:
    """Fixed-duration closed-loop load from `processes` processes, `connections` threads."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    processes = max(1, min(processes, connections))
    barrier = ctx.Barrier(connections + 1)
    procs = []
    latencies: list[float] = []
    ok = errors = 0
    try:
        for i in range(processes):
            share = connections // processes + (1 if i < connections % processes else 0)
            proc = ctx.Process(
                target=_py_load_process, args=(url, headers, share, barrier, duration, out)
            )
            proc.start()
            procs.append(proc)
        barrier.wait(120)  # returns once every load thread is ready
        started = time.time()
        finished = started
        for _ in procs:
            lat, n_ok, n_err, ended = out.get(timeout=duration + 90)
            latencies += lat
            ok += n_ok
            errors += n_err
            finished = max(finished, ended)
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    elapsed = finished - started
    latencies.sort()
    return LoadResult(
        requests=ok + errors,
        errors=errors,
        rps=ok / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile(latencies, 50) * 1e3,
        p99_ms=_percentile(latencies, 99) * 1e3,
        seconds=elapsed,
    )


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(pct / 100 * len(values) + 0.5) - 1))
    return values[index]


@dataclass
class LoadTool:
    kind: str  # "wrk" or "python"
    connections: int
    threads: int  # wrk threads / Python load processes

    def describe(self) -> str:
        if self.kind == "wrk":
            return f"wrk -t{self.threads} -c{self.connections} --latency (keep-alive)"
        return (
            f"Python load generator: {self.threads} processes, {self.connections} threads in "
            "total, one keep-alive urllib3 connection each"
        )

    def run(self, url: str, headers: dict[str, str], duration: float) -> LoadResult:
        if self.kind == "python":
            return python_load(
                url,
                headers,
                connections=self.connections,
                processes=self.threads,
                duration=duration,
            )
        argv = [
            "wrk",
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "--latency",
        ]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(url)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 60, start_new_session=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return parse_wrk(done.stdout)


# --- profiling ---------------------------------------------------------------------------


def _frame_name(frame: str, *, line: bool = False) -> str:
    # py-spy raw frames look like "Pipeline.handle (/work/main/gateway/pipeline.py:143)".
    match = re.match(r"^(.*) \((.*?)(:\d+)?\)$", frame)
    if not match:
        return frame
    function, filename, lineno = match.groups()
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
    return f"{function} ({filename}{(lineno or '') if line else ''})"


def _lined(frame: str) -> str:
    return _frame_name(frame, line=True)


# Pipeline stages and their main parts, reported by inclusive share.
STAGES = (
    ("Pipeline._normalise", "normalise path"),
    ("Pipeline._identify", "identify (bearer token -> Principal, cached)"),
    ("Pipeline._route", "route map"),
    ("Pipeline._authorize", "authorize (policy decision, cached)"),
    ("Pipeline._forward", "forward (headers, assertion, upstream round trip)"),
    ("AssertionSigner.sign|GatewayKeys.sign", "  of which: sign the Ed25519 identity assertion"),
    ("Upstream.send", "  of which: upstream request + response headers"),
    ("Pipeline._release_records", "release records (read, parse, ids/hashes, rows, audit wait)"),
    ("UpstreamResponse.read", "  of which: read the upstream body"),
    ("extract_records", "  of which: extract_records (ids + SHA-256 per record)"),
    ("RequestContext.row", "  of which: RequestContext.row (audit row dict)"),
    ("AuditWriter.write", "  of which: hand rows to the writer and wait"),
    ("AuditWriter._run", "audit-writer thread (chain hashes + INSERT/COPY)"),
    ("row_hash|hash_values", "  of which: chain hash per row"),
    ("insert_rows", "  of which: insert_rows (driver-level COPY/executemany)"),
)


def summarise_profile(
    raw_files: list[Path], *, rate: int, seconds: float, workers: int, top: int = 20
) -> str:
    """Inclusive and self shares of functions, over all GIL-holding samples of the workers."""
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    gateway_lines: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for raw in raw_files:
        if not raw.exists():
            continue
        for text_line in raw.read_text(errors="replace").splitlines():
            stack, _, count_text = text_line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            # The first frames name the process and thread, not code.
            frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
            if not frames:
                continue
            names = [_frame_name(f) for f in frames]
            total += count
            threads[_thread_kind(names)] += count
            for name in set(names):
                inclusive[name] += count
            self_time[_frame_name(frames[-1], line=True)] += count
            ours = [n for n in map(_lined, frames) if " (gateway/" in n]
            if ours:
                gateway_lines[ours[-1]] += count
    if total == 0:
        return "(no samples)"
    possible = rate * seconds * max(workers, 1)
    out = [
        f"{total} samples holding the GIL, all worker threads (GIL held"
        f" {100 * total / possible:.0f}% of the time per worker on average)",
        "",
        "by thread kind:",
    ]
    out += [f"  {share(n, total)}  {kind}" for kind, n in threads.most_common()]
    out += ["", "pipeline stages (inclusive):"]
    for function, label in STAGES:
        names = function.split("|")
        seen = [k for k in inclusive if k.split(" (")[0] in names]
        if not seen:
            out.append(f"     -    {label} [{function}: not in this profile]")
            continue
        n = sum(inclusive[k] for k in seen)
        out.append(f"  {share(n, total)}  {label} [{function}]")
    out += ["", f"top {top} inclusive (function appears in the stack):"]
    out += [f"  {share(n, total)}  {name}" for name, n in inclusive.most_common(top)]
    out += ["", f"top {top} self (leaf frame, with line):"]
    out += [f"  {share(n, total)}  {name}" for name, n in self_time.most_common(top)]
    out += ["", f"top {top} gateway lines (deepest gateway/ frame of each sample):"]
    out += [f"  {share(n, total)}  {name}" for name, n in gateway_lines.most_common(top)]
    return "\n".join(out)


def _thread_kind(names: list[str]) -> str:
    joined = ";".join(names)
    if "AuditWriter._run" in joined or "_run (gateway/audit/writer.py)" in joined:
        return "audit-writer thread"
    if "_poll (gateway/policy/engine.py)" in joined:
        return "policy-poll thread"
    if "handle (gateway/pipeline.py)" in joined:
        return "request threads: inside Pipeline.handle"
    return "request threads/main loop: outside Pipeline.handle (gunicorn, werkzeug, WSGI)"


def share(n: int, total: int) -> str:
    return f"{100 * n / total:5.1f}%"


def profile_gateway(
    tool: LoadTool,
    meter: CpuMeter,
    gateway: Proc,
    url: str,
    headers: dict[str, str],
    seconds: float,
    workdir: Path,
) -> tuple[str, int]:
    """Sample every gateway worker with py-spy while the load runs; returns (summary, requests)."""
    if not Path(PY_SPY_BIN).exists() and shutil.which("py-spy") is None:
        return "(py-spy not installed)", 0
    spy = PY_SPY_BIN if Path(PY_SPY_BIN).exists() else "py-spy"
    pids = worker_pids(gateway.process.pid)
    box: dict[str, LoadResult] = {}
    loader = threading.Thread(
        target=lambda: box.setdefault("r", tool.run(url, headers, seconds + 3)), daemon=True
    )
    loader.start()
    time.sleep(1.5)
    spies, files = [], []
    before = meter.sample()
    for pid in pids:
        raw = workdir / f"profile-{pid}.txt"
        files.append(raw)
        spies.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    str(PROFILE_RATE),
                    "--nonblocking",
                    "--gil",  # only samples holding the GIL: where the worker's CPU goes
                    "--duration",
                    str(round(seconds)),
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        )
    for spy_proc in spies:
        try:
            spy_proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            os.killpg(spy_proc.pid, signal.SIGKILL)
    cpu = CpuMeter.use(before, meter.sample())
    loader.join(seconds + 90)
    result = box.get("r")
    if result is None:
        raise RuntimeError("load during profiling did not finish")
    if result.errors:
        raise RuntimeError(f"{result.errors} errors during the profiling load")
    user, system = cpu.groups.get("gateway", (0.0, 0.0))
    header = (
        f"load {result.rps:.0f} req/s; {len(pids)} workers used {user:.2f} cores user +"
        f" {system:.2f} cores system ({1000 * (user + system) / result.rps:.2f} ms CPU/req,"
        f" py-spy's own sampling included)"
    )
    summary = summarise_profile(files, rate=PROFILE_RATE, seconds=seconds, workers=len(pids))
    return header + "\n" + summary, result.requests


# --- the run -----------------------------------------------------------------------------


@dataclass
class Target:
    key: str
    label: str
    url: str
    headers: dict[str, str]
    proxy: str | None = None  # name of the proxy's processes, if any
    runs: list[LoadResult] = field(default_factory=list)
    warmups: list[LoadResult] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)

    def cpu_ms(self, group: str | None) -> float | None:
        """Median CPU milliseconds that `group`'s processes spent per request."""
        if group is None or any(run.cpu is None for run in self.runs):
            return None
        return statistics.median(_cpu_ms(run, group) for run in self.runs)


def _cpu_ms(run: LoadResult, group: str) -> float:
    assert run.cpu is not None
    return 1000 * run.cpu.group(group) / run.rps if run.rps else float("nan")


def _postgres_cores(run: LoadResult) -> float:
    assert run.cpu is not None
    return run.cpu.postgres


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def probe(target: Target) -> str:
    """One request; checks the answer is the 50-record page and returns its SHA-256."""
    response = http_get(target.url, target.headers, timeout=30)
    if response.status != 200:
        raise RuntimeError(
            f"({target.key}) {target.url} answered {response.status}: {response.data[:500]!r}"
        )
    body = json.loads(response.data)
    if len(body.get("records", [])) != PAGE_RECORDS:
        raise RuntimeError(f"({target.key}) expected {PAGE_RECORDS} records, got {body!r:.300}")
    return hashlib.sha256(response.data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stop everything on SIGTERM, and on Ctrl-C even when started with SIGINT ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    procs = Processes(workdir)
    database: Database | None = None
    ok = False
    try:
        database = make_database(args.database_url, workdir) if not args.sqlite else None
        if database is None:
            database = Database(f"sqlite:///{workdir / 'gateway.db'}", "SQLite (--sqlite)")
        report = run(args, procs, database, workdir)
        ok = True
        return 0 if report else 1
    finally:
        procs.stop_all()
        if database is not None and database.drop is not None:
            try:
                database.drop()
            except Exception as error:
                print(f"warning: could not drop the bench database: {error}", file=sys.stderr)
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per target")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds a,b,c,a,b,c…")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--load-threads", type=int, default=2, help="wrk -t / Python processes")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn -w (both proxies)")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn --threads (both)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_SERVER", DEFAULT_SERVER),
        help="PostgreSQL server URL; a fresh bench_<random> database is made on it",
    )
    parser.add_argument("--sqlite", action="store_true", help="audit to SQLite instead")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement wait up to this long for other processes to go quiet",
    )
    parser.add_argument(
        "--quiet-threshold", type=float, default=0.2, help="cores other processes may use"
    )
    parser.add_argument("--project", default="proj-1", help="project of the measured page")
    parser.add_argument("--task", default="task-1")
    parser.add_argument("--projects", type=int, default=1000, help="projects in the policy")
    parser.add_argument("--contractors", type=int, default=10_000)
    parser.add_argument("--per-contractor", type=int, default=10, help="projects per contractor")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--skip-direct", action="store_true", help="do not measure (a)")
    parser.add_argument("--skip-bare", action="store_true", help="do not measure (b)")
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="afterwards, py-spy the gateway workers under load this long",
    )
    parser.add_argument(
        "--upstream",
        choices=("sample", "static"),
        default="sample",
        help="sample: the bundled sample service; static: nginx serving a snapshot of the same"
        " page (a near-free upstream that also closes kept-alive connections every 1,000"
        " requests); written to its own section of the results",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    parser.add_argument("--no-results", action="store_true", help="do not write the results file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        parser.error("--rounds, --duration and --connections must be positive")
    return args


def run(args: argparse.Namespace, procs: Processes, database: Database, workdir: Path) -> bool:
    started = time.monotonic()
    tool_kind = args.loadgen
    if tool_kind == "auto":
        tool_kind = "wrk" if shutil.which("wrk") else "python"
    elif tool_kind == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--loadgen wrk: wrk is not on PATH")
    tool = LoadTool(tool_kind, args.connections, args.load_threads)
    meter = CpuMeter(procs)
    print(f"load tool: {tool.describe()}")
    print(f"audit database: {database.label}")

    # 1. IdPs and the sample dataset service (as tests/conftest.py starts them).
    idp = procs.start("idp", idp_argv(port := free_port(), bench_contractor(args.contractors)))
    idp.url = f"http://127.0.0.1:{port}"
    opaque = procs.start(
        "opaque-idp",
        [str(Path(PYTHON).with_name("oidc-provider-mock")), "--port", str(p2 := free_port())],
    )
    opaque.url = f"http://127.0.0.1:{p2}"
    upstream = procs.start(
        "sample-service" if args.upstream == "static" else "upstream",
        [GATEWAY_BIN, "demo-upstream", "--port", str(p3 := free_port()), "--token", UPSTREAM_TOKEN],
    )
    upstream.url = f"http://127.0.0.1:{p3}"
    # The proxies' upstream: the sample service, or nginx serving a snapshot of its page.
    static = StaticUpstream(procs, workdir) if args.upstream == "static" else None
    served_by = static.proc if static is not None else upstream

    # 2. Config, schema, policy (while those start).
    config_path = workdir / "gateway.toml"
    config_path.write_text(
        gateway_config(
            db_url=database.url,
            idp_url=idp.url,
            opaque_idp_url=opaque.url,
            upstream_url=served_by.url,
        )
    )
    cli_env = {"GATEWAY_CONFIG": str(config_path), "UPSTREAM_TOKEN": UPSTREAM_TOKEN}
    cli(["db", "upgrade"], cli_env)
    policy_csv = workdir / "policy.csv"
    stats = generate_policy(
        policy_csv,
        projects=args.projects,
        contractors=args.contractors,
        per_contractor=args.per_contractor,
        project=args.project,
        seed=args.seed,
    )
    began = time.monotonic()
    print(cli(["policy", "import", str(policy_csv), "--reason", "benchmark policy"], cli_env))
    import_seconds = time.monotonic() - began
    print(f"policy: {stats.total} rules imported in {import_seconds:.1f}s")

    # 3. The two proxies under the same gunicorn settings.
    settings = gunicorn_settings(args.workers, args.threads)
    bare = None
    if not args.skip_bare:
        bare_port = free_port()
        bare = procs.start(
            "bare-proxy",
            [
                PYTHON,
                "-m",
                "gunicorn",
                *settings,
                "-b",
                f"127.0.0.1:{bare_port}",
                "bench.bare_proxy:app",
            ],
            env={
                "BARE_UPSTREAM_URL": served_by.url,
                "BARE_UPSTREAM_AUTHORIZATION": f"Token {UPSTREAM_TOKEN}",
            },
        )
        bare.url = f"http://127.0.0.1:{bare_port}"
    gw_port = free_port()
    gateway = procs.start(
        "gateway",
        [PYTHON, "-m", "gunicorn", *settings, "-b", f"127.0.0.1:{gw_port}", "gateway.wsgi:app"],
        env=cli_env,
    )
    gateway.url = f"http://127.0.0.1:{gw_port}"

    wait_until(idp, "/.well-known/openid-configuration", timeout=30)
    wait_until(opaque, "/.well-known/openid-configuration", timeout=30)
    wait_until(upstream, "/", timeout=30)
    if static is not None:
        page_body = http_get(
            upstream.url + f"/api/projects/{args.project}/tasks/{args.task}/records"
            f"?limit={PAGE_RECORDS}",
            {"Authorization": f"Token {UPSTREAM_TOKEN}"},
        ).data
        static.serve(f"/api/projects/{args.project}/tasks/{args.task}/records", page_body)
        wait_until(static.proc, "/", timeout=30)
    if bare is not None:
        wait_until(bare, "/", timeout=30)
    began = time.monotonic()
    wait_until(gateway, "/_gateway/ready", timeout=240, want=200)
    print(f"gateway ready {time.monotonic() - began:.1f}s after the other services")

    # 4. A token through the real authorization code flow, then one probe per target.
    token = obtain_tokens(idp.url, bench_contractor(args.contractors))["access_token"]
    page = f"/api/projects/{args.project}/tasks/{args.task}/records?limit={PAGE_RECORDS}"
    bearer = {"Authorization": f"Bearer {token}"}
    targets: list[Target] = []
    if not args.skip_direct:
        targets.append(
            Target(
                "a",
                "(a) nginx static page, direct" if static else "(a) sample service, direct",
                served_by.url + page,
                {"Authorization": f"Token {UPSTREAM_TOKEN}"},
            )
        )
    if bare is not None:
        targets.append(
            Target("b", "(b) bare Flask proxy", bare.url + page, bearer, proxy="bare-proxy")
        )
    store = "PostgreSQL" if database.url.startswith("postgresql") else "SQLite"
    gw_target = Target(
        "c",
        f"(c) gateway (JWT + policy + audit on {store})",
        gateway.url + page,
        bearer,
        proxy="gateway",
    )
    targets.append(gw_target)
    digests = {t.key: probe(t) for t in targets}
    gateway_requests = 1  # the probe
    if len(set(digests.values())) != 1:
        raise RuntimeError(f"the targets answered different bodies: {digests}")
    print(
        f"probe: every target returns the same {PAGE_RECORDS}-record page "
        f"(sha256 {digests['c'][:12]}…)"
    )

    # 5. Load: warm up, then measure, target after target, in rounds.
    for round_number in range(1, args.rounds + 1):
        for target in targets:
            if args.quiet_wait > 0:
                wait_for_quiet(meter, args.quiet_wait, args.quiet_threshold)
            if args.warmup > 0:
                warm = tool.run(target.url, target.headers, args.warmup)
                check_errors(target, warm, "warm-up")
                target.warmups.append(warm)
                if target is gw_target:
                    gateway_requests += warm.requests
            before = meter.sample()
            result = tool.run(target.url, target.headers, args.duration)
            result.cpu = CpuMeter.use(before, meter.sample())
            check_errors(target, result, "measurement")
            target.runs.append(result)
            if target is gw_target:
                gateway_requests += result.requests
            print(
                f"round {round_number} {target.label}: {result.rps:8.1f} req/s  "
                f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                f"({result.requests} requests; CPU cores busy {result.cpu.busy:.2f}, "
                f"other processes {result.cpu.other:.2f}; proxy "
                f"{_fmt(_cpu_ms(result, target.proxy) if target.proxy else None)} ms CPU/req, "
                f"upstream {_cpu_ms(result, 'upstream'):.2f} ms CPU/req)"
            )

    # 6. The audit log must hold one 'allow' row per released record.
    load_runs = len(gw_target.runs) + len(gw_target.warmups)
    audit = verify_audit(database, gateway_requests, args.connections, load_runs, tool.kind)
    tracebacks = gateway.log_tail(10**9).count("Traceback")
    audit["text"] += f" Tracebacks in the gateway log: {tracebacks}."
    if tracebacks:
        audit["ok"] = False
    print(audit["text"])

    profile_text = None
    if args.profile > 0:
        print(f"profiling the gateway workers with py-spy for {args.profile:.0f}s under load …")
        profile_text, _ = profile_gateway(
            tool, meter, gateway, gw_target.url, gw_target.headers, args.profile, workdir
        )
        print(profile_text)

    elapsed = time.monotonic() - started
    table = results_table(targets)
    print()
    print(table)
    if not args.no_results:
        write_results(
            args,
            tool=tool,
            database=database,
            stats=stats,
            import_seconds=import_seconds,
            targets=targets,
            table=table,
            audit=audit,
            profile_text=profile_text,
            elapsed=elapsed,
        )
        print(f"\nwritten to {args.results}")
    return audit["ok"]


def idp_argv(port: int, sub: str) -> list[str]:
    argv = [PYTHON, "-m", "tests.support.idp", "--port", str(port), "--jwt-audience", AUDIENCE]
    users = [*USERS, {"sub": sub, "email": f"{sub}@acme.example"}]
    for user in users:
        argv += ["--user-claims", json.dumps(user)]
    return argv


def cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [GATEWAY_BIN, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip()


class StaticUpstream:
    """nginx (Debian's package) serving one page from disk: an upstream that costs ~nothing.

    A slow upstream's own CPU hides the gateway's cost in the ratios; this one does not.
    It also closes each kept-alive connection after 1,000 requests (nginx's default), so
    the gateway's pool meets connections the upstream has closed.
    """

    def __init__(self, procs: Processes, workdir: Path) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise SystemExit("--upstream static needs nginx (apt-get install nginx-light)")
        self.root = workdir / "static"
        self.port = free_port()
        conf = workdir / "nginx.conf"
        temp = workdir / "nginx-temp"
        temp.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f"""daemon off;
user root;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 1000;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location / {{ try_files $uri =404; }}
    }}
}}
"""
        )
        (self.root).mkdir(parents=True, exist_ok=True)
        (self.root / "index.html").write_text("ok\n")
        self.proc = procs.start("upstream", [binary, "-c", str(conf), "-p", str(workdir)])
        self.proc.url = f"http://127.0.0.1:{self.port}"

    def serve(self, path: str, body: bytes) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)


def check_errors(target: Target, result: LoadResult, phase: str) -> None:
    if result.requests == 0 or result.rps <= 0:
        raise RuntimeError(f"{target.label}: no request completed during {phase}")
    if result.errors:
        raise RuntimeError(
            f"{target.label}: {result.errors} errors (non-200 or socket errors) during "
            f"{phase} of {result.requests} requests\n{result.detail}"
        )


def verify_audit(
    database: Database, requests_counted: int, connections: int, load_runs: int, tool: str
) -> dict[str, Any]:
    # Requests that were in flight when the load stopped are still being served: wait
    # until the log stops growing before counting.
    previous, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = database.scalar_rows("SELECT count(*) FROM access_log")[0][0]
        if current != previous:
            previous, stable_since = current, time.monotonic()
        elif time.monotonic() - stable_since >= 1.5:
            break
        time.sleep(0.25)
    released = database.scalar_rows(
        "SELECT count(*), count(DISTINCT request_id) FROM access_log "
        "WHERE decision = 'allow' AND record_id IS NOT NULL"
    )[0]
    by_decision = dict(
        database.scalar_rows("SELECT decision, count(*) FROM access_log GROUP BY decision")
    )
    by_reason = dict(
        database.scalar_rows(
            "SELECT reason, count(*) FROM access_log WHERE decision <> 'allow' GROUP BY reason"
        )
    )
    rows, request_ids = int(released[0]), int(released[1])
    expected = PAGE_RECORDS * requests_counted
    # wrk counts only answers it read: requests in flight when it stops were still served
    # (and logged) by the gateway, at most one per connection per load run.
    slack = 0 if tool == "python" else connections * load_runs
    problems = []
    if rows != PAGE_RECORDS * request_ids:
        problems.append(f"{rows} rows are not {PAGE_RECORDS} per request ({request_ids} requests)")
    if not expected <= rows <= expected + PAGE_RECORDS * slack:
        problems.append(
            f"{rows} rows, expected {expected}"
            + (f" (+ up to {PAGE_RECORDS * slack} for in-flight requests)" if slack else "")
        )
    # When wrk stops it closes its connections; requests then in flight find their
    # client gone and are refused (`client_gone`) instead of logged as released.
    gone = by_reason.pop("client_gone", 0)
    if gone > slack:
        problems.append(f"{gone} client_gone refusals, more than {slack} connections stopping")
    if by_reason:
        problems.append(f"unexpected refusals {by_reason}")
    line = (
        f"audit: {rows} access_log rows with decision 'allow' and a record id = "
        f"{PAGE_RECORDS} x {request_ids} requests; client counted {requests_counted} successful "
        f"gateway requests (expected {expected} rows; difference {request_ids - requests_counted}"
        f" request(s){', in flight when wrk stopped' if slack else ''}); "
        f"rows by decision: {by_decision}"
        + (f" ({gone} client_gone: requests in flight when wrk closed)" if gone else "")
    )
    if problems:
        line += "\nAUDIT CHECK FAILED: " + "; ".join(problems)
        print(line, file=sys.stderr)
    return {
        "ok": not problems,
        "text": line,
        "rows": rows,
        "requests": request_ids,
        "counted": requests_counted,
    }


def results_table(targets: list[Target]) -> str:
    by_key = {t.key: t for t in targets}
    lines = [
        "| target | req/s | p50 (ms) | p99 (ms) | proxy CPU ms/req | upstream CPU ms/req "
        "| requests measured |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        lines.append(
            f"| {target.label} | {target.median('rps'):.1f} | {target.median('p50_ms'):.2f} "
            f"| {target.median('p99_ms'):.2f} | {_fmt(target.cpu_ms(target.proxy))} "
            f"| {_fmt(target.cpu_ms('upstream'))} | {sum(r.requests for r in target.runs)} |"
        )
    lines.append("")
    if "b" in by_key:
        ratio = by_key["c"].median("rps") / by_key["b"].median("rps")
        verdict = "meets" if ratio >= 0.8 else "MISSES"
        lines.append(f"- throughput c/b = **{ratio:.2f}** ({verdict} the target c/b >= 0.8)")
        if "a" in by_key:
            lines.append(
                f"- throughput b/a = {by_key['b'].median('rps') / by_key['a'].median('rps'):.2f}"
            )
        lines.append(
            f"- p50 latency c/b = {by_key['c'].median('p50_ms') / by_key['b'].median('p50_ms'):.2f}"
            f", p99 latency c/b = {by_key['c'].median('p99_ms') / by_key['b'].median('p99_ms'):.2f}"
        )
    if "a" in by_key:
        lines.append(
            f"- throughput c/a = {by_key['c'].median('rps') / by_key['a'].median('rps'):.2f}"
        )
    gw_cpu, bare_cpu = by_key["c"].cpu_ms("gateway"), None
    if "b" in by_key:
        bare_cpu = by_key["b"].cpu_ms("bare-proxy")
    runs_c = by_key["c"].runs
    if all(run.cpu is not None for run in runs_c):
        pg_ms = statistics.median(1000 * _postgres_cores(run) / run.rps for run in runs_c)
        lines.append(
            f"- PostgreSQL CPU per gateway request ≈ {pg_ms:.2f} ms (all postgres processes on"
            " the machine, so other users of the server count too)"
        )
    if gw_cpu is not None and bare_cpu:
        lines.append(
            f"- proxy CPU per request c/b = {gw_cpu / bare_cpu:.2f} ({gw_cpu:.2f} ms vs"
            f" {bare_cpu:.2f} ms, all gunicorn processes, user + system; the gateway's figure"
            " includes its audit-writer threads but not PostgreSQL)"
        )
        up_b, up_c = by_key["b"].cpu_ms("upstream"), by_key["c"].cpu_ms("upstream")
        if up_b is not None and up_c is not None and all(r.cpu for r in runs_c):
            pg_ms = statistics.median(1000 * max(0.0, _postgres_cores(r)) / r.rps for r in runs_c)
            budget = (bare_cpu + up_b) / 0.8 - up_c
            lines.append(
                "- rough CPU budget (every process shares the same CPUs, so throughput goes"
                " as 1 / CPU per request of the whole chain; load generator ignored):"
                f" (b)'s chain costs {bare_cpu + up_b:.2f} ms (proxy + upstream); for c/b >= 0.8"
                f" gateway + PostgreSQL must fit in ~{budget:.2f} ms per request; they take"
                f" {gw_cpu + pg_ms:.2f} ms now"
            )
    return "\n".join(lines)


def _background_warning(targets: list[Target]) -> list[str]:
    others = [run.cpu.other for t in targets for run in t.runs if run.cpu is not None]
    if not others or max(others) < 0.2:
        return []
    return [
        f"**Noise warning:** processes outside this benchmark (other sessions' test runs) used"
        f" {min(others):.2f}-{max(others):.2f} of the {len(os.sched_getaffinity(0))} cores"
        " during the measurements (see the per-round table), so req/s and latency figures"
        " are depressed and noisy; the CPU-per-request columns are the steadier comparison.",
        "",
    ]


def _cores(cpu: CpuUse | None, attribute: str) -> str:
    # Processes that exit between two samples take their ticks with them: clamp at 0.
    return "-" if cpu is None else f"{max(0.0, getattr(cpu, attribute)):.2f}"


def _git_state() -> str:
    """The commit measured, and whether gateway/ differed from it (others edit it live)."""
    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        head = head if len(head) <= 90 else head[:89] + "…"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway", "wsgi.py", "config", "policies"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.split("\n")
    except OSError:
        return "unknown (git not available)"
    changed = [line[3:] for line in dirty if line.strip()]
    state = f"`{head}`"
    if changed:
        state += f"; uncommitted changes in {', '.join(changed)}"
    return state


def _versions() -> str:
    from importlib.metadata import version

    names = ("gunicorn", "flask", "werkzeug", "urllib3", "pycasbin", "sqlalchemy", "psycopg")
    found = []
    for name in names:
        with contextlib.suppress(Exception):
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


def write_results(
    args: argparse.Namespace,
    *,
    tool: LoadTool,
    database: Database,
    stats: PolicyStats,
    import_seconds: float,
    targets: list[Target],
    table: str,
    audit: dict[str, Any],
    profile_text: str | None,
    elapsed: float,
) -> None:
    command = ".venv/bin/python bench/proxy_overhead.py" + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""
    )
    per_round = [
        "| round | target | req/s | p50 (ms) | p99 (ms) | requests | proxy CPU ms/req "
        "| upstream CPU ms/req | CPU busy | this bench | PostgreSQL | other processes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i in range(args.rounds):
        for target in targets:
            if i < len(target.runs):
                r = target.runs[i]
                per_round.append(
                    f"| {i + 1} | {target.key} | {r.rps:.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
                    f"| {r.requests} "
                    f"| {_fmt(_cpu_ms(r, target.proxy) if target.proxy and r.cpu else None)} "
                    f"| {_fmt(_cpu_ms(r, 'upstream') if r.cpu else None)} "
                    f"| {_cores(r.cpu, 'busy')} | {_cores(r.cpu, 'ours')} "
                    f"| {_cores(r.cpu, 'postgres')} | {_cores(r.cpu, 'other')} |"
                )
    gunicorn = " ".join(gunicorn_settings(args.workers, args.threads))
    section = [
        SECTION_START,
        "## Proxy overhead: gateway vs bare Flask proxy vs direct (`bench/proxy_overhead.py`)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- versions: {_versions()}",
        f"- code measured: {_git_state()}",
        f"- command: `{command}` (whole run {elapsed:.0f}s)",
        f"- request: `GET /api/projects/{args.project}/tasks/{args.task}/records?limit=50`"
        f" ({PAGE_RECORDS} records, identical body from all targets). The sample service"
        " (`gateway demo-upstream`: 3 projects x 2 tasks x 300 records, werkzeug threaded"
        f" server) has only proj-1..proj-3, so {args.project} is measured; the gateway still"
        " holds the full 1,000-project policy.",
        f"- gunicorn (both proxies, identical): `{gunicorn}`; gateway config from"
        " `tests.conftest.gateway_config()` (policy poll 0.5 s, two issuers)",
        f"- load: {tool.describe()}; {args.connections} connections; "
        f"{args.warmup:g}s warm-up + {args.duration:g}s measured per target; "
        f"{args.rounds} round(s) in the order a, b, c; median over rounds",
        f"- policy: {stats.total:,} rules via `gateway policy import` ({import_seconds:.1f}s):"
        f" {stats.projects:,} projects x {stats.p_allow // stats.projects} role rules,"
        f" {stats.memberships:,} memberships of {stats.contractors:,} contractors"
        f" (~{args.per_contractor} projects each), {stats.vendor_grants} vendor-group grants,"
        f" {stats.p_deny} deny rules; bench contractor"
        f" `{ISSUER_NAME}:{bench_contractor(stats.contractors)}` is an annotator on"
        f" {args.project} through its own membership",
        "- token: JWT access token from `tests.support.idp` via the authorization code flow"
        " (`tests.support.oidc_client.obtain_tokens`)",
        f"- audit store: {database.label}",
        "- everything (load generator, IdPs, sample service, both proxies, PostgreSQL) shares"
        " the same machine, so each figure includes competition for its CPUs",
        "",
        *_background_warning(targets),
        table,
        "",
        f"Audit check: {'OK' if audit['ok'] else 'FAILED'}. {audit['text']}",
        "",
        "Per round (CPU columns in cores, out of"
        f" {len(os.sched_getaffinity(0))}: whole machine; this benchmark's processes including"
        " the load generator; PostgreSQL (all its processes); everything else on the machine,"
        " e.g. other sessions' test runs, which the figures then share the CPUs with):",
        "",
        *per_round,
    ]
    if profile_text:
        section += [
            "",
            f"py-spy profile of the gateway workers under the same load ({args.profile:g}s,"
            " 250 Hz, only samples holding the GIL, i.e. the workers' Python CPU time):",
            "",
            "```",
            profile_text,
            "```",
        ]
    section.append(SECTION_END)
    start, end = SECTION_START, SECTION_END
    if args.upstream == "static":
        start, end = (m.replace("proxy_overhead", "proxy_overhead_static") for m in (start, end))
        section[0], section[-1] = start, end
        section[1] = section[1].replace(
            "(`bench", "against nginx serving the page statically (`bench"
        )
        section.insert(
            3,
            "- upstream: nginx (Debian's package, 1 worker) serving a snapshot of the sample"
            " service's page from disk, keep-alive closed by nginx every 1,000 requests",
        )
    block = "\n".join(section) + "\n"
    path: Path = args.results
    existing = path.read_text() if path.exists() else "# Benchmark results\n"
    if start in existing and end in existing:
        head, _, rest = existing.partition(start)
        _, _, tail = rest.partition(end)
        updated = head + block.rstrip("\n") + tail
    else:
        updated = existing.rstrip("\n") + "\n\n" + block
    path.write_text(updated if updated.endswith("\n") else updated + "\n")


if __name__ == "__main__":
    sys.exit(main())
