"""One job across a Ray cluster's nodes: with the ray executor, a job that asks for two
data-parallel processes gets its second rank as a Ray actor in a placement group, on
whichever node has room. The cluster here has two nodes of one CPU each, and the training
worker (rank 0) fills the head, so rank 1 can only land on the other node. The run is the
one a single process trains; a rank killed mid-job ends the attempt, and the job resumes
from its checkpoint."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Org, Server, launch
from raycluster import ray_cluster
from test_faults_training import Follower
from test_training import losses

from tunewire.v1 import jobs_pb2

Job = jobs_pb2.Job
Compute = jobs_pb2.Compute
STARTED = re.compile(r"Trainer process started \(pid (\d+)\)")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ray-ranks")
    with ray_cluster([1, 1]) as address:
        server = launch(
            root / "home",
            models_dir,
            root / "logs",
            TUNEWIRE_EXECUTOR="ray",
            TUNEWIRE_RAY_ADDRESS=address,
            TUNEWIRE_RAY_TRAIN_CPUS="1",
            TUNEWIRE_MAX_RUNNING_JOBS="1",
            TUNEWIRE_EXPORT_WORKERS="0",
            TUNEWIRE_INFERENCE_WORKERS="0",
        )
        try:
            yield server
        finally:
            server.terminate()
            server.kill()


def raylet_of(pid: int) -> int:
    """The raylet (the Ray node) that started process `pid`."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_a_job_trains_on_two_ray_nodes_as_one_process_would(srv: Server) -> None:
    org: Org = srv.default
    upload = org.upload_sample()
    hp = jobs_pb2.Hyperparameters(
        n_epochs=1, batch_size=8, learning_rate_multiplier=10, lora_dropout=0.0
    )
    runs = {}
    for workers in (1, 2):
        job = org.create_job(
            upload.id, seed=4, hyperparameters=hp, compute=Compute(workers=workers)
        )
        follower = Follower(org, job.id)
        if workers == 2:  # where the ranks are, while they run
            ranks = follower.wait_for(lambda e: e.message.startswith("Training on 2"))
            rank_0 = [int(m[1]) for e in follower.events if (m := STARTED.fullmatch(e.message))]
            rank_1 = int(ranks.data["pids"][0])
            assert raylet_of(rank_1) != raylet_of(rank_0[-1]), "both ranks on one node"
        events = follower.join()
        done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
        assert done.state == Job.STATE_SUCCEEDED, follower.messages
        runs[workers] = losses(events)
    assert [step for step, _ in runs[2]] == [step for step, _ in runs[1]] == list(range(1, 9))
    assert [loss for _, loss in runs[2]] == pytest.approx([loss for _, loss in runs[1]], rel=1e-4)


def test_a_killed_ray_rank_ends_the_attempt_and_the_job_resumes(srv: Server) -> None:
    org: Org = srv.default
    hp = jobs_pb2.Hyperparameters(n_epochs=3, batch_size=8, checkpoint_every_steps=2)
    job = org.create_job(
        org.upload_sample().id, seed=5, hyperparameters=hp, compute=Compute(workers=2)
    )
    follower = Follower(org, job.id)
    spawned = follower.wait_for(lambda e: e.message.startswith("Training on 2"))
    follower.wait_for(lambda e: e.message.startswith("Checkpoint"), spawned.sequence)
    os.kill(int(spawned.data["pids"][0]), signal.SIGKILL)
    events = follower.join()
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert done.state == Job.STATE_SUCCEEDED, follower.messages
    assert done.progress.attempt == 2
    assert any(e.message.startswith("Resuming from") for e in events), follower.messages
    assert len([e for e in events if e.message.startswith("Training on 2")]) == 2
    steps = [step for step, _ in losses(events)]
    assert steps == sorted(set(steps)), "a step was reported twice"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
