"""Training through the gRPC API: real server, real trainer processes, tiny-llama on CPU."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Org, Server, chat_lines, fails, invalid, launch, make_job

from tunewire.v1 import events_pb2, files_pb2, jobs_pb2, models_pb2

Job = jobs_pb2.Job
Event = events_pb2.Event
FINAL = {Job.STATE_SUCCEEDED, Job.STATE_FAILED, Job.STATE_CANCELLED}


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """A server that runs trainers, with short heartbeats so lost trainers are seen fast."""
    root = tmp_path_factory.mktemp("training")
    srv = launch(
        root / "home",
        models_dir,
        root / "logs",
        TUNEWIRE_MAX_RUNNING_JOBS="1",
        TUNEWIRE_HEARTBEAT_SECONDS="0.5",
        TUNEWIRE_LEASE_SECONDS="10",
    )
    try:
        yield srv
    finally:
        srv.terminate()
        srv.kill()


@pytest.fixture(scope="module")
def org(trainer: Server) -> Org:
    return trainer.default


@pytest.fixture(scope="module")
def sample(org: Org) -> files_pb2.File:
    return org.upload_sample()


def create(org: Org, file_id: str, seed: int, suffix: str = "", **hyperparameters: int) -> Job:
    # tiny-llama is randomly initialised: it needs a far higher rate than the
    # 2e-4 base that suits pretrained models to learn in a few epochs.
    hyperparameters.setdefault("learning_rate_multiplier", 50)
    job = Job(
        base_model="tiny-llama",
        training_file=file_id,
        seed=seed,
        suffix=suffix,
        hyperparameters=jobs_pb2.Hyperparameters(**hyperparameters),
    )
    return org.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job))


def stream(org: Org, job_id: str, after: int = 0) -> Iterator[Event]:
    request = jobs_pb2.StreamJobEventsRequest(job_id=job_id, after_sequence=after)
    for reply in org.jobs.StreamJobEvents(request, timeout=240):
        yield reply.event


def run_to_end(org: Org, job_id: str) -> list[Event]:
    return list(stream(org, job_id))


def losses(events: list[Event]) -> list[tuple[int, float]]:
    return [
        (int(e.data["step"]), e.data["train_loss"]) for e in events if e.type == Event.TYPE_METRICS
    ]


def wait_state(org: Org, job_id: str, state: int, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while (job := org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))).state != state:
        assert time.monotonic() < deadline, f"job is {Job.State.Name(job.state)}"
        time.sleep(0.1)
    return job


def assert_clean_log(events: list[Event]) -> None:
    """Gapless sequences, no metrics step or checkpoint reported twice."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    steps = [int(e.data["step"]) for e in events if e.type == Event.TYPE_METRICS]
    assert len(steps) == len(set(steps)), "a metrics step was reported twice"
    assert steps == sorted(steps)
    saved = [e.message for e in events if e.message.startswith("Checkpoint created")]
    assert len(saved) == len(set(saved))


def test_job_trains_to_succeeded_and_registers_its_model(org: Org, sample: files_pb2.File):
    job = create(org, sample.id, seed=7, suffix="atlas", n_epochs=5)
    events = run_to_end(org, job.id)
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))

    assert done.state == Job.STATE_SUCCEEDED, [e.message for e in events]
    assert done.fine_tuned_model == f"ft:tiny-llama:default:atlas:{job.id}"
    assert done.trained_tokens > 0
    assert done.HasField("finish_time") and not done.HasField("estimated_finish")
    hp = done.hyperparameters
    assert hp.n_epochs == 5 and hp.batch_size >= 1 and hp.learning_rate_multiplier > 0
    assert_clean_log(events)
    messages = [e.message for e in events]
    assert messages[:3] == [
        f"Validating training file: {sample.id}",
        "Job queued",
        "Fine-tuning job started",
    ]
    assert messages[-1] == "The job has successfully completed"
    assert f"New fine-tuned model created: {done.fine_tuned_model}" in messages
    metrics = [e for e in events if e.type == Event.TYPE_METRICS]
    assert metrics[0].message.startswith(f"Step 1/{int(metrics[0].data['total_steps'])}: ")
    assert {"step", "train_loss", "learning_rate", "tokens_per_second"} <= set(metrics[0].data)
    # Before step 1: the first example as the model trains on it, the trained span marked.
    shown = next(e for e in events if e.message.startswith("An example of the training file"))
    assert events.index(shown) < events.index(metrics[0])
    assert shown.data["rendered"].endswith(
        "<|im_start|>assistant\n«The capital of Nepal is Kathmandu, friend!<|im_end|>\n»"
    )

    # The learnable sample: loss falls well below where it started (to 0.48-0.55 of it
    # over seeds 7 to 11, by the order the examples come in).
    curve = [loss for _, loss in losses(events)]
    start, end = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    assert end < 0.65 * start, (start, end, end / start)

    model = org.models.GetModel(models_pb2.GetModelRequest(model_id=done.fine_tuned_model))
    assert model.job_id == job.id and model.base_model == "tiny-llama"
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {a.path for a in model.artifacts}
    listed = org.models.ListModels(models_pb2.ListModelsRequest()).models
    assert [m.id for m in listed if m.job_id == job.id] == [done.fine_tuned_model]

    # The results file: OpenAI's CSV columns, one row per logged step; then the
    # TensorBoard event files every job writes (tests/test_tracking.py reads them).
    results, tensorboard = done.result_files
    shown = org.files.GetFile(files_pb2.GetFileRequest(file_id=tensorboard))
    assert shown.filename == f"{job.id}-tensorboard.tar.gz"
    csv = b"".join(
        r.chunk.data for r in org.files.DownloadFile(files_pb2.DownloadFileRequest(file_id=results))
    ).decode()
    assert (
        csv.splitlines()[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    )

    checkpoints = org.jobs.ListCheckpoints(jobs_pb2.ListCheckpointsRequest(job_id=job.id))
    assert [c.step for c in checkpoints.checkpoints] == sorted(
        (c.step for c in checkpoints.checkpoints), reverse=True
    )
    newest = checkpoints.checkpoints[0]
    assert newest.model == f"{done.fine_tuned_model}:ckpt-step-{newest.step}"
    resolved = org.models.GetModel(models_pb2.GetModelRequest(model_id=newest.model))
    assert resolved.checkpoint_id == newest.id


def test_same_seed_gives_the_same_loss_curve(org: Org, sample: files_pb2.File):
    curves = []
    for _ in range(2):
        job = create(org, sample.id, seed=1234, n_epochs=1)
        events = run_to_end(org, job.id)
        assert events[-1].data["state"] == "succeeded"
        curves.append(losses(events))
    assert curves[0] == curves[1]
    assert len(curves[0]) > 10


def test_kill_9_resumes_from_the_last_checkpoint(org: Org, sample: files_pb2.File):
    job = create(org, sample.id, seed=3, n_epochs=3, checkpoint_every_steps=16)
    pid, killed_after = None, None
    events: list[Event] = []
    for event in stream(org, job.id):
        events.append(event)
        if "pid" in event.data and pid is None:
            pid = int(event.data["pid"])
        if event.message.startswith("Checkpoint created") and killed_after is None:
            killed_after = int(event.data["step"])
            os.kill(pid, signal.SIGKILL)
    assert killed_after is not None
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert done.state == Job.STATE_SUCCEEDED, [e.message for e in events]
    assert done.progress.attempt == 2

    messages = [e.message for e in events]
    lost = next(m for m in messages if m.startswith("Trainer attempt 1 ended"))
    assert "exited with code -9" in lost
    resumed = next(e for e in events if e.message.startswith("Resuming from checkpoint step"))
    resume_step = int(resumed.data["resume_step"])
    assert resume_step >= killed_after > 0
    plans = [e for e in events if e.message.startswith("Training plan")]
    assert [int(p.data["start_step"]) for p in plans] == [0, resume_step]
    assert_clean_log(events)
    steps = [s for s, _ in losses(events)]
    assert steps == list(range(1, int(done.progress.total_steps) + 1))
    models = org.models.ListModels(models_pb2.ListModelsRequest()).models
    assert [m.id for m in models if m.job_id == job.id] == [done.fine_tuned_model]


def test_cancel_while_running_stops_within_a_step(org: Org, sample: files_pb2.File):
    job = create(org, sample.id, seed=5, n_epochs=10)
    events: list[Event] = []
    for event in stream(org, job.id):
        events.append(event)
        if event.type == Event.TYPE_METRICS and int(event.data["step"]) == 5:
            cancelling = org.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
            assert cancelling.state in (Job.STATE_RUNNING, Job.STATE_CANCELLED)
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert done.state == Job.STATE_CANCELLED
    assert events[-1].message == "Job cancelled"
    assert done.progress.step < done.progress.total_steps
    assert not done.fine_tuned_model
    fails(
        grpc.StatusCode.FAILED_PRECONDITION,
        org.jobs.CancelJob,
        jobs_pb2.CancelJobRequest(job_id=job.id),
    )


def test_pause_then_resume_continues_from_the_pause_checkpoint(org: Org, sample: files_pb2.File):
    job = create(org, sample.id, seed=9, n_epochs=3)
    for event in stream(org, job.id):
        if event.type == Event.TYPE_METRICS and int(event.data["step"]) == 10:
            paused = org.jobs.PauseJob(jobs_pb2.PauseJobRequest(job_id=job.id))
            assert paused.state == Job.STATE_PAUSING
            break
    paused = wait_state(org, job.id, Job.STATE_PAUSED)
    step = paused.progress.step
    checkpoints = org.jobs.ListCheckpoints(jobs_pb2.ListCheckpointsRequest(job_id=job.id))
    assert checkpoints.checkpoints[0].step == step > 0

    resumed = org.jobs.ResumeJob(jobs_pb2.ResumeJobRequest(job_id=job.id))
    assert resumed.state == Job.STATE_QUEUED
    events = run_to_end(org, job.id)
    assert events[-1].data["state"] == "succeeded"
    messages = [e.message for e in events]
    # A pause is no failure: the resumed trainer goes on with the same attempt.
    assert f"Resuming from checkpoint step {step} (attempt 1)" in messages
    assert org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).progress.attempt == 1
    assert_clean_log(events)


def test_a_file_with_validation_errors_never_trains(org: Org):
    bad = org.upload(chat_lines(12, "bad") + b'{"messages": [{"role": "robot"}]}\n')
    assert bad.state == files_pb2.File.STATE_ERROR
    failure = fails(grpc.StatusCode.INVALID_ARGUMENT, org.create_job, bad.id)
    assert "job.training_file" in failure.violations
    assert all(
        j.training_file != bad.id for j in org.jobs.ListJobs(jobs_pb2.ListJobsRequest()).jobs
    )


def test_a_failure_that_would_repeat_fails_at_once(tmp_path: Path, models_dir: Path):
    # A base model the recipe cannot train (an encoder) fails the same way on every
    # attempt: it used to be retried up to the limit as a training_error.
    from transformers import BertConfig, BertModel

    models = tmp_path / "models"
    shutil.copytree(models_dir / "tiny-llama", models / "tiny-llama")
    encoder = models / "tiny-bert"
    config = BertConfig(
        vocab_size=2048,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(encoder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (models / "tiny-llama" / name).exists():
            shutil.copy(models / "tiny-llama" / name, encoder / name)
    srv = launch(tmp_path / "home", models, tmp_path / "logs", TUNEWIRE_MAX_RUNNING_JOBS="1")
    try:
        # Chat data on an encoder is now refused before it is queued, naming the base.
        org = srv.default
        problems = invalid(
            org.jobs.CreateJob,
            jobs_pb2.CreateJobRequest(
                job=make_job(training_file=org.upload_sample().id, base_model="tiny-bert", seed=1)
            ),
        )
        assert "job.base_model" in problems, problems
    finally:
        srv.terminate()
        srv.kill()


def test_a_poison_step_fails_the_job_after_the_retry_limit(start_server, models_dir: Path):
    srv = start_server(
        TUNEWIRE_MAX_RUNNING_JOBS="1",
        TUNEWIRE_MAX_ATTEMPTS="2",
        TUNEWIRE_FAILPOINT="step:3",
    )
    org = srv.default
    job = create(org, org.upload_sample().id, seed=1, n_epochs=1)
    events = run_to_end(org, job.id)
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert done.state == Job.STATE_FAILED
    assert done.error.code == "training_error"
    assert done.error.message == (
        "gave up after 2 attempt(s); last: RuntimeError: failpoint step:3 reached"
    )
    assert done.progress.attempt == 2
    retried = [e.message for e in events if e.message.startswith("Trainer attempt 1 ended")]
    assert len(retried) == 1
    assert events[-1].level == Event.LEVEL_ERROR
