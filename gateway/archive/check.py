"""`gateway audit verify` on archives: is each one what its signed manifest says?

For every archive in the catalogue (in the window verified): the manifest's signature
(the gateway's key, valid when it was made), the catalogue row against the signed text,
the copy in the store against it, the file's SHA-256 and size, its row count, and each
chain's span (first and last sequence number, the hashes at both ends, its row count).
An archive that passes joins the chain walk (`gateway.audit.verify`), which checks every
row's hash and its links, across the boundary into the next archive or the table; one
that fails is reported and left out, so its rows show up as missing from their chains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
from sqlalchemy import Engine, text

from gateway.archive.catalogue import ArchiveEntry, entries
from gateway.archive.manifest import SignedManifest
from gateway.archive.reader import files_connection, store
from gateway.archive.store import ArchiveUnavailable, file_sha256
from gateway.audit.seal import SignatureCheck


@dataclass
class ArchiveCheck:
    intact: list[ArchiveEntry] = field(default_factory=list)
    rows: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (archive name, what)
    unlisted: list[str] = field(default_factory=list)  # manifests in the store only


def check_archives(
    engine: Engine,
    check: SignatureCheck,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    only: Sequence[ArchiveEntry] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ArchiveCheck:
    found = list(only) if only is not None else entries(engine, since, until)
    result = ArchiveCheck()
    if not found:
        return result
    try:
        archive_store = store()
    except ArchiveUnavailable as error:
        result.problems += [(entry.name, str(error)) for entry in found]
        return result
    for entry in found:
        if progress is not None:
            progress(entry.name)
        problem = _check_one(entry, check)
        if problem is None:
            result.intact.append(entry)
            result.rows += entry.rows
        else:
            result.problems.append((entry.name, problem))
    if only is None and since is None and until is None:
        listed = {entry.manifest_key for entry in entries(engine)}
        result.unlisted = [
            key
            for key in archive_store.list_keys()
            if key.endswith(".manifest.json") and key not in listed
        ]
    return result


def _check_one(entry: ArchiveEntry, check: SignatureCheck) -> str | None:
    signed, manifest = entry.signed, entry.manifest
    if not signed.valid(check):
        return f"the manifest has no valid signature (kid {signed.kid!r})"
    listed = (entry.name, entry.rows, entry.file_key, entry.file_sha256, entry.file_bytes)
    vouched = (
        manifest.name,
        manifest.rows,
        manifest.file_key,
        manifest.file_sha256,
        manifest.file_bytes,
    )
    if listed != vouched:
        return "the catalogue's entry differs from its signed manifest"
    archive_store = store()
    try:
        kept = SignedManifest.from_document(archive_store.get_bytes(entry.manifest_key))
    except ArchiveUnavailable as error:
        return f"the manifest is missing from the store: {error}"
    except (ValueError, KeyError, TypeError):
        return "the store's copy of the manifest is not a manifest"
    if (kept.payload, kept.kid, kept.signature) != (signed.payload, signed.kid, signed.signature):
        return "the store's copy of the manifest differs from the catalogue's"
    try:
        path = archive_store.local_file(entry.file_key, entry.file_sha256)
    except ArchiveUnavailable as error:
        return str(error)
    if path.stat().st_size != manifest.file_bytes or file_sha256(path) != manifest.file_sha256:
        return "the file does not have the size and SHA-256 its manifest gives"
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError) as error:
        return f"the file is not readable Parquet: {error}"
    if rows != manifest.rows:
        return f"the file holds {rows} rows, its manifest says {manifest.rows}"
    return _check_spans(entry, path)


def _check_spans(entry: ArchiveEntry, path: Path) -> str | None:
    spans = {span.chain_id: span for span in entry.manifest.chains}
    query = text(
        "SELECT chain_id, count(*), min(seq), max(seq),"
        " arg_min(prev_hash, seq), arg_max(row_hash, seq)"
        " FROM access_log GROUP BY chain_id"
    )
    with files_connection([path]) as connection:
        found = {row[0]: tuple(row[1:]) for row in connection.execute(query)}
    if set(found) != set(spans):
        return "the file's chains are not the ones its manifest lists"
    for chain_id, span in spans.items():
        expected = (
            span.rows,
            span.first_seq,
            span.last_seq,
            span.first_prev_hash,
            span.last_row_hash,
        )
        if found[chain_id] != expected:
            return f"chain {chain_id} in the file does not span what its manifest says"
    return None
