"""CPU per request of the request path's metrics, in-process, 1 and 16 threads.

What the pipeline records per governed request (four stage histograms, the records
counter, the request counter and latency histogram) done N times per thread, in
prometheus_client's multiprocess mode as under gunicorn: once through the gateway's
batching meter (`gateway.metrics.requests`), once straight through prometheus_client
(every observation a locked mmap write). CPU from getrusage; afterwards the exposed
counts must equal what was recorded. The end-to-end figure is `bench/proxy_overhead.py
--compare-metrics`; this one isolates the metrics from that run's noise.

    .venv/bin/python bench/metrics_cost.py            # prints; --write updates RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Before prometheus_client is imported: multiprocess mode, as gateway/gunicorn.conf.py sets.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")

from bench.report import command_line, git_head, machine, write_section  # noqa: E402
from gateway import metrics  # noqa: E402
from gateway.metrics import requests as meter  # noqa: E402
from gateway.metrics.exposition import render  # noqa: E402

ROUTE = "/api/projects/{project}/tasks/{task}/records"
CONTEXT = SimpleNamespace(
    match=SimpleNamespace(route=SimpleNamespace(config=SimpleNamespace(path=ROUTE))),
    principal=SimpleNamespace(vendor="acme"),
)


def batched(count: int) -> None:
    for _ in range(count):
        started = time.perf_counter()
        for stage in ("identify", "authorize", "upstream", "audit_commit"):
            meter.stage(stage, started)
        meter.records(50, 0)
        meter.request_done(CONTEXT, 200, None, started)  # type: ignore[arg-type]


def direct(count: int) -> None:
    stages = [metrics.STAGE_SECONDS.labels(stage=s) for s in ("identify", "authorize")]
    stages += [metrics.STAGE_SECONDS.labels(stage=s) for s in ("upstream", "audit_commit")]
    released = metrics.RECORDS.labels(outcome="released")
    for _ in range(count):
        started = time.perf_counter()
        for child in stages:
            child.observe(time.perf_counter() - started)
        released.inc(50)
        metrics.REQUESTS.labels("allow", "allowed", "acme", "direct").inc()
        metrics.REQUEST_SECONDS.labels("direct").observe(time.perf_counter() - started)


def cpu_per_call(work, threads: int, count: int) -> float:  # type: ignore[no-untyped-def]
    before = resource.getrusage(resource.RUSAGE_SELF)
    workers = [threading.Thread(target=work, args=(count,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return 1e6 * seconds / (threads * count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="per thread")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    rows = []
    recorded = 0
    for threads in (1, 16):
        rows.append(
            (
                threads,
                cpu_per_call(batched, threads, args.requests),
                cpu_per_call(direct, threads, args.requests),
            )
        )
        recorded += threads * args.requests
    meter.METER.flush()
    exposed = render(None)[0].decode()
    line = f'gateway_request_duration_seconds_count{{route="{ROUTE}"}} {float(recorded)}'
    exact = line in exposed
    table = [
        "| threads | batched (as shipped) µs CPU/request | straight to prometheus_client |",
        "|---:|---:|---:|",
        *[f"| {t} | {b:.1f} | {d:.1f} |" for t, b, d in rows],
    ]
    print("\n".join(table))
    print(f"exposed counts equal the recorded {recorded:,}: {exact}")
    if args.write:
        code, _ = git_head("gateway/metrics")
        write_section(
            "metrics_cost",
            "\n".join(
                [
                    "## Request metrics: CPU per request in-process (`bench/metrics_cost.py`)",
                    "",
                    f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                    f"- machine: {machine()}",
                    f"- code measured: {code}",
                    f"- command: `{command_line('metrics_cost.py')}`",
                    "- per request: 4 stage histograms, the records counter, the request"
                    " counter and latency histogram; prometheus_client multiprocess mode;"
                    f" {args.requests:,} requests per thread",
                    "",
                    *table,
                    "",
                    f"- exposed counts equal the recorded ones ({recorded:,}): {exact}",
                    "- end to end: `bench/proxy_overhead.py --compare-metrics` (proxy_overhead"
                    " sections)",
                ]
            ),
        )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
