"""`gateway anomalies ...`: scan, list, watch, simulate, evaluate."""

from __future__ import annotations

import click


@click.group("anomalies")
def anomalies_group() -> None:
    """Detect suspicious access in the per-record log."""
