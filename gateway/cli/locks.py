"""`gateway lock ...`, `gateway unlock`, `gateway locks`: the kill switch from a shell."""

from __future__ import annotations

import click


def register_lock_commands(main: click.Group) -> None:
    """Add the lock commands to the top-level `gateway` group."""
