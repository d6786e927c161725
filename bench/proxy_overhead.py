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
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.proxykit.cpu import CpuMeter, wait_for_quiet  # noqa: E402
from bench.proxykit.database import Database, make_database  # noqa: E402
from bench.proxykit.load import LoadResult, LoadTool  # noqa: E402
from bench.proxykit.policy import bench_contractor, generate_policy  # noqa: E402
from bench.proxykit.processes import (  # noqa: E402
    Proc,
    Processes,
    free_port,
    gunicorn_settings,
    http_get,
    wait_until,
)
from bench.proxykit.profile import profile_gateway  # noqa: E402
from bench.proxykit.results import (  # noqa: E402
    PAGE_RECORDS,
    Target,
    cpu_ms_per_request,
    fmt_ms,
    metrics_cost,
    record_step,
    results_table,
    step_code,
    summarise,
    write_results,
)
from tests.conftest import AUDIENCE, UPSTREAM_TOKEN, USERS, gateway_config  # noqa: E402
from tests.support.oidc_client import obtain_tokens  # noqa: E402

PYTHON = sys.executable
GATEWAY_BIN = str(Path(PYTHON).with_name("gateway"))
RESULTS = ROOT / "bench" / "RESULTS.md"
DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# --- the run -----------------------------------------------------------------------------


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
    parser.add_argument(
        "--compare-metrics",
        action="store_true",
        help="also measure (d) the gateway with [metrics] enabled = false, interleaved, and"
        " report what the request path's metrics cost",
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
    gateway = start_gateway(procs, "gateway", settings, cli_env, workdir)
    quiet = None
    if args.compare_metrics:
        quiet = start_gateway(
            procs, "gateway-no-metrics", settings, {**cli_env, **METRICS_OFF}, workdir
        )

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
    if quiet is not None:
        wait_until(quiet, "/_gateway/ready", timeout=240, want=200)
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
    if quiet is not None:
        targets.append(
            Target("d", "(d) gateway, metrics off", quiet.url + page, bearer, proxy=quiet.name)
        )
    governed = [t for t in targets if t.key in ("c", "d")]
    digests = {t.key: probe(t) for t in targets}
    gateway_requests = len(governed)  # the probes
    if len(set(digests.values())) != 1:
        raise RuntimeError(f"the targets answered different bodies: {digests}")
    print(
        f"probe: every target returns the same {PAGE_RECORDS}-record page "
        f"(sha256 {digests['c'][:12]}…)"
    )

    # 5. Load: warm up, then measure, target after target, in rounds.
    for round_number in range(1, args.rounds + 1):
        for target in round_order(targets, round_number):
            if args.quiet_wait > 0:
                wait_for_quiet(meter, args.quiet_wait, args.quiet_threshold)
            if args.warmup > 0:
                warm = tool.run(target.url, target.headers, args.warmup)
                check_errors(target, warm, "warm-up")
                target.warmups.append(warm)
                if target in governed:
                    gateway_requests += warm.requests
            before = meter.sample()
            result = tool.run(target.url, target.headers, args.duration)
            result.cpu = CpuMeter.use(before, meter.sample())
            check_errors(target, result, "measurement")
            target.runs.append(result)
            if target in governed:
                gateway_requests += result.requests
            print(
                f"round {round_number} {target.label}: {result.rps:8.1f} req/s  "
                f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                f"({result.requests} requests; CPU cores busy {result.cpu.busy:.2f}, "
                f"other processes {result.cpu.other:.2f}; proxy "
                f"{fmt_ms(cpu_ms_per_request(result, target.proxy) if target.proxy else None)} ms CPU/req, "
                f"upstream {cpu_ms_per_request(result, 'upstream'):.2f} ms CPU/req)"
            )

    # 6. The audit log must hold one 'allow' row per released record.
    load_runs = sum(len(t.runs) + len(t.warmups) for t in governed)
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
    if quiet is not None:
        table += "\n" + metrics_cost(targets)
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


def round_order(targets: list[Target], round_number: int) -> list[Target]:
    """a, b, c, d in odd rounds, a, b, d, c in even ones: what runs right after the bare
    proxy meets an upstream it has just loaded, so (c) and (d) take turns at that."""
    if round_number % 2 or len(targets) < 2 or {t.key for t in targets[-2:]} != {"c", "d"}:
        return targets
    return [*targets[:-2], targets[-1], targets[-2]]


# The gateway's request-path metrics off, for --compare-metrics.
METRICS_OFF = {"GATEWAY_METRICS__ENABLED": "false"}


def start_gateway(
    procs: Processes, name: str, settings: list[str], env: dict[str, str], workdir: Path
) -> Proc:
    """The gateway as production runs it: its workers share metrics through a
    multiprocess directory of their own (what gateway/gunicorn.conf.py sets up)."""
    metrics_dir = workdir / f"{name}-metrics"
    metrics_dir.mkdir()
    port = free_port()
    proc = procs.start(
        name,
        [PYTHON, "-m", "gunicorn", *settings, "-b", f"127.0.0.1:{port}", "gateway.wsgi:app"],
        env={**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    proc.url = f"http://127.0.0.1:{port}"
    return proc


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


if __name__ == "__main__":
    sys.exit(main())
