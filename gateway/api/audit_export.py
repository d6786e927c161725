"""Streamed exports of the access log (CSV, JSON Lines, OCSF) on the audit blueprint."""

from __future__ import annotations
