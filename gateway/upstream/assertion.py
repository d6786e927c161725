"""Short-lived signed identity assertion for the upstream (X-Gateway-Assertion).

The upstream can check who the gateway let through without trusting any header a client
could have set: the JWT is signed with the gateway's Ed25519 key, published at
`/_gateway/jwks.json`. The key lives in the database so every worker and every instance
signs with, and publishes, the same keys.
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from joserfc import jwt
from joserfc.jwk import OKPKey
from sqlalchemy import Engine, insert, select

from gateway.db.models import SigningKey

ASSERTION_ISSUER = "contractor-gateway"


class AssertionSigner:
    def __init__(self, engine: Engine, *, ttl_seconds: int = 60, audience: str) -> None:
        self._db = engine
        self._ttl = ttl_seconds
        self._audience = audience
        self._lock = threading.Lock()
        self._key: OKPKey | None = None
        self._public: dict[str, Any] | None = None
        self._public_loaded_at = 0.0

    def _signing_key(self) -> OKPKey:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._load_or_create()
        return self._key

    def _load_or_create(self) -> OKPKey:
        with self._db.begin() as connection:
            row = connection.execute(
                select(SigningKey.private_jwk)
                .order_by(SigningKey.created_at, SigningKey.kid)
                .limit(1)
            ).first()
        if row is None:
            key = OKPKey.generate_key("Ed25519", parameters={"kid": secrets.token_hex(8)})
            with self._db.begin() as connection:
                connection.execute(
                    insert(SigningKey).values(
                        kid=key.kid,
                        private_jwk=orjson.dumps(key.as_dict(private=True)).decode(),
                        created_at=datetime.now(UTC),
                    )
                )
            # Two workers may both have created a key; everyone settles on the oldest.
            return self._load_or_create()
        return OKPKey.import_key(orjson.loads(row[0]))

    def sign(self, claims: dict[str, Any]) -> str:
        key = self._signing_key()
        now = int(time.time())
        payload = {
            "iss": ASSERTION_ISSUER,
            "aud": self._audience,
            "iat": now,
            "exp": now + self._ttl,
            **claims,
        }
        # "Ed25519" is the fully specified name RFC 9864 gives what "EdDSA" used to mean.
        return jwt.encode(
            {"alg": "Ed25519", "kid": key.kid, "typ": "JWT"}, payload, key, algorithms=["Ed25519"]
        )

    def public_jwks(self) -> dict[str, Any]:
        """Every key in the store, public halves only; refreshed every minute."""
        if self._public is None or time.monotonic() - self._public_loaded_at > 60:
            self._signing_key()
            with self._db.connect() as connection:
                rows = connection.execute(select(SigningKey.private_jwk)).scalars().all()
            self._public = {
                "keys": [
                    OKPKey.import_key(orjson.loads(text)).as_dict(private=False) for text in rows
                ]
            }
            self._public_loaded_at = time.monotonic()
        return self._public
