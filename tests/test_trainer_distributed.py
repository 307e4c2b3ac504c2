"""One run on several processes: `torchrun` launches two data-parallel ranks of the recipe
(gloo on this CPU machine) and the run is the same run as one process makes: the same
losses step by step, and the same adapter weights, within float summation order."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_faults_training import Follower
from test_training import losses as metric_losses
from test_training import run_to_end

from trainer.checkpoints import ADAPTER_WEIGHTS
from tunewire.v1 import jobs_pb2

Job, Compute = jobs_pb2.Job, jobs_pb2.Compute

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
    # The second rank trained too, and holds the very same weights as the first.
    follower = tmp_path / "ranked-rank-1"
    assert losses(follower) == losses(ranked)
    for key, value in load_file(follower / "adapter" / ADAPTER_WEIGHTS).items():
        assert torch.equal(value, weights["r"][key]), key

    # A checkpoint resumes on either world size: the two-rank run's step 3 in one process,
    # and the one-process run's step 3 on two ranks, each end where the unbroken run did.
    for source, command, name in (
        (ranked, [sys.executable], "ranks-to-one"),
        (alone, [str(TORCHRUN), *rendezvous, "--master-port", str(free_port())], "one-to-ranks"),
    ):
        resumed = tmp_path / name
        run(
            command,
            {
                **args,
                "output_dir": str(resumed),
                "resume_from": str(source / "checkpoints" / "step-000003"),
            },
            tmp_path / f"{name}.json",
        )
        assert losses(resumed)[-3:] == pytest.approx(one[-3:], rel=1e-4, abs=1e-5), name
    assert sorted(p.name for p in (ranked / "checkpoints").iterdir()) == sorted(
        p.name for p in (alone / "checkpoints").iterdir()
    )


def valid_losses(output_dir: Path) -> list[float]:
    with open(output_dir / "metrics.csv", encoding="utf-8") as f:
        return [float(row["valid_loss"]) for row in csv.DictReader(f) if row["valid_loss"]]


# metrics.csv keeps six decimals: two units of the last one, the tightest that holds here
# (the runs differ only in float summation order; measured: at most one unit).
CSV_LOSS = {"rel": 0, "abs": 2e-6}


@pytest.mark.timeout(300)
def test_fsdp_ranks_train_the_same_run_as_one_process(tiny: Path, tmp_path: Path) -> None:
    lines = (ASSETS / "sample-chat.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train.write_text("".join(lines[:24]), encoding="utf-8")
    valid.write_text("".join(lines[24:32]), encoding="utf-8")
    args = {
        "base_model": str(tiny),
        "train_file": str(train),
        "validation_file": str(valid),  # validation runs sharded too
        "n_epochs": 2,
        "batch_size": 4,
        # 3 micro-batches a step on 2 ranks: rank 1 joins every step's second pass idle.
        "gradient_accumulation_steps": 3,
        "learning_rate_multiplier": 10,
        "lora_dropout": 0.0,
        "seed": 7,
        "cpu_threads": 1,
    }
    # Gradients reach norms of 1.3-1.6: the default max_grad_norm 1.0 clips every step,
    # so the global norm over the shards is checked too.
    ranks = ["--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    alone, sharded = tmp_path / "alone", tmp_path / "sharded"
    run([sys.executable], {**args, "output_dir": str(alone)}, tmp_path / "alone.json")
    done = run(
        [str(TORCHRUN), *ranks, "--master-port", str(free_port())],
        {**args, "output_dir": str(sharded), "sharding": "fsdp"},
        tmp_path / "sharded.json",
    )
    assert json.loads(done.stdout[done.stdout.index("{") :])["status"] == "succeeded"

    # Each rank holds half the weights (every tiny-llama dimension is even).
    held = re.search(r"each holds about ([\d,]+) of the model's ([\d,]+) weights", done.stderr)
    assert held, done.stderr[-2000:]
    mine, whole = (int(number.replace(",", "")) for number in held.groups())
    assert mine * 2 == whole == 358_208

    one, two = losses(alone), losses(sharded)
    assert len(one) == len(two) == 4  # 24 examples / (4 x 3) per step x 2 epochs
    assert two == pytest.approx(one, **CSV_LOSS)
    assert valid_losses(sharded) == pytest.approx(valid_losses(alone), **CSV_LOSS)
    assert one[-1] < one[0]
    # The adapter is whole, in peft's files, and the one a single process trains.
    weights = load_file(alone / "adapter" / ADAPTER_WEIGHTS)
    gathered = load_file(sharded / "adapter" / ADAPTER_WEIGHTS)
    assert gathered.keys() == weights.keys()
    for key, value in weights.items():
        # Float summation order only: measured up to 1.8e-7 on weights of ~0.1.
        torch.testing.assert_close(gathered[key], value, rtol=0, atol=1e-6)
    # So is the optimizer state, gathered into one process's layout: Adam's moments are
    # where summed gradients differ from averaged ones (Adam and clipping hide the scale
    # from the losses: averaging moves them by only 1e-4, and the moments by 0.03).
    states = [
        torch.load(d / "checkpoints" / "step-000004" / "state.pt", weights_only=True)["optimizer"]
        for d in (alone, sharded)
    ]
    assert states[1]["param_groups"] == states[0]["param_groups"]
    torch.testing.assert_close(states[1]["state"], states[0]["state"], rtol=0, atol=1e-6)

    # Checkpoints resume on either world size and either sharding: the sharded run's step 2
    # in one process, the one-process run's step 2 sharded on two ranks.
    for source, command, sharding, name in (
        (sharded, [sys.executable], "replicated", "fsdp-to-one"),
        (alone, [str(TORCHRUN), *ranks, "--master-port", str(free_port())], "fsdp", "one-to-fsdp"),
    ):
        resumed = tmp_path / name
        run(
            command,
            {
                **args,
                "output_dir": str(resumed),
                "sharding": sharding,
                "resume_from": str(source / "checkpoints" / "step-000002"),
            },
            tmp_path / f"{name}.json",
        )
        assert losses(resumed)[-2:] == pytest.approx(one[-2:], **CSV_LOSS), name


# --- through the service: a job that asks for two processes ------------------------------


def test_a_job_on_two_processes_trains_the_same_run_as_on_one(start_server) -> None:
    srv = start_server(TUNEWIRE_MAX_RUNNING_JOBS="1")
    org = srv.default
    upload = org.upload_sample()
    hp = jobs_pb2.Hyperparameters(
        n_epochs=1, batch_size=8, learning_rate_multiplier=10, lora_dropout=0.0
    )
    runs = {}
    computes = {
        1: Compute(workers=1),
        2: Compute(workers=2),
        "fsdp": Compute(workers=2, sharding=Compute.SHARDING_FSDP),
    }
    for name, compute in computes.items():
        job = org.create_job(upload.id, seed=4, hyperparameters=hp, compute=compute)
        events = run_to_end(org, job.id)
        done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
        assert done.state == Job.STATE_SUCCEEDED, [e.message for e in events]
        runs[name] = (done, events)
    one, two, sharded = (metric_losses(runs[name][1]) for name in computes)
    assert [step for step, _ in two] == [step for step, _ in one] == list(range(1, 9))
    assert [loss for _, loss in two] == pytest.approx([loss for _, loss in one], rel=1e-4)
    assert [loss for _, loss in sharded] == pytest.approx([loss for _, loss in one], rel=1e-6)
    assert any(e.message.startswith("Training on 2 data-parallel processes") for e in runs[2][1])
    assert runs[2][0].compute.workers == 2 and runs[2][0].fine_tuned_model
    assert any(e.message.startswith("Sharded over 2 processes") for e in runs["fsdp"][1])
    assert not any(e.message.startswith("Sharded") for e in runs[2][1])


def test_a_dead_rank_ends_the_attempt_and_the_job_resumes(start_server) -> None:
    srv = start_server(TUNEWIRE_MAX_RUNNING_JOBS="1")
    org = srv.default
    hp = jobs_pb2.Hyperparameters(n_epochs=3, batch_size=8, checkpoint_every_steps=2)
    job = org.create_job(
        org.upload_sample().id, seed=5, hyperparameters=hp, compute=Compute(workers=2)
    )
    follower = Follower(org, job.id)
    spawned = follower.wait_for(lambda e: e.message.startswith("Training on 2"))
    follower.wait_for(lambda e: e.message.startswith("Checkpoint"), spawned.sequence)
    rank_1 = int(spawned.data["pids"][0])
    os.kill(rank_1, signal.SIGKILL)
    events = follower.join()
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert done.state == Job.STATE_SUCCEEDED, follower.messages
    assert done.progress.attempt == 2
    resumed = [
        e.message for e in events if e.message.startswith(("Resuming from", "Trainer attempt 1"))
    ]
    assert len(resumed) == 2, follower.messages
    assert len([e for e in events if e.message.startswith("Training on 2")]) == 2
