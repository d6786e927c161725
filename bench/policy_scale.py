"""Policy decisions at scale: 1,000 projects x 10,000 contractors (~100k rules).

Measures, on PostgreSQL (fresh database, dropped at the end):
  - the time to import the rule set and to build every per-project enforcer;
  - decision latency with the decision cache warm and cold (p50/p99 per call);
  - how long a single committed change takes to be enforced by a running engine
    (LISTEN/NOTIFY push with the poll as fallback), over several trials.

    .venv/bin/python bench/policy_scale.py [--trials 10]

Figures go to bench/RESULTS.md between the policy_scale markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from bench.proxy_overhead import generate_policy  # noqa: E402
from gateway.config import DEFAULT_MODEL_PATH, parse_config  # noqa: E402
from gateway.db.migrate import upgrade  # noqa: E402
from gateway.db.session import make_engine  # noqa: E402
from gateway.policy import PolicyEngine, parse_csv  # noqa: E402
from gateway.policy.admin import PolicyAdmin  # noqa: E402
from gateway.policy.store import replace_rules  # noqa: E402

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESULTS = ROOT / "bench" / "RESULTS.md"
START, END = "<!-- policy_scale:start -->", "<!-- policy_scale:end -->"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def config_for(url: str) -> object:
    return parse_config(
        {
            "database": {"url": url},
            "issuers": [
                {
                    "name": "acme-idp",
                    "issuer": "http://127.0.0.1:1",
                    "audience": "x",
                    "vendor": "acme",
                }
            ],
            "upstream": {"url": "http://127.0.0.1:1"},
            "routes": [],
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=SERVER)
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--contractors", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()

    name = f"bench_policy_{secrets.token_hex(3)}"
    admin_engine = create_engine(args.server, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.server.rsplit("/", 1)[0] + "/" + name
    try:
        return run(args, url)
    finally:
        with admin_engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(args: argparse.Namespace, url: str) -> int:
    upgrade(url)
    db = make_engine(url)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "policy.csv"
        stats = generate_policy(
            csv_path,
            projects=args.projects,
            contractors=args.contractors,
            per_contractor=10,
            project="proj-1",
            seed=7,
        )
        rules = parse_csv(csv_path.read_text())
    started = time.perf_counter()
    replace_rules(db, rules, actor="bench", reason="scale benchmark")
    import_seconds = time.perf_counter() - started

    engine = PolicyEngine(db, DEFAULT_MODEL_PATH, poll_interval=1.0)
    started = time.perf_counter()
    engine.refresh()
    build_seconds = time.perf_counter() - started

    rng = random.Random(11)
    width = max(4, len(str(args.contractors - 1)))

    def random_request() -> tuple[str, str, str, str, str]:
        contractor = f"acme-idp:c{rng.randrange(args.contractors):0{width}d}"
        project = f"proj-{rng.randrange(1, args.projects + 1)}"
        task = rng.choice(("*", "task-1", "task-2"))
        action = rng.choice(("read", "annotate", "review"))
        return contractor, f"v{rng.randrange(40)}", project, task, action

    # Cold: every request is new to the decision cache (enforcers are built already).
    cold_requests = [random_request() for _ in range(args.decisions)]
    cold = []
    for request in cold_requests:
        t0 = time.perf_counter_ns()
        engine.decide(*request)
        cold.append((time.perf_counter_ns() - t0) / 1000)
    # Warm: the same requests again, now cached.
    warm = []
    for request in cold_requests:
        t0 = time.perf_counter_ns()
        engine.decide(*request)
        warm.append((time.perf_counter_ns() - t0) / 1000)

    # Propagation: a running engine (LISTEN + 1 s poll) sees each committed change.
    engine.start()
    deadline = time.monotonic() + 10
    while not engine.listening and time.monotonic() < deadline:
        time.sleep(0.05)
    admin = PolicyAdmin(db, config_for(url))  # type: ignore[arg-type]
    lags = []
    for trial in range(args.trials):
        subject = f"acme-idp:newcomer{trial}"
        project = f"proj-{rng.randrange(1, args.projects + 1)}"
        assert not engine.decide(subject, "acme", project, "*", "export").allowed
        admin.grant(
            actor="bench",
            reason="propagation trial",
            subject=subject,
            project=project,
            action="export",
        )
        committed = time.monotonic()
        while not engine.decide(subject, "acme", project, "*", "export").allowed:
            if time.monotonic() - committed > 10:
                raise SystemExit("change never became live")
            time.sleep(0.001)
        lags.append(time.monotonic() - committed)
    engine.stop()

    row = {
        "rules": len(rules),
        "import_s": import_seconds,
        "build_s": build_seconds,
        "warm_p50": percentile(warm, 50),
        "warm_p99": percentile(warm, 99),
        "cold_p50": percentile(cold, 50),
        "cold_p99": percentile(cold, 99),
        "lag_p50": statistics.median(lags),
        "lag_max": max(lags),
    }
    report = render(args, stats, row)
    print(report)
    write_results(report)
    ok = row["warm_p99"] <= 100 and row["cold_p99"] <= 2000 and row["lag_max"] <= 2.0
    return 0 if ok else 1


def render(args: argparse.Namespace, stats: object, row: dict[str, float]) -> str:
    verdict = lambda ok: "meets" if ok else "MISSES"  # noqa: E731
    return f"""{START}
## Policy at scale (`bench/policy_scale.py`)

- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: nproc {os.cpu_count()}, Python {platform.python_version()}
- command: `.venv/bin/python bench/policy_scale.py --trials {args.trials}`
- policy: {row["rules"]:,} rules ({args.projects:,} projects, {args.contractors:,} contractors with ~10 project memberships each, vendor-group grants, deny rules) on PostgreSQL; {stats}
- import (`replace_rules`, one version): {row["import_s"]:.1f} s; building all per-project enforcers: {row["build_s"]:.1f} s (off the request path)
- decisions measured in-process with `PolicyEngine.decide`, {args.decisions:,} random requests (contractor, vendor, project, task, action)

| measure | p50 | p99 | goal |
|---|---:|---:|---|
| decision, cache warm | {row["warm_p50"]:.1f} µs | {row["warm_p99"]:.1f} µs | p99 ≤ 100 µs ({verdict(row["warm_p99"] <= 100)}) |
| decision, cache cold | {row["cold_p50"]:.0f} µs | {row["cold_p99"]:.0f} µs | p99 ≤ 2 ms ({verdict(row["cold_p99"] <= 2000)}) |
| change committed → enforced (LISTEN/NOTIFY), {args.trials} trials | {row["lag_p50"] * 1000:.0f} ms | max {row["lag_max"] * 1000:.0f} ms | ≤ 2 s ({verdict(row["lag_max"] <= 2.0)}) |

The cold figure is a decision the cache has not seen against an enforcer already built;
enforcers are rebuilt only for projects a change touches, off the request path.
{END}"""


def write_results(section: str) -> None:
    text_now = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if START in text_now and END in text_now:
        before, rest = text_now.split(START, 1)
        after = rest.split(END, 1)[1]
        text_now = before + section + after
    else:
        text_now = text_now.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text_now)


if __name__ == "__main__":
    raise SystemExit(main())
