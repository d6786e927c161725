"""Signed exposure manifests: every record a scope received, as CSV or JSON Lines.

One line per (record id, project, task) received in the window, ordered by record id:

    record_id, project, task, first_access, last_access, times_received, last_sha256

(CSV has that header line; JSON Lines has one object per line with those keys; times are
UTC, `2026-11-24T01:00:26.139874Z`; `last_sha256` is the record's content hash at its
latest access in the window.)

The manifest is streamed from the database into a file while its SHA-256 is computed,
never held in memory. The gateway then signs the digest with its Ed25519 key (the same
key as identity assertions, `gateway.keys.GatewayKeys`, published at
`/_gateway/jwks.json`). The detached signature document:

    {
      "kid": "<key id>", "alg": "Ed25519",
      "sha256": "<hex SHA-256 of the exact manifest bytes>",
      "signature": "<base64url Ed25519 signature>",
      "signed": "sha256",
      "jws": "<protected header>..<signature>",
      "generated_at": "...", "format": "csv", "records": 1234, "bytes": 98765,
      "query": {"vendor": "acme", "since": "...", "until": "..."}
    }

The signature covers the ASCII bytes of the `sha256` hex string (64 lowercase hex
characters) and nothing else; a verifier recomputes the file's SHA-256, compares it with
`sha256`, and checks the signature over it. The other fields describe the manifest but
are not signed.

`jws` says the same in a form standard JOSE tools check: a compact JWS with a detached,
unencoded payload (RFC 7797; header `{"alg": "EdDSA", "b64": false, "crit": ["b64"],
"kid": ...}`) whose payload is that same 64-character hex digest. The digest, not the
manifest bytes, is the payload because Ed25519 cannot sign a stream and a manifest can be
gigabytes: `sha256sum` gives the payload, any JOSE library with the gateway's JWKS checks
it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Engine

from gateway.audit.exposure import MANIFEST_FIELDS, ExposureQuery, manifest_rows
from gateway.audit.query import format_time
from gateway.audit.spreadsheet import SafeCsvWriter
from gateway.keys import DETACHED_JWS_HEADER, GatewayKeys
from gateway.keys.ring import KeyRing

ALGORITHM = "Ed25519"
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FLUSH_EVERY = 1000


@dataclass(frozen=True)
class ManifestResult:
    sha256: str
    records: int
    bytes: int


def encode(rows: Iterable[tuple], fmt: str) -> Iterator[bytes]:
    """Manifest bytes in chunks of about `_FLUSH_EVERY` lines."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = SafeCsvWriter(buffer, lineterminator="\n")
        writer.writerow(MANIFEST_FIELDS)
        for count, row in enumerate(rows, 1):
            writer.writerow(row)
            if count % _FLUSH_EVERY == 0:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue().encode()
        return
    if fmt != "jsonl":
        raise ValueError(f"unknown manifest format {fmt!r}")
    chunk: list[bytes] = []
    for row in rows:
        chunk.append(orjson.dumps(dict(zip(MANIFEST_FIELDS, row, strict=True))))
        if len(chunk) >= _FLUSH_EVERY:
            yield b"\n".join(chunk) + b"\n"
            chunk = []
    if chunk:
        yield b"\n".join(chunk) + b"\n"


def write_manifest(db: Engine, query: ExposureQuery, out: IO[bytes]) -> ManifestResult:
    """Stream the manifest of `query` into `out`, hashing as it goes."""
    digest = hashlib.sha256()
    size = 0
    records = 0

    def counted(rows: Iterable[tuple]) -> Iterator[tuple]:
        nonlocal records
        for row in rows:
            records += 1
            yield row

    for chunk in encode(counted(manifest_rows(db, query)), query.format or "csv"):
        digest.update(chunk)
        out.write(chunk)
        size += len(chunk)
    out.flush()
    return ManifestResult(digest.hexdigest(), records, size)


def signature_document(
    keys: GatewayKeys,
    result: ManifestResult,
    query: ExposureQuery,
    generated_at: datetime | None = None,
) -> dict[str, Any]:
    digest = result.sha256.encode("ascii")
    kid, signature = keys.sign_detached(digest)
    return {
        "kid": kid,
        "alg": ALGORITHM,
        "sha256": result.sha256,
        "signature": signature,
        "signed": "sha256",
        "jws": keys.sign_jws_detached(digest),
        "generated_at": format_time(generated_at or datetime.now(UTC)),
        "format": query.format or "csv",
        "records": result.records,
        "bytes": result.bytes,
        "query": query.as_dict(),
    }


def signed_manifest(
    db: Engine, keys: GatewayKeys, query: ExposureQuery, out: IO[bytes]
) -> dict[str, Any]:
    """Write the manifest into `out` and return its signature document."""
    generated_at = datetime.now(UTC)
    result = write_manifest(db, query, out)
    return signature_document(keys, result, query, generated_at)


# --- verification ------------------------------------------------------------------------


class ManifestInvalid(Exception):
    """The manifest or its signature does not verify; the message says why."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_signature(path: Path) -> dict[str, Any]:
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        raise ManifestInvalid(f"{path} is not a signature document (not JSON)") from None
    check_signature_document(document)
    return document


def check_signature_document(document: Any) -> None:
    if not isinstance(document, dict):
        raise ManifestInvalid("the signature document is not a JSON object")
    for name in ("kid", "alg", "sha256", "signature"):
        if not isinstance(document.get(name), str) or not document[name]:
            raise ManifestInvalid(f"the signature document has no {name!r}")
    if document["alg"] != ALGORITHM:
        raise ManifestInvalid(f"unsupported signature algorithm {document['alg'][:32]!r}")
    if not _HEX64.match(document["sha256"]):
        raise ManifestInvalid("the signature document's sha256 is not 64 lowercase hex digits")


def verify_manifest(keys: KeyRing, manifest: Path, document: dict[str, Any]) -> str:
    """The SHA-256 of a manifest whose signature (and JWS, when present) verifies against
    `keys`; ManifestInvalid otherwise."""
    check_signature_document(document)
    actual = file_sha256(manifest)
    if actual != document["sha256"]:
        raise ManifestInvalid(
            f"the manifest's SHA-256 is {actual}, the signed one is {document['sha256']}: "
            "the file was changed"
        )
    if document["kid"] not in keys.kids:
        raise ManifestInvalid(f"key {document['kid'][:64]!r} is not among {keys.origin}")
    if not keys.check(document["kid"], actual.encode("ascii"), document["signature"]):
        raise ManifestInvalid(f"the signature does not verify with gateway key {document['kid']}")
    if document.get("jws") is not None:
        _verify_jws(keys, document["jws"], actual, document["kid"])
    return actual


def _verify_jws(keys: KeyRing, jws: Any, digest: str, kid: str) -> None:
    parts = jws.split(".") if isinstance(jws, str) else []
    if len(parts) != 3 or parts[1]:
        raise ManifestInvalid("the jws is not a compact JWS with a detached payload")
    try:
        header = orjson.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise ManifestInvalid("the jws header is not base64url JSON") from None
    expected = {**DETACHED_JWS_HEADER, "kid": kid}
    if header != expected:
        raise ManifestInvalid(f"the jws header is {header!r}, expected {expected!r}")
    signing_input = parts[0].encode("ascii") + b"." + digest.encode("ascii")
    if not keys.check(kid, signing_input, parts[2]):
        raise ManifestInvalid(f"the jws does not verify with gateway key {kid}")


def chunks_then_close(handle: IO[bytes], size: int = 64 * 1024) -> Iterator[bytes]:
    """A manifest written to a temporary file, sent from its start; the file is closed
    when the answer is done (or the client went away)."""
    try:
        handle.seek(0)
        while chunk := handle.read(size):
            yield chunk
    finally:
        handle.close()
