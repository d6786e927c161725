"""Records in upstream bodies: selection, ids, content hashes, record-level filtering."""

from gateway.records.selection import ExtractedRecord, RecordError, RecordSpec, extract_records

__all__ = ["ExtractedRecord", "RecordError", "RecordSpec", "extract_records"]
