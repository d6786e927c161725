"""What the record catalogue costs: a 10M-record catalogue, and the gateway with it.

    .venv/bin/python bench/catalogue_scale.py scale      # fill, sync, lookups, memory
    .venv/bin/python bench/catalogue_scale.py overhead   # gateway with vs without a catalogue

`scale` (PostgreSQL): fills a fresh database's catalogue with `--records` placements
through `import_file` (the code path of `gateway catalogue import`), reports the table's
size; times `gateway catalogue sync` over the bundled sample service sized to
`--sync-records` (first run: all added; second: all unchanged); times `CatalogueView.place`
on the full table for cached records and for misses (a database batch), against a plain
dict lookup of the same ids; measures the resident memory of a worker's cache per entry.

`overhead`: two gateways on the same upstream, one whose catalogue holds every record of
the sample service (each released record is checked against it) and one without, measured
in interleaved rounds with wrk against the sample service and against nginx serving the
page statically (a near-free upstream). Ratios with/without, CPU ms per request from /proc.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.proxy_overhead import (  # noqa: E402
    DEFAULT_SERVER,
    GATEWAY_BIN,
    PYTHON,
    CpuMeter,
    LoadTool,
    Processes,
    StaticUpstream,
    bench_contractor,
    cli,
    free_port,
    generate_policy,
    gunicorn_settings,
    http_get,
    idp_argv,
    make_database,
    wait_until,
)
from bench.report import machine  # noqa: E402
from tests.conftest import UPSTREAM_TOKEN, gateway_config  # noqa: E402
from tests.support.oidc_client import obtain_tokens  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
PROJECTS = 1000


def git_head() -> str:
    return subprocess.run(
        ["git", "log", "-1", "--format=%h %s"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        _, after = rest.split(end, 1)
        current = before + block + after
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(current)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


# --- scale --------------------------------------------------------------------------------


class GeneratedCsv(io.RawIOBase):
    """A CSV of `count` placements made on the fly: r-<project>-<n>, a task per 100."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.next = 0
        self.pending = b"record_id,project,task\n"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while len(self.pending) < len(buffer) and self.next < self.count:
            lines = []
            for n in range(self.next, min(self.next + 5000, self.count)):
                project = n % PROJECTS
                lines.append(f"r-{project}-{n},p{project},t{project}-{n // (PROJECTS * 100)}\n")
            self.next = min(self.next + 5000, self.count)
            self.pending += "".join(lines).encode()
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size


def scale(args: argparse.Namespace) -> None:
    from gateway.catalogue.store import CatalogueStore
    from gateway.catalogue.sync import import_file, sync
    from gateway.catalogue.view import CatalogueView
    from gateway.config import parse_config
    from gateway.db.migrate import upgrade
    from gateway.db.session import make_engine

    workdir = Path(tempfile.mkdtemp(prefix="catalogue-bench-"))
    procs = Processes(workdir)
    database = make_database(args.server, workdir)
    lines = [f"- database: {database.label}"]
    try:
        upgrade(database.url)
        engine = make_engine(database.url)
        base = {
            "database": {"url": database.url},
            "issuers": [{"name": "i", "issuer": "https://i.test", "audience": "a", "vendor": "v"}],
            "routes": [],
        }

        # 1. Fill by import.
        config = parse_config({**base, "upstream": {"url": "http://127.0.0.1:1"}})
        began = time.monotonic()
        stream = io.BufferedReader(GeneratedCsv(args.records), buffer_size=1 << 20)
        summary = import_file(engine, config, stream, "generated.csv", actor="bench")
        fill = time.monotonic() - began
        assert summary.status == "done", summary.error
        with engine.connect() as connection:
            size = connection.execute(
                text("SELECT pg_total_relation_size('catalogue_records')")
            ).scalar_one()
        lines.append(
            f"- fill: `import_file` of {args.records:,} placements (CSV made on the fly,"
            f" {PROJECTS} projects): **{fill:.0f} s**, {args.records / fill:,.0f} records/s;"
            f" table + indexes {size / 2**20:,.0f} MiB ({size / args.records:.0f} bytes/record)"
        )
        print(lines[-1], flush=True)

        # 2. Sync over HTTP from the sample service.
        projects = 10
        per_task = args.sync_records // (projects * 10)
        port = free_port()
        factory = (
            f"gateway.demo.upstream:create_upstream_app({UPSTREAM_TOKEN!r}, projects={projects},"
            f" tasks_per_project=10, records_per_task={per_task})"
        )
        sample = procs.start(
            "sample",
            [
                PYTHON,
                "-m",
                "gunicorn",
                "-w",
                "2",
                "-k",
                "gthread",
                "--threads",
                "4",
                "-b",
                f"127.0.0.1:{port}",
                factory,
            ],
        )
        sample.url = f"http://127.0.0.1:{port}"
        wait_until(sample, "/", timeout=60)
        sync_config = parse_config(
            {
                **base,
                "upstream": {
                    "url": sample.url,
                    "headers": {"Authorization": f"Token {UPSTREAM_TOKEN}"},
                },
                "catalogue": {
                    "upstream": "sample",
                    "sources": [
                        {
                            "kind": "record",
                            "path": "/api/projects/{project}/records",
                            "records": "records",
                            "record_id": "id",
                            "record_task": "task",
                            "offset_param": "offset",
                            "limit_param": "limit",
                            "page_size": 500,
                        }
                    ],
                },
            }
        )
        names = [f"proj-{p}" for p in range(1, projects + 1)]
        timings = []
        for label in ("first (all added)", "second (all unchanged)"):
            began = time.monotonic()
            result = sync(engine, sync_config, projects=names, actor="bench", restart=True)
            seconds = time.monotonic() - began
            assert result.status == "done", result.error
            timings.append(seconds)
            lines.append(
                f"- sync {label}: {result.seen:,} records in {result.pages:,} pages of 500 over"
                f" HTTP from the sample service (gunicorn, 2 workers): **{seconds:.1f} s**,"
                f" {result.seen / seconds:,.0f} records/s (added {result.added:,}, moved"
                f" {result.moved}, gone {result.gone})"
            )
            print(lines[-1], flush=True)
        sample.stop()
        rate = args.sync_records / timings[0]
        lines.append(
            f"- extrapolation (not measured): a first sync of 10,000,000 records at that rate"
            f" takes ~{10_000_000 / rate / 60:.0f} min; the sample service's own cost of"
            " generating records is in it"
        )

        # 3. Lookups on the full table.
        store = CatalogueStore(engine, "default")
        rng = random.Random(7)
        sample_size = min(60_000, args.records)
        ids = [f"r-{n % PROJECTS}-{n}" for n in rng.sample(range(args.records), sample_size)]
        batches = [ids[i : i + 100] for i in range(0, sample_size, 100)]
        view = CatalogueView(store, cache_size=200_000)
        view.refresh()
        miss_ms = []
        for batch in batches[:300]:
            began = time.perf_counter()
            found = view.place("record", batch)
            miss_ms.append((time.perf_counter() - began) * 1000)
            assert len(found) == 100
        hit_us = []
        plain_us = []
        plain = {record_id: ("p", None) for batch in batches[:300] for record_id in batch}
        for _ in range(5):
            for batch in batches[:300]:
                began = time.perf_counter()
                view.place("record", batch)
                hit_us.append((time.perf_counter() - began) * 1e6 / 100)
                began = time.perf_counter()
                {record_id: plain[record_id] for record_id in batch if record_id in plain}
                plain_us.append((time.perf_counter() - began) * 1e6 / 100)

        def pct(values: list[float], q: float) -> float:
            return sorted(values)[min(len(values) - 1, int(q * len(values)))]

        lines.append(
            f"- lookup, cached (100-id batches as a listing page would ask): median"
            f" **{statistics.median(hit_us):.2f} µs/record**, p99 {pct(hit_us, 0.99):.2f};"
            f" a plain dict comprehension over the same ids: {statistics.median(plain_us):.2f}"
            f" µs/record (ratio {statistics.median(hit_us) / statistics.median(plain_us):.1f})"
        )
        lines.append(
            f"- lookup, not cached (one database batch of 100 ids on the {args.records:,}-row"
            f" table): median **{statistics.median(miss_ms):.2f} ms/batch**, p99"
            f" {pct(miss_ms, 0.99):.2f} ms"
        )
        print(lines[-2], lines[-1], sep="\n", flush=True)

        # 4. Memory of a worker's cache.
        for size in sorted({min(200_000, args.records), min(1_000_000, args.records)}):
            done = subprocess.run(
                [
                    PYTHON,
                    __file__,
                    "memory",
                    "--url",
                    database.url,
                    "--size",
                    str(size),
                    "--records",
                    str(args.records),
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=1800,
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
            data = json.loads(done.stdout.strip().splitlines()[-1])
            lines.append(
                f"- memory: a worker's cache of {data['cached']:,} placements adds"
                f" **{data['kib'] / 1024:.0f} MiB** resident ({data['bytes_per_entry']:.0f}"
                " bytes per entry)"
            )
            print(lines[-1], flush=True)
        engine.dispose()
    finally:
        procs.stop_all()
        if database.drop is not None:
            database.drop()
        shutil.rmtree(workdir, ignore_errors=True)
    command = "`.venv/bin/python bench/catalogue_scale.py scale" + (
        f" --records {args.records} --sync-records {args.sync_records}`"
    )
    write_section(
        "catalogue_scale",
        "\n".join(
            [
                "## Record catalogue at scale (`bench/catalogue_scale.py scale`)",
                "",
                f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
                f"- machine: {machine()}",
                f"- code measured: `{git_head()}`",
                f"- command: {command}",
                f"- load average at the end: {loadavg()} (other work shared the machine)",
                *lines,
            ]
        ),
    )


def memory(args: argparse.Namespace) -> None:
    from gateway.catalogue.store import CatalogueStore
    from gateway.catalogue.view import CatalogueView
    from gateway.db.session import make_engine

    engine = make_engine(args.url)
    view = CatalogueView(CatalogueStore(engine, "default"), cache_size=args.size)
    view.refresh()
    ids = [f"r-{n % PROJECTS}-{n}" for n in range(args.size)]
    view.place("record", ids[:1000])  # connections, imports: not the cache's cost
    before = rss_kib()
    for start in range(1000, args.size, 5000):
        view.place("record", ids[start : start + 5000])
    after = rss_kib()
    cached = view.cached()
    print(
        json.dumps(
            {
                "cached": cached,
                "kib": after - before,
                "bytes_per_entry": (after - before) * 1024 / max(1, cached - 1000),
            }
        )
    )


# --- overhead -----------------------------------------------------------------------------


def overhead(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="catalogue-overhead-"))
    procs = Processes(workdir)
    databases = [make_database(args.server, workdir / name) for name in ("plain", "catalogue")]
    tool = LoadTool("wrk", args.connections, 2)
    meter = CpuMeter(procs)
    lines: list[str] = []
    try:
        idp = procs.start("idp", idp_argv(port := free_port(), bench_contractor(10_000)))
        idp.url = f"http://127.0.0.1:{port}"
        opaque = procs.start(
            "opaque-idp",
            [str(Path(PYTHON).with_name("oidc-provider-mock")), "--port", str(p2 := free_port())],
        )
        opaque.url = f"http://127.0.0.1:{p2}"
        sample = procs.start(
            "sample",
            [
                GATEWAY_BIN,
                "demo-upstream",
                "--port",
                str(p3 := free_port()),
                "--token",
                UPSTREAM_TOKEN,
            ],
        )
        sample.url = f"http://127.0.0.1:{p3}"
        static = StaticUpstream(procs, workdir)
        page = "/api/projects/proj-1/tasks/task-1/records?limit=50"
        wait_until(idp, "/.well-known/openid-configuration", timeout=30)
        wait_until(opaque, "/.well-known/openid-configuration", timeout=30)
        wait_until(sample, "/", timeout=30)
        body = http_get(sample.url + page, {"Authorization": f"Token {UPSTREAM_TOKEN}"}).data
        static.serve("/api/projects/proj-1/tasks/task-1/records", body)
        wait_until(static.proc, "/", timeout=30)
        policy_csv = workdir / "policy.csv"
        generate_policy(
            policy_csv,
            projects=1000,
            contractors=10_000,
            per_contractor=10,
            project="proj-1",
            seed=1,
        )
        token = obtain_tokens(idp.url, bench_contractor(10_000))["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        for upstream_name, upstream in (("sample service", sample), ("nginx static", static.proc)):
            gateways = {}
            for key, database in zip(("without", "with"), databases, strict=True):
                config_path = workdir / f"{key}-{upstream_name.split()[0]}.toml"
                config_path.write_text(
                    gateway_config(
                        db_url=database.url,
                        idp_url=idp.url,
                        opaque_idp_url=opaque.url,
                        upstream_url=upstream.url,
                    )
                    + CATALOGUE_TABLE.format(sample=sample.url)
                )
                env = {"GATEWAY_CONFIG": str(config_path), "UPSTREAM_TOKEN": UPSTREAM_TOKEN}
                cli(["db", "upgrade"], env)
                cli(["policy", "import", str(policy_csv), "--reason", "bench", "--yes"], env)
                if key == "with":
                    # The catalogue is walked from the sample service even when nginx serves.
                    sync_env = {**env, "GATEWAY_UPSTREAM__URL": sample.url}
                    cli(["catalogue", "sync"], sync_env)
                gw_port = free_port()
                proc = procs.start(
                    f"gateway-{key}",
                    [
                        PYTHON,
                        "-m",
                        "gunicorn",
                        *gunicorn_settings(2, 8),
                        "-b",
                        f"127.0.0.1:{gw_port}",
                        "gateway.wsgi:app",
                    ],
                    env=env,
                )
                proc.url = f"http://127.0.0.1:{gw_port}"
                wait_until(proc, "/_gateway/ready", timeout=120, want=200)
                gateways[key] = proc
            check_catalogue_active(gateways["with"].url + page, bearer, databases[1].url)
            results: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
            for proc in gateways.values():
                tool.run(proc.url + page, bearer, args.warmup)
            for _ in range(args.rounds):
                for key, proc in gateways.items():
                    before = meter.sample()
                    run = tool.run(proc.url + page, bearer, args.duration)
                    use = CpuMeter.use(before, meter.sample())
                    if run.errors:
                        raise RuntimeError(f"{key}: {run.errors} errors: {run.detail}")
                    cpu_ms = use.group(f"gateway-{key}") * 1000 / max(run.rps, 1e-9)
                    results[key].append((run.rps, cpu_ms))
            for proc in gateways.values():
                proc.stop()
            rps = {k: statistics.median(r for r, _ in v) for k, v in results.items()}
            cpu = {k: statistics.median(c for _, c in v) for k, v in results.items()}
            lines.append(
                f"| {upstream_name} | {rps['without']:.1f} | {rps['with']:.1f} |"
                f" **{rps['with'] / rps['without']:.3f}** | {cpu['without']:.2f} |"
                f" {cpu['with']:.2f} | {cpu['with'] / cpu['without']:.3f} |"
            )
            print(lines[-1], flush=True)
    finally:
        procs.stop_all()
        for database in databases:
            if database.drop is not None:
                database.drop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_section(
        "catalogue_overhead",
        "\n".join(
            [
                "## Gateway with vs without a record catalogue (`bench/catalogue_scale.py"
                " overhead`)",
                "",
                f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
                f"- machine: {machine()}",
                f"- code measured: `{git_head()}`",
                f"- command: `.venv/bin/python bench/catalogue_scale.py overhead --rounds"
                f" {args.rounds} --duration {args.duration:g}`",
                "- request: `GET /api/projects/proj-1/tasks/task-1/records?limit=50` (50"
                " records); two gateways (gunicorn `-w 2 --threads 8`, the gateway worker),"
                " each on its own PostgreSQL database with the same 100k-rule policy; 'with':"
                " its catalogue holds the sample service's 1,800 records (`gateway catalogue"
                " sync`), so all 50 released records are checked against it (checked first:"
                " a record removed from the catalogue is withheld); 'without': no catalogue",
                f"- load: {tool.describe()}, {args.rounds} interleaved rounds of"
                f" {args.duration:g} s after a warm-up; medians; CPU from /proc (all processes"
                " of that gateway, user + system)",
                f"- load average at the end: {loadavg()}",
                "",
                "| upstream | req/s without | req/s with | with/without | CPU ms/req without"
                " | CPU ms/req with | CPU ratio |",
                "|---|---:|---:|---:|---:|---:|---:|",
                *lines,
            ]
        ),
    )


CATALOGUE_TABLE = """
[catalogue]
projects = ["proj-1", "proj-2", "proj-3"]

[[catalogue.sources]]
kind = "record"
path = "/api/projects/{{project}}/records"
records = "records"
record_id = "id"
record_task = "task"
offset_param = "offset"
limit_param = "limit"
page_size = 500
"""


def check_catalogue_active(url: str, headers: dict[str, str], db_url: str) -> None:
    """Remove one released record from the catalogue: the gateway must withhold it."""
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM catalogue_records WHERE record_id = 'rec-1-1-0003'"))
        connection.execute(text("UPDATE catalogue_kinds SET version = version + 1"))
    time.sleep(2.5)
    answer = json.loads(http_get(url, headers).data)
    released = [record["id"] for record in answer["records"]]
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO catalogue_records (upstream, kind, record_id, project, task,"
                " source, updated_at) VALUES ('default', 'record', 'rec-1-1-0003', 'proj-1',"
                " 'task-1', 'import', now())"
            )
        )
    engine.dispose()
    if "rec-1-1-0003" in released or len(released) != 49:
        raise RuntimeError("the catalogue check is not active on the 'with' gateway")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("scale", "overhead", "memory"))
    parser.add_argument("--server", default=os.environ.get("BENCH_POSTGRES", DEFAULT_SERVER))
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--sync-records", type=int, default=1_000_000)
    parser.add_argument("--url", help="(memory) database URL")
    parser.add_argument("--size", type=int, default=200_000, help="(memory) cache size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    {"scale": scale, "overhead": overhead, "memory": memory}[args.command](args)


if __name__ == "__main__":
    main()
