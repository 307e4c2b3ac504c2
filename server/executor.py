"""The local executor: one trainer process per leased job, on this machine.

A trainer process spends seconds importing torch, transformers and peft before
it can train. With `standby`, the executor keeps one spare process that has
already paid for those imports and waits on stdin for a lease, so a job starts
training in milliseconds; each start hands the spare over and warms the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("tunewire.executor")

ExitHandler = Callable[[str, int, int], None]
"""(job id, lease epoch, return code) once a trainer process has exited."""
Process = asyncio.subprocess.Process


class LocalExecutor:
    def __init__(
        self,
        address: str,
        token: str,
        log_dir: Path,
        heartbeat_seconds: float,
        on_exit: ExitHandler,
        standby: bool = True,
    ) -> None:
        self.address = address
        self.token = token
        self.log_dir = log_dir
        self.heartbeat_seconds = heartbeat_seconds
        self.on_exit = on_exit
        self.standby = standby
        self._procs: dict[str, tuple[int, Process]] = {}
        self._spare: Process | None = None
        self._warming = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    @property
    def running(self) -> int:
        return len(self._procs)

    async def start(self, job_id: str, epoch: int) -> int:
        """Start the trainer for (job, epoch); returns its pid."""
        job_log = self.log_dir / f"{job_id}-{epoch}.log"
        proc = self._take_spare()
        if proc is not None:
            assert proc.stdin is not None
            proc.stdin.write(
                json.dumps({"job": job_id, "epoch": epoch, "log": str(job_log)}).encode() + b"\n"
            )
            await proc.stdin.drain()
            proc.stdin.close()
        else:
            proc = await self._spawn(job_log, "--job", job_id, "--epoch", str(epoch))
        self._procs[job_id] = (epoch, proc)
        self._track(self._wait(job_id, epoch, proc))
        if self.standby:
            self._track(self._warm_spare())
        log.info("trainer started", extra={"fields": {"job": job_id, "pid": proc.pid}})
        return proc.pid

    async def warm(self) -> None:
        """Start the first spare (at start-up, so the first job need not wait)."""
        if self.standby:
            await self._warm_spare()

    def _take_spare(self) -> Process | None:
        spare, self._spare = self._spare, None
        # A spare still importing is taken too: it is further along than a new one.
        return spare if spare is not None and spare.returncode is None else None

    async def _warm_spare(self) -> None:
        # One spare at a time: two starts in a row must not both spawn one.
        async with self._warming:
            if self._spare is None or self._spare.returncode is not None:
                self._spare = await self._spawn(self.log_dir / "standby.log", "--standby")

    async def _spawn(self, log_path: Path, *args: str) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.worker",
                "--address",
                self.address,
                "--heartbeat-seconds",
                str(self.heartbeat_seconds),
                *args,
                env={**os.environ, "TUNEWIRE_WORKER_TOKEN": self.token},
                stdin=asyncio.subprocess.PIPE,
                stdout=out,
                stderr=out,
                # Its own process group: a kill takes its children with it, and
                # Ctrl-C at the server's terminal does not reach it twice.
                start_new_session=True,
            )

    def _track(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait(self, job_id: str, epoch: int, proc: Process) -> None:
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
        _kill_group(entry[1])

    async def shutdown(self) -> None:
        for job_id in list(self._procs):
            self.kill(job_id)
        if self._spare is not None:
            _kill_group(self._spare)
            await self._spare.wait()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)


def _kill_group(proc: Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
