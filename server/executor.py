"""The local executor: one trainer process per leased job, on this machine."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("tunewire.executor")

ExitHandler = Callable[[str, int, int], None]
"""(job id, lease epoch, return code) once a trainer process has exited."""


class LocalExecutor:
    def __init__(
        self,
        address: str,
        token: str,
        log_dir: Path,
        heartbeat_seconds: float,
        on_exit: ExitHandler,
    ) -> None:
        self.address = address
        self.token = token
        self.log_dir = log_dir
        self.heartbeat_seconds = heartbeat_seconds
        self.on_exit = on_exit
        self._procs: dict[str, tuple[int, asyncio.subprocess.Process]] = {}
        self._watchers: set[asyncio.Task] = set()

    @property
    def running(self) -> int:
        return len(self._procs)

    async def start(self, job_id: str, epoch: int) -> int:
        """Start the trainer for (job, epoch); returns its pid."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{job_id}-{epoch}.log", "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.worker",
                "--address",
                self.address,
                "--job",
                job_id,
                "--epoch",
                str(epoch),
                "--heartbeat-seconds",
                str(self.heartbeat_seconds),
                env={**os.environ, "TUNEWIRE_WORKER_TOKEN": self.token},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                # Its own process group: a kill takes its children with it, and
                # Ctrl-C at the server's terminal does not reach it twice.
                start_new_session=True,
            )
        self._procs[job_id] = (epoch, proc)
        task = asyncio.create_task(self._wait(job_id, epoch, proc))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        log.info("trainer started", extra={"fields": {"job": job_id, "pid": proc.pid}})
        return proc.pid

    async def _wait(self, job_id: str, epoch: int, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._procs.get(job_id, (None, None))[1] is proc:
            del self._procs[job_id]
        log.info("trainer exited", extra={"fields": {"job": job_id, "code": code}})
        self.on_exit(job_id, epoch, code)

    def kill(self, job_id: str, epoch: int | None = None) -> None:
        """SIGKILL the job's trainer (and its children), if it runs; with `epoch`,
        only the trainer of that lease, never a newer attempt's."""
        entry = self._procs.get(job_id)
        if entry is None or (epoch is not None and entry[0] != epoch):
            return
        try:
            os.killpg(entry[1].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def shutdown(self) -> None:
        for job_id in list(self._procs):
            self.kill(job_id)
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=5)
