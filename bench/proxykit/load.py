"""Load generation: wrk when installed, else Python processes with keep-alive connections."""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import urllib3

from bench.proxykit.cpu import CpuUse

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
