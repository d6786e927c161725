"""Records in upstream bodies: selection, ids, content hashes, record-level filtering."""

from gateway.records.body import RecordBody, UnexpectedFields
from gateway.records.selection import ExtractedRecord, RecordError, RecordSpec, extract_records

__all__ = [
    "ExtractedRecord",
    "RecordBody",
    "RecordError",
    "RecordSpec",
    "UnexpectedFields",
    "extract_records",
]
