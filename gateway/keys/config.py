"""`[keys]`: where the gateway's private signing key comes from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway.configbase import ConfigError, config_bool, config_str, existing_file

_SIGNER = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


@dataclass(frozen=True)
class KeysConfig:
    # An Ed25519 private key, PEM (PKCS#8): `gateway keys generate --out FILE`.
    signing_key_file: str | None = None
    # Or a plugged-in signer (a KMS/HSM client): "package.module:factory", called with
    # this table; the other keys of the table are the factory's own settings.
    signer: str | None = None
    # Register the key's public half at start when it is not registered yet (only where
    # the database role may: never the PostgreSQL runtime role).
    register_at_start: bool = True
    settings: dict[str, Any] = field(default_factory=dict)


def parse_keys_table(raw: Any) -> KeysConfig:
    if raw is None:
        return KeysConfig()
    if not isinstance(raw, dict):
        raise ConfigError("keys", "must be a table")
    key_file = raw.get("signing_key_file")
    signer = raw.get("signer")
    if key_file is not None and signer is not None:
        raise ConfigError("keys.signer", "set signing_key_file or signer, not both")
    if key_file is not None:
        key_file = existing_file(key_file, "keys.signing_key_file")
        unknown = set(raw) - {"signing_key_file", "register_at_start"}
        if unknown:
            raise ConfigError(f"keys.{sorted(unknown)[0]}", "unknown key")
    if signer is not None:
        signer = config_str(signer, "keys.signer")
        if not re.match(_SIGNER, signer):
            raise ConfigError("keys.signer", "must be 'package.module:factory'")
    register = config_bool(raw.get("register_at_start", True), "keys.register_at_start")
    settings = {
        k: v for k, v in raw.items() if k not in ("signing_key_file", "signer", "register_at_start")
    }
    return KeysConfig(key_file, signer, register, settings)
