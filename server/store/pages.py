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


def descending(order_by: str, column: str = "create_time", default_desc: bool = True) -> bool:
    """An `order_by` of one column (AIP-132): `column`, `column asc` or `column desc`;
    empty for the default. True for newest (highest) first."""
    name, _, direction = order_by.strip().partition(" ")
    direction = direction.strip().lower()
    if not name:
        return default_desc
    if name != column or direction not in ("", "asc", "desc"):
        raise InvalidArgument.field(
            "order_by", f"must be {column!r} or {column + ' desc'!r}, not {order_by!r}"
        )
    return direction == "desc"


def start_after(
    db: sqlite_utils.Database, table: str, scope: str, params: list[Any], ident: str, noun: str
) -> list[Any]:
    """The keyset cursor of the row `ident` (an id cursor, OpenAI's `after`): one index
    lookup. A row outside `scope` (another org's, or none) is refused, never an empty page."""
    row = db.execute(
        f"SELECT created_at, id FROM {table} WHERE id = ? AND {scope}", [ident, *params]
    ).fetchone()
    if row is None:
        raise InvalidArgument.field("after_id", f"no {noun} {ident!r} to start after")
    return list(row)


def keyset(
    db: sqlite_utils.Database,
    source: str,
    where: str,
    params: list[Any],
    size: int,
    token: str,
    *,
    desc: bool = True,
    cursor: list[Any] | None = None,
    columns: str = "*",
    time: str = "created_at",
    ident: str = "id",
    skip: int = 0,
) -> tuple[list[dict], str]:
    """One page of rows from `source` matching `where`, ordered by (`time`, `ident`) and
    the next token. The page starts after the token's position, or after `cursor` (an
    id cursor's `start_after`); either is a seek in the index, so page 1,000 costs what
    page 1 does. `skip` (AIP-158) passes over that many rows first, for surfaces that
    page by offset: those rows are read, so it costs what it skips."""
    if token and cursor is not None:
        raise InvalidArgument.field("page_token", "give page_token or after_id, not both")
    if token:
        cursor = decode(token, 2)
        if isinstance(cursor[0], str) or not isinstance(cursor[1], str):
            raise _bad_token()
    if cursor is not None:
        where += f" AND ({time}, {ident}) {'<' if desc else '>'} (?, ?)"
        params = [*params, *cursor]
    way = "DESC" if desc else "ASC"
    rows = list(
        db.query(
            f"SELECT {columns}, {time} AS cursor_time, {ident} AS cursor_id"
            f" FROM {source} WHERE {where} ORDER BY {time} {way}, {ident} {way}"
            " LIMIT ? OFFSET ?",
            [*params, size + 1, skip],
        )
    )
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    return rows[:size], encode([last["cursor_time"], last["cursor_id"]])


def newest_first(
    db: sqlite_utils.Database,
    table: str,
    where: str,
    params: list[Any],
    size: int,
    token: str,
) -> tuple[list[dict], str]:
    """One page of `table` rows matching `where`, newest first, and the next token."""
    return keyset(db, table, where, params, size, token)
