"""The authenticated caller, as every later pipeline stage sees it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    issuer: str  # the configured issuer *name*, not its URL
    subject: str
    vendor: str
    email: str | None
    roles: frozenset[str]
    expires_at: float

    @property
    def policy_subject(self) -> str:
        """`<issuer name>:<sub>`: a token of one issuer can never match another's subject."""
        return f"{self.issuer}:{self.subject}"


class AuthError(Exception):
    """The request carries no usable credential (RFC 6750 error codes)."""

    def __init__(self, error: str, description: str, status: int = 401) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
