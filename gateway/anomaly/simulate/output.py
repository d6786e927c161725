"""A simulation written out: rows, labels, a database, a JSON-lines file."""

from __future__ import annotations

import gzip
import hashlib
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from gateway.anomaly.data import Request
from gateway.anomaly.simulate.model import START, Simulation, iso


def start_ending_by(end: datetime, days: int) -> datetime:
    """The latest start, whole weeks after START, whose `days` end no later than `end`."""
    weeks = math.floor((end - START - timedelta(days=days)).total_seconds() / (7 * 86400))
    return START + timedelta(weeks=weeks)


def iter_rows(simulation: Simulation) -> Iterator[dict[str, Any]]:
    """The access-log rows of a simulation (ids from 1, in time order)."""
    from gateway.anomaly.memory import MemorySource

    yield from MemorySource(simulation.requests).rows()


# --- writing a simulation out ------------------------------------------------------------


def labels_document(simulation: Simulation) -> dict[str, Any]:
    return {
        "seed": simulation.seed,
        "contractors": simulation.contractors,
        "vendors": simulation.vendors,
        "days": simulation.days,
        "warmup_days": simulation.warmup_days,
        "start": iso(simulation.start),
        "end": iso(simulation.end),
        "scored_from": iso(simulation.scored_from),
        "contractor_days": simulation.contractor_days,
        "labels": [label.as_dict() for label in simulation.labels],
        "benign_cases": [
            {
                "kind": case.kind,
                "contractor": case.contractor,
                "project": case.project,
                "start": iso(case.start),
                "end": iso(case.end),
            }
            for case in simulation.benign
        ],
        "canaries": simulation.canaries,
    }


def _row_values(row: dict[str, Any]) -> tuple[Any, ...]:
    record = row["record_id"]
    released = row["decision"] == "allow" and record is not None
    return (
        datetime.fromtimestamp(row["ts"], UTC),
        row["request_id"],
        row["issuer"],
        row["subject"],
        row["vendor"],
        row["client_ip"],
        row["user_agent"],
        row["method"],
        row["path"],
        row["project"],
        row["task"],
        record,
        hashlib.sha256(record.encode()).hexdigest() if released else None,
        row["action"],
        row["decision"],
        row["reason"],
        1,
        row["upstream_status"],
        512 if released else None,
    )


def write_database(
    simulation: Simulation,
    url: str,
    *,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append the simulation's rows to `access_log` (one hash chain of its own, so `gateway
    audit verify` still holds) and mark its canaries; returns the rows written. The
    schema is brought to the newest revision first."""
    from gateway.db.migrate import upgrade
    from gateway.db.session import make_engine

    upgrade(url)
    engine = make_engine(url)
    try:
        return write_requests(
            engine,
            simulation.requests,
            canaries=simulation.canaries,
            chain=f"simulated-{simulation.seed}",
            canaries_since=datetime.fromtimestamp(simulation.start, UTC),
            batch=batch,
            progress=progress,
        )
    finally:
        engine.dispose()


def write_requests(
    engine: Any,
    requests: list[Request],
    *,
    canaries: Sequence[str] = (),
    chain: str = "simulated",
    canaries_since: datetime | None = None,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append requests' rows to `access_log` as one valid hash chain; mark canaries."""
    from gateway.anomaly.memory import MemorySource
    from gateway.anomaly.store import add_canaries
    from gateway.audit.chain import GENESIS, canonical_time
    from gateway.audit.writer import insert_rows

    chain_id = f"{chain}-{uuid.uuid4().hex[:8]}"
    prev, written = GENESIS, 0
    pending: list[tuple[Any, ...]] = []
    for seq, row in enumerate(MemorySource(requests).rows(), start=1):
        values = _row_values(row)
        head = hashlib.sha256(
            orjson.dumps([canonical_time(values[0]), *values[1:], chain_id, seq, prev])
        ).hexdigest()
        pending.append((*values, chain_id, seq, prev, head))
        prev = head
        if len(pending) >= batch:
            with engine.begin() as connection:
                insert_rows(connection, pending)
            written += len(pending)
            if progress is not None:
                progress(len(pending))
            pending = []
    if pending:
        with engine.begin() as connection:
            insert_rows(connection, pending)
        written += len(pending)
        if progress is not None:
            progress(len(pending))
    if canaries:
        add_canaries(
            engine,
            list(canaries),
            reason=f"simulated canary records ({chain})",
            actor="anomaly-simulate",
            created_at=canaries_since or datetime.now(UTC),
        )
    return written


def write_file(simulation: Simulation, path: str) -> int:
    """The rows as JSON lines (gzip-compressed when the name ends in .gz)."""
    from gateway.anomaly.memory import MemorySource

    opener: Any = gzip.open if path.endswith(".gz") else open
    written = 0
    with opener(path, "wb") as handle:
        for row in MemorySource(simulation.requests).rows():
            out = {**row, "time": _iso_micro(row.pop("ts"))}
            handle.write(orjson.dumps(out) + b"\n")
            written += 1
    return written


def _iso_micro(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
