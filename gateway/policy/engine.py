"""Per-project Casbin enforcers, rebuilt off the request path and swapped atomically.

pycasbin evaluates every rule of an enforcer on each `enforce`, and reloading a live
enforcer races with concurrent readers. So each project gets its own small enforcer,
a policy change builds new enforcers for the projects it touched, and the whole set is
published by one reference assignment together with a fresh decision cache: a request
sees either the old version or the new one, never a mixture.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import casbin
from sqlalchemy import Engine

from gateway.policy import store
from gateway.policy.rules import Rule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    version: int
    reason: str


@dataclass
class _Snapshot:
    version: int
    rules_by_project: dict[str, frozenset[Rule]]
    enforcers: dict[str, casbin.Enforcer]
    cache: dict[tuple[str, str, str, str, str], Decision] = field(default_factory=dict)


class PolicyEngine:
    def __init__(
        self,
        engine: Engine,
        model_path: str | Path,
        *,
        poll_interval: float = 1.0,
        cache_size: int = 200_000,
    ) -> None:
        self._db = engine
        self._model_text = Path(model_path).read_text()
        # Parse once at start so a broken model file fails the start, not a request.
        casbin.Enforcer.new_model(text=self._model_text)
        self._poll_interval = poll_interval
        self._cache_size = cache_size
        self._snapshot: _Snapshot | None = None
        self._enforce_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_refresh: float = 0.0

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    @property
    def version(self) -> int:
        return self._snapshot.version if self._snapshot else 0

    def refresh(self, *, force: bool = False) -> bool:
        """Load the newest version if it differs from the one in force; True if swapped."""
        with self._reload_lock:
            current = self._snapshot
            if (
                current is not None
                and not force
                and store.current_version(self._db) == current.version
            ):
                self.last_refresh = time.monotonic()
                return False
            version, rules = store.load_rules(self._db)
            self._snapshot = self._build(version, rules, current)
            self.last_refresh = time.monotonic()
            log.info("policy version %s in force (%d rules)", version, len(rules))
            return True

    def _build(self, version: int, rules: list[Rule], previous: _Snapshot | None) -> _Snapshot:
        grouped: dict[str, set[Rule]] = defaultdict(set)
        for rule in rules:
            grouped[rule.project].add(rule)
        rules_by_project = {project: frozenset(r) for project, r in grouped.items()}
        enforcers: dict[str, casbin.Enforcer] = {}
        for project, project_rules in rules_by_project.items():
            if previous is not None and previous.rules_by_project.get(project) == project_rules:
                enforcers[project] = previous.enforcers[project]
            else:
                enforcers[project] = self._build_enforcer(project_rules)
        return _Snapshot(version, rules_by_project, enforcers)

    def _build_enforcer(self, rules: frozenset[Rule]) -> casbin.Enforcer:
        model = casbin.Enforcer.new_model(text=self._model_text)
        enforcer = casbin.Enforcer(model)
        p_rules = sorted(list(r.values) for r in rules if r.ptype == "p")
        g_rules = sorted(list(r.values) for r in rules if r.ptype == "g")
        if p_rules:
            model.add_policies("p", "p", p_rules)
        if g_rules:
            model.add_policies("g", "g", g_rules)
        enforcer.build_role_links()
        return enforcer

    def decide(self, subject: str, vendor: str, project: str, task: str, action: str) -> Decision:
        snapshot = self._snapshot
        if snapshot is None:
            return Decision(False, 0, "policy_not_loaded")
        key = (subject, vendor, project, task, action)
        cached = snapshot.cache.get(key)
        if cached is not None:
            return cached
        enforcer = snapshot.enforcers.get(project)
        if enforcer is None:
            decision = Decision(False, snapshot.version, "no_policy_for_project")
        else:
            # Casbin's enforcer keeps per-call scratch state; one caller per enforcer at a time.
            with self._enforce_locks[project]:
                allowed = enforcer.enforce(subject, "vendor:" + vendor, project, task, action)
            decision = Decision(
                allowed, snapshot.version, "allowed" if allowed else "policy_denied"
            )
        if len(snapshot.cache) >= self._cache_size:
            snapshot.cache.clear()
        snapshot.cache[key] = decision
        return decision

    def start(self) -> None:
        """Poll the version in the background; the poll is the propagation fallback."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="policy-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.refresh()
                self.last_error = None
            except Exception as error:  # the poller must outlive a database outage
                self.last_error = f"{type(error).__name__}"
                log.warning("policy refresh failed: %s", error)
