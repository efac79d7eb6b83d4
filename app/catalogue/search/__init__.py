"""Elasticsearch 5.6 access: a small typed REST layer (client), the index definition (mappings),
query bodies (queries) and index maintenance (indexer)."""
