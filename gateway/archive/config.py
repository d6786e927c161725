"""`[audit.archive]`: where `gateway audit archive` puts the access log's old partitions."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from gateway.configbase import PositiveInt, Problem, ReadableFile, Section, Text, secret_from_file

DEFAULT_CACHE_DIR = str(Path(tempfile.gettempdir()) / "gateway-archive-cache")


class ArchiveConfig(Section):
    """Signed Parquet archives of old access-log partitions, in a directory or an
    S3-compatible bucket. Readers (verify, query, exposure, exports) find them through the
    database's `audit_archive` catalogue, so the store must stay reachable to them."""

    store: Literal["directory", "s3"] | None = None
    """None: archiving is off (and an archived log cannot be read)."""
    path: Text | None = None
    """directory: the archive directory (shared by every host that reads the log)."""
    bucket: Text | None = None
    prefix: Text = "gateway-audit/"
    endpoint_url: Text | None = None
    """s3: an S3-compatible service's URL (MinIO, Ceph, ...); AWS when unset."""
    region: Text = "us-east-1"
    access_key_id: Text | None = Field(default=None, repr=False)
    secret_access_key: Text | None = Field(default=None, repr=False)
    secret_access_key_file: ReadableFile | None = Field(default=None, exclude=True)
    """s3 credentials; unset, boto3's own chain (environment, instance role) applies."""
    cache_dir: Text = DEFAULT_CACHE_DIR
    """s3: where archives are downloaded (checked against their SHA-256) for reading."""
    row_group_rows: PositiveInt = 128 * 1024
    """Rows per Parquet row group: readers skip groups by their time and vendor ranges."""

    @model_validator(mode="before")
    @classmethod
    def _secret_from_file(cls, data: Any) -> Any:
        return secret_from_file(data, "secret_access_key")

    @model_validator(mode="after")
    def _complete(self) -> ArchiveConfig:
        if self.store == "directory" and not self.path:
            raise Problem("path", "the directory store needs a path")
        if self.store == "s3" and not self.bucket:
            raise Problem("bucket", "the s3 store needs a bucket")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise Problem("access_key_id", "give both access_key_id and secret_access_key")
        return self
