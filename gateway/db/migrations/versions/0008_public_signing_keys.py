"""Signing keys out of the database: only public keys, with validity periods.

The private halves the earlier schema kept in `signing_keys.private_jwk` are deleted; each
key keeps its public half (so every checkpoint and manifest it signed still verifies) and
is retired now (`not_after`): whoever holds a copy of the database, or a backup, holds
that private key, so nothing it signs from now on is trusted. The gateway signs with the
key of `[keys] signing_key_file` (or a plugged-in signer) from here on.

On PostgreSQL the runtime role keeps SELECT on `signing_keys` and loses INSERT: adding a
key is the owner's (`gateway keys register / rotate`).

Revision ID: 0008
Revises: 0007
"""

from datetime import UTC, datetime

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

PUBLIC_MEMBERS = ("kty", "crv", "x", "kid")

RUNTIME_GRANTS = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gateway_runtime') THEN
        BEGIN
            REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON signing_keys FROM gateway_runtime;
            GRANT SELECT ON signing_keys TO gateway_runtime;
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'may not change grants of gateway_runtime; left unchanged';
        END;
    END IF;
END
$$
"""


def upgrade() -> None:
    with op.batch_alter_table("signing_keys") as batch:
        batch.add_column(sa.Column("public_jwk", sa.Text))
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("not_after", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("source", sa.String(16)))
    connection = op.get_bind()
    keys = sa.table(
        "signing_keys",
        sa.column("kid", sa.String),
        sa.column("private_jwk", sa.Text),
        sa.column("public_jwk", sa.Text),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("not_before", sa.DateTime(timezone=True)),
        sa.column("not_after", sa.DateTime(timezone=True)),
        sa.column("source", sa.String),
    )
    now = datetime.now(UTC)
    for kid, private_jwk, created_at in connection.execute(
        sa.select(keys.c.kid, keys.c.private_jwk, keys.c.created_at)
    ).all():
        jwk = orjson.loads(private_jwk)
        public = {name: jwk[name] for name in PUBLIC_MEMBERS if name in jwk}
        connection.execute(
            keys.update()
            .where(keys.c.kid == kid)
            .values(
                public_jwk=orjson.dumps(public).decode(),
                not_before=created_at,
                not_after=now,
                source="database",
            )
        )
    with op.batch_alter_table("signing_keys") as batch:
        batch.drop_column("private_jwk")
        batch.alter_column("public_jwk", nullable=False)
        batch.alter_column("not_before", nullable=False)
        batch.alter_column("source", nullable=False)
    if connection.dialect.name == "postgresql":
        op.execute(RUNTIME_GRANTS)


def downgrade() -> None:
    # The private halves are gone for good; an older gateway would make itself a new key.
    op.execute("DELETE FROM signing_keys")
    with op.batch_alter_table("signing_keys") as batch:
        batch.add_column(sa.Column("private_jwk", sa.Text, nullable=False, server_default=""))
        batch.drop_column("public_jwk")
        batch.drop_column("not_before")
        batch.drop_column("not_after")
        batch.drop_column("source")
