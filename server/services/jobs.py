"""JobService: create, read, steer and watch fine-tuning jobs."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import grpc
from google.protobuf import empty_pb2

from server import integrations, lifecycle
from server.control_plane import ControlPlane, authenticated, caller_key, caller_org
from server.errors import InvalidArgument, Unavailable
from server.ids import new_id, now, timestamp
from server.job_spec import check_create, check_metadata
from server.lifecycle import Event, Job
from server.secrets import box
from server.states import FINAL_JOB_STATES, job_state_name
from server.store import pages
from server.store.db import write
from tunewire.v1 import checkpoints_pb2, jobs_pb2, jobs_pb2_grpc

STREAM_BATCH = 500
UPDATABLE = frozenset({"metadata"})
# An org's jobs that lists show: not deleted (the partial index jobs_listed).
LISTED = "org = ? AND deleted_at IS NULL"
FINAL_NAMES = frozenset(job_state_name(s) for s in FINAL_JOB_STATES)


def _final(event: Event) -> bool:
    """Whether `event` is a job's final state event, its last."""
    return event.type == Event.TYPE_STATE and event.data["state"] in FINAL_NAMES


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self._watching: Counter[str] = Counter()  # job id -> live StreamJobEvents calls

    @authenticated
    async def CreateJob(self, request: jobs_pb2.CreateJobRequest, context) -> Job:
        org, db = caller_org(), self.plane.db
        fingerprint = hashlib.sha256(request.job.SerializeToString(deterministic=True)).hexdigest()
        if request.request_id:
            row = db.execute(
                "SELECT id, request_hash FROM jobs WHERE org = ? AND request_id = ?",
                [org, request.request_id],
            ).fetchone()
            if row and row[1] not in (None, fingerprint):
                raise InvalidArgument.field(
                    "request_id",
                    "this idempotency key was already used with other parameters; "
                    "send a new key to create another job",
                )
            if row:
                return lifecycle.load(db, row[0])
        base_models = self.plane.base_model_names()
        if request.job.base_model not in base_models:
            self.plane.check_base_model(request.job.base_model)  # why, if it is a broken one
        encoders = self.plane.encoder_names()
        job = check_create(db, org, request.job, request.request_id, base_models, encoders)
        keys = integrations.take_keys(job)  # sealed apart; the job never holds them
        job.id = new_id("ftjob")
        job.organization = org
        job.creator = caller_key().id
        job.state = Job.STATE_VALIDATING_FILES
        job.create_time.CopyFrom(timestamp(now()))
        job.update_time.CopyFrom(job.create_time)
        with write(db):
            lifecycle.insert(db, job, request.request_id or None, fingerprint)
            integrations.save_keys(db, box(self.plane.settings.secret_key_path), job.id, keys)
            self.plane.events.append(
                job.id,
                f"Validating training file: {job.training_file}",
                type=lifecycle.Event.TYPE_STATE,
                data={"state": "validating_files"},
            )
            # Files were validated when they were uploaded, so the check is
            # settled here and the job is queued in the same transaction.
            lifecycle.transition(db, self.plane.events, job, Job.STATE_QUEUED, "Job queued")
        self.plane.wake_scheduler()
        return job

    @authenticated
    async def GetJob(self, request: jobs_pb2.GetJobRequest, context) -> Job:
        return lifecycle.load(self.plane.db, request.job_id, caller_org())

    @authenticated
    async def ListJobs(self, request: jobs_pb2.ListJobsRequest, context):
        org, db = caller_org(), self.plane.db
        desc = pages.descending(request.order_by)
        size = pages.page_size(request.page_size)
        cursor = None
        if request.after_id:
            cursor = pages.start_after(db, "jobs", LISTED, [org], request.after_id, "job")
        pairs = sorted(request.metadata.items())
        if not pairs:
            rows, token = pages.keyset(
                db, "jobs", LISTED, [org], size, request.page_token, desc=desc, cursor=cursor
            )
            counted = db.execute("SELECT n FROM job_counts WHERE org = ?", [org]).fetchone()
            return jobs_pb2.ListJobsResponse(
                jobs=[Job.FromString(r["proto"]) for r in rows],
                next_page_token=token,
                total_size=counted[0] if counted else 0,
            )
        # The first pair's index (job_metadata_by_pair) gives the order; the other
        # pairs are looked up by job. Keys and values are compared as data.
        (key, value), rest = pairs[0], pairs[1:]
        where, params = "m.org = ? AND m.key = ? AND m.value = ?", [org, key, value]
        for key, value in rest:
            where += (
                " AND EXISTS (SELECT 1 FROM job_metadata AS o"
                " WHERE o.job_id = m.job_id AND o.key = ? AND o.value = ?)"
            )
            params += [key, value]
        rows, token = pages.keyset(
            db,
            "job_metadata AS m JOIN jobs AS j ON j.id = m.job_id",
            where,
            params,
            size,
            request.page_token,
            desc=desc,
            cursor=cursor,
            columns="j.proto",
            time="m.created_at",
            ident="m.job_id",
        )
        return jobs_pb2.ListJobsResponse(
            jobs=[Job.FromString(r["proto"]) for r in rows], next_page_token=token
        )

    @authenticated
    async def UpdateJob(self, request: jobs_pb2.UpdateJobRequest, context) -> Job:
        paths = set(request.update_mask.paths)
        if not paths:
            raise InvalidArgument.field("update_mask", "required: name the fields to update")
        if paths - UPDATABLE:
            raise InvalidArgument.field(
                "update_mask",
                f"{', '.join(sorted(paths - UPDATABLE))}: immutable; only metadata can change",
            )
        if problems := check_metadata(request.job.metadata):
            raise InvalidArgument(problems)
        db = self.plane.db
        with write(db):
            job = lifecycle.load(db, request.job.id, caller_org())
            job.metadata.clear()
            job.metadata.update(request.job.metadata)
            job.update_time.CopyFrom(timestamp(now()))
            lifecycle.save(db, job, metadata=json.dumps(dict(job.metadata), sort_keys=True))
        return job

    @authenticated
    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context) -> Job:
        return self._steer(request.job_id, "cancel")

    @authenticated
    async def PauseJob(self, request: jobs_pb2.PauseJobRequest, context) -> Job:
        return self._steer(request.job_id, "pause")

    @authenticated
    async def ResumeJob(self, request: jobs_pb2.ResumeJobRequest, context) -> Job:
        return self._steer(request.job_id, "resume")

    @authenticated
    async def DeleteJob(self, request: jobs_pb2.DeleteJobRequest, context) -> empty_pb2.Empty:
        db = self.plane.db
        with write(db):
            job = lifecycle.load(db, request.job_id, caller_org())
            if job.state not in FINAL_JOB_STATES:
                lifecycle.steer(db, self.plane.events, job.id, job.organization, "cancel")
            # Marked, not removed: a running job's trainer stops within a step and
            # reports until then (see migration 7).
            db.execute("UPDATE jobs SET deleted_at = ? WHERE id = ?", [now(), job.id])
        self.plane.wake_scheduler()
        return empty_pb2.Empty()

    def _steer(self, job_id: str, command: str) -> Job:
        with write(self.plane.db):
            job = lifecycle.steer(self.plane.db, self.plane.events, job_id, caller_org(), command)
        self.plane.wake_scheduler()
        return job

    @authenticated
    async def ListJobEvents(self, request: jobs_pb2.ListJobEventsRequest, context):
        events = self.plane.events
        lifecycle.load(self.plane.db, request.job_id, caller_org())
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        desc = pages.descending(request.order_by, "sequence", default_desc=False)
        cursor = None
        if request.page_token and request.after_id:
            raise InvalidArgument.field("page_token", "give page_token or after_id, not both")
        if request.page_token:
            (cursor,) = pages.decode(request.page_token, 1)
            if not isinstance(cursor, int) or isinstance(cursor, bool):
                raise InvalidArgument.field("page_token", "is not a token this server issued")
        elif request.after_id:
            cursor = events.sequence_of(request.job_id, request.after_id)
            if cursor is None:
                raise InvalidArgument.field(
                    "after_id", f"job {request.job_id!r} has no event {request.after_id!r}"
                )
        size = pages.page_size(request.page_size)
        batch = events.page(
            request.job_id,
            after=request.after_sequence,
            cursor=cursor,
            limit=size + 1,
            desc=desc,
            types=list(request.types),
        )
        token = pages.encode([batch[size - 1].sequence]) if len(batch) > size else ""
        return jobs_pb2.ListJobEventsResponse(events=batch[:size], next_page_token=token)

    @authenticated
    async def StreamJobEvents(
        self, request: jobs_pb2.StreamJobEventsRequest, context: grpc.aio.ServicerContext
    ):
        db, events = self.plane.db, self.plane.events
        lifecycle.load(db, request.job_id, caller_org())
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        if not 0 <= request.max_batch_size <= pages.MAX_PAGE_SIZE:
            raise InvalidArgument.field("max_batch_size", f"must be in [0, {pages.MAX_PAGE_SIZE}]")
        per_message = max(request.max_batch_size, 1)
        cursor, progressed = request.after_sequence, False
        self._watching[request.job_id] += 1
        try:
            while True:
                # Take the signal before reading: an append after the read sets it.
                signal = events.signal(request.job_id)
                batch = events.after(request.job_id, cursor, STREAM_BATCH)
                # The final state event is the job's last: the stream ends with it.
                end = next((i + 1 for i, e in enumerate(batch) if _final(e)), None)
                for start in range(0, end or len(batch), per_message):
                    sent = batch[start : min(start + per_message, end or len(batch))]
                    if request.max_batch_size > 1:
                        yield jobs_pb2.StreamJobEventsResponse(events=sent)
                    else:
                        yield jobs_pb2.StreamJobEventsResponse(event=sent[0])
                    cursor, progressed = sent[-1].sequence, True
                if end is not None:
                    return
                if batch:
                    continue
                # A wake that brought nothing new: the job may have ended at or
                # before the cursor (a cursor past its end), so look at it. After
                # events, only a final state event can end it, and none came.
                if not progressed and lifecycle.load(db, request.job_id).state in FINAL_JOB_STATES:
                    return
                if events.closing:
                    raise Unavailable(
                        "the server is stopping: stream again with "
                        f"after_sequence={cursor} to resume"
                    )
                progressed = False
                await signal.wait()
        finally:
            self._watching[request.job_id] -= 1
            if not self._watching[request.job_id]:
                del self._watching[request.job_id]
                events.forget(request.job_id)

    @authenticated
    async def ListCheckpoints(self, request: jobs_pb2.ListCheckpointsRequest, context):
        db = self.plane.db
        lifecycle.load(db, request.job_id, caller_org())
        cursor = None
        if request.after_id:
            cursor = pages.start_after(
                db, "checkpoints", "job_id = ?", [request.job_id], request.after_id, "checkpoint"
            )
        rows, token = pages.keyset(
            db,
            "checkpoints",
            "job_id = ?",
            [request.job_id],
            pages.page_size(request.page_size, default=10),
            request.page_token,
            desc=pages.descending(request.order_by),
            cursor=cursor,
        )
        return jobs_pb2.ListCheckpointsResponse(
            checkpoints=[checkpoints_pb2.Checkpoint.FromString(r["proto"]) for r in rows],
            next_page_token=token,
        )
