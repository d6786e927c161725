"""`gateway audit verify`: recompute every hash chain and hold it against the signed checkpoints.

Rows are streamed in (chain_id, seq) order, so memory stays flat however long the log. For
each chain it checks, and names the first row where it fails:

- the first row starts from the genesis hash, or (after `gateway audit prune`) links to the
  head of a signed `prune` checkpoint at the seq just before it — else rows were deleted;
- sequence numbers are gapless (a gap: rows deleted) and unique (a duplicate: a row inserted);
- each row's prev_hash is the previous row's row_hash (a broken link: a row changed, moved
  or inserted) and its row_hash is the hash of its own content (else: the row was edited);
- every checkpoint's signature is valid, and the row at the checkpoint's seq has its
  head_hash (else: the chain was rewritten after the last matching checkpoint); a
  checkpoint past the chain's last row means the tail was deleted (truncation).

Rows after a chain's last seal are reported as its unsealed tail: they are hash-linked but no
signature vouches for them yet (a live writer seals every few seconds; a crashed one may
leave a short tail). Someone able to rewrite the database can delete the tail *and* the
checkpoints that vouch for it; `--anchor FILE` checks the log against checkpoints exported
off the box (`gateway audit checkpoint export`) to catch that too.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime
from heapq import merge
from itertools import islice
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Result, and_, func, select

from gateway.archive.catalogue import ArchiveEntry
from gateway.archive.check import check_archives
from gateway.archive.reader import files_connection, local_files
from gateway.audit.chain import GENESIS, HASHED_FIELDS, canonical_time
from gateway.audit.seal import CHECKPOINT_COLUMNS, PRUNE, SEAL, Checkpoint
from gateway.db.models import AccessEvent, AuditCheckpoint
from gateway.keys.registry import registered_keys
from gateway.keys.ring import KeyRing

# id, the hashed fields in order, row_hash: positions below are fixed by this tuple.
ROW_COLUMNS = (
    AccessEvent.id,
    *(getattr(AccessEvent, name) for name in HASHED_FIELDS),
    AccessEvent.row_hash,
)
_ID, _TIME, _CHAIN, _SEQ, _PREV, _HASH = 0, 1, 20, 21, 22, 23
_HASHED = slice(2, 23)  # request_id .. prev_hash: everything hashed after the time

MODIFIED = "modified"
DELETED = "deleted"
INSERTED = "inserted"
TRUNCATED = "truncated"
REWRITTEN = "rewritten"
BAD_CHECKPOINT = "bad_checkpoint"
ARCHIVE = "archive"


@dataclass
class Problem:
    kind: str
    chain_id: str
    seq: int | None
    row_id: int | None
    message: str

    def __str__(self) -> str:
        if self.kind == ARCHIVE:
            return f"archive {self.chain_id}: {self.message}"
        where = f"chain {self.chain_id}"
        if self.seq is not None:
            where += f" seq {self.seq}"
        if self.row_id is not None:
            where += f" (row id {self.row_id})"
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class VerifyReport:
    since: datetime | None = None
    chains: int = 0
    rows: int = 0
    checkpoints: int = 0
    sealed_rows: int = 0
    unsealed_rows: int = 0
    unsealed_chains: int = 0
    never_sealed_chains: int = 0
    pruned_chains: int = 0
    problem_count: int = 0
    problems: list[Problem] = field(default_factory=list)  # the first one of each chain
    archives: int = 0
    archived_rows: int = 0  # rows of the archives that passed their checks
    unlisted_archives: list[str] = field(default_factory=list)  # in the store, not listed
    # Where the public keys came from: pinned by the auditor, or the database's own.
    keys_pinned: bool = False
    keys_origin: str = ""

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["since"] = canonical_time(self.since) if self.since else None
        data["ok"] = self.ok
        return data


@dataclass
class _Chain:
    chain_id: str
    result: Result[Any]
    checkpoints: Iterator[Checkpoint]
    anchored_start: bool  # --since: the first row is trusted, its predecessors not checked
    pending: Checkpoint | None = None
    first_seq: int = 0
    last: Any = None  # the previous row
    rows: int = 0
    sealed_upto: int = 0
    sealed_ever: bool = False
    last_good_seq: int = 0
    first_after_good: tuple[int, int] | None = None
    problem: bool = False

    def take(self, upto: int) -> Iterator[Checkpoint]:
        """Checkpoints with seq <= upto, in order."""
        while True:
            if self.pending is None:
                self.pending = next(self.checkpoints, None)
                if self.pending is None:
                    return
            if self.pending.seq > upto:
                return
            checkpoint, self.pending = self.pending, None
            yield checkpoint


class Verifier:
    def __init__(
        self,
        engine: Engine,
        keys: KeyRing,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        chains: Iterable[str] | None = None,
        anchors: Iterable[Checkpoint] = (),
        archives: Sequence[ArchiveEntry] = (),
        batch: int = 5000,
        progress: Callable[[int], None] | None = None,
        max_problems: int = 1000,
    ) -> None:
        self._db = engine
        self._keys = keys
        self._since = since
        self._until = until
        self._archives = list(archives)
        self._chains = set(chains) if chains is not None else None
        self._anchors: dict[str, list[Checkpoint]] = defaultdict(list)
        for checkpoint in anchors:
            self._anchors[checkpoint.chain_id].append(checkpoint)
        for listed in self._anchors.values():
            listed.sort(key=lambda c: (c.seq, c.time))
        self._batch = batch
        self._progress = progress
        self._max_problems = max_problems
        self.report = VerifyReport(since=since)
        self._content_hash = ContentHash()
        self._seen_signatures: set[tuple[bytes, str, str]] = set()

    # --- reporting ---------------------------------------------------------------------

    def _problem(
        self, chain: _Chain | str, kind: str, seq: int | None, row_id: int | None, message: str
    ) -> None:
        self.report.problem_count += 1
        chain_id = chain if isinstance(chain, str) else chain.chain_id
        if isinstance(chain, _Chain):
            if chain.problem:
                return  # the first problem of a chain is the one worth reading
            chain.problem = True
        if len(self.report.problems) < self._max_problems:
            self.report.problems.append(Problem(kind, chain_id, seq, row_id, message))

    def archive_problem(self, name: str, message: str) -> None:
        self._problem(name, ARCHIVE, None, None, message)

    def _valid(self, chain: _Chain | str, checkpoint: Checkpoint) -> bool:
        key = (checkpoint.payload(), checkpoint.kid, checkpoint.signature)
        if key in self._seen_signatures:  # an anchor that is also in the database
            return True
        if not checkpoint.verify(self._keys.check):
            self._problem(
                chain,
                BAD_CHECKPOINT,
                checkpoint.seq,
                None,
                f"checkpoint {_describe(checkpoint)} has no valid signature "
                f"(kid {checkpoint.kid!r}); it vouches for nothing",
            )
            return False
        self._seen_signatures.add(key)
        self.report.checkpoints += 1
        return True

    # --- the run -----------------------------------------------------------------------

    def run(self) -> VerifyReport:
        seen: set[str] = set()
        # One connection, one snapshot for rows and checkpoints alike: a seal committed
        # while we read must not look like a truncated chain. (SQLite: statements of one
        # connection share the read transaction while the row cursor is open.)
        with ExitStack() as stack:
            db = stack.enter_context(self._db.connect())
            if db.dialect.name == "postgresql":
                db = db.execution_options(isolation_level="REPEATABLE READ")
            self._sources = [db]
            if self._archives:
                # Archived rows (checked by gateway.archive.check) join the stream in
                # chain order, so a chain is followed across the archive boundary.
                paths = local_files(self._archives)
                self._sources.append(stack.enter_context(files_connection(paths)))
            chain: _Chain | None = None
            for partition in self._row_batches():
                for row in partition:
                    if chain is None or row[_CHAIN] != chain.chain_id:
                        if chain is not None:
                            self._finish(chain)
                        chain = self._start(db, row)
                        seen.add(chain.chain_id)
                        self._first_row(chain, row)
                    else:
                        self._next_row(chain, row)
                    chain.rows += 1
                self.report.rows += len(partition)
                if self._progress is not None:
                    self._progress(len(partition))
            if chain is not None:
                self._finish(chain)
            for chain_id in sorted(self._checkpoint_chains(db) - seen):
                self._rowless_chain(db, chain_id)
        self.report.chains = len(seen)
        return self.report

    def _row_batches(self) -> Iterator[list[Any]]:
        results = [
            source.execution_options(stream_results=True, yield_per=self._batch).execute(
                self._row_query(source.dialect.name)
            )
            for source in self._sources
        ]
        if len(results) == 1:
            yield from results[0].partitions()
            return
        rows = merge(*results, key=lambda row: (row[_CHAIN], row[_SEQ], row[_ID]))
        while batch := list(islice(rows, self._batch)):
            yield batch

    def _row_query(self, dialect: str) -> Any:
        query = select(*ROW_COLUMNS)
        if self._until is not None:
            query = query.where(AccessEvent.time < self._until)
        if self._since is not None:
            # Per chain, from the row before the first one at or after --since.
            window = [AccessEvent.time >= self._since]
            if self._until is not None:  # else it would read the whole log after since
                window.append(AccessEvent.time < self._until)
            starts = (
                select(AccessEvent.chain_id, func.min(AccessEvent.seq).label("start"))
                .where(*window)
                .group_by(AccessEvent.chain_id)
                .subquery()
            )
            query = query.join(
                starts,
                and_(
                    AccessEvent.chain_id == starts.c.chain_id,
                    AccessEvent.seq >= starts.c.start - 1,
                ),
            )
        if self._chains is not None:
            query = query.where(AccessEvent.chain_id.in_(sorted(self._chains)))
        chain = AccessEvent.chain_id
        if self._archives and dialect == "postgresql":
            # Merged with DuckDB's stream, which orders text by code point: so must this,
            # whatever the database's collation.
            chain = chain.collate("C")  # type: ignore[assignment]
        return query.order_by(chain, AccessEvent.seq, AccessEvent.id)

    def _checkpoint_stream(
        self, connection: Connection, chain_id: str, from_seq: int
    ) -> tuple[Result[Any], Iterator[Checkpoint]]:
        query = (
            select(*CHECKPOINT_COLUMNS)
            .where(AuditCheckpoint.chain_id == chain_id, AuditCheckpoint.seq >= from_seq)
            .order_by(AuditCheckpoint.seq, AuditCheckpoint.id)
        )
        result = connection.execution_options(stream_results=True, yield_per=self._batch).execute(
            query
        )
        stored = (Checkpoint.from_row(row) for row in result)
        anchors = (c for c in self._anchors.get(chain_id, ()) if c.seq >= from_seq)
        return result, merge(stored, anchors, key=lambda c: c.seq)

    def _checkpoint_chains(self, connection: Connection) -> set[str]:
        query = select(AuditCheckpoint.chain_id).distinct()
        if self._since is not None:
            query = query.where(AuditCheckpoint.time >= self._since)
        if self._until is not None:
            return set()  # a bounded run (an archive's) checks the chains it has rows of
        chains = set(connection.execute(query).scalars())
        chains |= set(self._anchors)
        if self._chains is not None:
            chains &= self._chains
        return chains

    # --- per chain ---------------------------------------------------------------------

    def _start(self, connection: Connection, row: Any) -> _Chain:
        anchored = self._since is not None
        from_seq = row[_SEQ] if anchored else 0
        result, checkpoints = self._checkpoint_stream(connection, row[_CHAIN], from_seq)
        return _Chain(
            chain_id=row[_CHAIN],
            result=result,
            checkpoints=checkpoints,
            anchored_start=anchored,
            first_seq=row[_SEQ],
        )

    def _first_row(self, chain: _Chain, row: Any) -> None:
        seq = row[_SEQ]
        before = [c for c in chain.take(seq - 1) if self._valid(chain, c)]
        prune = max((c for c in before if c.kind == PRUNE), key=lambda c: c.seq, default=None)
        if not chain.anchored_start:
            pruned_upto = prune.seq if prune is not None else 0
            if seq == 1 and row[_PREV] != GENESIS:
                self._problem(
                    chain, MODIFIED, seq, row[_ID], "the first row does not start from genesis"
                )
            elif seq > 1 and prune is not None and prune.seq == seq - 1:
                if prune.head_hash != row[_PREV]:
                    self._problem(
                        chain,
                        MODIFIED,
                        seq,
                        row[_ID],
                        f"the first row after pruning does not link to the head of prune "
                        f"checkpoint {_describe(prune)}",
                    )
                self.report.pruned_chains += 1
            elif seq > 1:
                self._problem(
                    chain,
                    DELETED,
                    seq,
                    row[_ID],
                    f"rows {pruned_upto + 1}..{seq - 1} are missing "
                    "(the chain starts late and no prune checkpoint accounts for it)",
                )
            for checkpoint in before:
                if checkpoint.kind == SEAL and checkpoint.seq > pruned_upto:
                    self._problem(
                        chain,
                        DELETED,
                        checkpoint.seq,
                        None,
                        f"checkpoint {_describe(checkpoint)} vouches for seq "
                        f"{checkpoint.seq}, but the chain starts at seq {seq}",
                    )
                    break
            chain.sealed_upto = pruned_upto
            chain.last_good_seq = pruned_upto
        else:
            chain.sealed_upto = seq - 1
            chain.last_good_seq = seq - 1
        chain.first_after_good = (seq, row[_ID])
        if self._content_hash(row) != row[_HASH]:
            self._problem(
                chain, MODIFIED, seq, row[_ID], "the row's content does not match its row_hash"
            )
        chain.last = row
        self._checkpoints_at(chain, row)

    def _next_row(self, chain: _Chain, row: Any) -> None:
        last, seq = chain.last, row[_SEQ]
        if seq == last[_SEQ]:
            self._problem(
                chain,
                INSERTED,
                seq,
                row[_ID],
                f"a second row with seq {seq} (the first is row id {last[_ID]})",
            )
            return  # keep following the first one
        if seq > last[_SEQ] + 1:
            self._problem(
                chain,
                DELETED,
                seq,
                row[_ID],
                f"rows {last[_SEQ] + 1}..{seq - 1} are missing before this one",
            )
        elif row[_PREV] != last[_HASH]:
            if row[_PREV] == last[_PREV] and last[_SEQ] > chain.first_seq:
                self._problem(
                    chain,
                    INSERTED,
                    last[_SEQ],
                    last[_ID],
                    f"this row is not part of the chain: seq {seq} (row id {row[_ID]}) "
                    f"links past it to seq {last[_SEQ] - 1}",
                )
            else:
                self._problem(
                    chain,
                    MODIFIED,
                    seq,
                    row[_ID],
                    f"prev_hash does not match the row_hash of seq {last[_SEQ]} "
                    f"(row id {last[_ID]}): this row or that one was changed, moved or "
                    "inserted",
                )
        elif self._content_hash(row) != row[_HASH]:
            self._problem(
                chain, MODIFIED, seq, row[_ID], "the row's content does not match its row_hash"
            )
        if chain.first_after_good is None:
            chain.first_after_good = (seq, row[_ID])
        chain.last = row
        self._checkpoints_at(chain, row)

    def _checkpoints_at(self, chain: _Chain, row: Any) -> None:
        seq = row[_SEQ]
        for checkpoint in chain.take(seq):
            if not self._valid(chain, checkpoint) or checkpoint.seq < seq:
                continue  # below: vouches for rows already reported missing
            if checkpoint.kind == PRUNE:
                self._problem(
                    chain,
                    INSERTED,
                    seq,
                    row[_ID],
                    f"prune checkpoint {_describe(checkpoint)} says this row was removed",
                )
            elif checkpoint.head_hash == row[_HASH]:
                chain.sealed_upto = seq
                chain.sealed_ever = True
                chain.last_good_seq = seq
                chain.first_after_good = None
            else:
                first = chain.first_after_good or (seq, row[_ID])
                self._problem(
                    chain,
                    REWRITTEN,
                    first[0],
                    first[1],
                    f"checkpoint {_describe(checkpoint)} vouches for seq {seq} with head "
                    f"{checkpoint.head_hash[:16]}…, but that row hashes to "
                    f"{row[_HASH][:16]}…: rows after seq {chain.last_good_seq} were rewritten",
                )

    def _finish(self, chain: _Chain) -> None:
        last = chain.last
        # A run bounded by `until` stops before the chain's end: later checkpoints vouch
        # for rows it did not read.
        upto = last[_SEQ] if self._until is not None else 2**63 - 1
        for checkpoint in chain.take(upto):
            if not self._valid(chain, checkpoint):
                continue
            self._problem(
                chain,
                TRUNCATED,
                last[_SEQ] + 1,
                None,
                f"the chain ends at seq {last[_SEQ]} (row id {last[_ID]}), but checkpoint "
                f"{_describe(checkpoint)} vouches for seq {checkpoint.seq}: the tail was "
                "deleted",
            )
            break
        chain.result.close()
        unsealed = max(0, last[_SEQ] - chain.sealed_upto)
        self.report.unsealed_rows += unsealed
        self.report.sealed_rows += max(0, chain.rows - unsealed)
        if unsealed:
            self.report.unsealed_chains += 1
            if not chain.sealed_ever and not chain.anchored_start:
                self.report.never_sealed_chains += 1

    def _rowless_chain(self, db: Connection, chain_id: str) -> None:
        """A chain known from checkpoints that has no rows (in scope): fully pruned, or out
        of the --since window, or deleted."""
        query = (
            select(*CHECKPOINT_COLUMNS)
            .where(AuditCheckpoint.chain_id == chain_id)
            .order_by(AuditCheckpoint.seq.desc(), AuditCheckpoint.id.desc())
        )
        result = db.execution_options(stream_results=True, yield_per=100).execute(query)
        stored = (Checkpoint.from_row(row) for row in result)
        anchors = reversed(self._anchors.get(chain_id, []))
        top_seal: Checkpoint | None = None
        top_prune = 0
        for checkpoint in merge(stored, anchors, key=lambda c: -c.seq):
            if not self._valid(chain_id, checkpoint):
                result.close()
                return
            if checkpoint.kind == PRUNE:
                top_prune = max(top_prune, checkpoint.seq)
            else:  # the highest seal; any prune above it came first
                top_seal = checkpoint
                break
        result.close()
        if top_seal is None or top_seal.seq <= top_prune:
            return  # fully pruned
        lookup = select(AccessEvent.id, AccessEvent.row_hash).where(
            AccessEvent.chain_id == chain_id, AccessEvent.seq == top_seal.seq
        )
        head = None
        for source in self._sources:
            head = source.execute(lookup).first()
            if head is not None:
                break
        if head is None:
            self._problem(
                chain_id,
                TRUNCATED,
                top_seal.seq,
                None,
                f"checkpoint {_describe(top_seal)} vouches for seq {top_seal.seq}, but the "
                "row is missing: the chain's rows were deleted",
            )
        elif head.row_hash != top_seal.head_hash:
            self._problem(
                chain_id,
                REWRITTEN,
                top_seal.seq,
                head.id,
                f"checkpoint {_describe(top_seal)} does not match the row at seq {top_seal.seq}",
            )


class ContentHash:
    """row -> the hash of its content; consecutive rows of one request share their time,
    so the canonical text of the last time seen is kept (strftime is most of the cost)."""

    def __init__(self) -> None:
        self._time: Any = None
        self._text = ""

    def __call__(self, row: Any) -> str:
        stamp = row[_TIME]
        if stamp != self._time:  # equal instants have equal canonical text
            self._time, self._text = stamp, canonical_time(stamp)
        return hashlib.sha256(orjson.dumps([self._text, *row[_HASHED]])).hexdigest()


def _describe(checkpoint: Checkpoint) -> str:
    where = f"#{checkpoint.id}" if checkpoint.id is not None else "(anchor file)"
    return f"{where} ({checkpoint.kind}, {checkpoint.time_text})"


def verify_log(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    chains: Iterable[str] | None = None,
    anchors: Iterable[Checkpoint] = (),
    progress: Callable[[int], None] | None = None,
    keys: KeyRing | None = None,
    archives: Sequence[ArchiveEntry] | None = None,
) -> VerifyReport:
    """Every chain of the log, the database's rows and the archives' alike, and every
    archive against its signed manifest (`gateway.archive.check`). `until` bounds the walk
    (an archive run's check of one partition); `archives` names the ones to read instead
    of those overlapping the window."""
    if keys is None:
        keys = KeyRing.from_registered(registered_keys(engine))
    archives_checked = check_archives(engine, keys.check, since=since, until=until, only=archives)
    verifier = Verifier(
        engine,
        keys,
        since=since,
        until=until,
        chains=chains,
        anchors=anchors,
        archives=archives_checked.intact,
        progress=progress,
    )
    for name, message in archives_checked.problems:
        verifier.archive_problem(name, message)
    report = verifier.run()
    report.archives = len(archives_checked.intact) + len(archives_checked.problems)
    report.archived_rows = archives_checked.rows
    report.unlisted_archives = archives_checked.unlisted
    report.keys_pinned, report.keys_origin = keys.pinned, keys.origin
    return report
