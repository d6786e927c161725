"""The record catalogue: record id → project/task per upstream and kind, kinds, sync runs.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "catalogue_records",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("upstream", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("record_id", sa.String(1024), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("task", sa.String(255)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_run", sa.Integer),
    )
    op.create_index(
        "ux_catalogue_records_id",
        "catalogue_records",
        ["upstream", "kind", "record_id"],
        unique=True,
    )
    op.create_index(
        "ix_catalogue_records_project", "catalogue_records", ["upstream", "project", "task"]
    )
    op.create_table(
        "catalogue_kinds",
        sa.Column("upstream", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("records", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "catalogue_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("upstream", sa.String(64), nullable=False),
        sa.Column("command", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("scope", sa.Text, nullable=False, server_default="{}"),
        sa.Column("progress", sa.Text, nullable=False, server_default="{}"),
        sa.Column("seen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("added", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("moved", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("gone", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
    )
    # The catalogue_mismatch detector reads these rare rows by time.
    op.create_index(
        "ix_access_log_catalogue_mismatch",
        "access_log",
        ["time"],
        postgresql_where=sa.text("reason = 'catalogue_mismatch'"),
        sqlite_where=sa.text("reason = 'catalogue_mismatch'"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RUNTIME_GRANTS)


# The serving gateway reads placements and learns new ones; moving or deleting entries is
# for `gateway catalogue sync/import`, run as the owner.
RUNTIME_GRANTS = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gateway_runtime') THEN
        BEGIN
            EXECUTE format(
                'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO gateway_runtime',
                current_schema()
            );
            GRANT SELECT, INSERT ON catalogue_records TO gateway_runtime;
            GRANT SELECT, INSERT ON catalogue_kinds TO gateway_runtime;
            GRANT SELECT ON catalogue_runs TO gateway_runtime;
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'may not grant to gateway_runtime; grants left unchanged';
        END;
    END IF;
END
$$
"""


def downgrade() -> None:
    op.drop_index("ix_access_log_catalogue_mismatch", "access_log")
    op.drop_table("catalogue_runs")
    op.drop_table("catalogue_kinds")
    op.drop_index("ix_catalogue_records_project", "catalogue_records")
    op.drop_index("ux_catalogue_records_id", "catalogue_records")
    op.drop_table("catalogue_records")
