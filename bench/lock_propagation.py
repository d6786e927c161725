"""How fast does a vendor lock stop that vendor everywhere? (issue 4, acceptance)

Two gateway instances (separate gunicorn processes, 2 gthread workers each) share one
PostgreSQL database (a fresh `bench_lock_<random>` database on the server, dropped at the
end), with the test IdPs and the bundled sample service, all from tests/conftest.py.
Contractors of vendor acme (alice and bob) hammer both instances from several threads.

Each of the trials (20 by default):

  1. wait until both instances serve acme again, and let the load run steadily;
  2. lock vendor acme with `gateway.lockout.create_lock` (what the CLI and API call);
     the lock's commit time is the moment its transaction's COMMIT is sent to the server
     (a hook on the engine's dialect), so every lag below is, if anything, overstated;
  3. keep the load running for `--observe` seconds, then take
       - last success completion lag: the latest *completion* of any 200 response, on
         either instance, minus the commit time (a response that started before the lock
         may complete just after it: this is the figure the goal is about);
       - last success start lag: the latest *start* of a request that got a 200, minus the
         commit time (negative: every successful request started before the lock);
  4. lift the lock and measure until each instance serves acme again.

Then one long-download trial: a streaming export (300 chunks, 50 ms apart) by alice on
each instance, started before the lock; lock commit → the last chunk received.

    .venv/bin/python bench/lock_propagation.py                  # 20 trials, ~2 min
    .venv/bin/python bench/lock_propagation.py --trials 5 --no-results

Figures go to bench/RESULTS.md between the lock_propagation markers. Every process this
script starts is stopped on the way out, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import machine  # noqa: E402
from gateway.db.session import make_engine  # noqa: E402
from gateway.lockout import create_lock, lift_lock  # noqa: E402
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
from tests.support.oidc_client import obtain_tokens  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- lock_propagation:start -->"
SECTION_END = "<!-- lock_propagation:end -->"
DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GOAL_SECONDS = 1.0
RECORDS = "/api/projects/proj-1/tasks/task-1/records?limit=2"
CONTRACTORS = ("alice", "bob")  # both of vendor acme (acme-idp binds every token to acme)


# --- the system under test ---------------------------------------------------------------


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


def start_system(system: System, server: str, tmp: Path) -> None:
    """IdPs, the sample service, a fresh database and two gateway instances."""
    port = free_port()
    argv = [PYTHON, "-m", "tests.support.idp", "--port", str(port), "--jwt-audience", AUDIENCE]
    for user in USERS:
        argv += ["--user-claims", json.dumps(user)]
    idp = start(
        argv,
        f"http://127.0.0.1:{port}",
        tmp / "idp.log",
        ready_path="/.well-known/openid-configuration",
    )
    system.procs.append(idp)
    port = free_port()
    argv = [str(Path(PYTHON).with_name("oidc-provider-mock")), "--port", str(port)]
    for user in OPAQUE_USERS:
        argv += ["--user-claims", json.dumps(user)]
    opaque = start(
        argv,
        f"http://127.0.0.1:{port}",
        tmp / "opaque-idp.log",
        ready_path="/.well-known/openid-configuration",
    )
    system.procs.append(opaque)
    port = free_port()
    upstream = start(
        [GATEWAY_BIN, "demo-upstream", "--port", str(port), "--token", UPSTREAM_TOKEN],
        f"http://127.0.0.1:{port}",
        tmp / "upstream.log",
    )
    system.procs.append(upstream)

    system.server = server
    system.db_name = f"bench_lock_{secrets.token_hex(4)}"
    system.db = Database(_make_postgres_db(server, system.db_name), "postgresql")
    for index in range(2):
        where = tmp / f"gateway-{index + 1}"
        where.mkdir()
        system.gateways.append(launch_gateway(where, system.db, idp, opaque, upstream, workers=2))


# --- load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    instance: int
    start: float
    end: float
    status: int  # -1: no response (connection error, timeout)


class Load:
    """`threads` clients per instance, each a contractor of acme on its own connection."""

    def __init__(self, gateways: list[Gateway], tokens: dict[str, str], threads: int) -> None:
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._client,
                args=(index, gateway.url, tokens[CONTRACTORS[n % len(CONTRACTORS)]]),
                daemon=True,
            )
            for index, gateway in enumerate(gateways)
            for n in range(threads)
        ]

    def _client(self, instance: int, url: str, token: str) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status = session.get(url + RECORDS, timeout=10).status_code
            except requests.RequestException:
                status = -1
                time.sleep(0.05)
            self.samples.append(Sample(instance, started, time.monotonic(), status))

    def since(self, moment: float) -> list[Sample]:
        return [s for s in list(self.samples) if s.start >= moment]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


class CommitClock:
    """When the engine sends COMMIT (and when the server acknowledged it)."""

    def __init__(self, engine: Engine) -> None:
        self.sent: list[float] = []
        self.done: list[float] = []
        dialect = engine.dialect
        original = dialect.do_commit

        def do_commit(dbapi_connection: Any) -> None:
            self.sent.append(time.monotonic())
            original(dbapi_connection)
            self.done.append(time.monotonic())

        dialect.do_commit = do_commit  # type: ignore[method-assign]

    def first_after(self, moment: float) -> tuple[float, float]:
        index = next(i for i, sent in enumerate(self.sent) if sent >= moment)
        return self.sent[index], self.done[index]


# --- trials ----------------------------------------------------------------------------------


@dataclass
class Trial:
    number: int
    completion_lag: float  # last 200 completed, minus the lock's commit
    start_lag: float  # last request that got a 200 started, minus the commit
    after_commit: int  # 200 responses completed after the commit
    per_instance: list[float]  # completion lag per instance
    first_refusal: list[float]  # first 403 per instance, minus the commit
    lift_lag: float  # lift's commit → both instances serve acme again
    commit_ms: float  # how long the lock's COMMIT took
    requests: int
    refused: int
    other: dict[int, int]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def served_again(load: Load, instances: int, since: float) -> bool:
    ok = {s.instance for s in load.since(since) if s.status == 200}
    return len(ok) == instances


def run_trial(
    number: int, load: Load, engine: Engine, clock: CommitClock, instances: int, args: Any
) -> Trial:
    begin = time.monotonic()
    time.sleep(args.steady)
    called = time.monotonic()
    lock = create_lock(
        engine, kind="vendor", target="acme", reason=f"bench trial {number}", actor="bench"
    )
    committed, acknowledged = clock.first_after(called)
    time.sleep(args.observe)
    samples = load.since(begin)
    ok = [s for s in samples if s.status == 200]
    if not ok:
        raise RuntimeError(f"trial {number}: no successful request before the lock")
    per_instance = []
    first_refusal = []
    for index in range(instances):
        mine = [s.end for s in ok if s.instance == index]
        per_instance.append(max(mine) - committed if mine else float("nan"))
        refusals = [s.end for s in samples if s.instance == index and s.status == 403]
        first_refusal.append(min(refusals) - committed if refusals else float("nan"))
    lifted_at = time.monotonic()
    lift_lock(engine, lock["id"], actor="bench", reason="trial over")
    lift_commit, _ = clock.first_after(lifted_at)
    wait_until(lambda: served_again(load, instances, lift_commit), 10, "access after the lift")
    back = [
        min(s.end for s in load.since(lift_commit) if s.status == 200 and s.instance == index)
        for index in range(instances)
    ]
    other: dict[int, int] = {}
    for sample in samples:
        if sample.status not in (200, 403):
            other[sample.status] = other.get(sample.status, 0) + 1
    return Trial(
        number=number,
        completion_lag=max(s.end for s in ok) - committed,
        start_lag=max(s.start for s in ok) - committed,
        after_commit=sum(1 for s in ok if s.end > committed),
        per_instance=per_instance,
        first_refusal=first_refusal,
        lift_lag=max(back) - lift_commit,
        commit_ms=(acknowledged - committed) * 1000,
        requests=len(samples),
        refused=sum(1 for s in samples if s.status == 403),
        other=other,
    )


@dataclass
class Download:
    instance: int
    lines: int = 0
    times: list[float] = field(default_factory=list)
    ended: float | None = None
    outcome: str = "running"


def download_trial(
    gateways: list[Gateway], token: str, engine: Engine, clock: CommitClock, args: Any
) -> tuple[float, list[Download], int]:
    export = "/api/projects/proj-1/tasks/task-1/export"
    one = requests.get(
        gateways[0].url + export + "?chunks=1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    one.raise_for_status()
    lines_per_chunk = one.content.count(b"\n")
    path = f"{export}?chunks={args.download_chunks}&delay={args.download_delay}"
    downloads = [Download(index) for index in range(len(gateways))]

    def fetch(gateway: Gateway, download: Download) -> None:
        try:
            with requests.get(
                gateway.url + path,
                headers={"Authorization": f"Bearer {token}"},
                stream=True,
                timeout=30,
            ) as response:
                if response.status_code != 200:
                    download.outcome = f"HTTP {response.status_code}"
                    return
                for chunk in response.iter_content(chunk_size=None):
                    if chunk:
                        download.lines += chunk.count(b"\n")
                        download.times.append(time.monotonic())
            download.outcome = "ended as a complete response"
        except requests.RequestException as error:
            download.outcome = f"broken off ({type(error).__name__})"
        download.ended = time.monotonic()

    threads = [
        threading.Thread(target=fetch, args=(gateway, download), daemon=True)
        for gateway, download in zip(gateways, downloads, strict=True)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: all(len(d.times) >= 5 for d in downloads), 15, "the downloads to run")
    time.sleep(0.5)
    called = time.monotonic()
    lock = create_lock(engine, kind="vendor", target="acme", reason="bench download", actor="bench")
    committed, _ = clock.first_after(called)
    for thread in threads:
        thread.join(args.download_chunks * args.download_delay + 10)
    lift_lock(engine, lock["id"], actor="bench", reason="download trial over")
    return committed, downloads, lines_per_chunk


# --- report ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("log", "-1", "--format=%h %s")[:90]
    dirty = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return f"`{head}`" + (f"; {len(dirty)} uncommitted paths" if dirty else "")


def summarise(trials: list[Trial]) -> dict[str, tuple[float, float]]:
    def p50_max(values: list[float]) -> tuple[float, float]:
        return statistics.median(values), max(values)

    return {
        "completion": p50_max([t.completion_lag for t in trials]),
        "start": p50_max([t.start_lag for t in trials]),
        "refusal": p50_max([max(t.first_refusal) for t in trials]),
        "lift": p50_max([t.lift_lag for t in trials]),
    }


def truncation_note(downloads: list[Download], lines_per_chunk: int, args: Any) -> list[str]:
    """Say so when a cut-off download looks complete to its client."""
    looks_complete = [
        d
        for d in downloads
        if d.outcome == "ended as a complete response"
        and d.lines < lines_per_chunk * args.download_chunks
    ]
    if not looks_complete:
        return []
    return [
        "Finding: the cut-off downloads ended as well-formed, complete HTTP responses (the"
        " chunked body was terminated normally, no error), so the client cannot tell a"
        " download cut by a lock from a finished one; nothing more was released, but the"
        " truncation is silent. Aborting the connection instead (no final chunk) would make"
        " it visible.",
        "",
    ]


def report(
    trials: list[Trial],
    download: tuple[float, list[Download], int],
    args: Any,
    context: dict[str, str],
) -> list[str]:
    download_commit, downloads, lines_per_chunk = download
    summary = summarise(trials)
    worst = summary["completion"][1]
    verdict = "MEETS" if worst <= GOAL_SECONDS else "MISSES"
    lines = [
        "| figure (ms, lock's COMMIT = 0) | p50 | max |",
        "|---|---:|---:|",
        "| last success **completion** on either instance (the goal's figure) "
        f"| {ms(summary['completion'][0])} | {ms(summary['completion'][1])} |",
        "| last success **start** on either instance "
        f"| {ms(summary['start'][0])} | {ms(summary['start'][1])} |",
        "| first `403 locked` on the slower instance "
        f"| {ms(summary['refusal'][0])} | {ms(summary['refusal'][1])} |",
        "| lift → both instances serve acme again "
        f"| {ms(summary['lift'][0])} | {ms(summary['lift'][1])} |",
    ]
    cut = []
    for item in downloads:
        last = max(item.times) - download_commit if item.times else float("nan")
        ended = item.ended - download_commit if item.ended is not None else float("nan")
        cut.append(
            f"| instance {item.instance + 1} | {ms(last)} | {ms(ended)} "
            f"| {item.lines / lines_per_chunk:.0f} of {args.download_chunks} "
            f"| {item.outcome} |"
        )
    per_trial = [
        "| trial | last success completion | last success start | 200s completed after "
        "commit | per instance (1 / 2) | first 403 (1 / 2) | lift → served | COMMIT took "
        "| requests | 403 | other |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in trials:
        per_trial.append(
            f"| {t.number} | {ms(t.completion_lag)} | {ms(t.start_lag)} | {t.after_commit} "
            f"| {' / '.join(ms(v) for v in t.per_instance)} "
            f"| {' / '.join(ms(v) for v in t.first_refusal)} | {ms(t.lift_lag)} "
            f"| {t.commit_ms:.1f} | {t.requests} | {t.refused} "
            f"| {', '.join(f'{k}: {v}' for k, v in sorted(t.other.items())) or '-'} |"
        )
    return [
        f"**Goal: ≤ {GOAL_SECONDS * 1000:.0f} ms worst case over {len(trials)} trials — "
        f"{verdict}** (worst last-success completion {ms(worst)} ms after the lock's COMMIT).",
        "",
        *lines,
        "",
        f"Long download (`export?chunks={args.download_chunks}&delay={args.download_delay}`,"
        f" {args.download_chunks * args.download_delay:g} s if not cut; started before the"
        " lock, one per instance, while the load runs): lock's COMMIT → the last bytes the"
        " client received, and → the end of the response.",
        "",
        "| download | last bytes received (ms) | response ended (ms) | upstream chunks"
        f" received ({lines_per_chunk} records each) | how it ended, as the client sees it |",
        "|---|---:|---:|---:|---|",
        *cut,
        "",
        *truncation_note(downloads, lines_per_chunk, args),
        "Per trial (ms after the lock's COMMIT; negative = before it):",
        "",
        *per_trial,
        "",
        context["notes"],
    ]


def write_results(path: Path, body: list[str], context: dict[str, str]) -> None:
    section = [
        SECTION_START,
        "## Lock propagation: vendor lock → last success on two instances"
        " (`bench/lock_propagation.py`)",
        "",
        f"- date: {context['date']}",
        f"- machine: {context['machine']}",
        f"- code measured: {context['git']}",
        f"- command: `{context['command']}` (whole run {context['elapsed']})",
        f"- goal (issue 4): {context['goal']}",
        f"- setup: {context['setup']}",
        f"- load: {context['load']}",
        f"- commit time: {context['commit']}",
        f"- database: {context['database']}",
        f"- load average at start: {context['loadavg']}",
        "",
        *body,
        SECTION_END,
    ]
    text_now = path.read_text() if path.exists() else "# Benchmark results\n"
    if SECTION_START in text_now and SECTION_END in text_now:
        before, rest = text_now.split(SECTION_START, 1)
        _, after = rest.split(SECTION_END, 1)
        text_new = before + "\n".join(section) + after
    else:
        text_new = text_now.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    path.write_text(text_new)


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--threads", type=int, default=3, help="client threads per instance")
    parser.add_argument("--steady", type=float, default=0.4, help="seconds of load before a lock")
    parser.add_argument("--observe", type=float, default=1.5, help="seconds watched after a lock")
    parser.add_argument("--download-chunks", type=int, default=300)
    parser.add_argument("--download-delay", type=float, default=0.05)
    parser.add_argument(
        "--server",
        default=os.environ.get("GATEWAY_TEST_POSTGRES", DEFAULT_SERVER),
        help="PostgreSQL server (a database on it is created and dropped)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    parser.add_argument("--no-results", action="store_true", help="print only")
    return parser.parse_args()


@contextlib.contextmanager
def running_system(server: str) -> Iterator[System]:
    system = System()
    with tempfile.TemporaryDirectory(prefix="lock-bench-") as tmp:
        try:
            start_system(system, server, Path(tmp))
            yield system
        except BaseException:
            for gateway in system.gateways:
                with contextlib.suppress(Exception):
                    print(f"--- {gateway.url} log tail ---\n{gateway.proc.log()[-2000:]}")
            raise
        finally:
            system.stop()


def main() -> int:
    args = parse_args()
    began = time.monotonic()
    loadavg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    with running_system(args.server) as system:
        assert system.db is not None
        gateways = system.gateways
        tokens = {
            sub: obtain_tokens(system.procs[0].url, sub)["access_token"] for sub in CONTRACTORS
        }
        for gateway in gateways:
            for sub in CONTRACTORS:
                response = requests.get(
                    gateway.url + RECORDS,
                    headers={"Authorization": f"Bearer {tokens[sub]}"},
                    timeout=10,
                )
                if response.status_code != 200:
                    raise RuntimeError(f"{sub} on {gateway.url}: {response.status_code}")
        engine = make_engine(system.db.url)
        clock = CommitClock(engine)
        with engine.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar_one()
        load = Load(gateways, tokens, args.threads)
        load.start()
        trials: list[Trial] = []
        try:
            for number in range(1, args.trials + 1):
                trial = run_trial(number, load, engine, clock, len(gateways), args)
                trials.append(trial)
                print(
                    f"trial {number:2d}: last success completed {ms(trial.completion_lag):>5} ms,"
                    f" started {ms(trial.start_lag):>5} ms after the lock's commit;"
                    f" access back {ms(trial.lift_lag)} ms after the lift",
                    flush=True,
                )
            download = download_trial(gateways, tokens["alice"], engine, clock, args)
        finally:
            load.stop()
            engine.dispose()
        elapsed = time.monotonic() - began
    command = ".venv/bin/python bench/lock_propagation.py" + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""
    )
    context = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "git": git_state(),
        "command": command,
        "elapsed": f"{elapsed:.0f}s",
        "goal": "the time from a vendor lock's commit to the last successful response of that"
        " vendor on any instance is ≤ 1 s in the worst of 20 trials; a running download is"
        " cut off ≤ 1 s after the lock",
        "setup": "two gateway instances, each `gunicorn -k gthread -w 2 --threads 8`"
        " (`tests.conftest.launch_gateway`, lockout poll 0.25 s, stale bound 2 s), on one"
        " PostgreSQL database; locks reach workers by LISTEN/NOTIFY with the poll as fallback;"
        " test IdPs and the sample service from tests/conftest.py",
        "load": f"{args.threads} client threads per instance (alice and bob of vendor acme,"
        f" JWT access tokens, one keep-alive connection each, no think time) requesting"
        f" `GET {RECORDS}`; {args.steady:g} s of load before each lock, {args.observe:g} s"
        " watched after it; the lock is `create_lock(kind='vendor', target='acme')` in this"
        " process, lifted after each trial",
        "commit": "when SQLAlchemy sends the lock transaction's COMMIT (a hook on the engine's"
        " dialect); the commit itself takes the 'COMMIT took' column, so the lags are"
        " overstated by at most that",
        "database": f"PostgreSQL {version} (fresh database, dropped at the end)",
        "loadavg": f"{loadavg} (everything, including other sessions' work, shares the CPUs)",
        "notes": "Completion lags include a response whose request started before the lock:"
        " the pipeline re-checks locks after the upstream answered and before release, so"
        " such a response is refused unless its worker had not yet seen the lock. '200s"
        " completed after commit' counts those that still got through.",
    }
    body = report(trials, download, args, context)
    print()
    print("\n".join(body))
    if not args.no_results:
        write_results(args.results, body, context)
        print(f"\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
