"""SQLAlchemy 2 typed models of everything the gateway stores."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class CasbinRule(Base):
    """The rule table in the shape `sqlalchemy-adapter` reads and writes."""

    __tablename__ = "casbin_rule"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ptype: Mapped[str | None] = mapped_column(String(255))
    v0: Mapped[str | None] = mapped_column(String(255))
    v1: Mapped[str | None] = mapped_column(String(255), index=True)
    v2: Mapped[str | None] = mapped_column(String(255))
    v3: Mapped[str | None] = mapped_column(String(255))
    v4: Mapped[str | None] = mapped_column(String(255))
    v5: Mapped[str | None] = mapped_column(String(255))

    def __str__(self) -> str:
        # sqlalchemy-adapter loads each row by parsing this text as a Casbin CSV line.
        values = (self.v0, self.v1, self.v2, self.v3, self.v4, self.v5)
        return ", ".join([self.ptype or "", *(v for v in values if v is not None)])


class PolicyVersion(Base):
    """One row per committed policy change; the highest id is the version in force."""

    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text, default="")
    # {"added": [csv lines], "removed": [csv lines]}: versions replay from these.
    diff: Mapped[str] = mapped_column(Text, default="{}")


class AdminEvent(Base):
    """Every admin action: who, when, what it changed (before/after as JSON) and why."""

    __tablename__ = "admin_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(512), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    before: Mapped[str] = mapped_column(Text, default="null")
    after: Mapped[str] = mapped_column(Text, default="null")
    policy_version: Mapped[int | None] = mapped_column(Integer)


class SigningKey(Base):
    """A public key of the gateway (its private half lives in a file or a KMS, never
    here): what assertions, checkpoints and manifests are checked against, valid from
    `not_before` until `not_after` (open while it is the current key)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_jwk: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # "file", "signer" (a plugged-in signer) or "database" (retired by migration 0008)
    source: Mapped[str] = mapped_column(String(16))


class AccessEvent(Base):
    """One row per released record and one per denial (docs/DESIGN.md §6)."""

    __tablename__ = "access_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str | None] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(String(255))
    vendor: Mapped[str | None] = mapped_column(String(255))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(2048))
    project: Mapped[str | None] = mapped_column(String(255))
    task: Mapped[str | None] = mapped_column(String(255))
    record_id: Mapped[str | None] = mapped_column(String(255))
    record_sha256: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(255))
    policy_version: Mapped[int | None] = mapped_column(Integer)
    upstream_status: Mapped[int | None] = mapped_column(Integer)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Tamper evidence: each writer keeps a gapless hash chain of its own rows.
    chain_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_access_log_time", "time"),
        # Covering on PostgreSQL (migration 0005): a vendor exposure report reads the index only.
        Index(
            "ix_access_log_vendor_time",
            "vendor",
            "time",
            postgresql_include=["decision", "project", "task", "record_id", "issuer", "subject"],
        ),
        Index("ix_access_log_project_time", "project", "time"),
        Index("ix_access_log_subject_time", "subject", "time"),
        Index("ix_access_log_record", "record_id"),
        Index("ix_access_log_request", "request_id"),
        Index("ux_access_log_chain_seq", "chain_id", "seq", unique=True),
    )


class Lock(Base):
    """A kill-switch lock on a vendor, contractor, issuer or project. Never deleted."""

    __tablename__ = "locks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lifted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lifted_by: Mapped[str | None] = mapped_column(String(255))
    lift_reason: Mapped[str | None] = mapped_column(Text)
    # What the locked vendor's people received recently, captured when the lock was made.
    exposure: Mapped[str] = mapped_column(Text, default="null")

    __table_args__ = (Index("ix_locks_active", "lifted_at", "kind", "target"),)


class AuditCheckpoint(Base):
    """A signed statement of one hash chain's head: `seal` (the writer, every interval, also
    when idle) or `prune` (the last row of a chain removed by `gateway audit prune`)."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(16))
    chain_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    kid: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_audit_checkpoints_chain_seq", "chain_id", "seq"),
        Index("ix_audit_checkpoints_time", "time"),
    )


class AuditArchive(Base):
    """One archived partition of the access log (`gateway audit archive`): where its Parquet
    file lies, its SHA-256, and the signed manifest that vouches for it (gateway/archive)."""

    __tablename__ = "audit_archives"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The partition's range; readers open the archives overlapping their window.
    time_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    time_to: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rows: Mapped[int] = mapped_column(BigInteger)
    file_key: Mapped[str] = mapped_column(String(512))
    file_sha256: Mapped[str] = mapped_column(String(64))
    file_bytes: Mapped[int] = mapped_column(BigInteger)
    manifest_key: Mapped[str] = mapped_column(String(512))
    # The signed manifest's exact bytes (also in the store beside the file).
    manifest: Mapped[str] = mapped_column(Text)
    kid: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))

    __table_args__ = (Index("ix_audit_archives_time", "time_from", "time_to"),)


# --- anomaly review (gateway/anomaly) ----------------------------------------------------

from sqlalchemy import Float  # noqa: E402 - appended with the anomaly models


class AnomalyAlert(Base):
    """A detector's finding for an auditor to review; one per detector+contractor+window."""

    __tablename__ = "anomaly_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # detector:contractor:window — a rescan updates the alert instead of adding one.
    dedup_key: Mapped[str] = mapped_column(String(512), unique=True)
    detector: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    # `<issuer>:<sub>`, or `ip:<address>` for unauthenticated traffic.
    contractor: Mapped[str] = mapped_column(String(512))
    issuer: Mapped[str | None] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(String(255))
    vendor: Mapped[str | None] = mapped_column(String(255))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    project: Mapped[str | None] = mapped_column(String(255))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    score: Mapped[float] = mapped_column(Float)
    explanation: Mapped[str] = mapped_column(Text)
    evidence: Mapped[str] = mapped_column(Text, default="{}")  # JSON: row ids, request ids
    status: Mapped[str] = mapped_column(String(20), default="open")
    assignee: Mapped[str | None] = mapped_column(String(255))
    notes: Mapped[str] = mapped_column(Text, default="")
    lock_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_anomaly_alerts_status", "status", "detected_at"),
        Index("ix_anomaly_alerts_contractor", "contractor", "detected_at"),
        Index("ix_anomaly_alerts_detected", "detected_at"),
    )


class CanaryRecord(Base):
    """A record an admin marks as never to be fetched: any access to it is an alert."""

    __tablename__ = "canary_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[str] = mapped_column(String(255), unique=True)
    project: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AnomalyHourly(Base):
    """Per contractor-hour counts of the access log (a rollup the scans keep fresh)."""

    __tablename__ = "anomaly_hourly"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    hour: Mapped[int] = mapped_column(BigInteger)  # hours since the epoch, UTC
    issuer: Mapped[str | None] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(String(255))
    vendor: Mapped[str | None] = mapped_column(String(255))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    project: Mapped[str | None] = mapped_column(String(255))
    task: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    lock_reason: Mapped[str] = mapped_column(String(255), default="")
    rows: Mapped[int] = mapped_column(BigInteger)
    requests: Mapped[int] = mapped_column(BigInteger)
    first_ts: Mapped[float] = mapped_column(Float)
    last_ts: Mapped[float] = mapped_column(Float)
    first_id: Mapped[int] = mapped_column(BigInteger)
    last_id: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_anomaly_hourly_hour", "hour"),
        Index("ix_anomaly_hourly_vendor_hour", "vendor", "hour"),
    )


class AnomalyState(Base):
    """Small key/value state of the scans: rollup coverage, last scan."""

    __tablename__ = "anomaly_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --- the record catalogue (gateway/catalogue) ---------------------------------------------


class CatalogueRecord(Base):
    """Where a record really belongs, per upstream and kind (task, annotation, media...)."""

    __tablename__ = "catalogue_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    upstream: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    record_id: Mapped[str] = mapped_column(String(1024))
    project: Mapped[str] = mapped_column(String(255))
    task: Mapped[str | None] = mapped_column(String(255))
    # sync | import | learn
    source: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The sync run that last saw it: a completed walk deletes what it did not see.
    seen_run: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ux_catalogue_records_id", "upstream", "kind", "record_id", unique=True),
        Index("ix_catalogue_records_project", "upstream", "project", "task"),
    )


class CatalogueKind(Base):
    """One row per upstream and kind: its version (bumped when entries move or go, which
    workers watch to drop cached placements) and its size after the last sync or import."""

    __tablename__ = "catalogue_kinds"

    upstream: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    records: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CatalogueRun(Base):
    """A `gateway catalogue sync` or import: its scope, progress (to resume) and outcome."""

    __tablename__ = "catalogue_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upstream: Mapped[str] = mapped_column(String(64))
    command: Mapped[str] = mapped_column(String(16))  # sync | import
    actor: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # running | done | failed
    status: Mapped[str] = mapped_column(String(16))
    # JSON: the projects and kinds it covers, and per (kind, project) where it got to.
    scope: Mapped[str] = mapped_column(Text, default="{}")
    progress: Mapped[str] = mapped_column(Text, default="{}")
    seen: Mapped[int] = mapped_column(BigInteger, default=0)
    added: Mapped[int] = mapped_column(BigInteger, default=0)
    moved: Mapped[int] = mapped_column(BigInteger, default=0)
    gone: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class ConsoleSession(Base):
    """A browser session of the console: the cookie's opaque id is stored only hashed."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # `<issuer name>:<sub>` once signed in; None during the login round trip.
    subject: Mapped[str | None] = mapped_column(String(512), index=True)
    data: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(String(64))


class LiftRequest(Base):
    """A request to lift a lock that needs a second admin (vendor and issuer locks)."""

    __tablename__ = "lift_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lock_id: Mapped[int] = mapped_column(Integer, index=True)
    requested_by: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    approved_by: Mapped[str | None] = mapped_column(String(255))
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
