"""The per-record access log: durable group-commit writer and tamper-evidence chain."""

from gateway.audit.writer import AuditUnavailable, AuditWriter

__all__ = ["AuditUnavailable", "AuditWriter"]
