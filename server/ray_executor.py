"""The Ray executor: the control plane's workers as actors on an existing Ray cluster
(`TUNEWIRE_EXECUTOR=ray`, `TUNEWIRE_RAY_ADDRESS`). Each actor runs the same worker main
loop as a local worker process and reports over the same gRPC contract, so the pool,
restarts and lease recovery are the shared ones of server/executor.py. Only this module
imports ray, and only when the ray executor is chosen."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.exceptions import RayError

from server.control_plane import ControlPlane
from server.executor import Executor, ExitHandler, Kind

log = logging.getLogger("tunewire.executor")
DIED = -1
"""The exit code reported for an actor that died (killed, its node lost) or whose main
loop raised."""


class _Worker:
    """One worker: `run` is `python -m trainer.worker` in this actor's process."""

    def run(self, argv: list[str], token: str) -> int:
        import os

        os.environ["TUNEWIRE_WORKER_TOKEN"] = token
        from trainer.worker.__main__ import main

        return main(argv)


_RemoteWorker = ray.remote(_Worker)


class RayExecutor(Executor):
    prefix = "ray"

    def __init__(self, plane: ControlPlane, address: str, on_exit: ExitHandler) -> None:
        super().__init__(plane, address, on_exit)
        self._connecting = asyncio.Lock()  # workers starting together connect once

    async def launch(self, kind: int, worker_id: str, argv: list[str]) -> Any:
        settings = self.plane.settings
        async with self._connecting:
            if not ray.is_initialized():  # a second or two, once: off the event loop
                await asyncio.to_thread(
                    ray.init,
                    address=settings.ray_address,
                    log_to_driver=False,
                    logging_level="ERROR",
                )
        train = kind == Kind.KIND_TRAIN
        actor = _RemoteWorker.options(
            name=worker_id,
            num_cpus=settings.ray_train_cpus if train else 1,
            num_gpus=settings.ray_train_gpus if train else 0,
            max_restarts=0,  # the pool starts a new one, and takes the lease back
        ).remote()
        return actor, actor.run.remote(argv, self.plane.worker_token)

    def worker_argv(self, kind: int, worker_id: str) -> list[str]:
        # A data-parallel job's other ranks are actors too, placed where the cluster has room.
        cpus = str(self.plane.settings.ray_train_cpus)
        return [*super().worker_argv(kind, worker_id), "--ranks", "ray", "--rank-cpus", cpus]

    async def wait(self, handle: Any) -> int:
        _, done = handle
        try:
            return await done
        except RayError as error:
            log.warning("worker actor died", extra={"fields": {"error": type(error).__name__}})
            return DIED

    def kill(self, handle: Any) -> None:
        actor, _ = handle
        ray.kill(actor, no_restart=True)
