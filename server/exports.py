"""Export records and their state machine: QUEUED when created, RUNNING while a worker
holds its lease, then SUCCEEDED with its artifacts or FAILED with an error. Each state
change is saved with its TYPE_STATE event in the caller's write transaction.

Exporting the same (model, format, int8) twice returns the existing export; a FAILED one
is queued again under the same id, so a transient failure is never final. An export cut
off by a server stop is marked FAILED at the next start, ready to be created again.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from server.events import EventLog
from server.ids import new_id, now, timestamp
from server.states import FINAL_EXPORT_STATES, export_state_name
from server.store import records
from tunewire.v1 import events_pb2, exports_pb2

Export = exports_pb2.Export
Event = events_pb2.Event
FORMATS = (Export.FORMAT_MERGED_SAFETENSORS, Export.FORMAT_ONNX)
UNFINISHED = (Export.STATE_QUEUED, Export.STATE_RUNNING)


def output_key(export_id: str) -> str:
    """Where an export's artifacts live in the blob store."""
    return f"exports/{export_id}"


def save(db: sqlite_utils.Database, export: Export, org: str, **columns: object) -> None:
    records.put(
        db,
        "exports",
        export,
        org=org,
        model_id=export.model_id,
        format=export.format,
        quantize_int8=int(export.quantize_int8),
        created_at=export.create_time.ToNanoseconds() / 1e9,
        state=export.state,
        **columns,
    )


def load(db: sqlite_utils.Database, export_id: str) -> tuple[Export, str]:
    """An export and its org, by id (the caller has checked the org)."""
    org, proto = db.execute("SELECT org, proto FROM exports WHERE id = ?", [export_id]).fetchone()
    return Export.FromString(proto), org


def transition(
    db: sqlite_utils.Database,
    events: EventLog,
    export: Export,
    org: str,
    state: int,
    message: str,
    level: int = Event.LEVEL_INFO,
    data: dict[str, Any] | None = None,
    **columns: object,
) -> None:
    """Save `export` in `state` with its TYPE_STATE event; in a write transaction."""
    export.state = state
    if state in FINAL_EXPORT_STATES:
        export.finish_time.CopyFrom(timestamp(now()))
        columns.setdefault("lease_expires_at", None)
    save(db, export, org, **columns)
    events.append(
        export.id,
        message,
        level=level,
        type=Event.TYPE_STATE,
        data={"state": export_state_name(state), **(data or {})},
    )


def fail(
    db: sqlite_utils.Database, events: EventLog, export: Export, org: str, code: str, message: str
) -> None:
    export.error.code, export.error.message = code, message
    transition(
        db,
        events,
        export,
        org,
        Export.STATE_FAILED,
        f"Export failed: {message}",
        level=Event.LEVEL_ERROR,
        data={"error": code},
    )


def fail_interrupted(db: sqlite_utils.Database, events: EventLog) -> None:
    """At start: exports a stop cut off fail, saying how to retry. In a write transaction."""
    for org, proto in db.execute(
        "SELECT org, proto FROM exports WHERE state IN (?, ?)", UNFINISHED
    ).fetchall():
        fail(
            db,
            events,
            Export.FromString(proto),
            org,
            "interrupted",
            "the server stopped before the export finished; create it again to retry",
        )


def find_or_queue(
    db: sqlite_utils.Database, events: EventLog, org: str, spec: Export
) -> tuple[Export, bool]:
    """The export of `spec`'s model, format and int8: the existing one, or a new one (or
    the failed one again) queued now, which the bool says. In a write transaction."""
    row = db.execute(
        "SELECT proto FROM exports WHERE org = ? AND model_id = ? AND format = ?"
        " AND quantize_int8 = ?",
        [org, spec.model_id, spec.format, int(spec.quantize_int8)],
    ).fetchone()
    if row is None:
        export = Export(
            id=new_id("export"),
            model_id=spec.model_id,
            format=spec.format,
            quantize_int8=spec.quantize_int8,
            create_time=timestamp(now()),
        )
        message = "Export queued"
    else:
        export = Export.FromString(row[0])
        if export.state != Export.STATE_FAILED:
            return export, False
        for name in ("error", "finish_time", "max_logit_diff", "int8_max_logit_diff"):
            export.ClearField(name)
        message = "Export queued again after a failure"
    export.state = Export.STATE_QUEUED
    save(db, export, org, attempt=0)
    events.append(export.id, message, type=Event.TYPE_STATE, data={"state": "queued"})
    return export, True


def lease_next(
    db: sqlite_utils.Database, events: EventLog, lease_seconds: float
) -> tuple[Export, str, int] | None:
    """Lease the oldest queued export: (export, org, epoch), or None. In a write
    transaction."""
    row = db.execute(
        "SELECT id, org, proto, lease_epoch, attempt FROM exports WHERE state = ?"
        " ORDER BY created_at LIMIT 1",
        [Export.STATE_QUEUED],
    ).fetchone()
    if row is None:
        return None
    export_id, org, proto, epoch, attempt = row
    export = Export.FromString(proto)
    transition(
        db,
        events,
        export,
        org,
        Export.STATE_RUNNING,
        "Export started",
        lease_epoch=epoch + 1,
        lease_expires_at=now() + lease_seconds,
        attempt=attempt + 1,
    )
    return export, org, epoch + 1


def end_attempt(
    db: sqlite_utils.Database,
    events: EventLog,
    export_id: str,
    reason: str,
    *,
    max_attempts: int,
) -> None:
    """The worker running an export was lost: queue it again until `max_attempts`
    attempts have ended this way, then fail saying why. In a write transaction."""
    export, org = load(db, export_id)
    (attempt,) = db.execute("SELECT attempt FROM exports WHERE id = ?", [export_id]).fetchone()
    if attempt >= max_attempts:
        fail(
            db,
            events,
            export,
            org,
            "worker_lost",
            f"gave up after {attempt} attempt(s); last: {reason}",
        )
        return
    transition(
        db,
        events,
        export,
        org,
        Export.STATE_QUEUED,
        f"Export attempt {attempt} ended ({reason}); queued again",
        level=Event.LEVEL_WARN,
        lease_expires_at=None,
    )
