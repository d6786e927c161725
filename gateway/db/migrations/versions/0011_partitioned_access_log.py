"""PostgreSQL: the access log partitioned by day (declarative range partitioning on `time`).

The existing table becomes the partition `access_log_legacy`, holding every row before
the first day boundary after its newest row (no row is copied or rewritten, so every
chain and checkpoint verifies as before; an empty table is dropped instead, so a new
install has a partition for every day, past days of an import included). Daily
partitions `access_log_pYYYYMMDD` follow (UTC days), created ahead of time by
`gateway_access_log_partition(day)`, which `gateway audit partitions ensure` and the
gateway's maintenance thread call; `access_log_default`
catches a row no daily partition covers yet, and the function moves such rows into the
day's partition when it creates it. Every partition gets the append-only trigger and the
runtime role's INSERT/SELECT, as the table had.

What partitioning changes: the primary key is (id, time) and the chain index is unique on
(chain_id, seq, time) (a partitioned table's unique indexes must contain the partition
key); `gateway audit verify` still finds a duplicated or missing sequence number, as it
always has. On a large log, build the legacy partition's new key beforehand, without
holding the writer off: `CREATE UNIQUE INDEX CONCURRENTLY access_log_id_time ON
access_log (id, time)` (the migration uses an index of that name if it exists).

SQLite keeps one table.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

DAYS_AHEAD = 7
VENDOR_INCLUDE = "decision, project, task, record_id, issuer, subject"
AUTOVACUUM = (
    "autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_vacuum_insert_threshold = 100000"
)
# (name, columns) of the table's indexes; the unique chain index gains the partition key.
INDEXES = (
    ("ix_access_log_time", "time", ""),
    ("ix_access_log_vendor_time", "vendor, time", f" INCLUDE ({VENDOR_INCLUDE})"),
    ("ix_access_log_project_time", "project, time", ""),
    ("ix_access_log_subject_time", "subject, time", ""),
    ("ix_access_log_record", "record_id", ""),
    ("ix_access_log_request", "request_id", ""),
)

# One partition's guard and grants, used for the default and every daily partition.
GUARD_FUNCTION = """
CREATE OR REPLACE FUNCTION gateway_access_log_guard(part text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TRIGGER %I BEFORE UPDATE OR DELETE OR TRUNCATE ON %I '
        'FOR EACH STATEMENT EXECUTE FUNCTION gateway_audit_append_only()',
        part || '_append_only', part);
    IF current_setting('server_version_num')::int >= 130000 THEN
        EXECUTE format('ALTER TABLE %I SET (autovacuum_vacuum_insert_scale_factor = 0.01, '
                       'autovacuum_vacuum_insert_threshold = 100000)', part);
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gateway_runtime') THEN
        BEGIN
            EXECUTE format('GRANT SELECT, INSERT ON %I TO gateway_runtime', part);
            EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %I FROM gateway_runtime', part);
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'may not grant on % to gateway_runtime', part;
        END;
    END IF;
END
$$
"""

# The day's partition (UTC), unless it exists; rows the default partition caught for
# that day move into it. Returns the partition's name, or NULL when it already existed.
PARTITION_FUNCTION = """
CREATE OR REPLACE FUNCTION gateway_access_log_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'access_log_p' || to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    moved bigint := 0;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_inherits i
               ON i.inhrelid = c.oid
               WHERE i.inhparent = 'access_log'::regclass AND c.relname = part) THEN
        RETURN NULL;
    END IF;
    -- One maker at a time (instances, the CLI): the second finds the partition made.
    PERFORM pg_advisory_xact_lock(hashtext('gateway_access_log_partition'));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE %I (LIKE access_log INCLUDING DEFAULTS)', part);
        IF to_regclass('access_log_default') IS NOT NULL THEN
            -- Writers wait for the move; rows keep every value, so their chains verify.
            LOCK TABLE access_log_default IN SHARE ROW EXCLUSIVE MODE;
            EXECUTE format(
                'INSERT INTO %I SELECT * FROM access_log_default'
                ' WHERE time >= $1 AND time < $2', part) USING low, high;
            GET DIAGNOSTICS moved = ROW_COUNT;
            IF moved > 0 THEN
                PERFORM set_config('gateway.prune', 'on', true);
                DELETE FROM access_log_default WHERE time >= low AND time < high;
                PERFORM set_config('gateway.prune', 'off', true);
            END IF;
        END IF;
        EXECUTE format(
            'ALTER TABLE access_log ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            part, low, high);
    EXCEPTION
        WHEN invalid_object_definition THEN
            -- The day lies in another partition's range (the legacy one): nothing to
            -- make, and everything above is undone.
            RETURN NULL;
    END;
    PERFORM gateway_access_log_guard(part);
    RETURN part;
END
$$
"""


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _scalar(sql: str) -> object:
    return op.get_bind().execute(sa.text(sql)).scalar()


def upgrade() -> None:
    if not _postgres():
        return
    newest = _scalar("SELECT max(time) FROM access_log")
    today = datetime.now(UTC).date()
    # An empty log (a new install) keeps no legacy partition: every day, past ones
    # included (an import), can then have its own.
    empty = not isinstance(newest, datetime)
    last = today - timedelta(days=1) if empty else max(today, newest.astimezone(UTC).date())
    boundary = last + timedelta(days=1)
    low = f"{boundary.isoformat()} 00:00:00+00"

    op.execute("ALTER TABLE access_log RENAME TO access_log_legacy")
    op.execute("ALTER INDEX ux_access_log_chain_seq RENAME TO access_log_legacy_chain_seq")
    op.execute(
        "ALTER TABLE access_log_legacy RENAME CONSTRAINT access_log_pkey TO access_log_legacy_pkey"
    )
    if _scalar("SELECT to_regclass('access_log_id_time')") is None:
        op.execute("CREATE UNIQUE INDEX access_log_id_time ON access_log_legacy (id, time)")
    for name, _, _ in INDEXES:
        op.execute(
            f"ALTER INDEX {name} RENAME TO {name.replace('access_log', 'access_log_legacy')}"
        )
    renamed = "access_log_legacy_append_only"
    op.execute(f"ALTER TRIGGER access_log_append_only ON access_log_legacy RENAME TO {renamed}")

    op.execute(
        "CREATE TABLE access_log (LIKE access_log_legacy INCLUDING DEFAULTS) "
        "PARTITION BY RANGE (time)"
    )
    op.execute("ALTER SEQUENCE access_log_id_seq OWNED BY access_log.id")
    op.execute("ALTER TABLE access_log ADD CONSTRAINT access_log_pkey PRIMARY KEY (id, time)")
    for name, columns, include in INDEXES:
        op.execute(f"CREATE INDEX {name} ON access_log ({columns}){include}")
    op.execute("CREATE UNIQUE INDEX ux_access_log_chain_seq ON access_log (chain_id, seq, time)")
    op.execute(
        "CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON access_log FOR EACH STATEMENT EXECUTE FUNCTION gateway_audit_append_only()"
    )
    if empty:
        op.execute("DROP TABLE access_log_legacy")
    else:
        # The parent's keys replace the old table's (a partition has one primary key).
        op.execute("ALTER TABLE access_log_legacy DROP CONSTRAINT access_log_legacy_pkey")
        op.execute("DROP INDEX access_log_legacy_chain_seq")
        # The old table's indexes match the new ones and are attached, not rebuilt (the
        # chain index excepted: it gains `time`).
        op.execute(
            "ALTER TABLE access_log ATTACH PARTITION access_log_legacy "
            f"FOR VALUES FROM (MINVALUE) TO ('{low}')"
        )
    op.execute(GUARD_FUNCTION)
    op.execute(PARTITION_FUNCTION)
    op.execute("CREATE TABLE access_log_default PARTITION OF access_log DEFAULT")
    op.execute("SELECT gateway_access_log_guard('access_log_default')")
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gateway_runtime') THEN
                BEGIN
                    GRANT SELECT, INSERT ON access_log TO gateway_runtime;
                EXCEPTION
                    WHEN insufficient_privilege THEN
                        RAISE NOTICE 'may not grant on access_log to gateway_runtime';
                END;
            END IF;
        END
        $$
        """
    )
    for offset in range(DAYS_AHEAD + 1):
        day: date = boundary + timedelta(days=offset)
        op.execute(f"SELECT gateway_access_log_partition(DATE '{day.isoformat()}')")


def downgrade() -> None:
    if not _postgres():
        return
    # Back to one table: the rows are copied as they are (chains stay verifiable).
    op.execute("ALTER TABLE access_log RENAME TO access_log_partitioned")
    op.execute("CREATE TABLE access_log (LIKE access_log_partitioned INCLUDING DEFAULTS)")
    op.execute("ALTER SEQUENCE access_log_id_seq OWNED BY access_log.id")
    op.execute("INSERT INTO access_log SELECT * FROM access_log_partitioned")
    op.execute("ALTER TABLE access_log ADD PRIMARY KEY (id)")
    op.execute("SET LOCAL gateway.prune = 'on'")
    op.execute("DROP TABLE access_log_partitioned CASCADE")
    op.execute("DROP FUNCTION IF EXISTS gateway_access_log_partition(date)")
    op.execute("DROP FUNCTION IF EXISTS gateway_access_log_guard(text)")
    for name, columns, include in INDEXES:
        op.execute(f"CREATE INDEX {name} ON access_log ({columns}){include}")
    op.execute("CREATE UNIQUE INDEX ux_access_log_chain_seq ON access_log (chain_id, seq)")
    op.execute(
        "CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON access_log FOR EACH STATEMENT EXECUTE FUNCTION gateway_audit_append_only()"
    )
    op.execute(f"ALTER TABLE access_log SET ({AUTOVACUUM})")
