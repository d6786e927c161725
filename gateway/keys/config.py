"""`[keys]`: where the gateway's private signing key comes from."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from gateway.configbase import Problem, ReadableFile, Section, validated

_SIGNER = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class KeysConfig(Section):
    # A plugged-in signer's own settings sit in this table beside `signer`.
    model_config = ConfigDict(extra="allow")

    signing_key_file: ReadableFile | None = None
    """An Ed25519 private key, PEM (PKCS#8): `gateway keys generate --out FILE`."""
    signer: Annotated[str, Field(pattern=_SIGNER)] | None = None
    """Or a plugged-in signer (a KMS/HSM client): "package.module:factory", called with this
    table; the other keys of the table are the factory's own settings.
    """
    register_at_start: bool = True
    """Register the key's public half at start when it is not registered yet (only where the
    database role may: never the PostgreSQL runtime role).
    """

    @model_validator(mode="after")
    def _one_source(self) -> KeysConfig:
        if self.signing_key_file is not None and self.signer is not None:
            raise Problem("signer", "set signing_key_file or signer, not both")
        if self.signer is None and self.model_extra:
            raise Problem(sorted(self.model_extra)[0], "unknown key")
        return self

    @property
    def settings(self) -> dict[str, Any]:
        """The plugged-in signer's settings: the table's keys beyond the gateway's own."""
        return dict(self.model_extra or {})


def parse_keys_table(raw: Any) -> KeysConfig:
    return validated(KeysConfig, {} if raw is None else raw, "keys")
