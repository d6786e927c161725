"""The contract of the gateway's own API: schemas, operations, the OpenAPI document, and
the validation every view applies to its input (one style, from the same schemas)."""

from gateway.api.openapi.document import document
from gateway.api.openapi.operations import (
    ADMIN_PREFIX,
    AUDIT_PREFIX,
    BY_ID,
    OPENAPI_PATH,
    OPERATIONS,
    Operation,
)
from gateway.api.openapi.schemas import QUERIES, REQUESTS, RESPONSES, VERSION
from gateway.api.openapi.validate import MAX_ERRORS, parse_query, validate

__all__ = [
    "ADMIN_PREFIX",
    "AUDIT_PREFIX",
    "BY_ID",
    "MAX_ERRORS",
    "OPENAPI_PATH",
    "OPERATIONS",
    "QUERIES",
    "REQUESTS",
    "RESPONSES",
    "VERSION",
    "Operation",
    "document",
    "parse_query",
    "validate",
]
