"""The demo's one error: something the newcomer must fix or know about."""

from __future__ import annotations


class DemoError(Exception):
    """Something the newcomer must fix or know about; printed without a traceback."""
