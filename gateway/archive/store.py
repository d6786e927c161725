"""Where archives lie: a directory (local or shared storage) or an S3-compatible bucket.

Keys are relative names (`access_log_p20261101-1a2b3c4d5e6f.parquet`); the catalogue keeps
keys, not locations, so an archive directory or bucket can move with a config change.
Readers need local files (DuckDB reads them): the directory store hands out its own
files, the S3 store downloads each object once into `cache_dir`, named by its SHA-256,
and checks the digest before anyone reads it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from gateway.archive.config import ArchiveConfig


class ArchiveUnavailable(RuntimeError):
    """An archive the log needs cannot be read (no store configured, missing, altered):
    readers fail rather than answer from part of the log."""


class ArchiveStore(Protocol):
    description: str

    def put_file(self, key: str, source: Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def size(self, key: str) -> int | None: ...

    def list_keys(self) -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def local_file(self, key: str, sha256: str) -> Path: ...


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
        raise ArchiveUnavailable(f"{key!r} is not an archive key")
    return key


class DirectoryStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        self.description = f"directory {self.root}"
        self._checked: set[tuple[str, int, int, str]] = set()

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def put_file(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as handle:
            with source.open("rb") as src:
                shutil.copyfileobj(src, handle, 1 << 20)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, target)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, target)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as error:
            raise ArchiveUnavailable(f"{key}: {error.strerror or error}") from None

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except OSError:
            return None

    def list_keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            str(path.relative_to(self.root)) for path in self.root.rglob("*") if path.is_file()
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_file(self, key: str, sha256: str) -> Path:
        """The file, once its SHA-256 was found right in this process (again when its size
        or modification time changes; `gateway audit verify` always hashes it anew)."""
        path = self._path(key)
        try:
            stat = path.stat()
        except OSError:
            raise ArchiveUnavailable(f"archive {key} is missing from {self.description}") from None
        seen = (str(path), stat.st_size, stat.st_mtime_ns, sha256)
        if seen not in self._checked:
            if file_sha256(path) != sha256:
                raise ArchiveUnavailable(
                    f"archive {key} in {self.description} does not have its SHA-256"
                )
            self._checked.add(seen)
        return path


class S3Store:
    """An S3-compatible bucket through boto3 (AWS, MinIO, Ceph RGW, ...)."""

    def __init__(self, config: ArchiveConfig) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self.bucket = config.bucket or ""
        self.prefix = config.prefix
        self.cache = Path(config.cache_dir)
        self.description = f"s3://{self.bucket}/{self.prefix}"
        self._client = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def _key(self, key: str) -> str:
        return self.prefix + _safe_key(key)

    def put_file(self, key: str, source: Path) -> None:
        self._client.upload_file(str(source), self.bucket, self._key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return answer["Body"].read()
        except (ClientError, BotoCoreError) as error:
            raise ArchiveUnavailable(f"{key}: {error}") from None

    def size(self, key: str) -> int | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return int(
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
            )
        except (ClientError, BotoCoreError):
            return None

    def list_keys(self) -> list[str]:
        found = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            found += [item["Key"][len(self.prefix) :] for item in page.get("Contents", [])]
        return sorted(found)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def local_file(self, key: str, sha256: str) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError

        cached = self.cache / f"{sha256}.parquet"
        if cached.is_file():
            return cached
        self.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.cache, suffix=".part", delete=False) as handle:
            partial = Path(handle.name)
        try:
            self._client.download_file(self.bucket, self._key(key), str(partial))
            if file_sha256(partial) != sha256:
                raise ArchiveUnavailable(
                    f"archive {key} in {self.description} does not have its SHA-256"
                )
            os.replace(partial, cached)
        except (ClientError, BotoCoreError) as error:
            raise ArchiveUnavailable(f"archive {key}: {error}") from None
        finally:
            partial.unlink(missing_ok=True)
        return cached


def open_store(config: ArchiveConfig) -> ArchiveStore:
    if config.store == "directory":
        return DirectoryStore(config.path or "")
    if config.store == "s3":
        return S3Store(config)
    raise ArchiveUnavailable("no archive store is configured ([audit.archive] store)")
