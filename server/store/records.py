"""Reading and writing records stored as protobuf messages, scoped to an org."""

from __future__ import annotations

from typing import TypeVar

import sqlite_utils
from google.protobuf.message import Message

from server.errors import NotFound

M = TypeVar("M", bound=Message)


def get(db: sqlite_utils.Database, table: str, cls: type[M], org: str, ident: str) -> M:
    """The record `ident` of `org`; another org's record is NOT_FOUND like a missing one."""
    row = db.execute(f"SELECT proto FROM {table} WHERE id = ? AND org = ?", [ident, org]).fetchone()
    if row is None:
        raise NotFound(table.rstrip("s"), ident)
    return cls.FromString(row[0])


def put(db: sqlite_utils.Database, table: str, record: Message, **columns: object) -> None:
    """Insert or replace a record; call inside a write transaction."""
    db[table].upsert({"id": record.id, **columns, "proto": record.SerializeToString()}, pk="id")
