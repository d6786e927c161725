"""Public keys to check the gateway's signatures with: the database's registered keys
(each within its validity period), or a JWKS the auditor pinned (trusted as given)."""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.keys.registry import RegisteredKey


class KeyRingError(ValueError):
    """A pinned key file that is not a JWKS of Ed25519 keys."""


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class KeyRing:
    """Ed25519 public keys by kid, checked without a database round trip per signature.

    `pinned` says whether the keys came from outside the database: a verification against
    the database's own keys proves nothing to someone who can write that database."""

    def __init__(
        self,
        jwks: dict[str, Any],
        *,
        validity: dict[str, RegisteredKey] | None = None,
        pinned: bool = False,
        origin: str = "",
    ) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key in jwks.get("keys", []) if isinstance(jwks, dict) else []:
            if not isinstance(key, dict):
                continue
            if key.get("kty") == "OKP" and key.get("crv") == "Ed25519" and key.get("kid"):
                try:
                    raw = _b64decode(str(key["x"]))
                    self._keys[str(key["kid"])] = Ed25519PublicKey.from_public_bytes(raw)
                except (KeyError, ValueError):
                    continue
        self._validity = validity or {}
        self.pinned = pinned
        self.origin = origin

    @classmethod
    def from_registered(cls, keys: list[RegisteredKey]) -> KeyRing:
        return cls(
            {"keys": [key.jwk for key in keys]},
            validity={key.kid: key for key in keys},
            origin="the database's registered keys",
        )

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        try:
            document = orjson.loads(Path(path).read_bytes())
        except OSError as error:
            raise KeyRingError(f"cannot read {path}: {error.strerror}") from None
        except orjson.JSONDecodeError:
            raise KeyRingError(f"{path} is not JSON") from None
        ring = cls(document, pinned=True, origin=f"keys pinned from {path}")
        if not ring.kids:
            raise KeyRingError(f"{path} holds no Ed25519 JWK with a kid")
        return ring

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    def check(self, kid: str, data: bytes, signature: str, at: datetime | None = None) -> bool:
        """Is `signature` over `data` by key `kid` (and, for a registered key and a signed
        time `at`, was the key valid then)?"""
        key = self._keys.get(kid)
        if key is None:
            return False
        registered = self._validity.get(kid)
        if at is not None and registered is not None and not registered.valid_at(at):
            return False
        try:
            key.verify(_b64decode(signature), data)
        except (InvalidSignature, ValueError):
            return False
        return True
