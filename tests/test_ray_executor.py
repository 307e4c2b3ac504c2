"""Workers on a Ray cluster: with `TUNEWIRE_EXECUTOR=ray` the control plane starts its
workers as actors on a real (local, one-node) Ray cluster instead of processes of its own.
A job trains on one to SUCCEEDED; one SIGKILLed mid-job is reported like a local worker's
exit, and one stopped past its lease is killed through Ray: either way its lease is taken
back and the job resumes on a new actor."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, Org, Server, clean_env, launch
from test_training import wait_state

from tunewire.v1 import events_pb2, jobs_pb2

Job = jobs_pb2.Job
Event = events_pb2.Event
STARTED = re.compile(r"Trainer process started \(pid (\d+)\)")
TIMEOUT = 240.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    # Ray's Unix sockets live under its temp dir: a short path, not pytest's deep one.
    temp = Path(tempfile.mkdtemp(prefix="twray-", dir="/tmp"))
    env = clean_env(temp / "no-home", None, RAY_TMPDIR=str(temp), OMP_NUM_THREADS="1")
    ray = [str(BIN / "ray")]
    port = free_port()
    started = subprocess.run(
        [
            *ray,
            *("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}"),
            *("--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"),
            f"--temp-dir={temp}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*ray, "stop", "--force"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def srv(
    ray_cluster: str, tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ray")
    server = launch(
        root / "home",
        models_dir,
        root / "logs",
        TUNEWIRE_EXECUTOR="ray",
        TUNEWIRE_RAY_ADDRESS=ray_cluster,
        TUNEWIRE_MAX_RUNNING_JOBS="1",
        TUNEWIRE_EXPORT_WORKERS="0",
        TUNEWIRE_INFERENCE_WORKERS="0",
        TUNEWIRE_HEARTBEAT_SECONDS="0.5",
        TUNEWIRE_LEASE_SECONDS="4",
    )
    try:
        yield server
    finally:
        server.terminate()
        server.kill()


def start_job(org: Org, file_id: str, **hyperparameters: int) -> Job:
    hp = jobs_pb2.Hyperparameters(n_epochs=1, **hyperparameters)
    return org.create_job(file_id, seed=5, hyperparameters=hp)


def trainer_pids(events: list[Event]) -> list[int]:
    return [int(m[1]) for e in events if (m := STARTED.fullmatch(e.message))]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def is_ray_actor(pid: int, server_pid: int) -> bool:
    """A Ray worker process (titled `ray::...`), not a child of the control plane."""
    title = Path(f"/proc/{pid}/cmdline").read_bytes()
    return title.startswith(b"ray::") and parent_of(pid) != server_pid


def test_a_job_trains_on_a_ray_actor(srv: Server) -> None:
    org: Org = srv.default
    job = start_job(org, org.upload_sample().id)
    request = jobs_pb2.StreamJobEventsRequest(job_id=job.id)
    events: list[Event] = []
    for reply in org.jobs.StreamJobEvents(request, timeout=TIMEOUT):
        events.append(reply.event)
        if started := STARTED.fullmatch(reply.event.message):  # checked while it runs
            assert is_ray_actor(int(started[1]), srv.process.pid)
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert done.state == Job.STATE_SUCCEEDED, [e.message for e in events]
    assert done.fine_tuned_model.startswith("ft:tiny-llama:default:")
    assert len(trainer_pids(events)) == 1


@pytest.mark.parametrize(
    ("sig", "reason"),
    [
        (signal.SIGKILL, "worker process exited"),  # the actor's death, seen by on_exit
        (signal.SIGSTOP, "no heartbeat"),  # its lease expires: kill_holder kills the actor
    ],
)
def test_a_lost_ray_worker_is_taken_back_and_its_job_resumes(
    srv: Server, sig: signal.Signals, reason: str
) -> None:
    org: Org = srv.default
    job = start_job(org, org.upload_sample().id, checkpoint_every_steps=2)
    request = jobs_pb2.StreamJobEventsRequest(job_id=job.id)
    events: list[Event] = []
    lost = None
    for reply in org.jobs.StreamJobEvents(request, timeout=TIMEOUT):
        events.append(reply.event)
        if lost is None and reply.event.message.startswith("Checkpoint created"):
            lost = trainer_pids(events)[-1]
            assert is_ray_actor(lost, srv.process.pid)
            os.kill(lost, sig)
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    messages = [e.message for e in events]
    assert lost is not None, messages
    assert done.state == Job.STATE_SUCCEEDED, messages
    pids = trainer_pids(events)
    assert len(pids) == 2 and pids[0] == lost and pids[1] != lost, messages
    assert any(reason in m for m in messages), messages
    assert not alive(lost), "the lost worker still runs"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pause_resume_and_cancel_through_ray(srv: Server) -> None:
    org: Org = srv.default
    upload = org.upload_sample().id
    paused = start_job(org, upload, checkpoint_every_steps=2)
    wait_state(org, paused.id, Job.STATE_RUNNING, timeout=TIMEOUT)
    org.jobs.PauseJob(jobs_pb2.PauseJobRequest(job_id=paused.id))
    wait_state(org, paused.id, Job.STATE_PAUSED, timeout=TIMEOUT)
    org.jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id=paused.id))
    request = jobs_pb2.StreamJobEventsRequest(job_id=paused.id)
    events = [r.event for r in org.jobs.StreamJobEvents(request, timeout=TIMEOUT)]
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=paused.id))
    assert done.state == Job.STATE_SUCCEEDED, [e.message for e in events]
    assert done.progress.attempt == 1  # a pause spends no attempt
    steps = [int(e.data["step"]) for e in events if e.type == Event.TYPE_METRICS]
    assert steps == sorted(set(steps)), "a step was reported twice"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))

    cancelled = start_job(org, upload)
    wait_state(org, cancelled.id, Job.STATE_RUNNING, timeout=TIMEOUT)
    org.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=cancelled.id))
    assert (
        wait_state(org, cancelled.id, Job.STATE_CANCELLED, timeout=TIMEOUT).fine_tuned_model == ""
    )
