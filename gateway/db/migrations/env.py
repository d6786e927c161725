"""Alembic environment: migrations always run on a connection handed in by gateway.db.migrate."""

from alembic import context

from gateway.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through 'gateway db upgrade'")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
