"""Console sessions: server-side, one row per browser session, the cookie holds only an
opaque random id (the row is keyed by its SHA-256, so a database reader cannot replay it).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

RUNTIME_GRANTS = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gateway_runtime') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE, DELETE ON console_sessions TO gateway_runtime;
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
        "console_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(512)),
        sa.Column("data", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("end_reason", sa.String(64)),
    )
    op.create_index("ix_console_sessions_subject", "console_sessions", ["subject"])
    op.create_index("ix_console_sessions_expires", "console_sessions", ["expires_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RUNTIME_GRANTS)


def downgrade() -> None:
    op.drop_table("console_sessions")
