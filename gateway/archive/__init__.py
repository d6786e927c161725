"""Archives of the access log: old daily partitions verified, written as signed Parquet
(zstd) to a directory or an S3-compatible bucket, and dropped (`gateway audit archive`);
read back transparently by every auditor read through DuckDB (`reader`), and checked by
`gateway audit verify` (`check`). docs/DESIGN.md §11."""
