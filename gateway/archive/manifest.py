"""The signed archive manifest: what one archive file holds, and who vouches for it.

It names the partition and its time range, the file's key, size and SHA-256, the row count,
for every hash chain in the file its first and last sequence number with the hashes at both
ends (where the chain continues in the previous and next archive or table), and the signed
checkpoints whose heads fall inside the file. The gateway's Ed25519 key signs the canonical
JSON text of it (sorted keys, no spaces, a `type` that nothing else the key signs has);
the signed text is kept in the `audit_archives` catalogue and beside the file in the store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson

from gateway.audit.seal import SignatureCheck, Signer
from gateway.timestamps import parse_rfc3339_micro

ARCHIVE_TYPE = "gateway.audit.archive.v1"
ARCHIVE_SCHEMA = "gateway.audit.access_log.v1"


@dataclass(frozen=True)
class ChainSpan:
    chain_id: str
    rows: int
    first_seq: int
    last_seq: int
    first_prev_hash: str
    last_row_hash: str


@dataclass(frozen=True)
class ArchiveManifest:
    name: str
    time_from: str
    time_to: str
    rows: int
    file_key: str
    file_sha256: str
    file_bytes: int
    row_hashes_sha256: str  # SHA-256 of the row hashes in file order
    created_at: str
    chains: tuple[ChainSpan, ...] = ()
    checkpoints: tuple[dict[str, Any], ...] = field(default=())
    schema: str = ARCHIVE_SCHEMA

    def payload(self) -> bytes:
        data = asdict(self)
        data["type"] = ARCHIVE_TYPE
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_payload(cls, payload: bytes | str) -> ArchiveManifest:
        data = orjson.loads(payload)
        if not isinstance(data, dict) or data.pop("type", None) != ARCHIVE_TYPE:
            raise ValueError("not an archive manifest")
        data["chains"] = tuple(ChainSpan(**span) for span in data.get("chains", ()))
        data["checkpoints"] = tuple(data.get("checkpoints", ()))
        return cls(**data)

    @property
    def created(self) -> datetime:
        return parse_rfc3339_micro(self.created_at)


@dataclass(frozen=True)
class SignedManifest:
    manifest: ArchiveManifest
    payload: str
    kid: str
    signature: str

    def document(self) -> bytes:
        """What the store keeps beside the archive file."""
        return orjson.dumps(
            {"manifest": orjson.loads(self.payload), "kid": self.kid, "signature": self.signature},
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        )

    def valid(self, check: SignatureCheck) -> bool:
        return check(self.kid, self.payload.encode(), self.signature, self.manifest.created)

    @classmethod
    def from_document(cls, document: bytes) -> SignedManifest:
        data = orjson.loads(document)
        payload = orjson.dumps(data["manifest"], option=orjson.OPT_SORT_KEYS).decode()
        return cls(ArchiveManifest.from_payload(payload), payload, data["kid"], data["signature"])


def sign_manifest(sign: Signer, manifest: ArchiveManifest) -> SignedManifest:
    payload = manifest.payload()
    kid, signature = sign(payload)
    return SignedManifest(manifest, payload.decode(), kid, signature)
