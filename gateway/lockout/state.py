"""Each worker's view of the active locks: an in-memory lookup kept fresh by push and poll.

The request path only reads a dictionary. A PostgreSQL LISTEN connection refreshes it as
soon as a lock is committed anywhere; a short poll is the fallback and the only path on
SQLite. If no refresh has succeeded for `stale_after` seconds the worker cannot know
whether someone was locked meanwhile, so `fresh` turns false and the pipeline refuses
contractor traffic until a refresh succeeds again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from gateway import metrics
from gateway.db.notify import listen_forever
from gateway.lockout import store

log = logging.getLogger(__name__)

LockKeys = dict[tuple[str, str], tuple[int, float | None]]


@dataclass(frozen=True)
class LockHit:
    lock_id: int
    kind: str
    target: str


class LockState:
    def __init__(
        self, db: Engine, *, poll_interval: float = 0.25, stale_after: float = 5.0
    ) -> None:
        self._db = db
        self._poll_interval = poll_interval
        self._stale_after = stale_after
        self._keys: LockKeys = {}
        # Canary record ids: a record nobody should fetch trips a lock when it does.
        self.canaries: frozenset[str] = frozenset()
        self._last_success = float("-inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._on_change: list[Callable[[], None]] = []
        self.last_error: str | None = None

    @property
    def fresh(self) -> bool:
        return time.monotonic() - self._last_success <= self._stale_after

    def on_change(self, callback: Callable[[], None]) -> None:
        """Run `callback` (off the request path) whenever the set of locks changes."""
        self._on_change.append(callback)

    def check(
        self, *, vendor: str, contractor: str, issuer: str, project: str | None
    ) -> LockHit | None:
        keys = self._keys
        if not keys:
            return None
        now = time.time()
        for kind, target in (
            ("vendor", vendor),
            ("contractor", contractor),
            ("issuer", issuer),
            ("project", project),
        ):
            if target is None:
                continue
            found = keys.get((kind, target))
            if found is not None and (found[1] is None or found[1] > now):
                return LockHit(found[0], kind, target)
        return None

    def refresh(self) -> None:
        keys = store.active_lock_keys(self._db)
        self.canaries = store.canary_record_ids(self._db)
        with self._lock:
            changed = keys != self._keys
            self._keys = keys
            self._last_success = time.monotonic()
            self.last_error = None
        metrics.LOCK_STATE_REFRESHED.set(time.time())
        metrics.LOCKS_ACTIVE.set(len(keys))
        if changed:
            log.info("lock state changed: %d active locks", len(keys))
            for callback in self._on_change:
                try:
                    callback()
                except Exception:
                    log.exception("lock change callback failed")

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception as error:  # keep trying; `fresh` reports how long it has failed
            self.last_error = type(error).__name__
            log.warning("lock refresh failed: %s", error)

    def start(self) -> None:
        if self._threads:
            return
        self._refresh_quietly()
        self._threads.append(threading.Thread(target=self._poll, name="lock-poll", daemon=True))
        if self._db.dialect.name == "postgresql":
            self._threads.append(
                threading.Thread(target=self._listen, name="lock-listen", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            self._refresh_quietly()

    def _listen(self) -> None:
        listen_forever(self._db, store.NOTIFY_CHANNEL, self._refresh_quietly, self._stop)
