"""The request path's metrics, in one place, so the pipeline reads as its stages."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway import metrics

if TYPE_CHECKING:
    from gateway.context import RequestContext

_STAGES = ("identify", "authorize", "upstream", "audit_commit")
# Resolved once: a labelled child is a dict lookup and a lock otherwise.
_STAGE = {name: metrics.STAGE_SECONDS.labels(stage=name) for name in _STAGES}
_RELEASED = metrics.RECORDS.labels(outcome="released")
_WITHHELD = metrics.RECORDS.labels(outcome="withheld")
# Labelled children by their label values (bounded sets: see gateway/metrics).
_REQUESTS: dict[tuple[str, str, str, str], Any] = {}
_SECONDS: dict[str, Any] = {}


def stage(name: str, started: float) -> None:
    """One stage took from `started` (time.perf_counter()) until now."""
    if metrics.enabled():
        _STAGE[name].observe(time.perf_counter() - started)


def records(released: int, withheld: int) -> None:
    if metrics.enabled():
        if released:
            _RELEASED.inc(released)
        if withheld:
            _WITHHELD.inc(withheld)


def upstream_error(kind: str) -> None:
    if metrics.enabled():
        metrics.UPSTREAM_ERRORS.labels(kind=metrics.reason_label(kind)).inc()


def request_done(ctx: RequestContext, status: int, reason: str | None, started: float) -> None:
    """Count the answer: `reason` is the refusal's (None when the gateway let it through)."""
    if not metrics.enabled():
        return
    route = ctx.match.route.config.path if ctx.match is not None else "none"
    vendor = ctx.principal.vendor if ctx.principal is not None else None
    if reason is None:
        decision = "allow"
        reason = "allowed" if status < 400 else f"upstream_{status}"
    else:
        decision = "deny"
    key = (decision, metrics.reason_label(reason), metrics.VENDORS(vendor), route)
    counter = _REQUESTS.get(key)
    if counter is None:
        counter = _REQUESTS.setdefault(key, metrics.REQUESTS.labels(*key))
    counter.inc()
    histogram = _SECONDS.get(route)
    if histogram is None:
        histogram = _SECONDS.setdefault(route, metrics.REQUEST_SECONDS.labels(route))
    histogram.observe(time.perf_counter() - started)
