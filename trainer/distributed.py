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

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

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


COLLECTIVE_TIMEOUT = timedelta(minutes=10)
"""How long a rank waits in a collective for the others (a validation or a checkpoint of a
big model runs on every rank between steps) before it gives up on them."""


@contextlib.contextmanager
def data_parallel(args: Any, world: int, scratch: Path) -> Iterator[list[int]]:
    """This process as rank 0 of `world`, with ranks 1.. started here as child processes
    (`python -m trainer train`, the arguments of `args` as JSON in `scratch`) and joined in
    one process group for the run; yields the children's pids. A rank that dies fails the
    collective the others are in, which ends the run; leaving ends the group and the
    children."""
    if world <= 1:
        yield []
        return
    scratch.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:  # the rendezvous port: rank 0 binds it again at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = scratch / f"ranks-{port}.json"
    spec.write_text(json.dumps(dataclasses.asdict(args)), encoding="utf-8")
    env = {
        **os.environ,
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    children: list[subprocess.Popen] = []
    try:
        for rank in range(1, world):
            with open(scratch / f"rank-{rank}.log", "ab") as log:
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "trainer", "train", str(spec)],
                        env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                )
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=0,
            world_size=world,
            timeout=COLLECTIVE_TIMEOUT,
        )
        yield [child.pid for child in children]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for child in children:
            try:
                child.wait(timeout=30)  # a finished run's ranks write their files and exit
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
