"""Per-project Casbin enforcers, rebuilt off the request path and swapped atomically.

pycasbin evaluates every rule of an enforcer on each `enforce`, and reloading a live
enforcer races with concurrent readers. So each project gets its own small enforcer,
a policy change builds new enforcers for the projects it touched, and the whole set is
published by one reference assignment together with a fresh decision cache: a request
sees either the old version or the new one, never a mixture.

Time-boxed rules are left out of an enforcer while they are not in force. A snapshot
knows the next moment any rule starts or stops; past it, the snapshot is rebuilt from
the rules already in memory, so an expiry takes effect on every worker at its time
without anyone acting and without a database round trip.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import casbin
from sqlalchemy import Engine

from gateway import metrics
from gateway.db.notify import listen_forever
from gateway.policy import store
from gateway.policy.rules import Rule

log = logging.getLogger(__name__)

# One caller at a time in pycasbin, across all of a worker's enforcers: an enforcer keeps
# per-call scratch state, and every uncached `enforce` runs `ast.parse` (simpleeval),
# which CPython 3.11 before 3.11.8 can fail with "SystemError: AST constructor recursion
# depth mismatch" when two threads parse at once (gh-106905). Decisions are cached, so
# the lock is taken only for the first decision of each kind per policy version.
CASBIN_LOCK = threading.Lock()


def project_model(model_text: str) -> str:
    """The model of gateway/policy/model.conf for an enforcer that holds a single project.

    Role links there are scoped by project (`g = _, _, _`). Inside one project's enforcer
    the scope is always that project, so the domain can be dropped, and must be: pycasbin's
    domain role manager links roles in O(n^2) with a pattern matcher on first use (about
    20 ms for 100 members), while the plain role manager links each in O(1).
    """
    scoped = "g = _, _, _"
    if scoped not in model_text or "r.project)" not in model_text:
        raise ValueError("policy model must define project-scoped roles (g = _, _, _)")
    single = (
        model_text.replace(scoped, "g = _, _")
        .replace("g(r.sub, p.sub, r.project)", "g(r.sub, p.sub)")
        .replace("g(r.vendor, p.sub, r.project)", "g(r.vendor, p.sub)")
    )
    if ", r.project)" in single:
        raise ValueError("policy model uses g(..., r.project) in a form the gateway cannot scope")
    return single


@dataclass(frozen=True)
class Decision:
    allowed: bool
    version: int
    reason: str


@dataclass
class _Snapshot:
    version: int
    rules_by_project: dict[str, frozenset[Rule]]  # every rule, in force or not
    in_force_by_project: dict[str, frozenset[Rule]]
    enforcers: dict[str, casbin.Enforcer]
    next_change: float  # the next moment a time-boxed rule starts or stops
    next_change_by_project: dict[str, float]
    cache: dict[tuple[str, str, str, str, str], Decision] = field(default_factory=dict)


def _published(version: int) -> None:
    metrics.POLICY_VERSION.set(version)
    metrics.POLICY_CHANGED.set(time.time())


def _by_project(rules: list[Rule]) -> dict[str, frozenset[Rule]]:
    grouped: dict[str, set[Rule]] = defaultdict(set)
    for rule in rules:
        grouped[rule.project].add(rule)
    return {project: frozenset(group) for project, group in grouped.items()}


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
        self._model_text = project_model(Path(model_path).read_text())
        # Parse once at start so a broken model file fails the start, not a request.
        casbin.Enforcer.new_model(text=self._model_text)
        self._poll_interval = poll_interval
        self._cache_size = cache_size
        self._snapshot: _Snapshot | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.last_error: str | None = None
        self.last_refresh: float = 0.0
        self.listening = False

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    @property
    def version(self) -> int:
        return self._snapshot.version if self._snapshot else 0

    def rules_in_force(self, project: str) -> frozenset[Rule]:
        snapshot = self._current()
        return snapshot.in_force_by_project.get(project, frozenset()) if snapshot else frozenset()

    def refresh(self, *, force: bool = False) -> bool:
        """Bring the newest version in force; True if a new snapshot was published.

        A running engine applies the stored diffs of the versions it missed, so a change
        costs in proportion to its size; a start, a gap or `force` reloads every rule.
        """
        with self._reload_lock:
            current = self._snapshot
            latest = store.current_version(self._db)
            self.last_refresh = time.monotonic()
            if current is not None and not force and latest == current.version:
                return False
            if current is not None and not force and latest > current.version:
                diffs = store.diffs_since(self._db, current.version)
                versions = [version for version, _, _ in diffs]
                if versions and versions == list(range(current.version + 1, versions[-1] + 1)):
                    self._snapshot = self._apply_diffs(current, diffs)
                    log.info("policy version %s in force", self._snapshot.version)
                    _published(self._snapshot.version)
                    return True
            version, rules = store.load_rules(self._db)
            self._snapshot = self._build(version, _by_project(rules), current)
            log.info("policy version %s in force (%d rules)", version, len(rules))
            _published(version)
            return True

    def _apply_diffs(
        self, current: _Snapshot, diffs: list[tuple[int, list[Rule], list[Rule]]]
    ) -> _Snapshot:
        by_project = dict(current.rules_by_project)
        for _, added, removed in diffs:
            for rule in removed:
                by_project[rule.project] = by_project.get(rule.project, frozenset()) - {rule}
            for rule in added:
                by_project[rule.project] = by_project.get(rule.project, frozenset()) | {rule}
        return self._build(diffs[-1][0], by_project, current)

    def _current(self) -> _Snapshot | None:
        snapshot = self._snapshot
        if snapshot is not None and time.time() >= snapshot.next_change:
            with self._reload_lock:
                snapshot = self._snapshot
                if snapshot is not None and time.time() >= snapshot.next_change:
                    snapshot = self._snapshot = self._build(
                        snapshot.version, snapshot.rules_by_project, snapshot, expiry=True
                    )
        return snapshot

    def _build(
        self,
        version: int,
        rules_by_project: dict[str, frozenset[Rule]],
        previous: _Snapshot | None,
        *,
        expiry: bool = False,
    ) -> _Snapshot:
        """A snapshot of `rules_by_project`; unchanged projects keep their enforcers."""
        now = time.time()
        in_force: dict[str, frozenset[Rule]] = {}
        enforcers: dict[str, casbin.Enforcer] = {}
        next_by_project: dict[str, float] = {}
        for project, rules in rules_by_project.items():
            if (
                previous is not None
                and not expiry
                and previous.rules_by_project.get(project) is rules
            ):
                # Untouched by this change: reuse everything (no per-rule work).
                if project in previous.in_force_by_project:
                    in_force[project] = previous.in_force_by_project[project]
                    enforcers[project] = previous.enforcers[project]
                if project in previous.next_change_by_project:
                    next_by_project[project] = previous.next_change_by_project[project]
                continue
            upcoming = [
                moment
                for rule in rules
                for moment in (rule.not_before, rule.not_after)
                if moment is not None and moment > now
            ]
            if upcoming:
                next_by_project[project] = min(upcoming)
            active = frozenset(rule for rule in rules if rule.in_force(now))
            if not active:
                continue
            in_force[project] = active
            if previous is not None and previous.in_force_by_project.get(project) == active:
                enforcers[project] = previous.enforcers[project]
            else:
                enforcers[project] = self._build_enforcer(active)
        next_change = min(next_by_project.values(), default=math.inf)
        return _Snapshot(
            version, rules_by_project, in_force, enforcers, next_change, next_by_project
        )

    def _build_enforcer(self, rules: frozenset[Rule]) -> casbin.Enforcer:
        with CASBIN_LOCK:
            model = casbin.Enforcer.new_model(text=self._model_text)
            enforcer = casbin.Enforcer(model)
        p_rules = sorted(list(r.values) for r in rules if r.ptype == "p")
        g_rules = sorted(list(r.values) for r in rules if r.ptype == "g")
        if p_rules:
            model.add_policies("p", "p", p_rules)
        if g_rules:
            model.add_policies("g", "g", [rule[:2] for rule in g_rules])
        enforcer.build_role_links()
        return enforcer

    def decide(self, subject: str, vendor: str, project: str, task: str, action: str) -> Decision:
        snapshot = self._current()
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
            with CASBIN_LOCK:
                allowed = enforcer.enforce(subject, "vendor:" + vendor, project, task, action)
            decision = Decision(
                allowed, snapshot.version, "allowed" if allowed else "policy_denied"
            )
        if len(snapshot.cache) >= self._cache_size:
            snapshot.cache.clear()
        snapshot.cache[key] = decision
        return decision

    # --- propagation -------------------------------------------------------------------

    def start(self) -> None:
        """Poll the version in the background; on PostgreSQL also LISTEN for pushes."""
        if self._threads:
            return
        self._threads.append(threading.Thread(target=self._poll, name="policy-poll", daemon=True))
        if self._db.dialect.name == "postgresql":
            self._threads.append(
                threading.Thread(target=self._listen, name="policy-listen", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            self._refresh_quietly()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
            self.last_error = None
        except Exception as error:  # the poller must outlive a database outage
            self.last_error = f"{type(error).__name__}"
            log.warning("policy refresh failed: %s", error)

    def _listen(self) -> None:
        """Refresh as soon as a committed change is announced."""
        listen_forever(
            self._db,
            store.NOTIFY_CHANNEL,
            self._refresh_quietly,
            self._stop,
            on_connected=self._set_listening,
        )

    def _set_listening(self, connected: bool) -> None:
        self.listening = connected
