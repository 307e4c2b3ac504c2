"""Training under faults: trainers SIGKILLed at random moments (often mid-checkpoint),
a trainer SIGSTOPped past its lease, the control plane SIGKILLed mid-job and restarted,
and a disk that fills up while a checkpoint is written.

Real `tunewire up` servers, real trainer processes (tiny-llama on CPU), real signals. The
poison-step case (a step that always raises) lives in test_training.py. `@pytest.mark.slow`
variants run more seeds; their figures are in RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import (
    READY,
    SAMPLE_CHAT,
    Org,
    Server,
    clean_env,
    fails,
    launch,
    sha256,
    tunewire_command,
)

from tunewire.v1 import (
    checkpoints_pb2,
    events_pb2,
    files_pb2,
    jobs_pb2,
    models_pb2,
    worker_pb2,
    worker_pb2_grpc,
)

Job = jobs_pb2.Job
Event = events_pb2.Event
FINAL = {Job.STATE_SUCCEEDED, Job.STATE_FAILED, Job.STATE_CANCELLED}
STARTED = re.compile(r"Trainer process started \(pid (\d+)\)")
STREAM_TIMEOUT = 600
LEASE_SECONDS = 4.0


# --- helpers ----------------------------------------------------------------------------------


def create(org: Org, file_id: str, seed: int, **hyperparameters: int) -> Job:
    hyperparameters.setdefault("learning_rate_multiplier", 50)
    job = Job(
        base_model="tiny-llama",
        training_file=file_id,
        seed=seed,
        hyperparameters=jobs_pb2.Hyperparameters(**hyperparameters),
    )
    return org.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job))


class Follower:
    """Streams a job's events on a thread until the job ends. When the stream drops (the
    server went away), it reconnects with its cursor, as a client should."""

    def __init__(self, org: Org, job_id: str) -> None:
        self.org, self.job_id = org, job_id
        self.events: list[Event] = []
        self.drops: list[grpc.StatusCode] = []
        self.error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + STREAM_TIMEOUT
        try:
            while time.monotonic() < deadline:
                cursor = self.events[-1].sequence if self.events else 0
                request = jobs_pb2.StreamJobEventsRequest(job_id=self.job_id, after_sequence=cursor)
                try:
                    for reply in self.org.jobs.StreamJobEvents(request, timeout=STREAM_TIMEOUT):
                        with self._changed:
                            self.events.append(reply.event)
                            self._changed.notify_all()
                    return
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    self.drops.append(error.code())
                    time.sleep(0.2)
        except BaseException as error:  # noqa: BLE001 - re-raised by the test thread
            self.error = error
        finally:
            with self._changed:
                self._changed.notify_all()

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def wait_for(self, match: Callable[[Event], bool], after: int = 0, timeout: float = 120):
        """The first event past sequence `after` that matches."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((e for e in self.events if e.sequence > after and match(e)), None)
                if found is not None:
                    return found
                assert self.error is None, self.error
                assert not self.finished, "the job ended first"
                left = deadline - time.monotonic()
                assert left > 0, f"no matching event in {timeout}s: {self.messages[-5:]}"
                self._changed.wait(left)

    def join(self) -> list[Event]:
        self._thread.join(STREAM_TIMEOUT)
        if self.error is not None:
            raise self.error
        return self.events

    @property
    def messages(self) -> list[str]:
        return [e.message for e in self.events]


def starts(events: list[Event]) -> list[int]:
    return [int(m.group(1)) for e in events if (m := STARTED.fullmatch(e.message))]


def assert_clean_log(events: list[Event], total_steps: int) -> None:
    """Gapless sequences; every step reported once, in order; every checkpoint once."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    steps = [int(e.data["step"]) for e in events if e.type == Event.TYPE_METRICS]
    assert steps == list(range(1, total_steps + 1)), "a step is missing, repeated or reordered"
    saved = [e.message for e in events if e.message.startswith("Checkpoint created")]
    assert len(saved) == len(set(saved)), "a checkpoint was reported twice"
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids))


def db_rows(home: Path, sql: str, params: list[object]) -> list[tuple]:
    """Read the server's database directly (read-only), for what the API does not show."""
    with contextlib.closing(sqlite3.connect(f"file:{home / 'tunewire.db'}?mode=ro", uri=True)) as c:
        return c.execute(sql, params).fetchall()


def checkpoint_paths(home: Path, job_id: str) -> dict[int, Path]:
    rows = db_rows(home, "SELECT step, path FROM checkpoints WHERE job_id = ?", [job_id])
    return {step: Path(path) for step, path in rows}


def check_checkpoints(home: Path, org: Org, job: Job) -> tuple[int, list[str]]:
    """Every checkpoint is registered once and its model resolves; the model store holds
    each registered checkpoint's adapter whole; every complete-looking `step-*` dir any
    attempt left behind loads. Returns the staging dirs that kills left behind (evidence
    that a kill landed mid-write) and the `step-*` dirs that are not whole (a kill during
    a write or a prune must never leave one)."""
    from safetensors.torch import load_file

    from trainer.checkpoints import (
        ADAPTER_WEIGHTS,
        CHECKPOINT_FILES,
        list_checkpoints,
        load_checkpoint,
    )

    listed = org.jobs.ListCheckpoints(
        jobs_pb2.ListCheckpointsRequest(job_id=job.id, page_size=1000)
    ).checkpoints
    steps = [c.step for c in listed]
    assert len(steps) == len(set(steps)), "a step has two checkpoints"
    assert set(steps) == set(checkpoint_paths(home, job.id))
    for checkpoint in listed:
        model = org.models.GetModel(models_pb2.GetModelRequest(model_id=checkpoint.model))
        assert model.checkpoint_id == checkpoint.id
        stored = home / "blobs" / "models" / job.id / f"ckpt-step-{checkpoint.step}"
        assert {a.path for a in model.artifacts} == {"adapter_config.json", ADAPTER_WEIGHTS}
        assert load_file(stored / ADAPTER_WEIGHTS), stored
    staging, torn = 0, []
    for attempt in sorted((home / "jobs" / job.id).glob("attempt-*")):
        for path in list_checkpoints(attempt / "checkpoints"):
            # list_checkpoints promises complete checkpoints: a `step-*` dir is whole or absent.
            missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
            if missing:
                torn.append(f"{path.relative_to(home)} lacks {missing}")
                continue
            loaded = load_checkpoint(path)
            assert loaded.step == int(path.name.removeprefix("step-"))
            assert load_file(path / ADAPTER_WEIGHTS)
        staging += len(list((attempt / "checkpoints").glob(".tmp-*")))
    finals = org.models.ListModels(models_pb2.ListModelsRequest(page_size=1000)).models
    assert [m.id for m in finals if m.job_id == job.id] == [job.fine_tuned_model]
    return staging, torn


def assert_checkpoints_sound(home: Path, org: Org, job: Job) -> None:
    _, torn = check_checkpoints(home, org, job)
    assert not torn, f"checkpoint dirs listed as complete but torn: {torn}"


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def get(org: Org, job_id: str) -> Job:
    return org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_on_port(home: Path, models_dir: Path, logs: Path, port: int, **env: str) -> Server:
    """`tunewire up` on a fixed port, so a restart comes back where clients and orphaned
    trainers look for it (conftest's `launch` always picks a new port)."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / "stdout.txt", logs / "stderr.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(
            [*tunewire_command(), "up", "--grpc-port", str(port)],
            env=clean_env(home, models_dir, **env),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 30
    while not READY.search(out_path.read_text()):
        assert process.poll() is None, err_path.read_text()
        assert time.monotonic() < deadline, "not ready in 30 s"
        time.sleep(0.05)
    return Server(home, models_dir, process, f"127.0.0.1:{port}", out_path, err_path, None)


@pytest.fixture(scope="module")
def trainers(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """A server that runs trainers, with a short lease (so a silent trainer is presumed
    lost within seconds) and many attempts per job."""
    root = tmp_path_factory.mktemp("faults")
    srv = launch(
        root / "home",
        models_dir,
        root / "logs",
        TUNEWIRE_MAX_RUNNING_JOBS="1",
        TUNEWIRE_HEARTBEAT_SECONDS="0.3",
        TUNEWIRE_LEASE_SECONDS=str(LEASE_SECONDS),
        TUNEWIRE_MAX_ATTEMPTS="50",
    )
    try:
        yield srv
    finally:
        srv.terminate()
        srv.kill()


@pytest.fixture(scope="module")
def sample(trainers: Server) -> files_pb2.File:
    return trainers.default.upload_sample()


# --- trainer kill -9 at random moments --------------------------------------------------------


def kill_at_random(srv: Server, file_id: str, seed: int, kills: int) -> dict[str, int]:
    """One job, checkpointing every step, whose trainer is SIGKILLed `kills` times, each at
    a seeded random moment of its attempt's training. Returns figures for the report."""
    org, rng = srv.default, random.Random(seed)
    job = create(org, file_id, seed=seed, n_epochs=2, checkpoint_every_steps=1)
    follower = Follower(org, job.id)
    killed: list[tuple[int, int]] = []  # (pid, newest registered checkpoint step just after)
    after = 0
    while len(killed) < kills:
        started = follower.wait_for(lambda e: bool(STARTED.fullmatch(e.message)), after)
        pid = int(STARTED.fullmatch(started.message).group(1))
        # Kill once this attempt trains (its plan arrived): with a checkpoint every step, a
        # good share of kills lands inside a checkpoint write.
        begun = follower.wait_for(
            lambda e: e.message.startswith(("Training plan", "Trainer attempt")),
            started.sequence,
        )
        after = begun.sequence
        if not begun.message.startswith("Training plan"):
            continue  # this attempt ended before it trained; kill the next one
        time.sleep(rng.uniform(0, 2.0))
        if get(org, job.id).state in FINAL:
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid, 10)
        if get(org, job.id).state in FINAL:
            break  # the kill came after the trainer had reported its result
        killed.append((pid, max(checkpoint_paths(srv.home, job.id), default=0)))
    events = follower.join()
    done = get(org, job.id)

    assert done.state == Job.STATE_SUCCEEDED, follower.messages
    ended = [e for e in events if e.message.startswith("Trainer attempt")]
    assert done.progress.attempt == len(ended) + 1
    by_kill = [e for e in ended if "exited with code -9" in e.message]
    assert len(by_kill) == len(killed), [e.message for e in ended]
    pids = starts(events)
    assert [pids.index(pid) for pid, _ in killed] == sorted(pids.index(p) for p, _ in killed)
    assert_clean_log(events, int(done.progress.total_steps))
    # The attempt after each kill starts at or after the newest checkpoint committed before
    # the kill, and its trainer really loads that step (its plan says where it starts).
    plans = {int(e.data["start_step"]) for e in events if e.message.startswith("Training plan")}
    for (_, newest), kill in zip(killed, by_kill, strict=True):
        resumed = next(
            e
            for e in events
            if e.sequence > kill.sequence
            and e.message.startswith(("Resuming from", "Restarting from"))
        )
        step = int(resumed.data["resume_step"])
        assert step >= newest, (step, newest)
        assert step in plans
    staging, torn = check_checkpoints(srv.home, org, done)
    return {"kills": len(killed), "mid_write": staging, "torn": torn}


def test_trainer_kill_9_at_random_moments_always_resumes_and_succeeds(
    trainers: Server, sample: files_pb2.File
) -> None:
    figures = kill_at_random(trainers, sample.id, seed=11, kills=2)
    assert figures["kills"] == 2
    assert not figures["torn"], f"checkpoint dirs listed as complete but torn: {figures['torn']}"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_trainer_kill_9_at_random_moments_many_seeds(
    trainers: Server, sample: files_pb2.File
) -> None:
    totals = {"jobs": 0, "kills": 0, "mid_write": 0}
    torn: list[str] = []
    for seed in range(100, 112):
        figures = kill_at_random(trainers, sample.id, seed=seed, kills=3)
        totals["jobs"] += 1
        totals["kills"] += figures["kills"]
        totals["mid_write"] += figures["mid_write"]
        torn += figures["torn"]
    print(f"\nFIGURE trainer-kill: {totals}, torn step dirs: {len(torn)}")
    assert totals["kills"] >= 30
    assert not torn, f"checkpoint dirs listed as complete but torn: {torn}"


# --- a trainer stopped past its lease ---------------------------------------------------------


def worker_token(pid: int) -> str:
    """A trainer's credential, from its environment."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
    return env[b"TUNEWIRE_WORKER_TOKEN"].decode()


def late_reports(job_id: str, epoch: int) -> dict[str, object]:
    """Every report a trainer of lease `epoch` could still send."""
    lease = worker_pb2.Lease(job_id=job_id, epoch=epoch)
    late = "late report from a stopped trainer"
    return {
        "Heartbeat": worker_pb2.HeartbeatRequest(lease=lease),
        "ReportPlan": worker_pb2.ReportPlanRequest(lease=lease, total_steps=9, start_step=1),
        "ReportEvent": worker_pb2.ReportEventRequest(
            lease=lease, level=Event.LEVEL_INFO, message=late
        ),
        "ReportMetrics": worker_pb2.ReportMetricsRequest(lease=lease, step=10_000, total_steps=9),
        "ReportCheckpoint": worker_pb2.ReportCheckpointRequest(
            lease=lease,
            step=10_000,
            path="checkpoints/nonexistent",
            adapter="models/nonexistent",
            metrics=checkpoints_pb2.Checkpoint.Metrics(),
        ),
        "ReportResult": worker_pb2.ReportResultRequest(
            lease=lease,
            outcome=worker_pb2.ReportResultRequest.OUTCOME_FAILED,
        ),
    }


def test_a_trainer_stopped_past_its_lease_is_killed_and_its_late_reports_refused(
    trainers: Server, sample: files_pb2.File
) -> None:
    srv, org, lease = trainers, trainers.default, LEASE_SECONDS
    job = create(org, sample.id, seed=21, n_epochs=1, checkpoint_every_steps=8)
    follower = Follower(org, job.id)
    first = follower.wait_for(lambda e: e.message.startswith("Checkpoint created"))
    metrics = follower.wait_for(lambda e: e.type == Event.TYPE_METRICS, first.sequence)
    pid = starts(follower.events)[-1]
    token = worker_token(pid)
    os.kill(pid, signal.SIGSTOP)
    # The stopped trainer holds the job's current lease.
    ((epoch,),) = db_rows(srv.home, "SELECT lease_epoch FROM jobs WHERE id = ?", [job.id])
    stopped_at = time.monotonic()

    # The lease runs out; the scheduler kills the stopped trainer and leases the job again.
    lost = follower.wait_for(lambda e: e.message.startswith("Trainer attempt"), metrics.sequence)
    assert f"no heartbeat for {lease:g} s" in lost.message
    assert time.monotonic() - stopped_at >= lease - 0.5
    relet = follower.wait_for(lambda e: bool(STARTED.fullmatch(e.message)), lost.sequence)
    assert wait_gone(pid, 10), "the stopped trainer was not killed"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)

    # Whatever a stopped trainer of the old lease still sends, with its real credential, is
    # refused, and writes nothing.
    with grpc.insecure_channel(srv.address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        for method, request in late_reports(job.id, epoch).items():
            failure = fails(
                grpc.StatusCode.FAILED_PRECONDITION,
                getattr(stub, method),
                request,
                metadata=[("authorization", f"Bearer {token}")],
                timeout=10,
            )
            assert "is not current" in failure.message, (method, failure)

    events = follower.join()
    done = get(org, job.id)
    assert done.state == Job.STATE_SUCCEEDED, follower.messages
    assert not [m for m in follower.messages if "late report" in m]
    assert_clean_log(events, int(done.progress.total_steps))  # no step 10000 either
    assert 10_000 not in checkpoint_paths(srv.home, job.id)
    # Nothing from the old lease landed after the new one began: every checkpoint registered
    # since was written by a newer attempt.
    attempt_of = re.compile(r"/attempt-(\d+)/")
    registered_after = [
        e for e in events if e.sequence > relet.sequence and e.message.startswith("Checkpoint")
    ]
    paths = checkpoint_paths(srv.home, job.id)
    for event in registered_after:
        written_by = int(attempt_of.search(str(paths[int(event.data["step"])])).group(1))
        assert written_by > epoch, event.message
    assert registered_after
    assert_checkpoints_sound(srv.home, org, done)


# --- the control plane killed mid-job ---------------------------------------------------------


def test_control_plane_kill_9_mid_job_loses_nothing(tmp_path: Path, models_dir: Path) -> None:
    home, port = tmp_path / "home", free_port()
    env = {
        "TUNEWIRE_MAX_RUNNING_JOBS": "1",
        "TUNEWIRE_HEARTBEAT_SECONDS": "0.5",
        "TUNEWIRE_LEASE_SECONDS": "10",
    }
    home.mkdir()
    srv = launch_on_port(home, models_dir, tmp_path / "logs0", port, **env)
    key = re.search(r"^\s+(tw-\S+)\s*$", srv.stdout, re.MULTILINE).group(1)
    org = srv.org(key, "default")
    data = SAMPLE_CHAT.read_bytes()
    record = org.upload(data, SAMPLE_CHAT.name)
    notes = org.upload(b"\x00\x01 any bytes", "notes.bin", files_pb2.File.PURPOSE_USER_DATA)
    job = create(org, record.id, seed=31, n_epochs=2, checkpoint_every_steps=8)
    follower = Follower(org, job.id)
    try:
        first = follower.wait_for(lambda e: e.message.startswith("Checkpoint created"))
        follower.wait_for(lambda e: e.type == Event.TYPE_METRICS, first.sequence)
        orphan = starts(follower.events)[-1]
        before = org.jobs.ListJobEvents(
            jobs_pb2.ListJobEventsRequest(job_id=job.id, page_size=1000)
        ).events
        newest = max(checkpoint_paths(home, job.id))
        srv.process.kill()  # SIGKILL: no shutdown code runs
        srv.process.wait(timeout=10)

        again = launch_on_port(home, models_dir, tmp_path / "logs1", port, **env)
        try:
            events = follower.join()
            assert follower.drops, "the watcher never saw the server go"
            done = get(org, job.id)
            assert done.state == Job.STATE_SUCCEEDED, follower.messages
            # The trainer orphaned by the crash is refused by the new control plane and stops.
            assert wait_gone(orphan, 45), "the orphaned trainer kept running"
            # Jobs, events and files are intact.
            after = org.jobs.ListJobEvents(
                jobs_pb2.ListJobEventsRequest(job_id=job.id, page_size=1000)
            ).events
            assert after[: len(before)] == before
            assert list(after) == events, "the reconnecting watcher missed or repeated events"
            assert_clean_log(events, int(done.progress.total_steps))
            messages = [e.message for e in events]
            assert any("the control plane restarted" in m for m in messages)
            resumed = next(e for e in events if e.message.startswith("Resuming from"))
            assert int(resumed.data["resume_step"]) >= newest
            assert done.progress.attempt == 1, "a control-plane restart spent an attempt"
            for kept, content in ((record, data), (notes, b"\x00\x01 any bytes")):
                assert org.files.GetFile(files_pb2.GetFileRequest(file_id=kept.id)) == kept
                chunks = org.files.DownloadFile(files_pb2.DownloadFileRequest(file_id=kept.id))
                assert sha256(b"".join(c.chunk.data for c in chunks)) == sha256(content)
            assert_checkpoints_sound(home, org, done)
        finally:
            again.terminate()
            again.kill()
    finally:
        srv.kill()
        org.close()


# --- disk full while a checkpoint is written --------------------------------------------------


@pytest.fixture
def jobs_on_a_small_disk(tmp_path: Path) -> Iterator[Path]:
    """A home whose trainer output dir (home/jobs) is an 8 MiB tmpfs."""
    from test_faults_storage import small_filesystem

    home = tmp_path / "small-home"
    with small_filesystem(home / "jobs", "8m"):
        yield home


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


def test_disk_full_during_a_checkpoint_fails_the_attempt_cleanly_and_recovers(
    jobs_on_a_small_disk: Path, start_server: Callable[..., Server]
) -> None:
    home = jobs_on_a_small_disk
    srv = start_server(
        home=home,
        TUNEWIRE_MAX_RUNNING_JOBS="1",
        TUNEWIRE_HEARTBEAT_SECONDS="0.5",
        TUNEWIRE_MAX_ATTEMPTS="4",
    )
    org = srv.default
    record = org.upload_sample()
    filler = fill(home / "jobs")
    job = create(org, record.id, seed=41, n_epochs=1, checkpoint_every_steps=8)
    follower = Follower(org, job.id)
    ended = follower.wait_for(
        lambda e: e.message.startswith("Trainer attempt 1 ended"), timeout=120
    )
    assert "No space left on device" in ended.message, ended.message
    # Nothing of the failed write is published or registered.
    first_attempt = home / "jobs" / job.id / "attempt-1" / "checkpoints"
    assert not list(first_attempt.glob("step-*")), "a checkpoint was published on a full disk"
    assert not list(first_attempt.glob(".tmp-*")), "the failed checkpoint's staging dir was left"
    assert checkpoint_paths(home, job.id) == {}
    filler.unlink()  # space returns

    events = follower.join()
    done = get(org, job.id)
    assert done.state == Job.STATE_SUCCEEDED, follower.messages
    assert_clean_log(events, int(done.progress.total_steps))
    assert_checkpoints_sound(home, org, done)
