"""`gateway audit ...`: the auditor's commands (query, provenance, exposure, exports,
verification). The commands live in audit_query.py and audit_integrity.py."""

from __future__ import annotations

import click


@click.group("audit")
def audit_group() -> None:
    """Query, export and verify the per-record access log."""


# Importing registers the commands on the group.
from gateway.cli import (  # noqa: E402, F401
    audit_archive,
    audit_integrity,
    audit_partitions,
    audit_query,
)
