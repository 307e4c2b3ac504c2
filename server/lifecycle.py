"""Job records and their state machine. Every state change is written together
with its TYPE_STATE event in the caller's transaction, so the log and the job
can never disagree."""

from __future__ import annotations

import json
from typing import NamedTuple

import sqlite_utils

from server import webhooks
from server.errors import FailedPrecondition, NotFound
from server.events import EventLog
from server.ids import now, timestamp
from server.states import FINAL_JOB_STATES, job_state_name
from tunewire.v1 import common_pb2, events_pb2, jobs_pb2, worker_pb2

Job = jobs_pb2.Job
Event = events_pb2.Event

FINAL_STATES_SQL = ",".join(str(int(s)) for s in sorted(FINAL_JOB_STATES))

ALLOWED: dict[int, frozenset[int]] = {
    Job.STATE_VALIDATING_FILES: frozenset({Job.STATE_QUEUED, Job.STATE_FAILED}),
    Job.STATE_QUEUED: frozenset({Job.STATE_RUNNING, Job.STATE_CANCELLED, Job.STATE_FAILED}),
    # RUNNING -> QUEUED: the trainer was lost and the job waits to resume.
    Job.STATE_RUNNING: frozenset(
        {
            Job.STATE_PAUSING,
            Job.STATE_SUCCEEDED,
            Job.STATE_FAILED,
            Job.STATE_CANCELLED,
            Job.STATE_QUEUED,
        }
    ),
    Job.STATE_PAUSING: frozenset(
        {
            Job.STATE_PAUSED,
            Job.STATE_SUCCEEDED,
            Job.STATE_FAILED,
            Job.STATE_CANCELLED,
            Job.STATE_QUEUED,
        }
    ),
    Job.STATE_PAUSED: frozenset({Job.STATE_QUEUED, Job.STATE_CANCELLED}),
}

CONTINUE, CANCEL, PAUSE = (
    worker_pb2.COMMAND_CONTINUE,
    worker_pb2.COMMAND_CANCEL,
    worker_pb2.COMMAND_PAUSE,
)


class Move(NamedTuple):
    """Where a user's command takes a job: its next state, the command left pending for
    its trainer, and the event that says so."""

    state: int
    command: int
    message: str


STOPPING = "Cancellation requested; stopping the trainer"
# The one table of steering: where a job stands (its state and the command pending for
# its trainer) -> the user commands it takes there -> their move. A command missing
# from a row is refused. Once a cancel is accepted it wins: the job takes nothing but
# the cancel again, which changes nothing (None).
STEERING: dict[tuple[int, int], dict[str, Move | None]] = {
    (Job.STATE_QUEUED, CONTINUE): {"cancel": Move(Job.STATE_CANCELLED, CONTINUE, "Job cancelled")},
    (Job.STATE_RUNNING, CONTINUE): {
        # The trainer stops after the step in flight: see WorkerServicer's reports.
        "cancel": Move(Job.STATE_RUNNING, CANCEL, STOPPING),
        "pause": Move(Job.STATE_PAUSING, PAUSE, "Pause requested; saving a checkpoint"),
    },
    (Job.STATE_PAUSING, PAUSE): {"cancel": Move(Job.STATE_PAUSING, CANCEL, STOPPING)},
    (Job.STATE_PAUSED, CONTINUE): {
        "cancel": Move(Job.STATE_CANCELLED, CONTINUE, "Job cancelled"),
        "resume": Move(Job.STATE_QUEUED, CONTINUE, "Job resumed; waiting for a trainer"),
    },
    (Job.STATE_RUNNING, CANCEL): {"cancel": None},
    (Job.STATE_PAUSING, CANCEL): {"cancel": None},
}
assert all(
    move is None or move.state == state or move.state in ALLOWED[state]
    for (state, _), moves in STEERING.items()
    for move in moves.values()
), "a steering move the state machine does not allow"


def load(db: sqlite_utils.Database, job_id: str, org: str | None = None) -> Job:
    """A job by id; with `org`, only that org's and not deleted (others are NOT_FOUND).
    Without it (the scheduler, trainers' reports), a deleted job too: one deleted while
    running is still being stopped."""
    sql, params = "SELECT proto FROM jobs WHERE id = ?", [job_id]
    if org is not None:
        sql, params = sql + " AND org = ? AND deleted_at IS NULL", [*params, org]
    row = db.execute(sql, params).fetchone()
    if row is None:
        raise NotFound("job", job_id)
    return Job.FromString(row[0])


def insert(db: sqlite_utils.Database, job: Job, request_id: str | None, request_hash: str) -> None:
    """Store a new job; `request_hash` fingerprints the request its `request_id` made."""
    db["jobs"].insert(
        {
            "id": job.id,
            "org": job.organization,
            "state": job.state,
            "created_at": job.create_time.ToNanoseconds() / 1e9,
            "request_id": request_id,
            "request_hash": request_hash if request_id else None,
            "training_file": job.training_file,
            "validation_file": job.validation_file or None,
            "metadata": json.dumps(dict(job.metadata), sort_keys=True),
            "proto": job.SerializeToString(),
        }
    )


def save(db: sqlite_utils.Database, job: Job, **columns: object) -> None:
    """Write back a changed job (and any lease/command columns given)."""
    db["jobs"].update(job.id, {"state": job.state, "proto": job.SerializeToString(), **columns})


def pending(db: sqlite_utils.Database, job_id: str) -> int:
    """The command pending for `job_id`'s trainer (CONTINUE when none)."""
    row = db.execute("SELECT command FROM jobs WHERE id = ?", [job_id]).fetchone()
    return (row[0] if row else None) or CONTINUE


def steer(db: sqlite_utils.Database, events: EventLog, job_id: str, org: str, command: str) -> Job:
    """Apply a user's "cancel", "pause" or "resume" as `STEERING` says, or refuse it
    naming where the job stands. In a write transaction."""
    job = load(db, job_id, org)
    standing = (job.state, pending(db, job.id))
    moves = STEERING.get(standing, {})
    if command not in moves:
        where = job_state_name(job.state)
        if standing[1] == CANCEL:
            where += ", with a cancel pending"
        raise FailedPrecondition(f"cannot {command} job {job.id!r}: it is {where}")
    move = moves[command]
    if move is None:
        return job
    if move.state == job.state:
        save(db, job, command=move.command)
        events.append(job.id, move.message)
        return job
    return transition(db, events, job, move.state, move.message, command=move.command)


def transition(
    db: sqlite_utils.Database,
    events: EventLog,
    job: Job,
    state: int,
    message: str,
    *,
    level: int = Event.LEVEL_INFO,
    data: dict | None = None,
    **columns: object,
) -> Job:
    """Move `job` to `state`, save it and append its state event; a final state also
    writes its webhook deliveries (the outbox). In a write transaction."""
    if state not in ALLOWED.get(job.state, frozenset()):
        raise FailedPrecondition(f"job {job.id!r} is {job_state_name(job.state)}")
    job.state = state
    job.update_time.CopyFrom(timestamp(now()))
    if state in FINAL_JOB_STATES:
        job.finish_time.CopyFrom(job.update_time)
        job.ClearField("estimated_finish")
    save(db, job, **columns)
    events.append(
        job.id,
        message,
        level=level,
        type=Event.TYPE_STATE,
        data={"state": job_state_name(state), **(data or {})},
    )
    if state in FINAL_JOB_STATES:
        webhooks.job_finished(db, job)
    return job


def end_attempt(
    db: sqlite_utils.Database,
    events: EventLog,
    job: Job,
    command: int,
    reason: str,
    *,
    max_attempts: int,
    error_code: str = "trainer_lost",
    counts: bool = True,
) -> Job:
    """A trainer attempt ended without finishing the job: honour a pending cancel or
    pause, else retry from the last checkpoint until `max_attempts` attempts have
    ended this way, then fail saying why. Only such a failure spends an attempt (the
    next one gets the next number); `counts=False` (a control-plane restart) retries
    without spending one. In a write transaction."""
    end_lease = {"lease_expires_at": None, "command": CONTINUE}
    attempt = job.progress.attempt
    if command == CANCEL:
        return transition(db, events, job, Job.STATE_CANCELLED, "Job cancelled", **end_lease)
    if job.state == Job.STATE_PAUSING:
        return transition(
            db,
            events,
            job,
            Job.STATE_PAUSED,
            f"Job paused at its last checkpoint ({reason} before it could save one)",
            **end_lease,
        )
    if counts and attempt >= max_attempts:
        job.error.CopyFrom(
            common_pb2.Error(
                code=error_code, message=f"gave up after {attempt} attempt(s); last: {reason}"
            )
        )
        return transition(
            db,
            events,
            job,
            Job.STATE_FAILED,
            f"Job failed: {job.error.message}",
            level=Event.LEVEL_ERROR,
            data={"error": error_code},
            **end_lease,
        )
    if counts:
        job.progress.attempt += 1
    return transition(
        db,
        events,
        job,
        Job.STATE_QUEUED,
        f"Trainer attempt {attempt} ended ({reason}); the job will resume from its last checkpoint",
        level=Event.LEVEL_WARN,
        **end_lease,
    )
