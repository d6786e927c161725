"""Audit integrity: exports, hash-chain verification, checkpoints, retention."""

from __future__ import annotations
