"""Ranks as Ray actors: one bundle per rank (its CPUs and GPU) in a placement group that
Ray places on whichever nodes have room, packed onto few nodes where it can. Used by a
worker that is itself a Ray actor (the ray executor's); each rank runs `run_rank` and finds
rank 0 at the node address Ray knows it by. The placement group and the actors share the
fate of the worker that made them: a killed worker takes its ranks with it."""

from __future__ import annotations

import contextlib
import os

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from trainer.worker.ranks import STOP_SECONDS, NoRoom, RankWork, run_rank

PLACE_SECONDS = 300.0
"""How long a job waits for the cluster to have room for its ranks before the attempt
fails (and is retried)."""


@ray.remote(max_restarts=0)
class _Rank:
    def pid(self) -> int:
        return os.getpid()

    def run(self, spec: RankWork, env: dict[str, str]) -> int:
        return run_rank(spec, env)


def node_address() -> str:
    """This node's address on the cluster: where rank 0 listens for the others."""
    return ray.util.get_node_ip_address()


class RayRanks:
    """`world - 1` ranks of `cpus` CPUs and `gpus` GPUs each."""

    def __init__(self, spec: RankWork, world: int, cpus: float, gpus: int) -> None:
        self.spec = spec
        self.resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        self.group = placement_group([self.resources] * (world - 1), strategy="PACK")
        try:
            ray.get(self.group.ready(), timeout=PLACE_SECONDS)
        except GetTimeoutError:
            remove_placement_group(self.group)
            raise NoRoom(
                f"the Ray cluster had no room for {world - 1} more rank(s) of "
                f"{self.resources} within {PLACE_SECONDS:.0f} s"
            ) from None
        self.actors: list = []
        self.runs: list = []
        self._pids: list[int] = []

    def start(self, rank: int, env: dict[str, str]) -> None:
        actor = _Rank.options(
            num_cpus=self.resources["CPU"],
            num_gpus=self.resources.get("GPU", 0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=rank - 1
            ),
        ).remote()
        self.actors.append(actor)
        self._pids.append(ray.get(actor.pid.remote()))  # before `run` occupies it
        # Ray shows each actor only the GPU it was given: to the rank it is device 0.
        self.runs.append(actor.run.remote(self.spec, {**env, "LOCAL_RANK": "0"}))

    def pids(self) -> list[int]:
        return list(self._pids)

    def stop(self) -> None:
        with contextlib.suppress(RayError):
            ray.wait(self.runs, num_returns=len(self.runs), timeout=STOP_SECONDS)
        for actor in self.actors:
            with contextlib.suppress(RayError):
                ray.kill(actor, no_restart=True)
        remove_placement_group(self.group)
