"""The gateway's own Ed25519 key: identity assertions, checkpoint and manifest signatures.

The upstream can check who the gateway let through without trusting any header a client
could have set: the assertion JWT (X-Gateway-Assertion) is signed with this key,
published at `/_gateway/jwks.json`. Audit checkpoints and exposure manifests carry
detached signatures by the same key.

The private key never touches the database: it comes from a file or a plugged-in signer
(`gateway.keys.signer`). The database holds the public keys and when each was valid
(`gateway.keys.registry`), so every instance publishes the same set and old signatures
stay checkable after a rotation.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Engine

from gateway.keys.registry import ensure_registered, registered_keys
from gateway.keys.ring import KeyRing
from gateway.keys.signer import KeysError, Signer, load_signer

if TYPE_CHECKING:
    from gateway.config import Config

ASSERTION_ISSUER = "contractor-gateway"
# RFC 7797: the detached payload is signed as it is, not base64url-encoded.
DETACHED_JWS_HEADER = {"alg": "EdDSA", "b64": False, "crit": ["b64"]}
_PUBLISHED_FOR = 60.0

__all__ = ["ASSERTION_ISSUER", "GatewayKeys", "KeyRing", "KeysError", "Signer", "gateway_keys"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class GatewayKeys:
    """Signs with the configured signer; publishes and checks against the registered keys.
    Without a signer (an auditor's verify-only commands) it can only check."""

    def __init__(
        self,
        engine: Engine,
        signer: Signer | None = None,
        *,
        ttl_seconds: int = 60,
        audience: str,
    ) -> None:
        self._db = engine
        self._signer = signer
        self._ttl = ttl_seconds
        self._audience = audience
        self._public: dict[str, Any] | None = None
        self._public_loaded_at = 0.0

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            raise KeysError("no signing key configured ([keys] signing_key_file)")
        return self._signer

    @property
    def kid(self) -> str:
        return self.signer.kid

    def _compact(self, header: dict[str, Any], payload: bytes) -> str:
        signing_input = f"{_b64(orjson.dumps(header))}.{_b64(payload)}"
        return f"{signing_input}.{_b64(self.signer.sign(signing_input.encode('ascii')))}"

    def sign(self, claims: dict[str, Any]) -> str:
        """An identity assertion: a short-lived JWT the upstream checks against our JWKS."""
        now = int(time.time())
        payload = {
            "iss": ASSERTION_ISSUER,
            "aud": self._audience,
            "iat": now,
            "exp": now + self._ttl,
            **claims,
        }
        # "Ed25519" is the fully specified name RFC 9864 gives what "EdDSA" used to mean.
        header = {"alg": "Ed25519", "kid": self.signer.kid, "typ": "JWT"}
        return self._compact(header, orjson.dumps(payload))

    def sign_detached(self, data: bytes) -> tuple[str, str]:
        """(kid, base64url Ed25519 signature) over `data`."""
        return self.signer.kid, _b64(self.signer.sign(data))

    def sign_jws_detached(self, payload: bytes) -> str:
        """A compact JWS over `payload` with the payload detached and unencoded (RFC 7797):
        `header..signature`, checkable by any JOSE library given the payload."""
        header = {**DETACHED_JWS_HEADER, "kid": self.signer.kid}
        encoded = _b64(orjson.dumps(header))
        signature = self.signer.sign(encoded.encode("ascii") + b"." + payload)
        return f"{encoded}..{_b64(signature)}"

    def key_ring(self) -> KeyRing:
        """Every registered key (retired ones too: old signatures stay checkable)."""
        return KeyRing.from_registered(registered_keys(self._db))

    def verify_detached(self, kid: str, data: bytes, signature: str) -> bool:
        """True if `signature` over `data` is by registered key `kid`."""
        return self.key_ring().check(kid, data, signature)

    def public_jwks(self, refresh: bool = False) -> dict[str, Any]:
        """The keys valid now, public halves only; refreshed every minute."""
        if (
            refresh
            or self._public is None
            or time.monotonic() - self._public_loaded_at > _PUBLISHED_FOR
        ):
            now = datetime.now(UTC)
            self._public = {
                "keys": [key.jwk for key in registered_keys(self._db) if key.valid_at(now)]
            }
            self._public_loaded_at = time.monotonic()
        return self._public


def gateway_keys(config: Config, engine: Engine, *, signing: bool = True) -> GatewayKeys:
    """The configured keys; with `signing`, the signer is loaded and its key checked
    registered and valid now (registered first where `register_at_start` and the database
    role allow). KeysError says what is wrong and what to run."""
    signer = None
    if signing:
        keys = config.keys
        signer = load_signer(keys.signing_key_file, keys.signer, keys.settings)
        ensure_registered(engine, signer, may_register=keys.register_at_start)
    return GatewayKeys(
        engine,
        signer,
        ttl_seconds=config.gateway.assertion_ttl_seconds,
        audience=config.upstream.url,
    )
