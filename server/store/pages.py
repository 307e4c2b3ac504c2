"""Keyset pagination: page tokens are opaque cursors, stable under inserts."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import sqlite_utils

from server.errors import InvalidArgument

MAX_PAGE_SIZE = 1000
INT64 = 2**63


def page_size(requested: int, default: int = 20) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(requested or default, MAX_PAGE_SIZE)


def encode(cursor: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(cursor)).encode()).decode()


def _bad_token() -> InvalidArgument:
    return InvalidArgument.field("page_token", "is not a token this server issued")


def _sql_scalar(value: Any) -> bool:
    """A value SQLite can bind: a string, or a number in the int64 range."""
    if isinstance(value, str):
        return True
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and -INT64 <= value < INT64


def decode(token: str, arity: int) -> list[Any]:
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        cursor = None
    if not isinstance(cursor, list) or len(cursor) != arity or not all(map(_sql_scalar, cursor)):
        raise _bad_token()
    return cursor


def newest_first(
    db: sqlite_utils.Database,
    table: str,
    where: str,
    params: list[Any],
    size: int,
    token: str,
) -> tuple[list[dict], str]:
    """One page of `table` rows matching `where`, newest first, and the next token."""
    if token:
        created_at, ident = decode(token, 2)
        if isinstance(created_at, str) or not isinstance(ident, str):
            raise _bad_token()
        where += " AND (created_at, id) < (?, ?)"
        params = [*params, created_at, ident]
    rows = list(
        db.query(
            f"SELECT * FROM {table} WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, size + 1],
        )
    )
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    return rows[:size], encode([last["created_at"], last["id"]])
