"""Errors a command's user can cause become one `Error: <message>` line and exit status 1.

Never a traceback: bad input, a database that is down or not migrated, a file that cannot
be read are all said in a sentence the operator can act on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

SCHEMA_MISSING = "the database has no gateway schema; run `gateway db upgrade`"


def describe_error(error: BaseException) -> str | None:
    """A one-line message for an error an admin can act on; None for anything else."""
    from sqlalchemy import exc as sa

    from gateway.archive.make import ArchiveError
    from gateway.archive.store import ArchiveUnavailable
    from gateway.policy.admin import PolicyValidationError
    from gateway.policy.rules import PolicyFileError
    from gateway.policy.store import StaleVersion

    if isinstance(error, ArchiveUnavailable | ArchiveError):
        return str(error)
    if isinstance(error, PolicyValidationError):
        return "; ".join(f"{field}: {message}" for field, message in error.errors.items())
    if isinstance(error, StaleVersion):
        return f"policy changed since version {error.base} (now {error.current}); re-read and retry"
    if isinstance(error, PolicyFileError):
        return str(error)
    if isinstance(error, UnicodeDecodeError):
        return f"the file is not UTF-8 text ({error.reason} at byte {error.start})"
    if isinstance(error, sa.ArgumentError):
        return f"database.url is not usable: {error}"
    if isinstance(error, sa.DBAPIError) and (
        "no such table" in str(error.orig) or type(error.orig).__name__ == "UndefinedTable"
    ):
        return SCHEMA_MISSING
    if isinstance(error, sa.OperationalError | sa.InterfaceError):
        detail = str(error.orig).strip().splitlines()
        return "database unreachable" + (f" ({detail[0]})" if detail else "")
    if isinstance(error, sa.SQLAlchemyError):
        return f"database error: {type(error).__name__}"
    if isinstance(error, OSError):
        return f"{error.strerror or type(error).__name__}: {error.filename or ''}".rstrip(": ")
    return None


def friendly_errors(*, db_prefix: str = "") -> Callable[[F], F]:
    """Turn the errors an admin can cause into `Error: <message>` and exit status 1."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from sqlalchemy.exc import SQLAlchemyError

            try:
                return function(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except Exception as error:
                message = describe_error(error)
                if message is None:
                    message = f"unexpected error: {type(error).__name__}: {error}"
                elif isinstance(error, SQLAlchemyError):
                    message = db_prefix + message
                raise click.ClickException(message) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def refuse(field: str, message: str) -> NoReturn:
    """Refuse bad command-line input the same way the service layer refuses a change."""
    from gateway.policy.admin import PolicyValidationError

    raise PolicyValidationError({field: message})
