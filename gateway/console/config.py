"""`[console]`: the browser console for admins and auditors (off unless enabled)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gateway.configbase import (
    HttpURL,
    Name,
    PositiveFloat,
    PositiveInt,
    Problem,
    ReadableFile,
    Section,
    Text,
    secret_from_file,
)

LockKind = Literal["vendor", "contractor", "issuer", "project"]


class ConsoleConfig(Section):
    enabled: bool = False
    """Serve the console at /_gateway/console/."""
    issuers: Annotated[tuple[Name, ...], Field(strict=False)] = ()
    """Issuers (by name) whose users may sign in; each must be `roles_trusted`."""
    client_id: Text | None = None
    """The console's OIDC client id at those issuers."""
    client_secret: Text | None = Field(default=None, repr=False)
    """Its client secret (use `${ENV}`), or `client_secret_file`."""
    client_secret_file: ReadableFile | None = Field(default=None, exclude=True)
    public_url: HttpURL | None = None
    """The gateway's address as browsers see it (`https://gateway.lab.example`): the login
    callback is `<public_url>/_gateway/console/callback`."""
    cookie_secure: bool = True
    """Send the session cookie only over HTTPS (`__Host-` prefixed). Set false only for a
    plain-HTTP development setup."""
    idle_timeout_minutes: PositiveFloat = 30.0
    """A session unused this long ends."""
    absolute_timeout_hours: PositiveFloat = 12.0
    """A session ends this long after sign-in, used or not."""
    login_timeout_minutes: PositiveInt = 10
    """How long a started sign-in may take at the IdP."""

    @model_validator(mode="before")
    @classmethod
    def _secret_from_file(cls, data: Any) -> Any:
        return secret_from_file(data)

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> ConsoleConfig:
        if not self.enabled:
            return self
        for name in ("client_id", "client_secret", "public_url"):
            if getattr(self, name) is None:
                raise Problem(name, "is required when the console is enabled")
        if not self.issuers:
            raise Problem("issuers", "name at least one roles_trusted issuer")
        if self.cookie_secure and not str(self.public_url).startswith("https://"):
            raise Problem(
                "public_url", "must be https:// (or set cookie_secure = false for development)"
            )
        return self
