"""Two-person lifts: a request to lift a vendor or issuer lock waits for a second admin.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

RUNTIME_GRANTS = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gateway_runtime') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE ON lift_requests TO gateway_runtime;
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
        "lift_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("lock_id", sa.Integer, nullable=False),
        sa.Column("requested_by", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", sa.String(255)),
        sa.Column("approved_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_lift_requests_lock", "lift_requests", ["lock_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RUNTIME_GRANTS)


def downgrade() -> None:
    op.drop_table("lift_requests")
