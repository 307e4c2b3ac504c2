"""Persistence: SQLite (sqlite-utils) for records, a directory for blobs."""
