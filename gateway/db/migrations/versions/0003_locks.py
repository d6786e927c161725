"""Kill-switch locks (never deleted: lifted locks stay as history).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "locks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("lifted_at", sa.DateTime(timezone=True)),
        sa.Column("lifted_by", sa.String(255)),
        sa.Column("lift_reason", sa.Text),
        sa.Column("exposure", sa.Text, nullable=False, server_default="null"),
    )
    op.create_index("ix_locks_active", "locks", ["lifted_at", "kind", "target"])


def downgrade() -> None:
    op.drop_table("locks")
