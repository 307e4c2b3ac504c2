"""Data-parallel ranks of one run: which rank this process is, and the few collectives
the recipe needs. One process alone is rank 0 of 1 and every collective is a no-op, so
the recipe reads the same either way.

Ranks are launched by torchrun, or by a worker (trainer/worker/ranks.py) beside itself or
across a Ray cluster's nodes: each runs the whole recipe on the same arguments and data,
trains its share of every step's micro-batches, and sums gradients with the others before
the optimizer step, so every rank holds the same weights after each step. Rank 0 alone
reports and its checkpoints are the ones that count; the command to cancel or pause comes
from rank 0 to all.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> Ranks:
        """This process's place in the process group, if one is initialised."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return cls(dist.get_rank(), dist.get_world_size(), local)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, wanted: str = "auto") -> torch.device:
        """CUDA device `local_rank` where CUDA is wanted ("cuda") or there ("auto"), else
        the CPU."""
        if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
            return torch.device("cuda", self.local_rank if self.world > 1 else 0)
        return torch.device("cpu")

    def mine(self, items: list[T]) -> list[T]:
        """This rank's share of a step's micro-batches: every world-th from its rank."""
        return items[self.rank :: self.world]

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of `parameters` over the ranks, in one flat all-reduce (a rank
        with no micro-batch this step adds zeros)."""
        if self.world == 1:
            return
        grads = [
            p.grad
            if p.grad is not None
            else torch.zeros_like(p, memory_format=torch.contiguous_format)
            for p in parameters
        ]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for parameter, grad in zip(parameters, grads, strict=True):
            count = grad.numel()
            parameter.grad = flat[offset : offset + count].view_as(parameter).clone()
            offset += count

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over the ranks (returned as a new tensor)."""
        if self.world == 1:
            return values
        total = values.clone()
        dist.all_reduce(total)
        return total

    def from_leader(self, value: T) -> T:
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def backend(device: str = "auto") -> str:
    """NCCL for ranks on GPUs, gloo for ranks on CPUs."""
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if on_gpu else "gloo"


def init_from_env(device: str = "auto") -> Ranks:
    """Join the process group the environment describes (WORLD_SIZE, RANK, MASTER_ADDR,
    MASTER_PORT, as torchrun and the rank launchers set them). Alone: rank 0 of 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        chosen = backend(device)
        if chosen == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(chosen, timeout=COLLECTIVE_TIMEOUT)
    return Ranks.current()


COLLECTIVE_TIMEOUT = timedelta(minutes=10)
"""How long a rank waits in a collective for the others (a validation or a checkpoint of a
big model runs on every rank between steps) before it gives up on them."""


class RankLauncher(Protocol):
    """Starts the other ranks of a run (1.., world - 1) wherever it puts them."""

    def start(self, rank: int, env: dict[str, str]) -> None:
        """Start rank `rank` with the rendezvous variables `env`."""

    def pids(self) -> list[int]:
        """The started ranks' process ids, for the job's events."""

    def stop(self) -> None:
        """Wait a while for the ranks to finish, then kill those that have not."""


@contextlib.contextmanager
def data_parallel(
    world: int, launcher: RankLauncher, host: str = "127.0.0.1", device: str = "auto"
) -> Iterator[list[int]]:
    """This process as rank 0 of `world`, the other ranks started by `launcher` and joined
    with it in one process group (rank 0 listens on `host`, which they must reach); yields
    their pids. A rank that dies fails the collective the others are in, which ends the
    run; leaving ends the group and the ranks."""
    if world <= 1:
        yield []
        return
    with socket.socket() as probe:  # the rendezvous port: rank 0 binds it again at once
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    rendezvous = {"WORLD_SIZE": str(world), "MASTER_ADDR": host, "MASTER_PORT": str(port)}
    try:
        for rank in range(1, world):
            launcher.start(rank, {**rendezvous, "RANK": str(rank)})
        dist.init_process_group(
            backend(device),
            init_method=f"tcp://{host}:{port}",
            rank=0,
            world_size=world,
            timeout=COLLECTIVE_TIMEOUT,
        )
        yield launcher.pids()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        launcher.stop()
