"""WorkerService: trainer processes report here, each call under its lease.

A call whose lease epoch is not the job's current one, or whose job is no
longer running, is refused with FAILED_PRECONDITION: a worker presumed dead
(killed, stopped past its lease, cut off by a restart) can never write again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import time
from pathlib import Path

from google.protobuf import json_format

from server import lifecycle
from server.control_plane import ControlPlane
from server.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from server.ids import new_id, now, timestamp
from server.lifecycle import Event, Job
from server.rpc import rpc
from server.store.db import write
from tunewire.v1 import (
    checkpoints_pb2,
    common_pb2,
    files_pb2,
    models_pb2,
    worker_pb2,
    worker_pb2_grpc,
)

Outcome = worker_pb2.ReportResultRequest
# Errors that may pass on another attempt (a crash, an out-of-memory); bad
# arguments fail at once.
RETRYABLE = frozenset({"training_error"})
CHECKPOINT_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
LEVELS = frozenset({Event.LEVEL_INFO, Event.LEVEL_WARN, Event.LEVEL_ERROR})


def _check_token(servicer: WorkerServicer, header: str | None) -> str:
    expected = f"Bearer {servicer.plane.worker_token}"
    if not header or not hmac.compare_digest(header.encode(), expected.encode()):
        raise Unauthenticated("not a trainer of this control plane")
    return "worker"


worker_call = rpc(_check_token)


def model_name(job: Job) -> str:
    return f"ft:{job.base_model}:{job.organization}:{job.suffix}:{job.id}"


def artifacts(root: Path) -> list[common_pb2.Artifact]:
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        out.append(
            common_pb2.Artifact(
                path=str(path.relative_to(root)),
                bytes=path.stat().st_size,
                sha256=digest.hexdigest(),
            )
        )
    return out


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        # job id -> (monotonic time, step) when the attempt's plan arrived: the
        # ETA is extrapolated from this attempt's own pace.
        self._pace: dict[str, tuple[float, int]] = {}

    def _leased(self, lease: worker_pb2.Lease) -> Job:
        """The job if `lease` is current; extends it. Call inside a write transaction."""
        row = self.plane.db.execute(
            "SELECT lease_epoch, state FROM jobs WHERE id = ?", [lease.job_id]
        ).fetchone()
        if (
            row is None
            or row[0] != lease.epoch
            or row[1]
            not in (
                Job.STATE_RUNNING,
                Job.STATE_PAUSING,
            )
        ):
            raise FailedPrecondition(
                f"lease epoch {lease.epoch} of job {lease.job_id!r} is not current"
            )
        self.plane.db.execute(
            "UPDATE jobs SET lease_expires_at = ? WHERE id = ?",
            [now() + self.plane.settings.lease_seconds, lease.job_id],
        )
        return lifecycle.load(self.plane.db, lease.job_id)

    @worker_call
    async def StartAttempt(self, request: worker_pb2.StartAttemptRequest, context):
        from trainer.models import resolve_model

        db, settings = self.plane.db, self.plane.settings
        with write(db):
            job = self._leased(request.lease)
            try:
                base_model_path = resolve_model(settings.models_dir, job.base_model)
                refused = ""
            except ValueError as error:
                # The models dir changed since the job was created (the model removed,
                # or swapped for a symlink out of the dir): every attempt would meet the
                # same refusal, so the job fails now, saying why.
                refused = str(error)
                job.error.CopyFrom(
                    common_pb2.Error(code="invalid_base_model", message=refused, param="base_model")
                )
                lifecycle.transition(
                    db,
                    self.plane.events,
                    job,
                    Job.STATE_FAILED,
                    f"Job failed: {refused}",
                    level=Event.LEVEL_ERROR,
                    data={"error": "invalid_base_model"},
                    lease_expires_at=None,
                    command=worker_pb2.COMMAND_CONTINUE,
                )
        if refused:
            self.plane.wake_scheduler()
            raise FailedPrecondition(f"job {job.id!r} failed: {refused}")
        files = {
            r["id"]: files_pb2.File.FromString(r["proto"])
            for r in db.query(
                "SELECT id, proto FROM files WHERE id IN (?, ?)",
                [job.training_file, job.validation_file],
            )
        }
        latest = db.execute(
            "SELECT path FROM checkpoints WHERE job_id = ? ORDER BY step DESC LIMIT 1", [job.id]
        ).fetchone()
        out = settings.home / "jobs" / job.id / f"attempt-{request.lease.epoch}"
        out.mkdir(parents=True, exist_ok=True)
        valid = files.get(job.validation_file)
        return worker_pb2.StartAttemptResponse(
            job=job,
            base_model_path=str(base_model_path),
            training_file_path=str(self.plane.blobs.path("files", job.training_file)),
            training_filename=files[job.training_file].filename,
            validation_file_path=str(self.plane.blobs.path("files", valid.id)) if valid else "",
            validation_filename=valid.filename if valid else "",
            output_dir=str(out),
            resume_checkpoint_path=latest[0] if latest else "",
        )

    @worker_call
    async def Heartbeat(self, request: worker_pb2.HeartbeatRequest, context):
        with write(self.plane.db):
            self._leased(request.lease)
            (command,) = self.plane.db.execute(
                "SELECT command FROM jobs WHERE id = ?", [request.lease.job_id]
            ).fetchone()
        return worker_pb2.HeartbeatResponse(command=command or worker_pb2.COMMAND_CONTINUE)

    @worker_call
    async def ReportPlan(self, request: worker_pb2.ReportPlanRequest, context):
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
                f"{request.total_steps} steps"
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
        with write(self.plane.db):
            job = self._leased(request.lease)
            self.plane.events.append(
                job.id,
                request.message,
                level=request.level,
                data=json_format.MessageToDict(request.data),
                dedupe_key=request.dedupe_key or None,
            )
        return worker_pb2.ReportEventResponse()

    @worker_call
    async def ReportMetrics(self, request: worker_pb2.ReportMetricsRequest, context):
        db = self.plane.db
        metrics = json_format.MessageToDict(request.metrics)
        with write(db):
            job = self._leased(request.lease)
            appended = self.plane.events.append(
                job.id,
                f"Step {request.step}/{request.total_steps}: "
                f"training loss={metrics.get('train_loss', float('nan')):.2f}",
                type=Event.TYPE_METRICS,
                data={
                    "step": request.step,
                    "total_steps": request.total_steps,
                    "epoch": request.epoch,
                    **metrics,
                },
                dedupe_key=f"metrics:{request.step}",
            )
            if appended is None:
                return worker_pb2.ReportMetricsResponse()
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
        return worker_pb2.ReportMetricsResponse()

    @worker_call
    async def ReportCheckpoint(self, request: worker_pb2.ReportCheckpointRequest, context):
        db = self.plane.db
        with write(db):
            job = self._leased(request.lease)
            row = db.execute(
                "SELECT proto FROM checkpoints WHERE job_id = ? AND step = ?",
                [job.id, request.step],
            ).fetchone()
            if row:
                return worker_pb2.ReportCheckpointResponse(
                    checkpoint=checkpoints_pb2.Checkpoint.FromString(row[0])
                )
            checkpoint = checkpoints_pb2.Checkpoint(
                id=new_id("ftckpt"),
                job_id=job.id,
                step=request.step,
                epoch=request.epoch,
                model=f"{model_name(job)}:ckpt-step-{request.step}",
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
                    "proto": checkpoint.SerializeToString(),
                }
            )
            # The trainer keeps only its last few checkpoints; the model store
            # keeps every registered checkpoint's adapter for good.
            adapter = self._store_adapter(
                job, f"ckpt-step-{request.step}", Path(request.path), CHECKPOINT_ADAPTER_FILES
            )
            self._register_model(job, checkpoint.model, adapter, checkpoint_id=checkpoint.id)
            self.plane.events.append(
                job.id,
                f"Checkpoint created at step {request.step}",
                data={"step": request.step, "checkpoint": checkpoint.id, "model": checkpoint.model},
                dedupe_key=f"checkpoint:{request.step}",
            )
        return worker_pb2.ReportCheckpointResponse(checkpoint=checkpoint)

    def _store_adapter(
        self, job: Job, name: str, source: Path, only: tuple[str, ...] | None = None
    ) -> Path:
        """Copy an adapter into blobs/models/<job>/<name>, staged then renamed into place."""
        target = self.plane.blobs.path("models", job.id) / name
        if target.exists():
            return target
        staging = self.plane.blobs.root / "tmp" / f"{job.id}-{name}.{secrets.token_hex(4)}"
        if only is None:
            shutil.copytree(source, staging)
        else:
            staging.mkdir()
            for filename in only:
                shutil.copy2(source / filename, staging / filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return target

    def _register_model(
        self, job: Job, name: str, adapter: Path, checkpoint_id: str = ""
    ) -> models_pb2.FineTunedModel:
        model = models_pb2.FineTunedModel(
            id=name,
            base_model=job.base_model,
            job_id=job.id,
            checkpoint_id=checkpoint_id,
            state=models_pb2.FineTunedModel.STATE_READY,
            organization=job.organization,
            create_time=timestamp(now()),
            artifacts=artifacts(adapter),
        )
        self.plane.db["models"].upsert(
            {
                "id": name,
                "org": job.organization,
                "job_id": job.id,
                "checkpoint_id": checkpoint_id or None,
                "created_at": now(),
                "adapter_path": str(adapter),
                "proto": model.SerializeToString(),
            },
            pk="id",
        )
        return model

    def _results_file(self, job: Job, csv_path: Path) -> files_pb2.File:
        """The metrics CSV as a `fine-tune-results` file of the job's org."""
        file_id = new_id("file")
        writer = self.plane.blobs.writer("files", file_id)
        with open(csv_path, "rb") as source:
            while block := source.read(1 << 20):
                writer.write(block)
        writer.commit()
        record = files_pb2.File(
            id=file_id,
            filename=f"{job.id}-metrics.csv",
            purpose=files_pb2.File.PURPOSE_FINE_TUNE_RESULTS,
            bytes=writer.size,
            sha256=writer.sha256,
            state=files_pb2.File.STATE_PROCESSED,
            create_time=timestamp(now()),
        )
        self.plane.save_file(record, job.organization)
        return record

    @worker_call
    async def ReportResult(self, request: worker_pb2.ReportResultRequest, context):
        db, events = self.plane.db, self.plane.events
        with write(db):
            job = self._leased(request.lease)
            done = {"lease_expires_at": None, "command": worker_pb2.COMMAND_CONTINUE}
            if request.outcome == Outcome.OUTCOME_SUCCEEDED:
                self._succeed(job, request)
                lifecycle.transition(
                    db,
                    events,
                    job,
                    Job.STATE_SUCCEEDED,
                    "The job has successfully completed",
                    **done,
                )
            elif request.outcome == Outcome.OUTCOME_CANCELLED:
                lifecycle.transition(db, events, job, Job.STATE_CANCELLED, "Job cancelled", **done)
            elif request.outcome == Outcome.OUTCOME_PAUSED:
                lifecycle.transition(
                    db,
                    events,
                    job,
                    Job.STATE_PAUSED,
                    f"Job paused at step {job.progress.step}; resume to continue",
                    **done,
                )
            elif request.outcome == Outcome.OUTCOME_FAILED and request.error.code in RETRYABLE:
                (command,) = db.execute(
                    "SELECT command FROM jobs WHERE id = ?", [job.id]
                ).fetchone()
                lifecycle.end_attempt(
                    db,
                    events,
                    job,
                    command,
                    request.error.message,
                    max_attempts=self.plane.settings.max_attempts,
                    error_code=request.error.code,
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
        self._pace.pop(job.id, None)
        self.plane.wake_scheduler()
        return worker_pb2.ReportResultResponse()

    def _succeed(self, job: Job, request: worker_pb2.ReportResultRequest) -> None:
        if not request.adapter_path:
            raise InvalidArgument.field("adapter_path", "required when the outcome is SUCCEEDED")
        # The adapter moves out of the attempt dir into the model store, so
        # pruning attempts never takes a model's weights with it.
        name = model_name(job)
        adapter = self._store_adapter(job, "final", Path(request.adapter_path))
        self._register_model(job, name, adapter)
        job.fine_tuned_model = name
        job.trained_tokens = request.trained_tokens
        if request.metrics_csv_path:
            job.result_files.append(self._results_file(job, Path(request.metrics_csv_path)).id)
        self.plane.events.append(
            job.id, f"New fine-tuned model created: {name}", data={"model": name}
        )
