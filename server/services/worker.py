"""WorkerService: workers lease work here and report on it, each call under its lease.

Three kinds of lease, one protocol: training a job (the job's row holds its lease epoch,
expiry and pending command), running an export (likewise, in the export's row) and
serving generation (in memory, see `server.serving`). A call whose lease is not current
(another epoch, expired, the work finished) is refused with FAILED_PRECONDITION: a worker
presumed dead (killed, stopped past its lease, cut off by a restart) can never write
again. Reports only record: the worker has already written and hashed every blob.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from typing import Any

from google.protobuf import json_format

from server import exports, integrations, lifecycle, registry
from server.control_plane import ControlPlane
from server.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from server.ids import new_id, now, timestamp
from server.lifecycle import Event, Job
from server.rpc import rpc
from server.secrets import box
from server.store.db import write
from tunewire.v1 import (
    checkpoints_pb2,
    exports_pb2,
    files_pb2,
    worker_pb2,
    worker_pb2_grpc,
)

Lease = worker_pb2.Lease
Kind = Lease.Kind
Outcome = worker_pb2.ReportResultRequest
Export = exports_pb2.Export
# Errors that may pass on another attempt (a crash, an out-of-memory); bad
# arguments fail at once.
RETRYABLE = frozenset({"training_error"})
# The checkpoint a worker was given to resume from is gone or damaged: it is never given
# again, and the job resumes from an older one without spending an attempt.
CHECKPOINT_DAMAGED = "checkpoint_corrupt"
LEVELS = frozenset({Event.LEVEL_INFO, Event.LEVEL_WARN, Event.LEVEL_ERROR})
MAX_WAIT_SECONDS = 60.0
CANCEL, CONTINUE = lifecycle.CANCEL, lifecycle.CONTINUE
LEASED_JOB = (Job.STATE_RUNNING, Job.STATE_PAUSING)


def _check_token(servicer: WorkerServicer, header: str | None) -> str:
    expected = f"Bearer {servicer.plane.worker_token}"
    if not header or not hmac.compare_digest(header.encode(), expected.encode()):
        raise Unauthenticated("not a worker of this control plane")
    return "worker"


worker_call = rpc(_check_token)


def kind_of(lease: Lease) -> int:
    return lease.kind or Kind.KIND_TRAIN


def results_file_id(lease: Lease, kind: str = "results") -> str:
    """The id of a result file a training lease writes (the metrics CSV, or a tracking
    archive: `integrations.TRACKING_FILES`): derived from the lease, so the worker can be
    told where to write it before the control plane records it."""
    digest = hashlib.sha256(f"{lease.job_id}:{lease.epoch}:{kind}".encode()).hexdigest()
    return f"file-{digest[:24]}"


def not_current(lease: Lease) -> FailedPrecondition:
    return FailedPrecondition(f"lease epoch {lease.epoch} of {lease.job_id!r} is not current")


def metrics_message(step: int, total_steps: int, metrics: dict[str, Any]) -> str:
    """`Step 3/10: training loss=0.52` as OpenAI writes it, with `, validation loss=0.61`
    at a step that validated; a DPO step adds what tells its progress: how often the
    preferred output wins, and by how much; a reinforcement step its graded reward."""
    message = f"Step {step}/{total_steps}: training loss={metrics.get('train_loss', math.nan):.2f}"
    if "train_reward_accuracy" in metrics:
        message += (
            f", reward accuracy={metrics['train_reward_accuracy']:.2f}"
            f", margin={metrics.get('train_reward_margin', math.nan):.2f}"
        )
    if "train_reward_mean" in metrics:  # reinforcement: the graded reward and its spread
        message += (
            f", reward={metrics['train_reward_mean']:.2f}"
            f" ± {metrics.get('train_reward_std', math.nan):.2f}"
            f", kl={metrics.get('train_kl', math.nan):.3f}"
        )
    if "valid_reward_mean" in metrics:  # reinforcement: its valid_loss is minus this
        message += f", validation reward={metrics['valid_reward_mean']:.2f}"
    elif "valid_loss" in metrics:
        message += f", validation loss={metrics['valid_loss']:.2f}"
        if "valid_reward_accuracy" in metrics:
            message += f", validation reward accuracy={metrics['valid_reward_accuracy']:.2f}"
    return message


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        # job id -> (monotonic time, step) when the attempt's plan arrived: the
        # ETA is extrapolated from this attempt's own pace.
        self._pace: dict[str, tuple[float, int]] = {}

    # --- leases -----------------------------------------------------------------------

    def _leased(self, lease: Lease) -> Job:
        """The job if training lease `lease` is current; extends it. In a write transaction."""
        if kind_of(lease) != Kind.KIND_TRAIN:
            raise not_current(lease)
        row = self.plane.db.execute(
            "SELECT lease_epoch, state FROM jobs WHERE id = ?", [lease.job_id]
        ).fetchone()
        if row is None or row[0] != lease.epoch or row[1] not in LEASED_JOB:
            raise not_current(lease)
        self.plane.db.execute(
            "UPDATE jobs SET lease_expires_at = ? WHERE id = ?",
            [now() + self.plane.settings.lease_seconds, lease.job_id],
        )
        return lifecycle.load(self.plane.db, lease.job_id)

    def _leased_export(self, lease: Lease) -> tuple[Export, str]:
        """The export and its org if export lease `lease` is current; extends it."""
        row = self.plane.db.execute(
            "SELECT lease_epoch, state FROM exports WHERE id = ?", [lease.job_id]
        ).fetchone()
        if row is None or row[0] != lease.epoch or row[1] != Export.STATE_RUNNING:
            raise not_current(lease)
        self.plane.db.execute(
            "UPDATE exports SET lease_expires_at = ? WHERE id = ?",
            [now() + self.plane.settings.lease_seconds, lease.job_id],
        )
        return exports.load(self.plane.db, lease.job_id)

    def _refuse_if_cancelled(self, lease: Lease) -> None:
        """Cancel wins within one step. Once a cancel is accepted, the trainer's next
        report (each step makes one) ends the job CANCELLED and is refused, so the trainer
        stops there rather than at its next heartbeat; heartbeats still carry the cancel to
        a trainer between reports (loading the model, validating, saving)."""
        db = self.plane.db
        if kind_of(lease) != Kind.KIND_TRAIN or lifecycle.pending(db, lease.job_id) != CANCEL:
            return
        with write(db):
            self._cancel(self._leased(lease))
        self._release(lease)
        raise FailedPrecondition(f"job {lease.job_id!r} was cancelled: stop training")

    def _cancel(self, job: Job) -> None:
        lifecycle.transition(
            self.plane.db,
            self.plane.events,
            job,
            Job.STATE_CANCELLED,
            "Job cancelled",
            lease_expires_at=None,
            command=CONTINUE,
        )

    def _release(self, lease: Lease) -> None:
        """`lease` has ended: no worker holds it, and its workers may take more work."""
        for worker, held in list(self.plane.holding.items()):
            if held == lease:
                del self.plane.holding[worker]
        self._pace.pop(lease.job_id, None)
        self.plane.post(kind_of(lease))

    @worker_call
    async def AcquireLease(self, request: worker_pb2.AcquireLeaseRequest, context):
        worker = request.worker
        if not worker.id:
            raise InvalidArgument.field("worker.id", "required")
        kinds = set(worker.kinds) - {Kind.KIND_UNSPECIFIED}
        if not kinds:
            raise InvalidArgument.field("worker.kinds", "name at least one kind of work")
        if Kind.KIND_SERVE in kinds and not worker.address:
            raise InvalidArgument.field("worker.address", "required to serve")
        self.plane.holding.pop(worker.id, None)  # asking for work: it holds none now
        deadline = time.monotonic() + min(max(request.wait_seconds, 0.0), MAX_WAIT_SECONDS)
        while True:
            reply = self._try_lease(worker, kinds)
            if reply is not None:
                self.plane.holding[worker.id] = reply.lease
                self.plane.on_lease()
                reply.heartbeat_seconds = self.plane.settings.heartbeat_seconds
                return reply
            left = deadline - time.monotonic()
            if left <= 0 or self.plane.events.closing:
                return worker_pb2.AcquireLeaseResponse()
            await self.plane.doorbell.wait(left)

    def _try_lease(
        self, worker: worker_pb2.WorkerInfo, kinds: set[int]
    ) -> worker_pb2.AcquireLeaseResponse | None:
        if Kind.KIND_SERVE in kinds:
            epoch = self.plane.serving.lease(worker.id, worker.address)
            return worker_pb2.AcquireLeaseResponse(
                lease=Lease(job_id=worker.id, epoch=epoch, kind=Kind.KIND_SERVE),
                serve=worker_pb2.ServeWork(),
            )
        if Kind.KIND_TRAIN in kinds and (reply := self._lease_job(worker)) is not None:
            return reply
        if Kind.KIND_EXPORT in kinds and (reply := self._lease_export()) is not None:
            return reply
        return None

    def _lease_job(self, worker: worker_pb2.WorkerInfo) -> worker_pb2.AcquireLeaseResponse | None:
        db, settings, events = self.plane.db, self.plane.settings, self.plane.events
        with write(db):
            row = db.execute(
                "SELECT id, lease_epoch FROM jobs WHERE state = ? ORDER BY created_at LIMIT 1",
                [Job.STATE_QUEUED],
            ).fetchone()
            if row is None:
                return None
            job, epoch = lifecycle.load(db, row[0]), row[1] + 1
            # Attempts are numbered from 1 and only a failure moves to the next
            # (`lifecycle.end_attempt`): a resume after a pause goes on with the same.
            job.progress.attempt = max(job.progress.attempt, 1)
            step, resume = self._resume_point(job.id)
            if epoch == 1:
                message = "Fine-tuning job started"
            elif step:
                message = f"Resuming from checkpoint step {step} (attempt {job.progress.attempt})"
            else:
                message = f"Restarting from the start (attempt {job.progress.attempt})"
            lifecycle.transition(
                db,
                events,
                job,
                Job.STATE_RUNNING,
                message,
                data={"attempt": job.progress.attempt, "resume_step": step or 0},
                lease_epoch=epoch,
                lease_expires_at=now() + settings.lease_seconds,
                command=worker_pb2.COMMAND_CONTINUE,
            )
            events.append(
                job.id,
                f"Trainer process started (pid {worker.pid})",
                data={
                    "pid": worker.pid,
                    "attempt": job.progress.attempt,
                    "worker": worker.id,
                    "host": worker.host,
                },
            )
            lease = Lease(job_id=job.id, epoch=epoch, kind=Kind.KIND_TRAIN)
            return worker_pb2.AcquireLeaseResponse(
                lease=lease, train=self._train_work(job, lease, resume)
            )

    def _resume_point(self, job_id: str) -> tuple[int, str]:
        """The newest checkpoint still stored as it was registered, as (step, key); (0, "")
        when there is none. A newer one found gone or changed is marked damaged (with an
        event saying why) and never chosen again. In a write transaction."""
        rows = self.plane.db.execute(
            "SELECT step, path, files FROM checkpoints WHERE job_id = ? AND damaged IS NULL"
            " ORDER BY step DESC",
            [job_id],
        ).fetchall()
        for step, key, files in rows:
            found = self.plane.blobs.sizes(key)
            registered = json.loads(files) if files else None
            if not found:
                self._mark_damaged(job_id, key, "its files are gone")
            elif registered is not None and found != registered:
                name = min(n for n in {*found, *registered} if found.get(n) != registered.get(n))
                self._mark_damaged(
                    job_id,
                    key,
                    f"{name} has {found.get(name, 'no')} bytes, registered with "
                    f"{registered.get(name, 'no')}",
                )
            else:
                return step, key
        return 0, ""

    def _mark_damaged(self, job_id: str, key: str, why: str) -> bool:
        """Never resume from checkpoint `key` again, saying why; False if it was not a
        checkpoint of the job that could be resumed from. In a write transaction."""
        row = self.plane.db.execute(
            "SELECT step FROM checkpoints WHERE job_id = ? AND path = ? AND damaged IS NULL",
            [job_id, key],
        ).fetchone()
        if row is None:
            return False
        self.plane.db.execute(
            "UPDATE checkpoints SET damaged = ? WHERE job_id = ? AND path = ?", [why, job_id, key]
        )
        self.plane.events.append(
            job_id,
            f"Checkpoint step {row[0]} cannot be resumed from ({why}); using an older one",
            level=Event.LEVEL_WARN,
            data={"step": row[0], "reason": why},
        )
        return True

    def _train_work(self, job: Job, lease: Lease, resume: str) -> worker_pb2.TrainWork:
        db = self.plane.db
        names = dict(
            db.execute(
                "SELECT id, proto FROM files WHERE id IN (?, ?)",
                [job.training_file, job.validation_file],
            ).fetchall()
        )

        def ref(file_id: str) -> worker_pb2.BlobRef | None:
            if file_id not in names:
                return None
            filename = files_pb2.File.FromString(names[file_id]).filename
            return worker_pb2.BlobRef(key=f"files/{file_id}", filename=filename)

        return worker_pb2.TrainWork(
            job=job,
            base_model=job.base_model,
            training_file=ref(job.training_file),
            validation_file=ref(job.validation_file),
            resume_checkpoint=resume,
            checkpoint_prefix=f"checkpoints/{job.id}/attempt-{lease.epoch}",
            model_prefix=registry.adapter_prefix(job.id),
            results_file=f"files/{results_file_id(lease)}",
            tracking_files={
                kind: f"files/{results_file_id(lease, kind)}"
                for kind in integrations.TRACKING_FILES
            },
            integrations=integrations.with_keys(db, box(self.plane.settings.secret_key_path), job),
        )

    def _lease_export(self) -> worker_pb2.AcquireLeaseResponse | None:
        db = self.plane.db
        with write(db):
            leased = exports.lease_next(db, self.plane.events, self.plane.settings.lease_seconds)
            if leased is None:
                return None
            export, org, epoch = leased
            target = registry.fine_tuned(db, org, export.model_id)
            if target is None:
                exports.fail(
                    db,
                    self.plane.events,
                    export,
                    org,
                    "model_not_found",
                    f"model {export.model_id!r} no longer exists",
                )
                return None
        return worker_pb2.AcquireLeaseResponse(
            lease=Lease(job_id=export.id, epoch=epoch, kind=Kind.KIND_EXPORT),
            export=worker_pb2.ExportWork(
                export=export,
                base_model=target.base_model,
                adapter=target.adapter,
                output=exports.output_key(export.id),
            ),
        )

    @worker_call
    async def Heartbeat(self, request: worker_pb2.HeartbeatRequest, context):
        lease, db = request.lease, self.plane.db
        kind = kind_of(lease)
        if kind == Kind.KIND_SERVE:
            worker = self.plane.serving.current(lease)
            if worker is None:
                raise not_current(lease)
            self.plane.serving.extend(worker)
            return worker_pb2.HeartbeatResponse(command=worker_pb2.COMMAND_CONTINUE)
        with write(db):
            if kind == Kind.KIND_EXPORT:
                self._leased_export(lease)
                return worker_pb2.HeartbeatResponse(command=worker_pb2.COMMAND_CONTINUE)
            self._leased(lease)
            (command,) = db.execute(
                "SELECT command FROM jobs WHERE id = ?", [lease.job_id]
            ).fetchone()
        return worker_pb2.HeartbeatResponse(command=command or worker_pb2.COMMAND_CONTINUE)

    # --- reports ----------------------------------------------------------------------

    @worker_call
    async def ReportPlan(self, request: worker_pb2.ReportPlanRequest, context):
        self._refuse_if_cancelled(request.lease)
        db = self.plane.db
        with write(db):
            job = self._leased(request.lease)
            job.hyperparameters.MergeFrom(request.hyperparameters)
            job.seed = request.seed
            job.progress.total_steps = request.total_steps
            job.progress.step = request.start_step
            lifecycle.save(db, job)
            hp = request.hyperparameters
            self.plane.events.append(
                job.id,
                f"Training plan: {hp.n_epochs} epoch(s), batch size {hp.batch_size}, "
                f"learning rate multiplier {hp.learning_rate_multiplier:g}, "
                + (f"beta {hp.beta:g}, " if hp.HasField("beta") else "")
                + f"{request.total_steps} steps"
                + (f"; resuming at step {request.start_step}" if request.start_step else ""),
                data={
                    **json_format.MessageToDict(hp, preserving_proto_field_name=True),
                    "total_steps": request.total_steps,
                    "start_step": request.start_step,
                },
                dedupe_key=f"plan:{request.start_step}",
            )
        self._pace[job.id] = (time.monotonic(), request.start_step)
        return worker_pb2.ReportPlanResponse()

    @worker_call
    async def ReportEvent(self, request: worker_pb2.ReportEventRequest, context):
        if request.level not in LEVELS:
            raise InvalidArgument.field("level", "must be INFO, WARN or ERROR")
        self._refuse_if_cancelled(request.lease)
        with write(self.plane.db):
            if kind_of(request.lease) == Kind.KIND_EXPORT:
                parent = self._leased_export(request.lease)[0].id
            else:
                parent = self._leased(request.lease).id
            self.plane.events.append(
                parent,
                request.message,
                level=request.level,
                data=json_format.MessageToDict(request.data),
                dedupe_key=request.dedupe_key or None,
            )
        return worker_pb2.ReportEventResponse()

    @worker_call
    async def ReportMetrics(self, request: worker_pb2.ReportMetricsRequest, context):
        self._refuse_if_cancelled(request.lease)
        db = self.plane.db
        metrics = json_format.MessageToDict(request.metrics)
        with write(db):
            job = self._leased(request.lease)
            appended = self.plane.events.append(
                job.id,
                metrics_message(request.step, request.total_steps, metrics),
                type=Event.TYPE_METRICS,
                data={
                    "step": request.step,
                    "total_steps": request.total_steps,
                    "epoch": request.epoch,
                    **metrics,
                },
                dedupe_key=f"metrics:{request.step}",
            )
            command = lifecycle.pending(db, job.id)
            if appended is None:
                return worker_pb2.ReportMetricsResponse(command=command)
            job.progress.step = request.step
            job.progress.total_steps = request.total_steps
            job.progress.epoch = request.epoch
            job.trained_tokens = request.trained_tokens
            started, first_step = self._pace.get(job.id, (time.monotonic(), 0))
            done = request.step - first_step
            if done > 0:
                per_step = (time.monotonic() - started) / done
                remaining = (request.total_steps - request.step) * per_step
                job.estimated_finish.CopyFrom(timestamp(now() + remaining))
            lifecycle.save(db, job)
        return worker_pb2.ReportMetricsResponse(command=command)

    @worker_call
    async def ReportCheckpoint(self, request: worker_pb2.ReportCheckpointRequest, context):
        db = self.plane.db
        if not request.path or not request.adapter:
            raise InvalidArgument.field("path" if not request.path else "adapter", "required")
        self._refuse_if_cancelled(request.lease)
        # Its files as registered: what a resume later checks it against.
        files = self.plane.blobs.sizes(request.path)
        with write(db):
            job = self._leased(request.lease)
            if not files:
                raise InvalidArgument.field("path", "no checkpoint is stored at this key")
            row = db.execute(
                "SELECT proto, damaged FROM checkpoints WHERE job_id = ? AND step = ?",
                [job.id, request.step],
            ).fetchone()
            if row and row[1] is not None:
                # The step written again, whole, after its first copy was found damaged.
                db.execute(
                    "UPDATE checkpoints SET path = ?, files = ?, damaged = NULL"
                    " WHERE job_id = ? AND step = ?",
                    [request.path, json.dumps(files), job.id, request.step],
                )
            if row:
                return worker_pb2.ReportCheckpointResponse(
                    checkpoint=checkpoints_pb2.Checkpoint.FromString(row[0])
                )
            checkpoint = checkpoints_pb2.Checkpoint(
                id=new_id("ftckpt"),
                job_id=job.id,
                step=request.step,
                epoch=request.epoch,
                model=f"{registry.model_name(job)}:ckpt-step-{request.step}",
                metrics=request.metrics,
                create_time=timestamp(now()),
                best=request.best,
            )
            db["checkpoints"].insert(
                {
                    "id": checkpoint.id,
                    "job_id": job.id,
                    "step": checkpoint.step,
                    "created_at": now(),
                    "path": request.path,
                    "files": json.dumps(files),
                    "proto": checkpoint.SerializeToString(),
                }
            )
            registry.register(
                db,
                job,
                checkpoint.model,
                request.adapter,
                list(request.adapter_artifacts),
                checkpoint_id=checkpoint.id,
            )
            self.plane.events.append(
                job.id,
                f"Checkpoint created at step {request.step}",
                data={"step": request.step, "checkpoint": checkpoint.id, "model": checkpoint.model},
                dedupe_key=f"checkpoint:{request.step}",
            )
        return worker_pb2.ReportCheckpointResponse(checkpoint=checkpoint)

    @worker_call
    async def ReportResult(self, request: worker_pb2.ReportResultRequest, context):
        kind = kind_of(request.lease)
        if kind == Kind.KIND_SERVE:
            if self.plane.serving.current(request.lease) is None:
                raise not_current(request.lease)
            self.plane.serving.end(request.lease.job_id)
        elif kind == Kind.KIND_EXPORT:
            self._end_export(request)
        else:
            self._end_training(request)
        self._release(request.lease)
        return worker_pb2.ReportResultResponse()

    def _end_export(self, request: worker_pb2.ReportResultRequest) -> None:
        db, events = self.plane.db, self.plane.events
        with write(db):
            export, org = self._leased_export(request.lease)
            if request.outcome == Outcome.OUTCOME_SUCCEEDED:
                export.max_logit_diff = request.max_logit_diff
                export.int8_max_logit_diff = request.int8_max_logit_diff
                del export.artifacts[:]
                export.artifacts.extend(request.artifacts)
                total = sum(artifact.bytes for artifact in request.artifacts)
                exports.transition(
                    db,
                    events,
                    export,
                    org,
                    Export.STATE_SUCCEEDED,
                    f"Export succeeded: {len(request.artifacts)} files, {total:,} bytes",
                    data={"files": len(request.artifacts), "bytes": total},
                )
            elif request.outcome == Outcome.OUTCOME_FAILED:
                exports.fail(db, events, export, org, request.error.code, request.error.message)
            else:
                raise InvalidArgument.field("outcome", "an export SUCCEEDED or FAILED")

    def _end_training(self, request: worker_pb2.ReportResultRequest) -> None:
        db, events = self.plane.db, self.plane.events
        with write(db):
            job = self._leased(request.lease)
            done = {"lease_expires_at": None, "command": CONTINUE}
            command = lifecycle.pending(db, job.id)
            # Cancel wins: once accepted, however the attempt ended, the job is cancelled.
            if command == CANCEL or request.outcome == Outcome.OUTCOME_CANCELLED:
                self._cancel(job)
            elif request.outcome == Outcome.OUTCOME_SUCCEEDED:
                self._succeed(job, request)
                lifecycle.transition(
                    db,
                    events,
                    job,
                    Job.STATE_SUCCEEDED,
                    "The job has successfully completed",
                    **done,
                )
            elif request.outcome == Outcome.OUTCOME_PAUSED:
                lifecycle.transition(
                    db,
                    events,
                    job,
                    Job.STATE_PAUSED,
                    f"Job paused at step {job.progress.step}; resume to continue",
                    **done,
                )
            elif request.outcome == Outcome.OUTCOME_FAILED and (
                request.error.code in RETRYABLE or request.error.code == CHECKPOINT_DAMAGED
            ):
                # Resuming from an older checkpoint is no retry of what failed: it spends
                # no attempt (and each checkpoint is marked once, so this ends).
                older = request.error.code == CHECKPOINT_DAMAGED and self._mark_damaged(
                    job.id, request.error.param, request.error.message
                )
                lifecycle.end_attempt(
                    db,
                    events,
                    job,
                    command,
                    request.error.message,
                    max_attempts=self.plane.settings.max_attempts,
                    error_code=request.error.code,
                    counts=not older,
                )
            elif request.outcome == Outcome.OUTCOME_FAILED:
                job.error.CopyFrom(request.error)
                lifecycle.transition(
                    db,
                    events,
                    job,
                    Job.STATE_FAILED,
                    f"Job failed: {request.error.message}",
                    level=Event.LEVEL_ERROR,
                    data={"error": request.error.code},
                    **done,
                )
            else:
                raise InvalidArgument.field("outcome", "required")

    def _succeed(self, job: Job, request: worker_pb2.ReportResultRequest) -> None:
        if not request.adapter_path:
            raise InvalidArgument.field("adapter_path", "required when the outcome is SUCCEEDED")
        name = registry.model_name(job)
        registry.register(self.plane.db, job, name, request.adapter_path, list(request.artifacts))
        job.fine_tuned_model = name
        job.trained_tokens = request.trained_tokens
        if request.HasField("metrics_csv"):
            job.result_files.append(self._results_file(job, request))
        for kind in integrations.TRACKING_FILES:  # TensorBoard, a W&B offline run
            if kind in request.tracking_files:
                job.result_files.append(self._tracking_file(job, request, kind))
        self.plane.events.append(
            job.id, f"New fine-tuned model created: {name}", data={"model": name}
        )

    def _results_file(self, job: Job, request: worker_pb2.ReportResultRequest) -> str:
        """Record the metrics CSV the worker wrote as a `fine-tune-results` file."""
        record = files_pb2.File(
            id=results_file_id(request.lease),
            filename=f"{job.id}-metrics.csv",
            purpose=files_pb2.File.PURPOSE_FINE_TUNE_RESULTS,
            bytes=request.metrics_csv.bytes,
            sha256=request.metrics_csv.sha256,
            state=files_pb2.File.STATE_PROCESSED,
            create_time=timestamp(now()),
        )
        self.plane.save_file(record, job.organization)
        return record.id

    def _tracking_file(self, job: Job, request: worker_pb2.ReportResultRequest, kind: str) -> str:
        """Record a tracking archive the worker wrote (`tracking_files[kind]`)."""
        written = request.tracking_files[kind]
        record = files_pb2.File(
            id=results_file_id(request.lease, kind),
            filename=f"{job.id}-{kind}.tar.gz",
            purpose=files_pb2.File.PURPOSE_FINE_TUNE_RESULTS,
            bytes=written.bytes,
            sha256=written.sha256,
            state=files_pb2.File.STATE_PROCESSED,
            create_time=timestamp(now()),
        )
        self.plane.save_file(record, job.organization)
        return record.id
