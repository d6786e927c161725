"""The benchmark's own PostgreSQL database (or SQLite), dropped afterwards."""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

# --- database ----------------------------------------------------------------------------


@dataclass
class Database:
    url: str
    label: str
    drop: Any = None  # callable that removes it

    def scalar_rows(self, sql: str) -> list[Any]:
        engine = create_engine(self.url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(sql)))
        finally:
            engine.dispose()


def make_database(server: str, workdir: Path) -> Database:
    try:
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar_one()
            name = f"bench_{secrets.token_hex(4)}"
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as error:
        print(
            f"PostgreSQL at {server} is NOT reachable ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); falling back to SQLite",
            file=sys.stderr,
        )
        path = workdir / "gateway.db"
        return Database(f"sqlite:///{path}", "SQLite (fallback: PostgreSQL unreachable)")

    def drop() -> None:
        engine = create_engine(server, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    base, _, _ = server.rpartition("/")
    return Database(f"{base}/{name}", f"PostgreSQL {version} (database {name})", drop)
