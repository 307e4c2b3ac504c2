"""A trainer process: `python -m server.worker --job ID --epoch N`.

Started by the executor for one lease. It reads its assignment, runs the
trainer recipe, and relays every callback to the control plane's
WorkerService under its lease. The trainer itself knows nothing of gRPC.
If the control plane refuses the lease (expired, re-leased, job ended) the
process stops at once without writing anything more.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from server import logs
from tunewire.v1 import checkpoints_pb2, common_pb2, events_pb2, worker_pb2, worker_pb2_grpc

log = logging.getLogger("tunewire.worker")

LEVELS = {
    "info": events_pb2.Event.LEVEL_INFO,
    "warn": events_pb2.Event.LEVEL_WARN,
    "error": events_pb2.Event.LEVEL_ERROR,
}
COMMANDS = {
    worker_pb2.COMMAND_CANCEL: "cancel",
    worker_pb2.COMMAND_PAUSE: "pause",
}
# How long a report may keep failing with UNAVAILABLE (control plane
# restarting) before the worker gives up; its lease is gone by then anyway.
RETRY_SECONDS = 30.0
# Fault injection for tests: "step:N" makes every attempt raise at step N.
FAILPOINT = os.environ.get("TUNEWIRE_FAILPOINT", "")
HP_FIELDS = ("n_epochs", "batch_size", "learning_rate_multiplier")
TARGETS = {1: "QV", 2: "QKVO", 3: "QKVO_FFN"}


class LeaseLost(Exception):
    """The control plane no longer recognises this worker's lease."""


class Reporter:
    """WorkerService calls under one lease, with retries while the server is away."""

    def __init__(self, address: str, job_id: str, epoch: int, token: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = worker_pb2_grpc.WorkerServiceStub(self.channel)
        self.lease = worker_pb2.Lease(job_id=job_id, epoch=epoch)
        self.metadata = [("authorization", f"Bearer {token}")]
        self.lost = threading.Event()
        self.command = "continue"

    def call(self, method: str, **fields: Any) -> Any:
        if self.lost.is_set():
            raise LeaseLost()
        rpc = getattr(self.stub, method)
        request = getattr(worker_pb2, f"{method}Request")(lease=self.lease, **fields)
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            try:
                return rpc(request, metadata=self.metadata, timeout=30)
            except grpc.RpcError as error:
                code = error.code()
                if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED):
                    self.lost.set()
                    raise LeaseLost(error.details()) from error
                if code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def heartbeat_forever(self, every: float) -> None:
        while not self.lost.wait(every):
            try:
                reply = self.call("Heartbeat")
            except LeaseLost:
                return
            except grpc.RpcError as error:
                log.warning("heartbeat failed", extra={"fields": {"code": error.code().name}})
                continue
            self.command = COMMANDS.get(reply.command, "continue")


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update({k: v for k, v in values.items() if v is not None and not _nan(v)})
    return out


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def train_args(start: worker_pb2.StartAttemptResponse):
    from trainer.args import TrainArgs

    job, hp = start.job, start.job.hyperparameters
    values: dict[str, Any] = {
        "base_model": start.base_model_path,
        # Blobs are stored without a suffix; the upload names tell text from JSONL.
        "train_file": start.training_file_path,
        "train_file_name": start.training_filename,
        "validation_file": start.validation_file_path or None,
        "validation_file_name": start.validation_filename,
        "output_dir": start.output_dir,
        "seed": job.seed,
        "resume_from": start.resume_checkpoint_path or None,
    }
    for name in HP_FIELDS:
        values[name] = getattr(hp, name) if hp.HasField(name) else "auto"
    for name in (
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "early_stopping_patience",
        "early_stopping_threshold",
        "checkpoint_every_steps",
    ):
        if hp.HasField(name):
            values[name] = getattr(hp, name)
    if hp.target_modules:
        values["target_modules"] = TARGETS[hp.target_modules]
    return TrainArgs(**values)


def run(reporter: Reporter, heartbeat_seconds: float) -> None:
    start = reporter.call("StartAttempt")
    threading.Thread(
        target=reporter.heartbeat_forever, args=(heartbeat_seconds,), daemon=True
    ).start()
    # Only now, with the lease taken and heart-beaten: importing torch and transformers
    # takes seconds (over 10 on a busy machine), longer than a short lease.
    from trainer.args import InvalidArgs
    from trainer.recipe import Callbacks, RunInfo, train

    args = train_args(start)

    def on_start(info: RunInfo) -> None:
        from tunewire.v1 import jobs_pb2

        resolved = jobs_pb2.Hyperparameters(
            n_epochs=info.hyperparameters.n_epochs,
            batch_size=info.hyperparameters.batch_size,
            learning_rate_multiplier=info.hyperparameters.learning_rate_multiplier,
            lora_rank=args.lora_rank,
            lora_alpha=int(args.lora_alpha),
            lora_dropout=args.lora_dropout,
            target_modules={v: k for k, v in TARGETS.items()}[args.target_modules],
        )
        reporter.call(
            "ReportPlan",
            hyperparameters=resolved,
            total_steps=info.total_steps,
            start_step=info.resumed_from_step,
            seed=args.seed,
        )

    def on_metrics(
        *, step: int, total_steps: int, epoch: float, tokens_trained: int, **metrics: float
    ) -> None:
        if FAILPOINT == f"step:{step}":
            raise RuntimeError(f"failpoint {FAILPOINT} reached")
        reporter.call(
            "ReportMetrics",
            step=step,
            total_steps=total_steps,
            epoch=max(1, math.ceil(epoch)),
            metrics=_struct(metrics),
            trained_tokens=tokens_trained,
        )

    def on_event(level: str, message: str, data: dict[str, Any]) -> None:
        reporter.call(
            "ReportEvent",
            level=LEVELS[level],
            message=message,
            data=_struct(data),
            dedupe_key=f"event:{message}",
        )

    def on_validation(*, step: int, valid_loss: float, valid_mean_token_accuracy: float):
        reporter.call(
            "ReportEvent",
            level=LEVELS["info"],
            message=f"Step {step}: validation loss={valid_loss:.2f}, "
            f"accuracy={valid_mean_token_accuracy:.2f}",
            data=_struct(
                {
                    "step": step,
                    "valid_loss": valid_loss,
                    "valid_mean_token_accuracy": valid_mean_token_accuracy,
                }
            ),
            dedupe_key=f"validation:{step}",
        )

    def on_checkpoint(*, step: int, epoch: float, path: Path, metrics: dict[str, float]):
        known = {f.name for f in checkpoints_pb2.Checkpoint.Metrics.DESCRIPTOR.fields}
        reporter.call(
            "ReportCheckpoint",
            step=step,
            epoch=max(1, math.ceil(epoch)),
            path=str(path),
            metrics=checkpoints_pb2.Checkpoint.Metrics(
                **{k: v for k, v in metrics.items() if k in known and not _nan(v)}
            ),
        )

    def control() -> str:
        return "cancel" if reporter.lost.is_set() else reporter.command

    Outcome = worker_pb2.ReportResultRequest
    try:
        result = train(
            args,
            Callbacks(
                on_start=on_start,
                on_metrics=on_metrics,
                on_event=on_event,
                on_validation=on_validation,
                on_checkpoint=on_checkpoint,
                control=control,
            ),
        )
    except InvalidArgs as error:
        field = error.problems[0].field if error.problems else ""
        reporter.call(
            "ReportResult",
            outcome=Outcome.OUTCOME_FAILED,
            error=common_pb2.Error(code="invalid_hyperparameters", message=str(error), param=field),
        )
        return
    if reporter.lost.is_set():
        return
    outcome = {
        "succeeded": Outcome.OUTCOME_SUCCEEDED,
        "cancelled": Outcome.OUTCOME_CANCELLED,
        "paused": Outcome.OUTCOME_PAUSED,
    }[result.status]
    reporter.call(
        "ReportResult",
        outcome=outcome,
        adapter_path=str(result.adapter_dir or ""),
        metrics_csv_path=str(result.metrics_csv or ""),
        trained_tokens=result.trained_tokens,
    )


def standby() -> dict[str, Any] | None:
    """Pay the seconds of importing torch, transformers and peft before any job
    waits on them, then block until the executor hands over a lease."""
    # On a thread: a lease handed over mid-import (the executor takes a spare that is
    # still importing) is taken and heart-beaten at once, not once the import is done,
    # which can outlast a short lease; `run` waits for the import where it needs it.
    threading.Thread(target=importlib.import_module, args=("trainer.recipe",), daemon=True).start()
    line = sys.stdin.readline()
    if not line:
        return None
    assignment = json.loads(line)
    # From here on this process is the job's trainer: its output goes to the job's log.
    out = os.open(assignment["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    return assignment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--job")
    parser.add_argument("--epoch", type=int)
    parser.add_argument("--heartbeat-seconds", type=float, default=2.0)
    parser.add_argument(
        "--standby",
        action="store_true",
        help="import the trainer now, then read the assignment (a JSON line) from stdin",
    )
    opts = parser.parse_args()
    if opts.standby:
        assignment = standby()
        if assignment is None:
            return  # the control plane went away before it needed this trainer
        opts.job, opts.epoch = assignment["job"], assignment["epoch"]
    logs.setup(os.environ.get("TUNEWIRE_LOG_LEVEL", "warning"))
    reporter = Reporter(opts.address, opts.job, opts.epoch, os.environ["TUNEWIRE_WORKER_TOKEN"])
    Outcome = worker_pb2.ReportResultRequest
    try:
        run(reporter, opts.heartbeat_seconds)
    except LeaseLost as lost:
        log.warning("lease lost; stopping", extra={"fields": {"why": str(lost)}})
        os._exit(3)
    except Exception as error:  # noqa: BLE001 - reported to the user as the job's error
        log.exception("training failed")
        try:
            reporter.call(
                "ReportResult",
                outcome=Outcome.OUTCOME_FAILED,
                error=common_pb2.Error(
                    code="training_error", message=f"{type(error).__name__}: {error}"
                ),
            )
        except (LeaseLost, grpc.RpcError):
            pass
        os._exit(1)


if __name__ == "__main__":
    main()
