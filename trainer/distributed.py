"""Data-parallel ranks of one run: which rank this process is, and the few collectives
the recipe needs. One process alone is rank 0 of 1 and every collective is a no-op, so
the recipe reads the same either way.

Ranks are launched by torchrun (one node) or Ray Train (several): each runs the whole
recipe on the same arguments and data, trains its share of every step's micro-batches,
and sums gradients with the others before the optimizer step, so every rank holds the
same weights after each step. Rank 0 alone reports and its checkpoints are the ones
that count; the command to cancel or pause comes from rank 0 to all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

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

    def device(self) -> torch.device:
        """CUDA device `local_rank` where there is CUDA, else the CPU."""
        if torch.cuda.is_available():
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


def init_from_env() -> Ranks:
    """Join the process group torchrun describes in the environment (WORLD_SIZE and its
    rendezvous variables): NCCL on GPUs, gloo on CPUs. Alone: rank 0 of 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Ranks.current()
