"""Policy administration: version diffs, the admin action log.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("policy_versions") as batch:
        batch.add_column(sa.Column("diff", sa.Text, nullable=False, server_default="{}"))
    op.create_table(
        "admin_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512), nullable=False, server_default=""),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("before", sa.Text, nullable=False, server_default="null"),
        sa.Column("after", sa.Text, nullable=False, server_default="null"),
        sa.Column("policy_version", sa.Integer),
    )
    op.create_index("ix_admin_events_time", "admin_events", ["time"])


def downgrade() -> None:
    op.drop_table("admin_events")
    with op.batch_alter_table("policy_versions") as batch:
        batch.drop_column("diff")
