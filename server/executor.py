"""Executors keep the control plane's own workers running: the local one as processes on
this machine, the Ray one (server/ray_executor.py) as actors on a Ray cluster. They share
this pool and differ only in how one worker is started, waited for and killed.

Workers are long-lived: each imports torch once, then asks the control plane for leases
(`python -m trainer.worker`), so a job never waits for a process to start or torch to
import, only for a worker to be free. Up to a configured number run per kind of work:
training workers start with the control plane and are kept at their number; export and
inference workers start when their first work arrives. A worker that dies is started
again (after a pause if it keeps dying young), and the scheduler takes back the lease it
held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.control_plane import ControlPlane
from tunewire.v1 import exports_pb2, worker_pb2

log = logging.getLogger("tunewire.executor")

Kind = worker_pb2.Lease.Kind
KIND_NAMES = {Kind.KIND_TRAIN: "train", Kind.KIND_EXPORT: "export", Kind.KIND_SERVE: "serve"}
ExitHandler = Callable[[str, int], None]
"""(worker id, return code) once a worker has exited."""
Process = asyncio.subprocess.Process
YOUNG_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0


@dataclass
class _Worker:
    kind: int
    handle: Any  # what the executor started: a process, an actor
    started: float
    killed: bool = False  # by us, for a lost lease


class Executor:
    """A pool of workers per kind of work; subclasses start, wait for and kill one."""

    prefix = ""  # worker ids are <prefix>-<kind>-<n>

    def __init__(self, plane: ControlPlane, address: str, on_exit: ExitHandler) -> None:
        self.plane = plane
        self.address = address
        self.on_exit = on_exit
        settings = plane.settings
        self.limits = {
            Kind.KIND_TRAIN: settings.max_running_jobs,
            Kind.KIND_EXPORT: settings.export_workers,
            Kind.KIND_SERVE: settings.inference_workers,
        }
        self._workers: dict[str, _Worker] = {}
        self._starting: dict[int, int] = dict.fromkeys(self.limits, 0)
        self._young_deaths: dict[int, int] = dict.fromkeys(self.limits, 0)
        self._serial = 0
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    async def launch(self, kind: int, worker_id: str, argv: list[str]) -> Any:
        """Start one worker running `python -m trainer.worker *argv`; its handle."""
        raise NotImplementedError

    async def wait(self, handle: Any) -> int:
        """Its exit code, once it has exited (or died)."""
        raise NotImplementedError

    def kill(self, handle: Any) -> None:
        """Kill it now, and whatever it started."""
        raise NotImplementedError

    def worker_argv(self, kind: int, worker_id: str) -> list[str]:
        settings = self.plane.settings
        return [
            *("--control-plane", self.address, "--kind", KIND_NAMES[kind]),
            *("--worker-id", worker_id, "--blobs", self.plane.blobs.url),
            *("--models-dir", str(settings.models_dir), "--scratch", str(settings.home)),
        ]

    def count(self, kind: int) -> int:
        return sum(w.kind == kind for w in self._workers.values()) + self._starting[kind]

    def ensure(self, kind: int) -> None:
        """Start workers of `kind` up to its number (none if its number is 0)."""
        while not self._stopping and self.count(kind) < self.limits.get(kind, 0):
            self._starting[kind] += 1
            self._track(self._start(kind))

    async def _start(self, kind: int, delay: float = 0.0) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            if self._stopping:
                return
            self._serial += 1
            worker_id = f"{self.prefix}-{KIND_NAMES[kind]}-{self._serial}"
            handle = await self.launch(kind, worker_id, self.worker_argv(kind, worker_id))
        finally:
            self._starting[kind] -= 1
        self._workers[worker_id] = _Worker(kind, handle, time.monotonic())
        log.info("worker started", extra={"fields": {"worker": worker_id}})
        self._track(self._wait(worker_id))

    def _track(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait(self, worker_id: str) -> None:
        worker = self._workers[worker_id]
        code = await self.wait(worker.handle)
        del self._workers[worker_id]
        # Only a worker that dies young on its own, holding nothing, is failing to start
        # (and is restarted later each time); one lost with its work is retried at once.
        crashed = not worker.killed and worker_id not in self.plane.holding
        log.info("worker exited", extra={"fields": {"worker": worker_id, "code": code}})
        self.on_exit(worker_id, code)
        if self._stopping or not self.wanted(worker.kind):
            return
        young = crashed and time.monotonic() - worker.started < YOUNG_SECONDS
        self._young_deaths[worker.kind] = self._young_deaths[worker.kind] + 1 if young else 0
        delay = min(MAX_BACKOFF_SECONDS, 2.0 ** self._young_deaths[worker.kind] - 1)
        if self.count(worker.kind) < self.limits[worker.kind]:
            self._starting[worker.kind] += 1
            self._track(self._start(worker.kind, delay))

    def wanted(self, kind: int) -> bool:
        """Whether workers of `kind` should run now: training workers always (they stay
        warm); the others while work of theirs waits."""
        if kind == Kind.KIND_TRAIN:
            return True
        if kind == Kind.KIND_EXPORT:
            return bool(
                self.plane.db.execute(
                    "SELECT 1 FROM exports WHERE state = ? LIMIT 1",
                    [exports_pb2.Export.STATE_QUEUED],
                ).fetchone()
            )
        return False

    def kill_holder(self, lease: worker_pb2.Lease) -> None:
        """Kill our worker holding `lease` (and its children), if there is one;
        never a worker holding a newer lease of the same work."""
        for worker_id, held in list(self.plane.holding.items()):
            if held == lease:
                del self.plane.holding[worker_id]
                if (worker := self._workers.get(worker_id)) is not None:
                    worker.killed = True
                    self.kill(worker.handle)

    async def shutdown(self) -> None:
        self._stopping = True
        for worker in list(self._workers.values()):
            self.kill(worker.handle)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)


class LocalExecutor(Executor):
    """Worker processes on this machine, each ending with the control plane."""

    prefix = "local"

    async def launch(self, kind: int, worker_id: str, argv: list[str]) -> Process:
        logs = self.plane.settings.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "trainer.worker", *argv, "--parent", str(os.getpid())]
        with open(logs / f"worker-{worker_id.removeprefix('local-')}.log", "ab") as out:
            process = await asyncio.create_subprocess_exec(
                *command,
                env={**os.environ, "TUNEWIRE_WORKER_TOKEN": self.plane.worker_token},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                # Its own process group: a kill takes its children with it, and
                # Ctrl-C at the server's terminal does not reach it twice.
                start_new_session=True,
            )
        log.info("worker process", extra={"fields": {"worker": worker_id, "pid": process.pid}})
        return process

    async def wait(self, handle: Process) -> int:
        return await handle.wait()

    def kill(self, handle: Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(handle.pid, signal.SIGKILL)


def make_executor(plane: ControlPlane, address: str, on_exit: ExitHandler) -> Executor:
    """The executor `TUNEWIRE_EXECUTOR` names; Ray is imported only when it is chosen."""
    if plane.settings.executor == "ray":
        from server.ray_executor import RayExecutor

        return RayExecutor(plane, address, on_exit)
    return LocalExecutor(plane, address, on_exit)
