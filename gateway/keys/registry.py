"""The gateway's public keys in the database, with the period each one is valid for.

Registering a key needs INSERT on `signing_keys`, which the runtime role does not have on
PostgreSQL: `gateway keys register / rotate` run as the owner. A gateway may register its
own key at start only where its role allows (SQLite, or an owner-role deployment).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway.db.models import SigningKey
from gateway.keys.signer import KeysError, Signer
from gateway.timestamps import rfc3339

# Clock difference allowed between a signer's clock and the key's validity bounds.
VALIDITY_SLACK = timedelta(minutes=5)


@dataclass(frozen=True)
class RegisteredKey:
    kid: str
    jwk: dict[str, Any]
    not_before: datetime
    not_after: datetime | None
    source: str

    def valid_at(self, moment: datetime, slack: timedelta = VALIDITY_SLACK) -> bool:
        moment = _aware(moment)
        if moment < _aware(self.not_before) - slack:
            return False
        return self.not_after is None or moment <= _aware(self.not_after) + slack

    def as_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "source": self.source,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after) if self.not_after else None,
            "jwk": self.jwk,
        }


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time stored is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return rfc3339(moment)


def registered_keys(db: Engine) -> list[RegisteredKey]:
    with db.connect() as connection:
        rows = connection.execute(
            select(
                SigningKey.kid,
                SigningKey.public_jwk,
                SigningKey.not_before,
                SigningKey.not_after,
                SigningKey.source,
            ).order_by(SigningKey.not_before, SigningKey.kid)
        ).all()
    return [
        RegisteredKey(kid, orjson.loads(jwk), _aware(nb), _aware(na) if na else None, source)
        for kid, jwk, nb, na, source in rows
    ]


def register_key(db: Engine, signer: Signer, *, source: str = "file") -> bool:
    """Record the signer's public key, valid from now; False if it was already there."""
    now = datetime.now(UTC)
    jwk = signer.public_jwk()
    if jwk.get("kid") != signer.kid or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise KeysError(f"signer {signer.kid!r} offers no Ed25519 public JWK with its kid")
    try:
        with db.begin() as connection:
            connection.execute(
                insert(SigningKey).values(
                    kid=signer.kid,
                    public_jwk=orjson.dumps(
                        {k: jwk[k] for k in ("kty", "crv", "x", "kid")}
                    ).decode(),
                    created_at=now,
                    not_before=now,
                    not_after=None,
                    source=source,
                )
            )
    except IntegrityError:
        return False
    return True


def retire_others(db: Engine, keep: str, at: datetime) -> list[str]:
    """Every open key but `keep` stops being valid at `at` (the rotation overlap's end)."""
    with db.begin() as connection:
        retired = (
            connection.execute(
                select(SigningKey.kid).where(
                    SigningKey.kid != keep,
                    or_(SigningKey.not_after.is_(None), SigningKey.not_after > at),
                )
            )
            .scalars()
            .all()
        )
        if retired:
            connection.execute(
                update(SigningKey).where(SigningKey.kid.in_(retired)).values(not_after=at)
            )
    return list(retired)


def ensure_registered(db: Engine, signer: Signer, *, may_register: bool = True) -> RegisteredKey:
    """The signer's key as registered and valid now; registers it when allowed and the
    database role permits, otherwise says what the operator must do."""
    now = datetime.now(UTC)
    found = {key.kid: key for key in registered_keys(db)}.get(signer.kid)
    if found is None and may_register:
        try:
            register_key(db, signer)
        except DBAPIError as error:
            raise KeysError(
                f"signing key {signer.kid} is not registered and this database role may not"
                f" register it ({type(error.orig).__name__}): run `gateway keys register`"
                " as the database owner"
            ) from None
        found = {key.kid: key for key in registered_keys(db)}.get(signer.kid)
    if found is None:
        raise KeysError(f"signing key {signer.kid} is not registered: run `gateway keys register`")
    if found.jwk.get("x") != signer.public_jwk().get("x"):
        raise KeysError(f"signing key {signer.kid} differs from the registered key of that id")
    if found.not_after is not None and found.not_after <= now:
        raise KeysError(
            f"signing key {signer.kid} was retired at {_iso(found.not_after)}:"
            " configure the current key (`gateway keys list`)"
        )
    return found
