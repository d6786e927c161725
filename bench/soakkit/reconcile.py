"""Reconciliation: every record a client received has its access row, every row is explained."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from bench.soakkit.common import UA_PREFIX
from bench.soakkit.traffic import Attempt

# --- reconciliation -------------------------------------------------------------------------


class AccessRow(NamedTuple):
    request_id: str
    user_agent: str | None
    record_id: str | None
    record_sha256: str | None
    decision: str
    reason: str | None


@dataclass
class Reconciliation:
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    records_released: int = 0  # records in 2xx bodies of record routes, as the clients hold them
    records_logged: int = 0  # ... of them with their allow row
    stream_lines: int = 0  # NDJSON lines received on streamed routes (logged per request)
    rows: int = 0
    rows_by_decision: Counter[str] = field(default_factory=Counter)
    rows_reached: int = 0  # rows of a request id some client saw
    rows_explained: Counter[str] = field(default_factory=Counter)
    # Failures (each entry says what and where):
    unlogged_records: list[str] = field(default_factory=list)
    unlogged_responses: list[str] = field(default_factory=list)  # a 2xx without its allow row
    unexplained_rows: list[str] = field(default_factory=list)
    mismatched_rows: list[str] = field(default_factory=list)  # rows contradicting the response
    # Information:
    responses_without_rows: Counter[str] = field(default_factory=Counter)
    logged_not_released: Counter[str] = field(default_factory=Counter)
    reached_reasons: Counter[str] = field(default_factory=Counter)
    http_500: list[Attempt] = field(default_factory=list)

    @property
    def unlogged(self) -> int:
        return len(self.unlogged_records) + len(self.unlogged_responses)

    @property
    def ok(self) -> bool:
        return not (self.unlogged or self.unexplained_rows or self.mismatched_rows or self.http_500)


_STREAM_REASONS = ("stream_cut:", "stream_broken:")


def reconcile(attempts: Iterable[Attempt], rows: Iterable[AccessRow]) -> Reconciliation:
    """Match every client outcome with the access log, and every access row with a client.

    - A 2xx of a record route: each record the client holds has an `allow` row of that
      request id with its id and SHA-256 (multiset equality; a missing row is an unlogged
      release, an extra allow row is a mismatch). Rows `filtered` are records withheld.
    - Any other 2xx (streams, metadata, annotations): at least one `allow` row.
    - A row whose request id a client saw has reached it. A row of an unseen request id is
      explained only when its User-Agent names an attempt that got no response (connection
      cut, refused, timed out) or never finished (client gone); anything else, e.g. a
      second request id for one attempt or an unknown User-Agent, is unexplained.
    """
    result = Reconciliation()
    by_request: dict[str, list[AccessRow]] = defaultdict(list)
    for row in rows:
        by_request[row.request_id].append(row)
        result.rows += 1
        result.rows_by_decision[row.decision] += 1
    by_tag: dict[str, Attempt] = {}
    seen: dict[str, Attempt] = {}
    for attempt in attempts:
        result.requests += 1
        result.outcomes[attempt.outcome] += 1
        by_tag[attempt.tag] = attempt
        if attempt.status == 500:
            result.http_500.append(attempt)
        if attempt.status is None:
            continue
        where = f"{attempt.tag} {attempt.method} {attempt.path} -> {attempt.outcome}"
        if attempt.request_id is None:
            if 200 <= attempt.status < 300:
                result.unlogged_responses.append(f"{where}: no X-Request-Id")
            result.responses_without_rows[attempt.outcome] += 1
            continue
        seen[attempt.request_id] = attempt
        mine = by_request.get(attempt.request_id, [])
        if not mine:
            result.responses_without_rows[attempt.outcome] += 1
        _check_response(result, attempt, mine, where)
    for request_id, group in by_request.items():
        if request_id in seen:
            result.rows_reached += len(group)
            for row in group:
                result.reached_reasons[f"{row.decision} {row.reason}"] += 1
            continue
        explanation = _explain(group, by_tag)
        if explanation is None:
            for row in group:
                result.unexplained_rows.append(
                    f"request {request_id} (user agent {row.user_agent!r}): {row.decision}"
                    f" {row.reason} record {row.record_id}"
                )
        else:
            result.rows_explained[explanation] += len(group)
    return result


def _check_response(
    result: Reconciliation, attempt: Attempt, rows: list[AccessRow], where: str
) -> None:
    status = attempt.status or 0
    allow = Counter(
        (row.record_id, row.record_sha256)
        for row in rows
        if row.decision == "allow" and row.record_id is not None
    )
    strangers = [row for row in rows if row.user_agent != f"{UA_PREFIX}/{attempt.tag}"]
    if strangers:
        result.mismatched_rows.append(
            f"{where}: {len(strangers)} row(s) of this request id carry another user agent"
            f" ({strangers[0].user_agent!r})"
        )
    if not 200 <= status < 300:
        released_rows = sum(1 for row in rows if row.decision == "allow" and row.record_sha256)
        if released_rows:  # logged as released, but the client got an error: over-logging
            result.logged_not_released[attempt.outcome] += released_rows
        return
    denied = [
        row
        for row in rows
        if row.decision == "deny" and not (row.reason or "").startswith(_STREAM_REASONS)
    ]
    if denied:
        result.mismatched_rows.append(f"{where}: a 2xx with a deny row ({denied[0].reason})")
    if attempt.records is not None:
        held = Counter(attempt.records)
        result.records_released += sum(held.values())
        missing, extra = held - allow, allow - held
        result.records_logged += sum(held.values()) - sum(missing.values())
        for (record_id, sha), count in missing.items():
            result.unlogged_records.append(
                f"{where}: record {record_id} sha256 {sha[:16]}… x{count} has no allow row"
            )
        for (record_id, sha), count in extra.items():
            result.mismatched_rows.append(
                f"{where}: allow row for record {record_id} sha256 {str(sha)[:16]}… x{count}"
                " that the client did not receive"
            )
        return
    if attempt.record_route:
        # The body of a record route broke off: whatever arrived came after the rows.
        if not any(row.decision == "allow" for row in rows):
            result.unlogged_responses.append(f"{where}: no allow row")
        return
    result.stream_lines += attempt.lines
    if not any(row.decision == "allow" for row in rows):
        result.unlogged_responses.append(f"{where}: no allow row")
    cut_rows = [row for row in rows if (row.reason or "").startswith(_STREAM_REASONS)]
    if cut_rows and attempt.failure is None:
        result.mismatched_rows.append(
            f"{where}: {cut_rows[0].reason} logged, but the client got the whole stream"
        )


def _explain(group: list[AccessRow], by_tag: dict[str, Attempt]) -> str | None:
    """Why rows of a request id no client saw exist, or None if nothing explains them."""
    agents = {row.user_agent for row in group}
    if len(agents) != 1:
        return None
    agent = agents.pop() or ""
    prefix = f"{UA_PREFIX}/"
    attempt = by_tag.get(agent[len(prefix) :]) if agent.startswith(prefix) else None
    if attempt is None:
        return None
    if attempt.end is None:
        return "client gone (in flight at the end)"
    if attempt.status is None:
        return f"client got no response: {attempt.failure}"
    return None
