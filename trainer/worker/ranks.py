"""The other ranks of a data-parallel job, started by the worker that holds its lease (rank
0): as child processes beside it (`LocalRanks`), or as actors in a placement group across a
Ray cluster's nodes (trainer/worker/ray_ranks.py). Either way a rank is `run_rank`: it
builds its own arguments from the lease's work, reading the training data and the
checkpoint to resume from through the blob store and the base model from its own models
dir, exactly as rank 0 did; so a rank on another node needs none of rank 0's files, and
every rank restores from the same checkpoint.

    python -m trainer.worker.ranks SPEC.json    # one rank, rendezvous in its environment
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tunewire.v1 import worker_pb2

STOP_SECONDS = 30.0
"""How long a finished run's ranks get to write their files and exit before they are
killed."""


class NoRoom(RuntimeError):
    """The cluster had no room for the job's ranks in time."""


@dataclass(frozen=True)
class RankWork:
    """What a rank needs to take part in one attempt, as plain data (JSON, or pickled to a
    Ray actor)."""

    work: bytes  # the lease's TrainWork, serialized
    epoch: int  # the lease's epoch: its attempt's output dir
    blobs: str  # the blob store's URL
    models_dir: str
    scratch: str

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "work": base64.b64encode(self.work).decode()})

    @classmethod
    def from_json(cls, text: str) -> RankWork:
        values = json.loads(text)
        return cls(**{**values, "work": base64.b64decode(values["work"])})


def run_rank(spec: RankWork, env: dict[str, str]) -> int:
    """Train as rank `env["RANK"]` of the run `env` describes, until rank 0 ends it."""
    from server.store.blobs import BlobStore
    from trainer.distributed import init_from_env
    from trainer.recipe import train
    from trainer.worker.train import Place, train_args

    os.environ.update(env)
    place = Place(BlobStore(spec.blobs), Path(spec.models_dir), Path(spec.scratch))
    args = train_args(worker_pb2.TrainWork.FromString(spec.work), place, spec.epoch)
    args.output_dir = f"{args.output_dir}-rank-{env['RANK']}"  # rank 0's files are the run's
    init_from_env(args.device)
    train(args)
    return 0


class LocalRanks:
    """Ranks as child processes of this worker, one log file each under `logs`."""

    def __init__(self, spec: RankWork, logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self.spec_path = logs / "rank-work.json"
        self.spec_path.write_text(spec.to_json(), encoding="utf-8")
        self.children: list[subprocess.Popen] = []

    def start(self, rank: int, env: dict[str, str]) -> None:
        with open(self.logs / f"rank-{rank}.log", "ab") as log:
            self.children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "trainer.worker.ranks", str(self.spec_path)],
                    env={**os.environ, **env, "LOCAL_RANK": str(rank)},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )

    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def stop(self) -> None:
        for child in self.children:
            try:
                child.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def main(argv: list[str]) -> int:
    spec = RankWork.from_json(Path(argv[0]).read_text(encoding="utf-8"))
    return run_rank(spec, dict(os.environ))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
