"""The catalogue of archived access-log partitions (`gateway audit archive`).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Readers (the gateway's auditor API included) find archives here; only the owner, who
# archives, writes it.
RUNTIME_GRANTS = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gateway_runtime') THEN
        BEGIN
            GRANT SELECT ON audit_archives TO gateway_runtime;
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'may not change grants of gateway_runtime; left unchanged';
        END;
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.create_table(
        "audit_archives",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("time_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("time_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("file_key", sa.String(512), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("file_bytes", sa.BigInteger, nullable=False),
        sa.Column("manifest_key", sa.String(512), nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_index("ix_audit_archives_time", "audit_archives", ["time_from", "time_to"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RUNTIME_GRANTS)


def downgrade() -> None:
    op.drop_table("audit_archives")
