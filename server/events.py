"""Per-job (and per-export) event logs with gapless sequences, and the wake-up
signal live watchers wait on.

Appends happen inside the caller's write transaction. All control-plane code
runs on one asyncio loop and never awaits inside a transaction, so waking
watchers at append time is safe: they run only after the commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import sqlite_utils
from google.protobuf import struct_pb2

from server.ids import new_id, now, timestamp
from tunewire.v1 import events_pb2

Event = events_pb2.Event


class EventLog:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._signals: dict[str, asyncio.Event] = {}
        # parent -> ((sequence, limit), events): the last read of each parent,
        # valid until its next append. Live watchers of one job wake together at
        # the same cursor, so a thousand of them cost one query per event. Filled
        # only from committed rows, so a rolled-back append is never served.
        self._reads: dict[str, tuple[tuple[int, int], list[Event]]] = {}
        self.closing = False
        """Set when the server stops: live watchers end instead of waiting."""

    def append(
        self,
        parent: str,
        message: str,
        *,
        level: Event.Level.ValueType = Event.LEVEL_INFO,
        type: Event.Type.ValueType = Event.TYPE_MESSAGE,
        data: dict | None = None,
        dedupe_key: str | None = None,
    ) -> Event | None:
        """Append an event; call inside a write transaction. With `dedupe_key`, an
        event whose key `parent` already has is dropped (returns None)."""
        if (
            dedupe_key
            and self.db.execute(
                "SELECT 1 FROM events WHERE parent = ? AND dedupe_key = ?", [parent, dedupe_key]
            ).fetchone()
        ):
            return None
        last = self.db.execute(
            "SELECT MAX(sequence) FROM events WHERE parent = ?", [parent]
        ).fetchone()[0]
        event = Event(
            id=new_id("ftevent"),
            parent=parent,
            sequence=(last or 0) + 1,
            create_time=timestamp(now()),
            level=level,
            type=type,
            message=message,
        )
        if data:
            payload = struct_pb2.Struct()
            payload.update(data)
            event.data.CopyFrom(payload)
        self.db["events"].insert(
            {
                "parent": parent,
                "sequence": event.sequence,
                "id": event.id,
                "type": event.type,
                "dedupe_key": dedupe_key,
                "proto": event.SerializeToString(),
            }
        )
        self._reads.pop(parent, None)
        signal = self._signals.pop(parent, None)
        if signal is not None:
            signal.set()
        return event

    def after(self, parent: str, sequence: int, limit: int) -> list[Event]:
        """Up to `limit` events of `parent` after `sequence`, oldest first. The
        events returned are shared between callers: read them, don't change them."""
        read = self._reads.get(parent)
        if read is not None and read[0] == (sequence, limit):
            return read[1]
        rows = self.db.execute(
            "SELECT proto FROM events WHERE parent = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            [parent, sequence, limit],
        )
        events = [Event.FromString(proto) for (proto,) in rows]
        self._reads[parent] = ((sequence, limit), events)
        return events

    def page(
        self,
        parent: str,
        *,
        after: int,
        cursor: int | None,
        limit: int,
        desc: bool = False,
        types: Sequence[int] = (),
    ) -> list[Event]:
        """Up to `limit` events of `parent` with a sequence above `after`, in sequence
        order (`desc`: newest first), starting past `cursor`, of `types` (all when
        empty). One seek in the (parent, sequence) or (parent, type, sequence) index,
        however many events the job has."""
        # One lower bound, not two: SQLite seeks on only one of `sequence > ?` terms and
        # filters the rest, which would make page k cost k pages.
        if cursor is not None and not desc:
            after, cursor = max(after, cursor), None
        where, params = "parent = ? AND sequence > ?", [parent, after]
        if cursor is not None:
            where += " AND sequence < ?"
            params.append(cursor)
        if types:
            where += f" AND type IN ({','.join('?' * len(types))})"
            params += list(types)
        rows = self.db.execute(
            f"SELECT proto FROM events WHERE {where}"
            f" ORDER BY sequence {'DESC' if desc else 'ASC'} LIMIT ?",
            [*params, limit],
        )
        return [Event.FromString(proto) for (proto,) in rows]

    def sequence_of(self, parent: str, event_id: str) -> int | None:
        """The sequence of `parent`'s event `event_id`, or None if it has none such."""
        row = self.db.execute(
            "SELECT sequence FROM events WHERE id = ? AND parent = ?", [event_id, parent]
        ).fetchone()
        return row[0] if row else None

    def forget(self, parent: str) -> None:
        """Drop what is kept for `parent` once nobody watches it."""
        self._reads.pop(parent, None)
        signal = self._signals.get(parent)
        if signal is not None and not signal.is_set():
            del self._signals[parent]

    def close(self) -> None:
        """Wake every live watcher to end its stream: the server is stopping, and a
        stream would otherwise hold the shutdown for the whole grace period."""
        self.closing = True
        for signal in self._signals.values():
            signal.set()

    def signal(self, parent: str) -> asyncio.Event:
        """The signal set by the next append to `parent`. Take it before reading."""
        signal = self._signals.get(parent)
        if signal is None:
            signal = self._signals[parent] = asyncio.Event()
        return signal
