"""py-spy profiles of the gateway workers, summarised by pipeline stage."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench.proxykit.cpu import CpuMeter
from bench.proxykit.load import LoadResult, LoadTool
from bench.proxykit.processes import Proc, worker_pids

ROOT = Path(__file__).resolve().parent.parent.parent
PYTHON = sys.executable
PY_SPY_BIN = str(Path(PYTHON).with_name("py-spy"))
PROFILE_RATE = 250  # py-spy samples per second


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
    ("AuditWriter._chain", "  of which: chain fields and hash per row"),
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
