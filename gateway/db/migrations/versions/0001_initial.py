"""Initial schema: policy rules and versions, signing keys, the access log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "casbin_rule",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ptype", sa.String(255)),
        *(sa.Column(f"v{i}", sa.String(255)) for i in range(6)),
    )
    op.create_index("ix_casbin_rule_v1", "casbin_rule", ["v1"])
    op.create_table(
        "policy_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("private_jwk", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "access_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(255)),
        sa.Column("subject", sa.String(255)),
        sa.Column("vendor", sa.String(255)),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("user_agent", sa.String(512)),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.Column("project", sa.String(255)),
        sa.Column("task", sa.String(255)),
        sa.Column("record_id", sa.String(255)),
        sa.Column("record_sha256", sa.String(64)),
        sa.Column("action", sa.String(64)),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(255)),
        sa.Column("policy_version", sa.Integer),
        sa.Column("upstream_status", sa.Integer),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("chain_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_access_log_time", "access_log", ["time"])
    op.create_index("ix_access_log_vendor_time", "access_log", ["vendor", "time"])
    op.create_index("ix_access_log_subject_time", "access_log", ["subject", "time"])
    op.create_index("ix_access_log_record", "access_log", ["record_id"])
    op.create_index("ix_access_log_request", "access_log", ["request_id"])
    op.create_index("ux_access_log_chain_seq", "access_log", ["chain_id", "seq"], unique=True)


def downgrade() -> None:
    op.drop_table("access_log")
    op.drop_table("signing_keys")
    op.drop_table("policy_versions")
    op.drop_table("casbin_rule")
