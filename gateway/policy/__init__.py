"""Casbin policy: rule storage, per-project enforcers, decision cache, versions."""

from gateway.policy.engine import Decision, PolicyEngine
from gateway.policy.rules import PolicyFileError, Rule, parse_csv, render_csv

__all__ = ["Decision", "PolicyEngine", "PolicyFileError", "Rule", "parse_csv", "render_csv"]
