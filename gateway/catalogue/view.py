"""One worker's view of the catalogue: a bounded cache of placements, kept honest by a poll.

Placements found are cached (least recently used go first); a record the cache does not
hold is asked of the database, so a record another worker learnt a second ago, or one a
sync added, is never refused as unknown. A sync that moves or deletes records bumps its
kind's version, and each worker drops that kind's cached placements at its next poll.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from gateway.catalogue.store import CatalogueStore, Placement

log = logging.getLogger(__name__)


class CatalogueUnavailable(Exception):
    """The catalogue could not be read: the request is refused, not waved through."""


class CatalogueView:
    def __init__(
        self, store: CatalogueStore, *, cache_size: int, poll_interval: float = 1.0
    ) -> None:
        self.store = store
        self.cache_size = cache_size
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._cache: dict[str, OrderedDict[str, Placement]] = {}
        self._versions: dict[str, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lookups = 0
        self.misses = 0

    # --- freshness ------------------------------------------------------------------

    def refresh(self) -> None:
        versions = self.store.kinds()
        with self._lock:
            previous = self._versions or {}
            for kind, version in versions.items():
                if previous.get(kind) != version:
                    self._cache.pop(kind, None)
            for kind in set(previous) - set(versions):
                self._cache.pop(kind, None)
            self._versions = versions

    def start(self) -> None:
        try:
            self.refresh()
        except Exception:
            log.warning("catalogue: first read failed; record routes refuse until it succeeds")
        self._thread = threading.Thread(target=self._poll, name="catalogue-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception as error:
                log.warning("catalogue poll failed: %s", error)

    # --- questions the pipeline asks ------------------------------------------------

    def holds(self, kind: str) -> bool:
        """Whether the catalogue has records of this kind (then unknown ones are refused)."""
        versions = self._versions
        if versions is None:
            # Never read: saying "no catalogue" would let every unknown record through.
            try:
                self.refresh()
            except Exception as error:
                raise CatalogueUnavailable(str(error)) from None
            versions = self._versions
            assert versions is not None
        return kind in versions

    def place(self, kind: str, record_ids: Iterable[str]) -> dict[str, Placement]:
        """The placements the catalogue holds for these records; unknown ones are absent."""
        found: dict[str, Placement] = {}
        missing: list[str] = []
        with self._lock:
            cache = self._cache.get(kind)
            for record_id in record_ids:
                self.lookups += 1
                placement = cache.get(record_id) if cache is not None else None
                if placement is None:
                    missing.append(record_id)
                else:
                    cache.move_to_end(record_id)  # type: ignore[union-attr]
                    found[record_id] = placement
        if not missing:
            return found
        self.misses += len(missing)
        try:
            fetched = self.store.lookup(kind, missing)
        except Exception as error:
            raise CatalogueUnavailable(str(error)) from None
        self._remember(kind, fetched)
        found.update(fetched)
        return found

    def learn(self, kind: str, placements: Mapping[str, Placement]) -> None:
        try:
            self.store.learn(kind, placements)
        except Exception as error:
            raise CatalogueUnavailable(str(error)) from None
        with self._lock:
            if self._versions is not None and kind not in self._versions:
                self._versions = {**self._versions, kind: 0}
        self._remember(kind, placements)

    def _remember(self, kind: str, placements: Mapping[str, Placement]) -> None:
        if not placements:
            return
        with self._lock:
            cache = self._cache.setdefault(kind, OrderedDict())
            cache.update(placements)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)

    def cached(self) -> int:
        with self._lock:
            return sum(len(cache) for cache in self._cache.values())
