"""Signed checkpoints of hash-chain heads (docs/DESIGN.md §6, tamper evidence).

A checkpoint says "chain C had, at time T, exactly the rows 1..N and the last of them hashes
to H", signed with the gateway's Ed25519 key. Two kinds:

- `seal`: written by each audit writer for its own chain every `checkpoint_interval_seconds`,
  also when nothing was written since the last one (same head, new time: proof that nothing
  was added). A chain whose writer died keeps its last seal.
- `prune`: written by `gateway audit prune` for the last row it removes from a chain; the
  first remaining row of that chain must link to its head.

The signature covers a canonical JSON text (sorted keys, no spaces) of the fields below,
including a `type` that keeps it from being mistaken for anything else the same key signs
(identity assertions, manifests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, delete, func, insert, select, text

from gateway.audit.chain import canonical_time
from gateway.db.models import AccessEvent, AuditCheckpoint

CHECKPOINT_TYPE = "gateway.audit.checkpoint.v1"
SEAL = "seal"
PRUNE = "prune"
KINDS = (SEAL, PRUNE)

# (data) -> (kid, base64url signature): GatewayKeys.sign_detached
Signer = Callable[[bytes], tuple[str, str]]
# (kid, data, signature, signed time) -> valid? (KeyRing.check)
SignatureCheck = Callable[[str, bytes, str, datetime], bool]


def checkpoint_payload(kind: str, chain_id: str, seq: int, head_hash: str, time_text: str) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    return orjson.dumps(
        {
            "chain_id": chain_id,
            "head_hash": head_hash,
            "kind": kind,
            "seq": seq,
            "time": time_text,
            "type": CHECKPOINT_TYPE,
        },
        option=orjson.OPT_SORT_KEYS,
    )


@dataclass(frozen=True)
class Checkpoint:
    kind: str
    chain_id: str
    seq: int
    head_hash: str
    time: datetime
    kid: str
    signature: str
    id: int | None = None

    @property
    def time_text(self) -> str:
        return canonical_time(self.time)

    def payload(self) -> bytes:
        return checkpoint_payload(
            self.kind, self.chain_id, self.seq, self.head_hash, self.time_text
        )

    def verify(self, check: SignatureCheck) -> bool:
        return self.kind in KINDS and check(self.kid, self.payload(), self.signature, self.time)

    def as_json(self) -> dict[str, Any]:
        """The export form (one JSON line each): everything needed to check it off-box."""
        return {
            "type": CHECKPOINT_TYPE,
            "id": self.id,
            "kind": self.kind,
            "chain_id": self.chain_id,
            "seq": self.seq,
            "head_hash": self.head_hash,
            "time": self.time_text,
            "kid": self.kid,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        if data.get("type") != CHECKPOINT_TYPE:
            raise ValueError(f"not a checkpoint (type {data.get('type')!r})")
        time_text = str(data["time"])
        return cls(
            kind=str(data["kind"]),
            chain_id=str(data["chain_id"]),
            seq=int(data["seq"]),
            head_hash=str(data["head_hash"]),
            time=datetime.strptime(time_text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
            kid=str(data["kid"]),
            signature=str(data["signature"]),
            id=data.get("id"),
        )

    @classmethod
    def from_row(cls, row: Any) -> Checkpoint:
        mapping = row._mapping
        return cls(
            kind=mapping["kind"],
            chain_id=mapping["chain_id"],
            seq=mapping["seq"],
            head_hash=mapping["head_hash"],
            time=mapping["time"],
            kid=mapping["kid"],
            signature=mapping["signature"],
            id=mapping["id"],
        )


def make_checkpoint(
    sign: Signer,
    *,
    kind: str,
    chain_id: str,
    seq: int,
    head_hash: str,
    time: datetime | None = None,
) -> Checkpoint:
    # Microsecond UTC, as it will read back from the database and as the payload says.
    when = (time or datetime.now(UTC)).astimezone(UTC)
    time_text = canonical_time(when)
    kid, signature = sign(checkpoint_payload(kind, chain_id, seq, head_hash, time_text))
    return Checkpoint(kind, chain_id, seq, head_hash, when, kid, signature)


def store_checkpoint(connection: Connection, checkpoint: Checkpoint) -> int:
    result = connection.execute(
        insert(AuditCheckpoint)
        .values(
            time=checkpoint.time,
            kind=checkpoint.kind,
            chain_id=checkpoint.chain_id,
            seq=checkpoint.seq,
            head_hash=checkpoint.head_hash,
            kid=checkpoint.kid,
            signature=checkpoint.signature,
        )
        .returning(AuditCheckpoint.id)
    )
    return int(result.scalar_one())


CHECKPOINT_COLUMNS = (
    AuditCheckpoint.id,
    AuditCheckpoint.time,
    AuditCheckpoint.kind,
    AuditCheckpoint.chain_id,
    AuditCheckpoint.seq,
    AuditCheckpoint.head_hash,
    AuditCheckpoint.kid,
    AuditCheckpoint.signature,
)


def iter_checkpoints(
    connection: Connection, *, since: datetime | None = None, batch: int = 2000
) -> Iterator[Checkpoint]:
    """Every checkpoint (from `since` on), oldest first, streamed."""
    query = select(*CHECKPOINT_COLUMNS).order_by(AuditCheckpoint.time, AuditCheckpoint.id)
    if since is not None:
        query = query.where(AuditCheckpoint.time >= since)
    result = connection.execution_options(stream_results=True, yield_per=batch).execute(query)
    for row in result:
        yield Checkpoint.from_row(row)


def checkpoint_lines(checkpoints: Iterator[Checkpoint]) -> Iterator[bytes]:
    for checkpoint in checkpoints:
        yield orjson.dumps(checkpoint.as_json()) + b"\n"


# --- retention -------------------------------------------------------------------------


@dataclass(frozen=True)
class PrunePlan:
    """Rows first_seq..upto_seq of one chain: all of its rows older than the cutoff that
    come before its first newer row (a chain is only ever cut at the front)."""

    chain_id: str
    first_seq: int
    upto_seq: int
    rows: int
    oldest: datetime
    newest: datetime


def plan_prune(engine: Engine, before: datetime) -> list[PrunePlan]:
    with engine.connect() as connection:
        old = connection.execute(
            select(AccessEvent.chain_id, func.min(AccessEvent.seq), func.max(AccessEvent.seq))
            .where(AccessEvent.time < before)
            .group_by(AccessEvent.chain_id)
        ).all()
        plans = []
        for chain_id, first_seq, last_old_seq in old:
            keep_from = connection.execute(
                select(func.min(AccessEvent.seq)).where(
                    AccessEvent.chain_id == chain_id, AccessEvent.time >= before
                )
            ).scalar()
            upto = last_old_seq if keep_from is None else keep_from - 1
            if upto < first_seq:
                continue
            rows, oldest, newest = connection.execute(
                select(func.count(), func.min(AccessEvent.time), func.max(AccessEvent.time)).where(
                    AccessEvent.chain_id == chain_id, AccessEvent.seq <= upto
                )
            ).one()
            plans.append(PrunePlan(chain_id, first_seq, upto, rows, oldest, newest))
    return sorted(plans, key=lambda plan: plan.chain_id)


def prune_checkpoints(
    engine: Engine, plans: list[PrunePlan], sign: Signer, *, batch_rows: int = 50_000
) -> list[Checkpoint]:
    """The signed prune checkpoints, one per `batch_rows` rows of each chain (so that each
    delete transaction stays short and the log verifies after any one of them)."""
    checkpoints = []
    with engine.connect() as connection:
        for plan in plans:
            ends = list(range(plan.first_seq + batch_rows - 1, plan.upto_seq, batch_rows))
            for end in [*ends, plan.upto_seq]:
                head = connection.execute(
                    select(AccessEvent.row_hash).where(
                        AccessEvent.chain_id == plan.chain_id, AccessEvent.seq == end
                    )
                ).scalar()
                if head is None:
                    raise RuntimeError(f"chain {plan.chain_id} has no row at seq {end}")
                checkpoints.append(
                    make_checkpoint(
                        sign, kind=PRUNE, chain_id=plan.chain_id, seq=end, head_hash=head
                    )
                )
    return checkpoints


def pruned_range_checkpoints(engine: Engine, plans: list[PrunePlan]) -> Iterator[Checkpoint]:
    """The stored checkpoints that vouch for rows about to be pruned (exported first)."""
    with engine.connect() as connection:
        for plan in plans:
            result = connection.execution_options(stream_results=True, yield_per=2000).execute(
                select(*CHECKPOINT_COLUMNS)
                .where(
                    AuditCheckpoint.chain_id == plan.chain_id,
                    AuditCheckpoint.seq <= plan.upto_seq,
                )
                .order_by(AuditCheckpoint.seq, AuditCheckpoint.id)
            )
            for row in result:
                yield Checkpoint.from_row(row)


def apply_prune(
    engine: Engine,
    checkpoints: list[Checkpoint],
    on_batch: Callable[[Checkpoint, int], None] | None = None,
) -> int:
    """For each prune checkpoint, in one transaction: store it, delete the chain's rows up
    to its seq and the checkpoints it supersedes. Returns the number of rows deleted."""
    deleted = 0
    for checkpoint in checkpoints:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # The append-only trigger lets DELETE through only with this set.
                connection.execute(text("SET LOCAL gateway.prune = 'on'"))
            checkpoint_id = store_checkpoint(connection, checkpoint)
            rows = connection.execute(
                delete(AccessEvent).where(
                    AccessEvent.chain_id == checkpoint.chain_id,
                    AccessEvent.seq <= checkpoint.seq,
                )
            ).rowcount
            connection.execute(
                delete(AuditCheckpoint).where(
                    AuditCheckpoint.chain_id == checkpoint.chain_id,
                    AuditCheckpoint.seq <= checkpoint.seq,
                    AuditCheckpoint.id != checkpoint_id,
                )
            )
        deleted += rows
        if on_batch is not None:
            on_batch(checkpoint, rows)
    return deleted
