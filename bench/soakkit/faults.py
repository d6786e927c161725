"""The faults: worker kills, locks, policy changes and a PostgreSQL restart, on a schedule."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from bench.soakkit.common import (
    LOCKED_CONTRACTOR,
    LOCKED_VENDOR,
    TOGGLED_GRANT,
    TOGGLED_RULE,
)
from tests.conftest import (
    Database,
    Gateway,
)

# --- faults -------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str  # kill_worker, lock, unlock, policy_grant, policy_revoke, pg_restart
    planned: float
    started: float = 0.0
    ended: float = 0.0
    instance: int | None = None
    ok: bool = False
    detail: str = ""
    target: str = ""  # lock target, or the killed pid
    respawned: float | None = None  # kill_worker: when a replacement worker appeared
    lifted: float | None = None  # lock: when the unlock command returned
    subjects: tuple[str, ...] = ()  # lock: the client subjects it locks


def plan_faults(duration: float, period: float, *, pg_restart: bool, instances: int) -> list[Fault]:
    """The fault timeline: offsets within each period, a PostgreSQL restart mid-run."""
    periods = max(1, int(duration // period))
    plan: list[Fault] = []
    for number in range(periods):
        base = number * period
        plan.append(Fault("kill_worker", base + 0.10 * period, instance=number % instances))
        plan.append(Fault("lock", base + 0.25 * period, target=str(number)))
        plan.append(Fault("unlock", base + 0.40 * period))
        plan.append(
            Fault("policy_grant" if number % 2 == 0 else "policy_revoke", base + 0.50 * period)
        )
    if pg_restart:
        plan.append(Fault("pg_restart", (periods // 2) * period + 0.62 * period))
    return sorted((f for f in plan if f.planned < duration - 1.0), key=lambda f: f.planned)


def worker_pids(master: int) -> list[int]:
    """The children of gunicorn master `master`, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == master:
            children.append(int(entry.name))
    return sorted(children)


def postgres_cluster_version() -> str:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir() if p.is_dir())
    if not versions:
        raise RuntimeError("no PostgreSQL cluster under /etc/postgresql")
    return versions[-1]


class FaultRunner:
    """Runs the planned faults at their times, from one thread, and records each."""

    def __init__(
        self,
        plan: list[Fault],
        gateways: list[Gateway],
        db: Database,
        origin: float,
        stop: threading.Event,
        say: Callable[[str], None],
        restart_wait: float = 0.0,
    ) -> None:
        self.plan = plan
        self.restart_wait = restart_wait
        self.gateways = gateways
        self.db = db
        self.origin = origin
        self.stop = stop
        self.say = say
        self.done: list[Fault] = []
        self.open_lock: str | None = None
        self._open_fault: Fault | None = None
        self.other_connections = 0
        self._rng = random.Random(4711)
        self._watchers: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._run, name="faults", daemon=True)

    def now(self) -> float:
        return time.monotonic() - self.origin

    def _run(self) -> None:
        for fault in self.plan:
            if self.stop.wait(max(0.0, fault.planned - self.now())):
                break
            fault.started = self.now()
            try:
                getattr(self, f"_{fault.kind}")(fault)
            except Exception as error:  # a fault that fails to happen is reported, not fatal
                fault.ok, fault.detail = False, f"{type(error).__name__}: {error}"
            fault.ended = self.now()
            self.done.append(fault)
            self.say(
                f"[{fault.started:6.1f}s] {fault.kind:<13} {'ok' if fault.ok else 'FAILED'}"
                f" ({fault.ended - fault.started:.1f}s) {fault.detail}"
            )

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        for watcher in self._watchers:
            watcher.join(max(0.0, timeout))

    def _cli(self, *args: str) -> subprocess.CompletedProcess:
        return self.gateways[0].cli(*args, check=False)

    def _kill_worker(self, fault: Fault) -> None:
        assert fault.instance is not None
        master = self.gateways[fault.instance].proc.process.pid
        workers = worker_pids(master)
        if not workers:
            fault.detail = f"instance {fault.instance + 1}: master {master} has no workers"
            return
        victim = self._rng.choice(workers)
        os.kill(victim, signal.SIGKILL)
        fault.ok, fault.target = True, str(victim)
        fault.detail = f"instance {fault.instance + 1}: worker {victim} of master {master}"
        watcher = threading.Thread(
            target=self._watch_respawn, args=(fault, master, set(workers)), daemon=True
        )
        self._watchers.append(watcher)
        watcher.start()

    def _watch_respawn(self, fault: Fault, master: int, before: set[int]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.stop.is_set():
            if set(worker_pids(master)) - before:
                fault.respawned = self.now()
                return
            time.sleep(0.05)

    def _lock(self, fault: Fault) -> None:
        number = int(fault.target or 0)
        kind, target = (
            ("contractor", LOCKED_CONTRACTOR) if number % 2 == 0 else ("vendor", LOCKED_VENDOR)
        )
        result = self._cli("lock", kind, target, "--reason", f"soak fault {number}", "--json")
        fault.target = f"{kind} {target}"
        if result.returncode != 0:
            fault.detail = (result.stderr or result.stdout).strip()[-300:]
            return
        lock = json.loads(result.stdout)
        self.open_lock = str(lock["id"])
        self._open_fault = fault
        fault.subjects = ("bob",) if kind == "contractor" else ("alice", "bob")
        fault.ok, fault.detail = True, f"{kind} {target}: lock {lock['id']}"

    def _unlock(self, fault: Fault) -> None:
        if self.open_lock is None:
            fault.detail = "no lock to lift"
            return
        result = self._cli(
            "unlock", self.open_lock, "--reason", "soak fault over", "--actor", "soak-admin-1",
            "--json",
        )  # fmt: skip
        if result.returncode == 0 and '"lift_request"' in result.stdout:
            # A vendor lock: a second admin approves the lift (the two-person rule).
            request = json.loads(result.stdout)["lift_request"]["id"]
            result = self._cli("unlock", "--approve", str(request), "--actor", "soak-admin-2")
        fault.target = self.open_lock
        fault.ok = result.returncode == 0
        fault.detail = f"lock {self.open_lock}" + (
            "" if fault.ok else f": {(result.stderr or result.stdout).strip()[-300:]}"
        )
        if fault.ok:
            self.open_lock = None
            if self._open_fault is not None:
                self._open_fault.lifted = self.now()

    def _policy_grant(self, fault: Fault) -> None:
        sub, project, task, action = TOGGLED_GRANT
        result = self._cli(
            "policy", "grant", "--sub", sub, "--project", project, "--task", task,
            "--action", action, "--reason", "soak policy change",
        )  # fmt: skip
        fault.ok = result.returncode == 0
        fault.detail = (result.stdout if fault.ok else result.stderr or result.stdout).strip()
        fault.detail = fault.detail.splitlines()[-1][:200] if fault.detail else ""

    def _policy_revoke(self, fault: Fault) -> None:
        result = self._cli("policy", "revoke", TOGGLED_RULE, "--reason", "soak policy change")
        fault.ok = result.returncode == 0
        fault.detail = (result.stdout if fault.ok else result.stderr or result.stdout).strip()
        fault.detail = fault.detail.splitlines()[-1][:200] if fault.detail else ""

    def _pg_restart(self, fault: Fault) -> None:
        # Other sessions' connections to the server would be cut too: give them a while.
        waited = time.monotonic()
        while (
            other_postgres_clients(self.db)
            and time.monotonic() - waited < self.restart_wait
            and not self.stop.wait(1.0)
        ):
            pass
        waited = time.monotonic() - waited
        self.other_connections = other_postgres_clients(self.db)
        if self.other_connections:
            self.say(
                f"warning: {self.other_connections} other client connection(s) to this"
                " PostgreSQL server will be cut by the restart"
            )
        version = postgres_cluster_version()
        fault.started = self.now()
        result = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        fault.ok = result.returncode == 0
        fault.detail = (
            f"cluster {version}/main"
            + (
                f" (after waiting {waited:.0f} s for other sessions' connections)"
                if waited > 1
                else ""
            )
            + ("" if fault.ok else f": {(result.stderr or result.stdout).strip()[-300:]}")
        )

    def lift_leftover_lock(self) -> None:
        if self.open_lock is not None:
            self._cli("unlock", self.open_lock, "--reason", "soak over")
            self.open_lock = None


def other_postgres_clients(db: Database) -> int:
    """Client connections to other databases of the server (a restart cuts them too)."""
    with contextlib.suppress(Exception), db.engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND datname IS DISTINCT FROM current_database()"
                    " AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        )
    return 0
