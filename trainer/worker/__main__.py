"""`python -m trainer.worker`: a long-lived worker that leases work and does it.

    python -m trainer.worker --control-plane HOST:50051 --kind train \\
        --blobs s3://bucket/tunewire --models-dir /models --scratch /tmp/tunewire

The credential comes from TUNEWIRE_WORKER_TOKEN (the control plane's worker token).
torch is imported before the first lease is asked for, so work never waits on imports.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

import grpc

from server import logs
from server.store.blobs import BlobStore
from trainer.worker.lease import ControlPlane, Lease, LeaseLost
from trainer.worker.train import Place
from tunewire.v1 import worker_pb2

log = logging.getLogger("tunewire.worker")
Kind = worker_pb2.Lease.Kind
KINDS = {"train": Kind.KIND_TRAIN, "export": Kind.KIND_EXPORT, "serve": Kind.KIND_SERVE}
WAIT_SECONDS = 30.0
EXIT_LEASE_LOST = 3


def _exit_with(parent: int) -> None:
    """A worker started by a local executor ends with it, even when it is killed."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.worker", description=__doc__)
    parser.add_argument("--control-plane", required=True, help="the control plane's gRPC address")
    parser.add_argument("--kind", choices=sorted(KINDS), required=True, help="the work it takes")
    parser.add_argument("--blobs", required=True, help="the blob store: a directory or fsspec URL")
    parser.add_argument("--models-dir", required=True, help="where base models are found by name")
    parser.add_argument("--scratch", default=".tunewire-worker", help="local working files")
    parser.add_argument("--worker-id", default="", help="unique per worker (default host:pid)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="serve: InferenceService address")
    parser.add_argument("--parent", type=int, default=0, help="exit when this process is gone")
    parser.add_argument(
        "--ranks",
        choices=("local", "ray"),
        default="local",
        help="where a data-parallel job's other processes start: beside this worker, or as "
        "actors on the Ray cluster this worker runs on",
    )
    parser.add_argument("--rank-cpus", type=float, default=1.0, help="CPUs per Ray rank")
    options = parser.parse_args(argv)
    logs.setup(os.environ.get("TUNEWIRE_LOG_LEVEL", "warning"))
    if options.parent:
        threading.Thread(target=_exit_with, args=(options.parent,), daemon=True).start()

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the log is a file: no progress bars
    token = os.environ["TUNEWIRE_WORKER_TOKEN"]
    kind = KINDS[options.kind]
    place = Place(
        BlobStore(options.blobs),
        Path(options.models_dir).resolve(),
        Path(options.scratch),
        options.ranks,
        options.rank_cpus,
    )
    info = worker_pb2.WorkerInfo(
        id=options.worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
        kinds=[kind],
        pid=os.getpid(),
        host=socket.gethostname(),
    )
    plane = ControlPlane(options.control_plane, token)
    if kind == Kind.KIND_SERVE:
        return _serve(plane, info, place, token, options.listen)
    work = _importer(kind)
    while True:
        try:
            reply = plane.acquire(info, WAIT_SECONDS)
        except LeaseLost as lost:  # another control plane's credential: nothing to do here
            log.warning("refused by the control plane", extra={"fields": {"why": str(lost)}})
            return EXIT_LEASE_LOST
        except grpc.RpcError as error:
            log.warning("no lease", extra={"fields": {"code": error.code().name}})
            time.sleep(1.0)
            continue
        if reply.HasField("lease"):
            with Lease(plane, reply.lease, reply.heartbeat_seconds) as lease:
                work(lease, reply, place)


def _importer(kind: int):
    """The function that does one lease of `kind`, imported now (seconds of torch)."""
    if kind == Kind.KIND_TRAIN:
        from trainer.worker import train

        def run_train(lease: Lease, reply: worker_pb2.AcquireLeaseResponse, place: Place):
            _guarded(lease, lambda: train.run(lease, reply.train, place), "training_error")

        return run_train
    from trainer.worker import export

    def run_export(lease: Lease, reply: worker_pb2.AcquireLeaseResponse, place: Place):
        _guarded(lease, lambda: export.run(lease, reply.export, place), "export_failed")

    return run_export


def _guarded(lease: Lease, work, code: str) -> None:
    """Run one lease's work; an unexpected error is reported as the work's failure and
    the worker goes on to the next lease."""
    try:
        work()
    except LeaseLost as lost:
        log.warning("lease lost; stopping", extra={"fields": {"why": str(lost)}})
    except Exception as error:  # noqa: BLE001 - reported to the user as the work's error
        log.exception("work failed", extra={"fields": {"lease": lease.lease.job_id}})
        try:
            lease.fail(code, f"{type(error).__name__}: {error}")
        except (LeaseLost, grpc.RpcError):
            pass


def _serve(
    plane: ControlPlane, info: worker_pb2.WorkerInfo, place: Place, token: str, listen: str
) -> int:
    from trainer.worker import serve

    server, address = serve.start(place, token, listen)
    info.address = address
    try:
        reply = plane.acquire(info, 0)
        with Lease(plane, reply.lease, reply.heartbeat_seconds) as lease:
            serve.hold(lease, threading.Event())
        log.warning("serving lease lost; stopping")
        return EXIT_LEASE_LOST
    finally:
        server.stop(grace=None)


if __name__ == "__main__":
    sys.exit(main())
