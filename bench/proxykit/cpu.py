"""CPU accounting from /proc: per process group, PostgreSQL, and everything else."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.proxykit.processes import Processes

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
