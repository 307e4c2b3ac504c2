"""The scheduler: leases queued jobs to the executor, oldest first, and takes
them back when their trainer is lost (process exit, or no heartbeat for a
lease period), resuming from the last checkpoint up to `max_attempts`."""

from __future__ import annotations

import asyncio
import logging

from server import lifecycle
from server.control_plane import ControlPlane
from server.executor import LocalExecutor
from server.ids import now
from server.lifecycle import Job
from server.store.db import write
from tunewire.v1 import worker_pb2

log = logging.getLogger("tunewire.scheduler")

LEASED = (Job.STATE_RUNNING, Job.STATE_PAUSING)


class Scheduler:
    def __init__(self, plane: ControlPlane, address: str) -> None:
        self.plane = plane
        settings = plane.settings
        self.executor = LocalExecutor(
            address,
            plane.worker_token,
            settings.home / "logs",
            settings.heartbeat_seconds,
            self._on_exit,
            standby=settings.standby_trainer and settings.max_running_jobs > 0,
        )
        self._wake = asyncio.Event()
        self._stopping = False
        plane.wake_scheduler = self._wake.set

    async def run(self) -> None:
        self._recover()
        await self.executor.warm()
        while True:
            self._wake.clear()
            self._expire_leases()
            await self._start_queued()
            try:
                await asyncio.wait_for(self._wake.wait(), self._until_next_expiry())
            except TimeoutError:
                pass

    def _leased_jobs(self) -> list[tuple[str, int, float | None]]:
        return [
            (row[0], row[1], row[2])
            for row in self.plane.db.execute(
                "SELECT id, lease_epoch, lease_expires_at FROM jobs WHERE state IN (?, ?)",
                LEASED,
            )
        ]

    def _recover(self) -> None:
        """Leases from before a restart have no trainer that can still report
        (trainer credentials change each start), so their jobs resume now."""
        for job_id, epoch, _ in self._leased_jobs():
            self._lost(job_id, epoch, "the control plane restarted", counts=False)

    def _expire_leases(self) -> None:
        for job_id, epoch, expires in self._leased_jobs():
            if expires is not None and expires < now():
                seconds = self.plane.settings.lease_seconds
                self._lost(job_id, epoch, f"no heartbeat for {seconds:g} s")

    def _until_next_expiry(self) -> float | None:
        deadlines = [e for _, _, e in self._leased_jobs() if e is not None]
        return max(0.05, min(deadlines) - now()) if deadlines else None

    def _on_exit(self, job_id: str, epoch: int, code: int) -> None:
        # A trainer that reported its result has already ended its lease, so
        # this only acts on one that died without a word. Trainers stopped by
        # a shutdown are resumed by the next start's recovery instead.
        if self._stopping:
            return
        self._lost(job_id, epoch, f"trainer process exited with code {code}")
        self._wake.set()

    def _lost(self, job_id: str, epoch: int, reason: str, counts: bool = True) -> None:
        db, events = self.plane.db, self.plane.events
        self.executor.kill(job_id, epoch)
        with write(db):
            row = db.execute(
                "SELECT lease_epoch, state, command FROM jobs WHERE id = ?", [job_id]
            ).fetchone()
            if row is None or row[0] != epoch or row[1] not in LEASED:
                return
            lifecycle.end_attempt(
                db,
                events,
                lifecycle.load(db, job_id),
                row[2],
                reason,
                max_attempts=self.plane.settings.max_attempts,
                counts=counts,
            )
        log.warning("trainer lost", extra={"fields": {"job": job_id, "reason": reason}})

    async def _start_queued(self) -> None:
        db, settings = self.plane.db, self.plane.settings
        while self.executor.running < settings.max_running_jobs:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = ? ORDER BY created_at LIMIT 1",
                [Job.STATE_QUEUED],
            ).fetchone()
            if row is None:
                return
            with write(db):
                job = lifecycle.load(db, row[0])
                epoch = (
                    db.execute("SELECT lease_epoch FROM jobs WHERE id = ?", [job.id]).fetchone()[0]
                    + 1
                )
                job.progress.attempt += 1
                step = db.execute(
                    "SELECT MAX(step) FROM checkpoints WHERE job_id = ?", [job.id]
                ).fetchone()[0]
                if job.progress.attempt == 1 and not step:
                    message = "Fine-tuning job started"
                elif step:
                    message = (
                        f"Resuming from checkpoint step {step} (attempt {job.progress.attempt})"
                    )
                else:
                    message = f"Restarting from the start (attempt {job.progress.attempt})"
                lifecycle.transition(
                    db,
                    self.plane.events,
                    job,
                    Job.STATE_RUNNING,
                    message,
                    data={"attempt": job.progress.attempt, "resume_step": step or 0},
                    lease_epoch=epoch,
                    lease_expires_at=now() + settings.lease_seconds,
                    command=worker_pb2.COMMAND_CONTINUE,
                )
            pid = await self.executor.start(job.id, epoch)
            with write(db):
                self.plane.events.append(
                    job.id,
                    f"Trainer process started (pid {pid})",
                    data={"pid": pid, "attempt": job.progress.attempt},
                )

    async def shutdown(self) -> None:
        self._stopping = True
        await self.executor.shutdown()
