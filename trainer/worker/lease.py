"""The worker's side of the WorkerService contract: asking for work, and the calls made
under one lease (with its heart-beat), retried while the control plane is away."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import grpc
from google.protobuf import struct_pb2

from tunewire.v1 import common_pb2, events_pb2, worker_pb2, worker_pb2_grpc

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
# How long a call may keep failing with UNAVAILABLE (control plane restarting) before
# the worker gives up on it; a lease is gone by then anyway.
RETRY_SECONDS = 30.0
CALL_TIMEOUT = 30.0
Outcome = worker_pb2.ReportResultRequest


class LeaseLost(Exception):
    """The control plane no longer recognises this lease (or this worker)."""


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    """A Struct of the values that JSON can carry (no None, no NaN)."""
    out = struct_pb2.Struct()
    out.update({k: v for k, v in values.items() if v is not None and not is_nan(v)})
    return out


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


class ControlPlane:
    """The WorkerService stub with this worker's credential."""

    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = worker_pb2_grpc.WorkerServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")]

    def call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """One call, retried on UNAVAILABLE for up to RETRY_SECONDS; a refused lease or
        credential raises LeaseLost."""
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            try:
                return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)
            except grpc.RpcError as error:
                code = error.code()
                if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED):
                    raise LeaseLost(error.details()) from error
                if code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def acquire(
        self, worker: worker_pb2.WorkerInfo, wait: float
    ) -> worker_pb2.AcquireLeaseResponse:
        request = worker_pb2.AcquireLeaseRequest(worker=worker, wait_seconds=wait)
        return self.call("AcquireLease", request, timeout=wait + CALL_TIMEOUT)


class Lease:
    """Calls under one lease, and the heart-beat that keeps it (a thread, from `start`
    until `stop`), which also carries the control plane's cancel and pause."""

    def __init__(self, plane: ControlPlane, lease: worker_pb2.Lease, heartbeat: float) -> None:
        self.plane = plane
        self.lease = lease
        self.heartbeat_seconds = heartbeat or 2.0
        self.lost = threading.Event()
        self.command = "continue"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=CALL_TIMEOUT)

    def call(self, method: str, **fields: Any) -> Any:
        if self.lost.is_set():
            raise LeaseLost("lease lost")
        request = getattr(worker_pb2, f"{method}Request")(lease=self.lease, **fields)
        try:
            reply = self.plane.call(method, request)
        except LeaseLost:
            self.lost.set()
            raise
        if "command" in reply.DESCRIPTOR.fields_by_name:  # Heartbeat's and ReportMetrics'
            self.command = COMMANDS.get(reply.command, "continue")
        return reply

    def control(self) -> str:
        """What the work should do now: continue, pause, or cancel (also on a lost lease)."""
        return "cancel" if self.lost.is_set() else self.command

    def event(self, message: str, data: dict[str, Any], level: str = "info", key: str = ""):
        self.call(
            "ReportEvent", level=LEVELS[level], message=message, data=struct(data), dedupe_key=key
        )

    def fail(self, code: str, message: str, param: str = "") -> None:
        error = common_pb2.Error(code=code, message=message, param=param)
        self.call("ReportResult", outcome=Outcome.OUTCOME_FAILED, error=error)

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_seconds) and not self.lost.is_set():
            try:
                self.call("Heartbeat")
            except LeaseLost:
                return
            except grpc.RpcError as error:
                log.warning("heartbeat failed", extra={"fields": {"code": error.code().name}})
                continue
