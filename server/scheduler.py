"""The scheduler: the one place that takes work back from lost workers. A lease is lost
when its worker's process exits without ending it, or when no heartbeat came for a lease
period; a job then resumes from its last checkpoint and an export runs again, each up to
`max_attempts`, and a serving worker is dropped. Workers lease work themselves
(WorkerService.AcquireLease); the executor keeps them running."""

from __future__ import annotations

import asyncio
import logging

from server import exports, lifecycle
from server.control_plane import ControlPlane
from server.executor import make_executor
from server.ids import now
from server.lifecycle import Job
from server.store.db import write
from tunewire.v1 import exports_pb2, worker_pb2

log = logging.getLogger("tunewire.scheduler")

Lease = worker_pb2.Lease
Kind = Lease.Kind
Export = exports_pb2.Export
LEASED = (Job.STATE_RUNNING, Job.STATE_PAUSING)
RETRY_SECONDS = 1.0
"""How soon a lease that could not be taken back (a full disk) is tried again."""


class Scheduler:
    def __init__(self, plane: ControlPlane, address: str) -> None:
        self.plane = plane
        self.executor = make_executor(plane, address, self._on_exit)
        self._wake = asyncio.Event()
        self._stopping = False
        # Leases whose worker died holding them, by job or export id, with why: taken back
        # in the loop, which retries any that cannot be written yet (a full disk).
        self._exited: dict[str, tuple[Lease, str]] = {}

        def on_work(kind: int) -> None:
            self.executor.ensure(kind)
            self._wake.set()

        plane.on_work = on_work
        plane.on_lease = self._wake.set

    async def run(self) -> None:
        self._recover()
        for kind in (Kind.KIND_TRAIN, Kind.KIND_EXPORT):
            if self.executor.wanted(kind):
                self.executor.ensure(kind)
        while True:
            self._wake.clear()
            self._take_back_exited()
            self._expire_leases()
            wait = self._until_next_expiry()
            if self._exited:
                wait = min(wait or RETRY_SECONDS, RETRY_SECONDS)
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    def _leased(self) -> list[tuple[Lease, float | None]]:
        db = self.plane.db
        jobs = db.execute(
            "SELECT id, lease_epoch, lease_expires_at FROM jobs WHERE state IN (?, ?)", LEASED
        )
        found = [(Lease(job_id=i, epoch=e, kind=Kind.KIND_TRAIN), x) for i, e, x in jobs]
        running = db.execute(
            "SELECT id, lease_epoch, lease_expires_at FROM exports WHERE state = ?",
            [Export.STATE_RUNNING],
        )
        found += [(Lease(job_id=i, epoch=e, kind=Kind.KIND_EXPORT), x) for i, e, x in running]
        return found

    def _recover(self) -> None:
        """Leases from before a restart have no worker that can still report (worker
        credentials change each start): their jobs resume now, without spending an
        attempt, and their exports fail as interrupted."""
        for lease, _ in self._leased():
            if lease.kind == Kind.KIND_TRAIN:
                self.lost(lease, "the control plane restarted", counts=False)
        with write(self.plane.db):
            exports.fail_interrupted(self.plane.db, self.plane.events)

    def _take_back_exited(self) -> None:
        for key, (lease, reason) in list(self._exited.items()):
            if self._lost_or_later(lease, reason):
                del self._exited[key]

    def _lost_or_later(self, lease: Lease, reason: str) -> bool:
        """`lost`, or False when it could not be written now (it is tried again)."""
        try:
            self.lost(lease, reason)
        except Exception:  # a full disk, say: the scheduler must outlive it
            log.exception(
                "could not take a lease back; retrying", extra={"fields": {"reason": reason}}
            )
            return False
        return True

    def _expire_leases(self) -> None:
        seconds = self.plane.settings.lease_seconds
        for lease, expires in self._leased():
            # A worker known to have exited is taken back with that reason, not this one.
            if expires is not None and expires < now() and lease.job_id not in self._exited:
                self._lost_or_later(lease, f"no heartbeat for {seconds:g} s")
        for worker in self.plane.serving.expired():
            self.lost(
                Lease(job_id=worker.worker_id, epoch=worker.epoch, kind=Kind.KIND_SERVE),
                f"no heartbeat for {seconds:g} s",
            )

    def _until_next_expiry(self) -> float | None:
        deadlines = [e - now() for _, e in self._leased() if e is not None]
        if (serving := self.plane.serving.next_expiry()) is not None:
            deadlines.append(serving)
        return max(0.05, min(deadlines)) if deadlines else None

    def _on_exit(self, worker_id: str, code: int) -> None:
        # A worker that ended its lease holds none, so this only acts on one that died
        # holding one. Workers stopped by a shutdown are resumed by the next start's
        # recovery instead.
        lease = self.plane.holding.pop(worker_id, None)
        if lease is None or self._stopping:
            return
        self._exited[lease.job_id] = (lease, f"worker process exited with code {code}")
        self._wake.set()

    def lost(self, lease: Lease, reason: str, counts: bool = True) -> None:
        """Take back `lease` from its worker (killing it, if it is ours) and retry its
        work; a lease that is no longer current is left alone."""
        db, events, settings = self.plane.db, self.plane.events, self.plane.settings
        self.executor.kill_holder(lease)
        if lease.kind == Kind.KIND_SERVE:
            if self.plane.serving.current(lease) is not None:
                self.plane.serving.end(lease.job_id)
                log.warning("inference worker lost", extra={"fields": {"reason": reason}})
            return
        with write(db):
            table = "jobs" if lease.kind == Kind.KIND_TRAIN else "exports"
            row = db.execute(
                f"SELECT lease_epoch, state FROM {table} WHERE id = ?", [lease.job_id]
            ).fetchone()
            if row is None or row[0] != lease.epoch:
                return
            if lease.kind == Kind.KIND_EXPORT:
                if row[1] != Export.STATE_RUNNING:
                    return
                exports.end_attempt(
                    db, events, lease.job_id, reason, max_attempts=settings.max_attempts
                )
            else:
                if row[1] not in LEASED:
                    return
                lifecycle.end_attempt(
                    db,
                    events,
                    lifecycle.load(db, lease.job_id),
                    lifecycle.pending(db, lease.job_id),
                    reason,
                    max_attempts=settings.max_attempts,
                    counts=counts,
                )
        log.warning("worker lost", extra={"fields": {"id": lease.job_id, "reason": reason}})
        self.plane.post(lease.kind)

    async def shutdown(self) -> None:
        self._stopping = True
        await self.executor.shutdown()
        await self.plane.serving.close()
