"""Inference workers the control plane streams generation through.

An inference worker serves `InferenceService` at an address of its own and holds a
KIND_SERVE lease while it does; the registry here is those leases (in memory: after a
restart every worker re-registers under the new worker token). A base model's requests
go to one worker chosen by a hash of its name, so its weights and adapters stay loaded
in one place.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

import grpc

from server.errors import Unavailable
from tunewire.v1 import worker_pb2, worker_pb2_grpc

Kind = worker_pb2.Lease.Kind


@dataclass
class ServingWorker:
    worker_id: str
    epoch: int
    address: str
    expires_at: float
    channel: grpc.aio.Channel | None = None

    def stub(self) -> worker_pb2_grpc.InferenceServiceStub:
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.address)
        return worker_pb2_grpc.InferenceServiceStub(self.channel)


@dataclass
class Serving:
    lease_seconds: float
    workers: dict[str, ServingWorker] = field(default_factory=dict)
    _epochs: int = 0
    _joined: asyncio.Event = field(default_factory=asyncio.Event)

    def lease(self, worker_id: str, address: str) -> int:
        """A worker starts serving at `address`; returns its lease epoch."""
        self._epochs += 1
        old = self.workers.pop(worker_id, None)
        if old is not None and old.channel is not None:
            asyncio.ensure_future(old.channel.close())
        self.workers[worker_id] = ServingWorker(
            worker_id, self._epochs, address, time.monotonic() + self.lease_seconds
        )
        self._joined.set()
        self._joined = asyncio.Event()
        return self._epochs

    def current(self, lease: worker_pb2.Lease) -> ServingWorker | None:
        worker = self.workers.get(lease.job_id)
        return worker if worker is not None and worker.epoch == lease.epoch else None

    def extend(self, worker: ServingWorker) -> None:
        worker.expires_at = time.monotonic() + self.lease_seconds

    def end(self, worker_id: str) -> ServingWorker | None:
        worker = self.workers.pop(worker_id, None)
        if worker is not None and worker.channel is not None:
            asyncio.ensure_future(worker.channel.close())
        return worker

    def expired(self) -> list[ServingWorker]:
        at = time.monotonic()
        return [w for w in self.workers.values() if w.expires_at < at]

    def next_expiry(self) -> float | None:
        """Seconds until the first serving lease runs out, if any."""
        if not self.workers:
            return None
        return min(w.expires_at for w in self.workers.values()) - time.monotonic()

    async def pick(self, base_model: str, timeout: float) -> ServingWorker:
        """The worker for `base_model`, waiting up to `timeout` for one to join."""
        deadline = time.monotonic() + timeout
        while not self.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable("no inference worker is serving yet; retry shortly")
            joined = self._joined
            try:
                await asyncio.wait_for(joined.wait(), left)
            except TimeoutError:
                continue
        ids = sorted(self.workers)
        digest = int.from_bytes(hashlib.sha256(base_model.encode()).digest()[:8], "big")
        return self.workers[ids[digest % len(ids)]]

    async def close(self) -> None:
        for worker in list(self.workers.values()):
            if worker.channel is not None:
                await worker.channel.close()
        self.workers.clear()
