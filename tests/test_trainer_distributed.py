"""One run on several processes: `torchrun` launches two data-parallel ranks of the recipe
(gloo on this CPU machine) and the run is the same run as one process makes: the same
losses step by step, and the same adapter weights, within float summation order."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.checkpoints import ADAPTER_WEIGHTS

ASSETS = Path(__file__).resolve().parent.parent / "trainer" / "assets"
TORCHRUN = Path(sys.executable).parent / "torchrun"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], args: dict, path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(json.dumps(args), encoding="utf-8")
    env = {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "-m", "trainer", "train", str(path)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(output_dir: Path) -> list[float]:
    with open(output_dir / "metrics.csv", encoding="utf-8") as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


@pytest.mark.timeout(300)
def test_two_ranks_train_the_same_run_as_one_process(tiny: Path, tmp_path: Path) -> None:
    lines = (ASSETS / "sample-chat.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(lines[:24]), encoding="utf-8")
    args = {
        "base_model": str(tiny),
        "train_file": str(train),
        "n_epochs": 2,
        "batch_size": 4,
        "gradient_accumulation_steps": 2,
        "learning_rate_multiplier": 10,
        "lora_dropout": 0.0,  # dropout masks would differ with the data each rank draws
        "seed": 7,
        "checkpoint_every_steps": 3,
        "cpu_threads": 1,
    }
    alone, ranked = tmp_path / "alone", tmp_path / "ranked"
    run([sys.executable], {**args, "output_dir": str(alone)}, tmp_path / "alone.json")
    rendezvous = ["--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    done = run(
        [str(TORCHRUN), *rendezvous, "--master-port", str(free_port())],
        {**args, "output_dir": str(ranked)},
        tmp_path / "ranked.json",
    )
    assert json.loads(done.stdout[done.stdout.index("{") :])["status"] == "succeeded"

    one, two = losses(alone), losses(ranked)
    assert len(one) == len(two) == 6  # 24 examples / (4 x 2) per step x 2 epochs
    assert two == pytest.approx(one, rel=1e-4, abs=1e-5)
    assert one[-1] < one[0]  # it learned: the comparison is not of two idle runs
    weights = {
        name: load_file(d / "adapter" / ADAPTER_WEIGHTS)
        for name, d in (("a", alone), ("r", ranked))
    }
    assert weights["a"].keys() == weights["r"].keys()
    for key, value in weights["a"].items():
        torch.testing.assert_close(weights["r"][key], value, rtol=1e-4, atol=1e-6)
    # The second rank trained too, and agrees with the first to the bit.
    follower = tmp_path / "ranked-rank-1"
    assert losses(follower) == losses(ranked)
    assert sorted(p.name for p in (ranked / "checkpoints").iterdir()) == sorted(
        p.name for p in (alone / "checkpoints").iterdir()
    )
