"""Store: events appended per second by several writer processes at once on one database.

Ours: each writer opens the database with `server.store.db.connect` (WAL, busy_timeout,
synchronous NORMAL) and appends through `server.events.EventLog.append`, one
`server.store.db.write` transaction (BEGIN IMMEDIATE) per event, exactly as the control
plane appends a job event. Baseline: plain `sqlite3` with its defaults (rollback journal,
synchronous FULL, Python's 5 s timeout), one autocommit INSERT per event that takes the
next sequence number in the same statement. A second reference is the same autocommit
INSERT on a WAL database with our pragmas: the ceiling for one transaction per event.

All writers append to the same job's log (the hardest case for gapless sequences);
afterwards the log is checked to hold 1..N exactly once. A busy error is any
sqlite3.OperationalError ("database is locked"), counted, not retried. Writers start
together on a barrier; the rate is all events over the wall time until the last writer
finishes. Each variant gets a fresh database file in the same directory.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.harness import Context, Figure, Section, interleaved, log, median_of, spread_of

NAME = "store"
TITLE = "Store: concurrent event appends"
PARENT = "ftjob-000000000000000000000bench"
DATA = {
    "step": 12,
    "total_steps": 400,
    "train_loss": 1.2345,
    "learning_rate": 0.0002,
    "tokens_per_second": 1234.5,
}


def _writer_ours(path: str, count: int, start: Any, out: Any) -> None:
    from server.events import EventLog
    from server.store.db import connect, write
    from tunewire.v1 import events_pb2

    db = connect(Path(path))
    events = EventLog(db)
    busy = 0
    start.wait()
    began = time.perf_counter()
    for step in range(count):
        try:
            with write(db):
                events.append(
                    PARENT,
                    f"Step {step}: training loss=1.23",
                    type=events_pb2.Event.TYPE_METRICS,
                    data=DATA,
                )
        except sqlite3.OperationalError:
            busy += 1
    out.put((time.perf_counter() - began, busy))


def _writer_plain(path: str, count: int, start: Any, out: Any, wal: bool) -> None:
    from server.ids import new_id, now, timestamp
    from tunewire.v1 import events_pb2

    conn = sqlite3.connect(path, isolation_level=None)
    if wal:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = NORMAL")
    busy = 0
    start.wait()
    began = time.perf_counter()
    for step in range(count):
        event = events_pb2.Event(
            id=new_id("ftevent"),
            parent=PARENT,
            create_time=timestamp(now()),
            message=f"Step {step}",
        )
        event.data.update(DATA)
        try:
            conn.execute(
                "INSERT INTO events (parent, sequence, proto) VALUES (?, (SELECT "
                "COALESCE(MAX(sequence), 0) + 1 FROM events WHERE parent = ?), ?)",
                [PARENT, PARENT, event.SerializeToString()],
            )
        except sqlite3.OperationalError:
            busy += 1
    out.put((time.perf_counter() - began, busy))


def _fresh_db(path: Path, kind: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if kind == "ours":
        from server.store.db import connect

        connect(path).conn.close()
        return
    conn = sqlite3.connect(path, isolation_level=None)
    if kind == "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE events (parent TEXT NOT NULL, sequence INTEGER NOT NULL, "
        "proto BLOB NOT NULL, PRIMARY KEY (parent, sequence))"
    )
    conn.close()


def _round(work: Path, kind: str, writers: int, count: int) -> dict[str, float]:
    path = work / f"{kind}.db"
    _fresh_db(path, kind)
    spawn = multiprocessing.get_context("spawn")
    start, out = spawn.Event(), spawn.Queue()
    if kind == "ours":
        procs = [
            spawn.Process(target=_writer_ours, args=(str(path), count, start, out))
            for _ in range(writers)
        ]
    else:
        procs = [
            spawn.Process(target=_writer_plain, args=(str(path), count, start, out, kind == "wal"))
            for _ in range(writers)
        ]
    for proc in procs:
        proc.start()
    time.sleep(0.5 + 0.2 * writers)  # every writer imported and connected
    began = time.perf_counter()
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join(timeout=60)
    conn = sqlite3.connect(path)
    sequences = [
        row[0]
        for row in conn.execute(
            "SELECT sequence FROM events WHERE parent = ? ORDER BY sequence", [PARENT]
        )
    ]
    conn.close()
    busy = sum(b for _, b in results)
    appended = len(sequences)
    return {
        "events_per_s": appended / elapsed,
        "busy_errors": busy,
        "appended": appended,
        "gapless": float(sequences == list(range(1, appended + 1))),
        "slowest_writer_s": max(s for s, _ in results),
    }


def run(ctx: Context) -> Section:
    writers = ctx.scale(4, 2)
    count = ctx.scale(300, 150)
    variants = {
        kind: (lambda kind=kind: _round(ctx.work, kind, writers, count))
        for kind in ("ours", "plain", "wal")
    }
    samples = interleaved(variants, ctx.repeats, warmup=ctx.scale(1, 0), log=log(NAME))
    ours, plain, wal = samples["ours"], samples["plain"], samples["wal"]
    busy = sum(s["busy_errors"] for s in ours)
    plain_busy = sum(s["busy_errors"] for s in plain)
    gapless = all(s["gapless"] == 1.0 and s["appended"] == writers * count for s in ours)
    rate = median_of(ours, "events_per_s")
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"{writers} writer processes x {count} events each, all on one job's log, one "
        "transaction per event; fresh database per round on the same disk.",
        "Ours: server.store.db.connect + write (BEGIN IMMEDIATE) + EventLog.append. "
        "Baseline: plain sqlite3 defaults, autocommit INSERT computing the sequence in the "
        "statement. Reference: the same INSERT on WAL + synchronous NORMAL + busy_timeout.",
        f"Interleaved, {ctx.scale('1 warm-up round + ', '')}{len(ours)} repeat(s); medians.",
    ]
    section.add(
        Figure(
            "events appended per second",
            rate,
            median_of(plain, "events_per_s"),
            "ev/s",
            "plain sqlite3 autocommit INSERTs (defaults)",
            spread=f"ours {spread_of(ours, 'events_per_s')}; "
            f"baseline {spread_of(plain, 'events_per_s')}",
        ),
        Figure(
            "events appended per second",
            rate,
            median_of(wal, "events_per_s"),
            "ev/s",
            "raw INSERT, WAL + our pragmas (ceiling)",
        ),
        Figure(
            "busy errors",
            busy,
            plain_busy,
            "",
            "plain sqlite3 autocommit INSERTs",
            higher_is_better=None,
            goal="0",
            met=busy == 0,
            note="summed over all rounds",
        ),
        Figure(
            "log is gapless 1..N after every round",
            float(gapless),
            None,
            "",
            higher_is_better=None,
            goal="yes",
            met=gapless,
        ),
    )
    section.summary = (
        f"{rate:.0f} events/s with {writers} concurrent writer processes, {busy} busy errors "
        f"({rate / median_of(plain, 'events_per_s'):.1f}x plain sqlite3 autocommit inserts, "
        f"{rate / median_of(wal, 'events_per_s'):.2f}x the raw WAL insert ceiling)."
    )
    return section
