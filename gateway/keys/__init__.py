"""The gateway's own Ed25519 key: identity assertions, checkpoint and manifest signatures.

The upstream can check who the gateway let through without trusting any header a client
could have set: the assertion JWT (X-Gateway-Assertion) is signed with this key,
published at `/_gateway/jwks.json`. Audit checkpoints and exposure manifests carry
detached signatures by the same key. It lives in the database so every worker and every
instance signs with, and publishes, the same keys.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from joserfc import jwt
from joserfc.jwk import OKPKey
from sqlalchemy import Engine, insert, select

from gateway.db.models import SigningKey

ASSERTION_ISSUER = "contractor-gateway"


class GatewayKeys:
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

    def sign_detached(self, data: bytes) -> tuple[str, str]:
        """(kid, base64url Ed25519 signature) over `data`."""
        key = self._signing_key()
        signature = key.private_key.sign(data)  # type: ignore[union-attr]
        return str(key.kid), base64.urlsafe_b64encode(signature).decode().rstrip("=")

    def verify_detached(self, kid: str, data: bytes, signature: str) -> bool:
        """True if `signature` over `data` is by key `kid` of this gateway."""
        public = {key["kid"]: key for key in self.public_jwks(refresh=True)["keys"]}
        if kid not in public:
            return False
        try:
            raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
            OKPKey.import_key(public[kid]).public_key.verify(raw, data)  # type: ignore[union-attr]
        except (InvalidSignature, ValueError):
            return False
        return True

    def public_jwks(self, refresh: bool = False) -> dict[str, Any]:
        """Every key in the store, public halves only; refreshed every minute."""
        if refresh or self._public is None or time.monotonic() - self._public_loaded_at > 60:
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
