"""Times bound into SQL so that they compare correctly with the stored column."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam

from gateway.timestamps import utc


def time_param(value: datetime, dialect: str) -> Any:
    """A bound time that compares correctly with the stored column on this backend.

    SQLite keeps times as the text the driver wrote, `2026-11-24 01:00:26.139874+00:00`
    (`datetime.isoformat(" ")` of an aware UTC time); SQLAlchemy's own SQLite binding
    drops the offset and would compare unequal with a stored value at the same instant.
    So on SQLite the bound value is that very text.
    """
    value = utc(value)
    if dialect == "sqlite":
        return bindparam(None, value.isoformat(" "), type_=String)
    return value
