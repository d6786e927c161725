"""Anomaly review: alerts, canary records, the hourly rollup the scans read, scan state.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "anomaly_alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dedup_key", sa.String(512), nullable=False, unique=True),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("contractor", sa.String(512), nullable=False),
        sa.Column("issuer", sa.String(255)),
        sa.Column("subject", sa.String(255)),
        sa.Column("vendor", sa.String(255)),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("project", sa.String(255)),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("explanation", sa.Text, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False, server_default="{}"),
        sa.Column("status", sa.String(20), nullable=False, server_default="open"),
        sa.Column("assignee", sa.String(255)),
        sa.Column("notes", sa.Text, nullable=False, server_default=""),
        sa.Column("lock_id", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_anomaly_alerts_status", "anomaly_alerts", ["status", "detected_at"])
    op.create_index("ix_anomaly_alerts_contractor", "anomaly_alerts", ["contractor", "detected_at"])
    op.create_index("ix_anomaly_alerts_detected", "anomaly_alerts", ["detected_at"])

    op.create_table(
        "canary_records",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("record_id", sa.String(255), nullable=False, unique=True),
        sa.Column("project", sa.String(255)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )

    op.create_table(
        "anomaly_hourly",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("hour", sa.BigInteger, nullable=False),
        sa.Column("issuer", sa.String(255)),
        sa.Column("subject", sa.String(255)),
        sa.Column("vendor", sa.String(255)),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("project", sa.String(255)),
        sa.Column("task", sa.String(255)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("lock_reason", sa.String(255), nullable=False, server_default=""),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("first_ts", sa.Float, nullable=False),
        sa.Column("last_ts", sa.Float, nullable=False),
        sa.Column("first_id", sa.BigInteger, nullable=False),
        sa.Column("last_id", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_anomaly_hourly_hour", "anomaly_hourly", ["hour"])
    op.create_index("ix_anomaly_hourly_vendor_hour", "anomaly_hourly", ["vendor", "hour"])

    op.create_table(
        "anomaly_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("anomaly_state")
    op.drop_table("anomaly_hourly")
    op.drop_table("canary_records")
    op.drop_table("anomaly_alerts")
