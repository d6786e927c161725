"""The simulator: the population's work, the classic attacks, then (on a random stream of
their own) the subtle attacks and their benign twins, the log's window, the grants."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway.anomaly.simulate import attacks, grants, subtle, twins
from gateway.anomaly.simulate.editor import Editor
from gateway.anomaly.simulate.model import CLASSIC_FAMILIES, FAMILIES, Simulation
from gateway.anomaly.simulate.population import Population


class Simulator(Population):
    def __init__(self, seed: int, *, subtle: bool = True, **sizes: Any) -> None:
        """`subtle=False`: the classic families only, and no twins of the subtle ones (the
        log as it was before they were added, request for request)."""
        super().__init__(seed, **sizes)
        self.subtle = subtle

    def run(self) -> Simulation:
        self._world()
        self._contractors()
        for done, person in enumerate(self.people, 1):
            first = len(self.requests)
            self._work(person)
            person.span = (first, len(self.requests))
            if self._progress is not None:
                self._progress(done, len(self.people))
        attacks.plant(self)
        editor = Editor(self)
        grants.draw_vendor_grants(editor)
        if self.subtle:
            subtle.plant(editor)
            twins.plant(editor)
        editor.apply()
        locked = {p.key: p.stop_at for p in self.people if p.stop_at is not None}
        if locked:
            self.requests = [
                r
                for r in self.requests
                if not (
                    r.subject is not None
                    and f"{r.issuer}:{r.subject}" in locked
                    and r.ts >= locked[f"{r.issuer}:{r.subject}"]
                    and not (r.reason or "").startswith("locked:")
                )
            ]
        end = self.start + self.days * 86400
        self.requests = [r for r in self.requests if self.start <= r.ts < end]
        contractor_days = 0
        for person in self.people:
            last = self.days
            if person.stop_at is not None:
                last = int((person.stop_at - self.start) // 86400) + 1
            contractor_days += max(0, last - max(self.warmup, person.join_day))
        return Simulation(
            seed=self.seed,
            contractors=self.n_contractors,
            vendors=self.n_vendors,
            days=self.days,
            warmup_days=self.warmup,
            start=self.start,
            requests=self.requests,
            labels=self.labels,
            canaries=self.canaries,
            benign=self.benign,
            contractor_days=contractor_days,
            grants=grants.policy_grants(editor),
            families=FAMILIES if self.subtle else CLASSIC_FAMILIES,
        )


def simulate(
    seed: int,
    *,
    contractors: int = 200,
    vendors: int = 5,
    days: int = 30,
    warmup_days: int = 10,
    start: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    subtle: bool = True,
) -> Simulation:
    return Simulator(
        seed,
        subtle=subtle,
        contractors=contractors,
        vendors=vendors,
        days=days,
        warmup_days=warmup_days,
        start=start,
        progress=progress,
    ).run()
