"""Audit queries: events, record provenance, exposure reports and signed manifests."""

from __future__ import annotations
