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
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.proxykit.cpu import CpuMeter, CpuUse, wait_for_quiet  # noqa: E402
from bench.proxykit.database import Database, make_database  # noqa: E402
from bench.proxykit.load import LoadResult, LoadTool  # noqa: E402
from bench.proxykit.policy import PolicyStats, bench_contractor, generate_policy  # noqa: E402
from bench.proxykit.processes import (  # noqa: E402
    Processes,
    free_port,
    gunicorn_settings,
    http_get,
    wait_until,
)
from bench.proxykit.profile import profile_gateway  # noqa: E402
from bench.report import machine  # noqa: E402
from tests.conftest import AUDIENCE, UPSTREAM_TOKEN, USERS, gateway_config  # noqa: E402
from tests.support.oidc_client import obtain_tokens  # noqa: E402

PYTHON = sys.executable
GATEWAY_BIN = str(Path(PYTHON).with_name("gateway"))
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- proxy_overhead:start -->"
SECTION_END = "<!-- proxy_overhead:end -->"
DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

ISSUER_NAME = "acme-idp"  # the JWT issuer of gateway_config(); it binds vendor "acme"
PAGE_RECORDS = 50


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
    load_before = os.getloadavg()[0]
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
    table = results_table(targets, args.upstream)
    print()
    print(table)
    if not args.no_results:
        load = (load_before, os.getloadavg()[0])
        table += (
            f"\n- machine load (1-minute load average, {len(os.sched_getaffinity(0))} CPUs):"
            f" {load[0]:.1f} before the run, {load[1]:.1f} after it"
        )
        if args.skip_bare:
            print("steps table not updated: --skip-bare gives no ratio")
        else:
            record_step(args.results, args.upstream, summarise(targets), step_code(), load)
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


# Issue 16's goals for governed/bare throughput, by upstream kind: a near-free upstream
# shows the gateway's whole cost; the sample service's own CPU hides part of it.
GOALS = {"static": 0.5, "sample": 0.85}


@dataclass
class Summary:
    """The figures a run is judged by, also kept per commit in the steps table."""

    ratio: float | None  # governed / bare throughput (medians)
    gateway_rps: float
    bare_rps: float | None
    gateway_us_per_record: float | None  # gateway processes' CPU per released record
    postgres_us_per_record: float | None  # every PostgreSQL process's CPU per released record
    bare_ms_per_request: float | None


def summarise(targets: list[Target]) -> Summary:
    by_key = {t.key: t for t in targets}
    gateway, bare = by_key["c"], by_key.get("b")
    gw_ms = gateway.cpu_ms("gateway")
    pg_ms = None
    if gateway.runs and all(run.cpu is not None for run in gateway.runs):
        pg_ms = statistics.median(
            1000 * max(0.0, _postgres_cores(run)) / run.rps for run in gateway.runs
        )
    return Summary(
        ratio=gateway.median("rps") / bare.median("rps") if bare else None,
        gateway_rps=gateway.median("rps"),
        bare_rps=bare.median("rps") if bare else None,
        gateway_us_per_record=None if gw_ms is None else 1000 * gw_ms / PAGE_RECORDS,
        postgres_us_per_record=None if pg_ms is None else 1000 * pg_ms / PAGE_RECORDS,
        bare_ms_per_request=bare.cpu_ms("bare-proxy") if bare else None,
    )


def results_table(targets: list[Target], upstream: str = "sample") -> str:
    by_key = {t.key: t for t in targets}
    goal = GOALS[upstream]
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
        verdict = "meets" if ratio >= goal else "MISSES"
        lines.append(f"- throughput c/b = **{ratio:.2f}** ({verdict} the goal c/b >= {goal})")
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
            budget = (bare_cpu + up_b) / goal - up_c
            lines.append(
                "- rough CPU budget (every process shares the same CPUs, so throughput goes"
                " as 1 / CPU per request of the whole chain; load generator ignored):"
                f" (b)'s chain costs {bare_cpu + up_b:.2f} ms (proxy + upstream); for c/b >= {goal}"
                f" gateway + PostgreSQL must fit in ~{budget:.2f} ms per request; they take"
                f" {gw_cpu + pg_ms:.2f} ms now"
            )
    summary = summarise(targets)
    if summary.gateway_us_per_record is not None and summary.postgres_us_per_record is not None:
        lines.append(
            f"- **CPU per released record** (measured from /proc over the gateway's rounds,"
            f" {PAGE_RECORDS} records per request): gateway processes"
            f" {summary.gateway_us_per_record:.1f} µs + PostgreSQL"
            f" {summary.postgres_us_per_record:.1f} µs ="
            f" {summary.gateway_us_per_record + summary.postgres_us_per_record:.1f} µs"
            + (
                f"; the bare proxy spends {summary.bare_ms_per_request:.2f} ms per request"
                f" ({1000 * summary.bare_ms_per_request / PAGE_RECORDS:.1f} µs per record"
                " passed through)"
                if summary.bare_ms_per_request is not None
                else ""
            )
        )
    return "\n".join(lines)


STEPS_START, STEPS_END = "<!-- proxy_steps:start -->", "<!-- proxy_steps:end -->"
STEPS_HEADER = (
    "| commit measured | date (UTC) | upstream | c/b | gateway req/s | bare req/s "
    "| gateway µs/record | PostgreSQL µs/record | bare ms/req | load avg before/after |"
)


def _step_key(row: str) -> tuple[str, str]:
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    return cells[0], cells[2]


def step_code() -> str:
    """The steps table's first cell: short commit, subject, and whether gateway/ was dirty."""
    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip()
    except OSError:
        return "`unknown`"
    short, _, subject = head.partition(" ")
    subject = subject.replace("|", "/")
    subject = subject if len(subject) <= 70 else subject[:69] + "…"
    return f"`{short}` {subject}" + (" (+ uncommitted changes)" if dirty else "")


def record_step(
    results: Path, upstream: str, summary: Summary, code: str, load: tuple[float, float]
) -> None:
    """Keep one row per (commit, upstream) in the steps table: the history of the cost."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    rows: list[str] = []
    if STEPS_START in text and STEPS_END in text:
        inside = text.split(STEPS_START, 1)[1].split(STEPS_END, 1)[0]
        rows = [
            line
            for line in inside.splitlines()
            if line.startswith("| `") and _step_key(line) != (code, upstream)
        ]

    def fmt(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows.append(
        f"| {code} | {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')} | {upstream} "
        f"| {fmt(summary.ratio, 2)} | {summary.gateway_rps:.0f} | {fmt(summary.bare_rps, 0)} "
        f"| {fmt(summary.gateway_us_per_record, 1)} | {fmt(summary.postgres_us_per_record, 1)} "
        f"| {fmt(summary.bare_ms_per_request, 2)} | {load[0]:.1f} / {load[1]:.1f} |"
    )
    block = "\n".join(
        [
            STEPS_START,
            "## Governed throughput, step by step (`bench/proxy_overhead.py`, every run)",
            "",
            "One row per commit measured and upstream kind (static: nginx serving the page;"
            " sample: the bundled sample service), written by each run of"
            " `make bench`; medians of the run's rounds. Goals: c/b >= 0.5 against the static"
            " upstream, >= 0.85 against the sample service. CPU per released record counts"
            " every gateway process (workers and their audit writers) and every PostgreSQL"
            " process, from /proc. To measure an older commit, run this script from a"
            " worktree of it with PYTHONPATH pointing there (the gateway under test is then"
            " the worktree's); the row names that commit.",
            "",
            STEPS_HEADER,
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
            *rows,
            STEPS_END,
        ]
    )
    if STEPS_START in text and STEPS_END in text:
        head, rest = text.split(STEPS_START, 1)
        text = head + block + rest.split(STEPS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    results.write_text(text)


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
