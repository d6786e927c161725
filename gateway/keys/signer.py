"""Where the gateway's private key lives: never in the database.

A `Signer` holds one Ed25519 private key and signs bytes with it. The built-in one reads
a PEM file (a mounted secret); `[keys] signer = "package.module:factory"` plugs in any
other (a KMS or HSM client), called with the `[keys]` table, returning an object with
`kid`, `public_jwk()` and `sign(data)`. The database only ever sees public keys.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey


class KeysError(Exception):
    """The gateway's signing key is missing, unreadable, not registered or retired."""


@runtime_checkable
class Signer(Protocol):
    kid: str

    def public_jwk(self) -> dict[str, Any]: ...

    def sign(self, data: bytes) -> bytes: ...


def public_jwk_of(private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The public JWK with its RFC 7638 thumbprint as kid: every instance holding the same
    key file names it the same."""
    public = OKPKey.import_key(private_key.public_key())
    jwk = public.as_dict(private=False)
    jwk["kid"] = public.thumbprint()
    return {name: jwk[name] for name in ("kty", "crv", "x", "kid")}


class Ed25519FileSigner:
    """An Ed25519 private key from a PEM (PKCS#8) file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise KeysError(f"cannot read the signing key {path}: {error.strerror}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as error:
            raise KeysError(f"{path} is not an unencrypted PEM private key: {error}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeysError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        self._key = key
        self._public = public_jwk_of(key)
        self.kid: str = self._public["kid"]

    def public_jwk(self) -> dict[str, Any]:
        return dict(self._public)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def generate_key_file(path: str | os.PathLike[str]) -> str:
    """A new Ed25519 key in a PEM file only its owner can read; returns its kid."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    return public_jwk_of(key)["kid"]


def load_signer(signing_key_file: str | None, factory: str | None, table: dict[str, Any]) -> Signer:
    """The configured signer: a plugged-in factory, or the key file."""
    if factory:
        module_name, _, attribute = factory.partition(":")
        try:
            make = getattr(importlib.import_module(module_name), attribute)
            signer = make(table)
        except Exception as error:
            raise KeysError(f"signer {factory}: {type(error).__name__}: {error}") from None
        if not isinstance(signer, Signer) or not isinstance(getattr(signer, "kid", None), str):
            raise KeysError(f"signer {factory} did not return a Signer (kid, public_jwk, sign)")
        return signer
    if not signing_key_file:
        raise KeysError(
            "no signing key: set [keys] signing_key_file to an Ed25519 PEM file"
            " (`gateway keys generate --out FILE` makes one) or [keys] signer"
        )
    return Ed25519FileSigner(signing_key_file)
