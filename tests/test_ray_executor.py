"""Workers on a Ray cluster: with `TUNEWIRE_EXECUTOR=ray` the control plane starts its
workers as actors on a real (local, one-node) Ray cluster instead of processes of its own.
A job trains on one to SUCCEEDED; one SIGKILLed mid-job is reported like a local worker's
exit, and one stopped past its lease is killed through Ray: either way its lease is taken
back and the job resumes on a new actor. The same job on a local executor logs the same
events and trains the same model."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import raycluster
from conftest import Org, Server, launch
from google.protobuf.json_format import MessageToDict
from test_training import wait_state

from tunewire.v1 import events_pb2, jobs_pb2, models_pb2

Job = jobs_pb2.Job
Event = events_pb2.Event
STARTED = re.compile(r"Trainer process started \(pid (\d+)\)")
TIMEOUT = 240.0


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    with raycluster.ray_cluster([2]) as address:
        yield address


SETTINGS = {
    "TUNEWIRE_MAX_RUNNING_JOBS": "1",
    "TUNEWIRE_EXPORT_WORKERS": "0",
    "TUNEWIRE_INFERENCE_WORKERS": "0",
    "TUNEWIRE_HEARTBEAT_SECONDS": "0.5",
    "TUNEWIRE_LEASE_SECONDS": "4",
}
"""Both servers' settings, but for the executor."""


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
        **SETTINGS,
    )
    try:
        yield server
    finally:
        server.terminate()
        server.kill()


@pytest.fixture(scope="module")
def local_srv(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """The same server with the local executor (the session server trains nothing)."""
    root = tmp_path_factory.mktemp("local")
    server = launch(root / "home", models_dir, root / "logs", **SETTINGS)
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


VOLATILE = {"pid", "worker", "tokens_per_second"}
"""Event data that differs between two runs of one job: which process ran it, how fast."""
RUN_IDS = re.compile(r"\b(?:file|ftjob|ftckpt)-[0-9a-f]{24}\b|(?<=\(pid )\d+(?=\))")
"""Ids and pids in event messages and data."""


def run_job(srv: Server) -> tuple[Job, list[Event]]:
    org: Org = srv.default
    job = start_job(org, org.upload_sample().id, batch_size=16)  # 4 steps of the sample
    request = jobs_pb2.StreamJobEventsRequest(job_id=job.id)
    events = [r.event for r in org.jobs.StreamJobEvents(request, timeout=TIMEOUT)]
    return org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)), events


def normalised(events: list[Event]) -> list[tuple[str, str, str, str]]:
    """Each event's type, level, message and data, less ids, pids, workers and speeds."""
    return [
        (
            Event.Type.Name(e.type),
            Event.Level.Name(e.level),
            RUN_IDS.sub("<id>", e.message),
            RUN_IDS.sub(
                "<id>",
                repr(sorted((k, v) for k, v in MessageToDict(e.data).items() if k not in VOLATILE)),
            ),
        )
        for e in events
    ]


def adapter(srv: Server, job: Job) -> Path:
    """The final adapter's directory in the server's blob store: the API lists its files
    with their digests, but downloads no model."""
    return srv.home / "blobs" / "models" / job.id / "final"


def test_a_job_on_ray_logs_the_same_events_and_trains_the_same_model_as_locally(
    srv: Server, local_srv: Server
) -> None:
    import torch
    from safetensors.torch import load_file

    runs = [(srv, *run_job(srv)), (local_srv, *run_job(local_srv))]
    for _, done, events in runs:
        assert done.state == Job.STATE_SUCCEEDED, [e.message for e in events]
    (_, _, ray_events), (_, _, local_events) = runs
    workers = [e.data["worker"] for e in ray_events + local_events if "worker" in e.data]
    assert workers == ["ray-train-1", "local-train-1"]
    assert normalised(ray_events) == normalised(local_events)
    # One torch thread in the actor and in the local worker alike (the recipe's choice
    # for a model this small): the losses are bit-equal, so the tolerance is 0.
    metrics = [
        [
            (int(e.data["step"]), e.data["train_loss"])
            for e in events
            if e.type == Event.TYPE_METRICS
        ]
        for _, _, events in runs
    ]
    assert [step for step, _ in metrics[0]] == [1, 2, 3, 4]
    assert metrics[0] == metrics[1]

    # The models as the API lists them: the same files with the same digests, but for
    # adapter_config.json, whose target_modules (a set in peft) is written in the
    # process's hash order; it is compared parsed. The weights: bit for bit.
    listed = [
        {
            a.path: (a.bytes, a.sha256)
            for a in s.default.models.GetModel(
                models_pb2.GetModelRequest(model_id=job.fine_tuned_model)
            ).artifacts
            if a.path != "adapter_config.json"
        }
        for s, job, _ in runs
    ]
    assert listed[0] == listed[1] and "adapter_model.safetensors" in listed[0]
    configs = [
        json.loads((adapter(s, job) / "adapter_config.json").read_text()) for s, job, _ in runs
    ]
    for config in configs:
        config["target_modules"] = sorted(config["target_modules"])
    assert configs[0] == configs[1]
    weights = [load_file(adapter(s, job) / "adapter_model.safetensors") for s, job, _ in runs]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(w, weights[1][name]) for name, w in weights[0].items())
    assert any(w.abs().max() > 0 for name, w in weights[0].items() if "lora_B" in name)


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
    # ray.kill is asynchronous, and a stopped actor is killed only after its graceful
    # exit times out: by then the resumed job may have finished.
    deadline = time.monotonic() + 30
    while alive(lost):
        assert time.monotonic() < deadline, "the lost worker still runs"
        time.sleep(0.2)


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
