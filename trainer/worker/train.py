"""Training work: run the recipe for one leased attempt and relay every callback under
the lease. Data comes from the blob store; checkpoints and the final adapter go back to
it, hashed here, so the control plane only records them."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.store.blobs import BlobStore
from trainer import models
from trainer.args import JOB_HYPERPARAMETERS, InvalidArgs, Refused, TrainArgs
from trainer.checkpoints import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CorruptCheckpoint,
    list_checkpoints,
    verify_checkpoint,
)
from trainer.distributed import data_parallel
from trainer.recipe import Callbacks, RunInfo, train
from trainer.worker import tracking
from trainer.worker.lease import Lease, Outcome, is_nan, struct
from trainer.worker.ranks import LocalRanks, NoRoom, RankWork
from tunewire.v1 import checkpoints_pb2, common_pb2, jobs_pb2, worker_pb2

log = logging.getLogger("tunewire.worker")

# Fault injection for tests: "step:N" makes every attempt raise at step N.
FAILPOINT = os.environ.get("TUNEWIRE_FAILPOINT", "")
TargetModules = jobs_pb2.Hyperparameters.TargetModules
DEVICES = {0: "cpu", 1: "cuda"}
"""A job's GPUs per process, as the device each of its ranks trains on."""
OUTCOMES = {
    "succeeded": Outcome.OUTCOME_SUCCEEDED,
    "cancelled": Outcome.OUTCOME_CANCELLED,
    "paused": Outcome.OUTCOME_PAUSED,
}


@dataclass(frozen=True)
class Place:
    """Where this worker finds things: the blob store, its base models, its scratch dir."""

    blobs: BlobStore
    models_dir: Path
    scratch: Path
    ranks: str = "local"  # where a data-parallel job's other ranks start: "local" or "ray"
    rank_cpus: float = 1.0  # CPUs each of them asks Ray for

    @property
    def cache(self) -> Path:
        """Downloads from a remote blob store (unused for a local one)."""
        return self.scratch / "cache"


def train_args(work: worker_pb2.TrainWork, place: Place, epoch: int) -> TrainArgs:
    job, hp = work.job, work.job.hyperparameters
    blobs, cache = place.blobs, place.cache
    valid = work.validation_file if work.HasField("validation_file") else None
    values: dict[str, Any] = {
        "base_model": str(models.resolve_model(place.models_dir, work.base_model)),
        # Blobs are stored without a suffix; the upload names tell text from JSONL.
        "train_file": str(blobs.get_file(work.training_file.key, cache)),
        "train_file_name": work.training_file.filename,
        "validation_file": str(blobs.get_file(valid.key, cache)) if valid else None,
        "validation_file_name": valid.filename if valid else "",
        "output_dir": str(place.scratch / "jobs" / job.id / f"attempt-{epoch}"),
        "seed": job.seed,
        "method": "dpo" if job.method.type == jobs_pb2.Method.TYPE_DPO else "supervised",
        "reinforcement": _reinforcement(job),
        "device": DEVICES[job.compute.gpus_per_worker]
        if job.compute.HasField("gpus_per_worker")
        else "auto",
        "sharding": "fsdp"
        if job.compute.sharding == jobs_pb2.Compute.SHARDING_FSDP
        else "replicated",
        "resume_from": _fetch_checkpoint(blobs, work.resume_checkpoint, cache)
        if work.resume_checkpoint
        else None,
    }
    for row in JOB_HYPERPARAMETERS:  # unset: TrainArgs' default, from the same table
        if hp.HasField(row.name):
            values[row.name] = getattr(hp, row.name)
    if hp.target_modules:
        values["target_modules"] = TargetModules.Name(hp.target_modules).removeprefix(
            "TARGET_MODULES_"
        )
    if values["reinforcement"] is not None:
        values["method"] = "reinforcement"
        values["eval_every_steps"] = values["reinforcement"].get("eval_interval", 0)
    return TrainArgs(**values)


def _reinforcement(job: jobs_pb2.Job) -> dict[str, Any] | None:
    """A reinforcement job's spec as TrainArgs takes it (its method, too: see train_args)."""
    if job.method.type != jobs_pb2.Method.TYPE_REINFORCEMENT:
        return None
    from server.graders import spec_json

    return spec_json(job)


def _fetch_checkpoint(blobs: BlobStore, key: str, cache: Path) -> str:
    """The checkpoint to resume from, fetched and checked against the checksums it was
    saved with; CorruptCheckpoint when it is gone or damaged."""
    try:
        path = blobs.get_dir(key, cache)
    except FileNotFoundError:
        raise CorruptCheckpoint(f"checkpoint {key} is missing") from None
    verify_checkpoint(path)
    return str(path)


def run(lease: Lease, work: worker_pb2.TrainWork, place: Place) -> None:
    """Train the leased attempt to its end and report the outcome (a lost lease ends it
    without a word: the control plane has given the job to another attempt)."""
    try:
        args = train_args(work, place, lease.lease.epoch)
    except CorruptCheckpoint as error:  # the control plane resumes from an older one
        lease.fail(
            "checkpoint_corrupt",
            f"the checkpoint to resume from is damaged: {error}",
            param=work.resume_checkpoint,
        )
        return
    except ValueError as error:  # the models dir changed since the job was created
        lease.fail("invalid_base_model", str(error), param="base_model")
        return
    blobs = place.blobs

    def on_start(info: RunInfo) -> None:
        # Every hyperparameter as the run uses it, "auto" resolved.
        used = {row.name: getattr(args, row.name) for row in JOB_HYPERPARAMETERS}
        used.update(dataclasses.asdict(info.hyperparameters))
        del used["learning_rate"]  # not a job's field: base rate times the multiplier
        # A method's own hyperparameters (DPO's beta) stay unset on other methods' jobs.
        used = {name: value for name, value in used.items() if value not in (None, "auto")}
        resolved = jobs_pb2.Hyperparameters(
            **used, target_modules=TargetModules.Value(f"TARGET_MODULES_{args.target_modules}")
        )
        lease.call(
            "ReportPlan",
            hyperparameters=resolved,
            total_steps=info.total_steps,
            start_step=info.resumed_from_step,
            seed=args.seed,
        )
        track.start(_run_config(work, args, used, info.total_steps))

    # A validation's figures come in its step's metrics (trainer.recipe), so they reach
    # the job's events as OpenAI's clients read them, in metrics events' data.
    def on_metrics(
        *, step: int, total_steps: int, epoch: float, tokens_trained: int, **metrics: float
    ) -> None:
        if FAILPOINT == f"step:{step}":
            raise RuntimeError(f"failpoint {FAILPOINT} reached")
        lease.call(
            "ReportMetrics",
            step=step,
            total_steps=total_steps,
            epoch=max(1, math.ceil(epoch)),
            metrics=struct(metrics),
            trained_tokens=tokens_trained,
        )
        track.metrics(step, {**metrics, "epoch": epoch, "trained_tokens": tokens_trained})

    def on_event(level: str, message: str, data: dict[str, Any]) -> None:
        lease.event(message, data, level=level, key=f"event:{message}")

    def on_checkpoint(
        *, step: int, epoch: float, path: Path, metrics: dict[str, float], best: bool
    ):
        # The whole checkpoint, for resuming on any worker; its adapter, for the model
        # store, which keeps every registered checkpoint's adapter for good.
        key = f"{work.checkpoint_prefix}/{path.name}"
        blobs.put_dir(path, key)
        adapter = f"{work.model_prefix}/ckpt-step-{step}"
        files = blobs.put_dir(path, adapter, only=(ADAPTER_CONFIG, ADAPTER_WEIGHTS))
        known = {f.name for f in checkpoints_pb2.Checkpoint.Metrics.DESCRIPTOR.fields}
        lease.call(
            "ReportCheckpoint",
            step=step,
            epoch=max(1, math.ceil(epoch)),
            path=key,
            metrics=checkpoints_pb2.Checkpoint.Metrics(
                **{k: v for k, v in metrics.items() if k in known and not is_nan(v)}
            ),
            adapter=adapter,
            adapter_artifacts=files,
            best=best,
        )
        track.checkpoint(step, metrics)
        _prune(blobs, work.checkpoint_prefix, path.parent)

    world = work.job.compute.workers or 1
    if problem := _compute_problem(args.device, world, place.ranks):
        lease.fail("invalid_compute", problem, param="compute.gpus_per_worker")
        return
    # TensorBoard and the job's integrations, on this rank only; they never block it.
    track = tracking.for_attempt(work, Path(args.output_dir) / "tracking", _report_to(lease))
    result = None
    try:
        with _ranks(work, place, lease.lease.epoch, world, args.device) as pids:
            if pids:
                lease.event(
                    f"Training on {world} data-parallel processes (pids {pids} beside this one)",
                    {"ranks": world, "pids": pids},
                )
            result = train(
                args,
                Callbacks(
                    on_start=on_start,
                    on_metrics=on_metrics,
                    on_event=on_event,
                    on_checkpoint=on_checkpoint,
                    control=lease.control,
                ),
            )
    except InvalidArgs as error:
        field = error.problems[0].field if error.problems else ""
        lease.fail("invalid_hyperparameters", str(error), param=field)
        return
    except Refused as error:  # it would fail the same way again: no retry
        lease.fail(error.code, str(error), param=error.field)
        return
    except NoRoom as error:  # the cluster may have room on the next attempt
        lease.fail("training_error", str(error), param="compute.workers")
        return
    finally:  # however the attempt ended: end its runs, keep its tracking files
        _end_tracking(track, result, lease, work, place)
    if lease.lost.is_set():
        return
    finished: dict[str, Any] = {}
    if result.status == "succeeded" and result.adapter_dir is not None:
        adapter = f"{work.model_prefix}/final"
        finished["adapter_path"] = adapter
        finished["artifacts"] = blobs.put_dir(result.adapter_dir, adapter)
    if result.status == "succeeded" and result.metrics_csv is not None:
        finished["metrics_csv"] = _put_file(blobs, result.metrics_csv, work.results_file)
    if result.status == "succeeded":
        finished["tracking_files"] = _tracking_files(lease, work, place)
    lease.call(
        "ReportResult",
        outcome=OUTCOMES[result.status],
        trained_tokens=result.trained_tokens,
        **finished,
    )


def _run_config(
    work: worker_pb2.TrainWork, args: TrainArgs, used: dict[str, Any], total_steps: int
) -> dict[str, Any]:
    """What trackers record as the run's configuration: the resolved hyperparameters and
    what the job trains."""
    job = work.job
    return {
        **used,
        "target_modules": args.target_modules,
        "seed": args.seed,
        "total_steps": total_steps,
        "method": args.method,
        "base_model": work.base_model,
        "job_id": job.id,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
    }


def _report_to(lease: Lease) -> tracking.Report:
    """Trackers' events, from their threads; an event that cannot be sent is only logged."""

    def report(level: str, message: str, data: dict[str, Any]) -> None:
        try:
            lease.event(message, data, level=level)
        except Exception as error:  # noqa: BLE001 - a lost lease or a control plane away
            log.warning("tracking event not sent", extra={"fields": {"error": str(error)}})

    return report


def _end_tracking(
    track: tracking.Tracking, result: Any, lease: Lease, work: worker_pb2.TrainWork, place: Place
) -> None:
    status = result.status if result is not None else "failed"
    done = result is not None and result.status == "succeeded"
    track.close(status, result.adapter_dir if done else None)
    try:
        track.keep(place.blobs, work.job.id, lease.lease.epoch)
    except Exception as error:  # noqa: BLE001 - the job's outcome does not depend on it
        log.warning("tracking files not kept", extra={"fields": {"error": str(error)}})


def _tracking_files(
    lease: Lease, work: worker_pb2.TrainWork, place: Place
) -> dict[str, common_pb2.Artifact]:
    """The job's tracking archives (every attempt's files) as result files."""
    try:
        return tracking.result_files(place.blobs, work, place.cache, _put_file)
    except Exception as error:  # noqa: BLE001 - the model is trained; say what is missing
        log.exception("tracking archives failed")
        lease.event(
            f"The tracking files could not be archived ({type(error).__name__}: {error})",
            {},
            level="warn",
        )
        return {}


def _compute_problem(device: str, world: int, ranks: str) -> str:
    """Why this worker cannot give the job the GPUs it asks for, if it cannot."""
    if device != "cuda":
        return ""
    import torch

    if not torch.cuda.is_available():
        return "the job asks for a GPU per process, and this worker has none"
    if ranks == "local" and torch.cuda.device_count() < world:
        return (
            f"the job asks for {world} processes with a GPU each, and this worker has "
            f"{torch.cuda.device_count()} GPU(s)"
        )
    return ""


@contextlib.contextmanager
def _ranks(
    work: worker_pb2.TrainWork, place: Place, epoch: int, world: int, device: str
) -> Iterator[list[int]]:
    """The job's other ranks, started beside this worker or on the Ray cluster, joined
    with this process as rank 0 while the run lasts; their pids."""
    if world <= 1:
        yield []
        return
    spec = RankWork(
        work.SerializeToString(), epoch, place.blobs.url, str(place.models_dir), str(place.scratch)
    )
    if place.ranks == "ray":
        import torch

        from trainer.worker import ray_ranks

        gpus = int(torch.cuda.is_available()) if device == "auto" else int(device == "cuda")
        launcher = ray_ranks.RayRanks(spec, world, place.rank_cpus, gpus)
        host = ray_ranks.node_address()
    else:
        launcher = LocalRanks(spec, place.scratch / "jobs" / work.job.id / f"ranks-{epoch}")
        host = "127.0.0.1"
    with data_parallel(world, launcher, host, device) as pids:
        yield pids


def _put_file(blobs: BlobStore, source: Path, key: str) -> common_pb2.Artifact:
    writer = blobs.writer(key)
    try:
        with open(source, "rb") as f:
            while block := f.read(1 << 20):
                writer.write(block)
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    return common_pb2.Artifact(path=source.name, bytes=writer.size, sha256=writer.sha256)


def _prune(blobs: BlobStore, prefix: str, local: Path) -> None:
    """Drop the attempt's stored checkpoints that the recipe pruned locally (it keeps the
    last few and the best): resuming needs only the newest."""
    kept = {path.name for path in list_checkpoints(local)}
    for key in blobs.list_dirs(prefix):
        if key.rsplit("/", 1)[-1] not in kept:
            blobs.delete(key)
