"""Tamper evidence: signed chain checkpoints; on PostgreSQL an append-only access log.

On PostgreSQL this also creates the NOLOGIN role `gateway_runtime` (if missing and if we
may) with INSERT/SELECT but no UPDATE/DELETE on the access log and the checkpoints. Run
the gateway as a login role that is a member of it (`CREATE ROLE gateway LOGIN PASSWORD
'…' IN ROLE gateway_runtime`) and keep the owner role, which runs migrations and `gateway
audit prune`, for maintenance. A statement trigger refuses UPDATE, DELETE and TRUNCATE on
both tables for everyone, the owner included, except DELETE inside `gateway audit prune`
(which sets `SET LOCAL gateway.prune = 'on'`): the role is the control, the trigger a
second fence against accidents and naive edits.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION gateway_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('gateway.prune', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'rows leave only through gateway audit prune';
END
$$
"""

RUNTIME_ROLE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gateway_runtime') THEN
        BEGIN
            CREATE ROLE gateway_runtime NOLOGIN;
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'may not create role gateway_runtime: have a superuser create it '
                    '(CREATE ROLE gateway_runtime NOLOGIN) and run this migration again';
            WHEN duplicate_object THEN
                NULL;
        END;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gateway_runtime') THEN
        BEGIN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO gateway_runtime', current_schema());
            EXECUTE format(
                'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO gateway_runtime',
                current_schema()
            );
            GRANT SELECT, INSERT ON access_log, audit_checkpoints TO gateway_runtime;
            REVOKE UPDATE, DELETE, TRUNCATE ON access_log, audit_checkpoints
                FROM gateway_runtime;
            GRANT SELECT, INSERT, UPDATE, DELETE
                ON casbin_rule, policy_versions, admin_events, locks TO gateway_runtime;
            GRANT SELECT, INSERT ON signing_keys TO gateway_runtime;
            GRANT SELECT ON alembic_version TO gateway_runtime;
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'may not grant to gateway_runtime; grants left unchanged';
        END;
    END IF;
END
$$
"""

REVOKE_RUNTIME = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gateway_runtime') THEN
        BEGIN
            REVOKE ALL ON audit_checkpoints FROM gateway_runtime;
        EXCEPTION
            WHEN insufficient_privilege THEN
                NULL;
        END;
    END IF;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("chain_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_index("ix_audit_checkpoints_chain_seq", "audit_checkpoints", ["chain_id", "seq"])
    op.create_index("ix_audit_checkpoints_time", "audit_checkpoints", ["time"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(APPEND_ONLY_FUNCTION)
    for table in ("access_log", "audit_checkpoints"):
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION gateway_audit_append_only()"
        )
    op.execute(RUNTIME_ROLE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(REVOKE_RUNTIME)
        op.execute("DROP TRIGGER IF EXISTS access_log_append_only ON access_log")
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_append_only ON audit_checkpoints")
        op.execute("DROP FUNCTION IF EXISTS gateway_audit_append_only()")
    op.drop_table("audit_checkpoints")
