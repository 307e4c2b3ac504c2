"""Steering jobs: random sequences of cancel / pause / resume, trainer SIGKILLs and server
restarts against a real server training tiny-llama, checked against the invariants of
the steering table (`server.lifecycle.STEERING`):

- cancel wins: once a cancel is accepted, pause and resume are refused, no step is
  reported after it, and the job ends CANCELLED (and only such a job does);
- resume is taken only from PAUSED; every refusal is FAILED_PRECONDITION naming the state;
- only failures (a lost trainer) spend attempts: pauses, resumes and restarts don't;
- final states are final; events are gapless; no step is reported twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from conftest import Org, Server, chat_lines, launch
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from server.lifecycle import ALLOWED
from server.states import job_state_name
from tunewire.v1 import events_pb2, jobs_pb2

Job = jobs_pb2.Job
Event = events_pb2.Event
FINAL = {Job.STATE_SUCCEEDED, Job.STATE_FAILED, Job.STATE_CANCELLED}
STATE_NAMES = {job_state_name(s) for s in Job.State.values() if s}
STARTED = re.compile(r"Trainer process started \(pid (\d+)\)")
MAX_ATTEMPTS = 3
ENV = {
    "TUNEWIRE_MAX_RUNNING_JOBS": "1",
    "TUNEWIRE_HEARTBEAT_SECONDS": "0.3",
    "TUNEWIRE_LEASE_SECONDS": "5",
    "TUNEWIRE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
}
ACTIONS = ("cancel", "pause", "resume", "kill", "restart")
AFTER = {  # where an accepted command leaves a job
    "cancel": {Job.STATE_RUNNING, Job.STATE_PAUSING, Job.STATE_CANCELLED},
    "pause": {Job.STATE_PAUSING},
    "resume": {Job.STATE_QUEUED},
}
# (action, seconds to wait before it)
steps = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.sampled_from([0.0, 0.3, 1.0])), min_size=1, max_size=6
)


@dataclass
class Service:
    """The server under test, restartable on the same home; `org` follows it."""

    root: Path
    models_dir: Path
    srv: Server
    key: str
    org: Org
    file_id: str = ""
    starts: int = 1

    def restart(self) -> None:
        self.srv.terminate()
        self.srv.kill()
        self.starts += 1
        self.srv = launch(
            self.root / "home", self.models_dir, self.root / f"logs{self.starts}", **ENV
        )
        self.org = self.srv.org(self.key, "default")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("steering")
    srv = launch(root / "home", models_dir, root / "logs1", **ENV)
    assert srv.default
    svc = Service(root, models_dir, srv, srv.first_key, srv.default)
    try:
        svc.file_id = svc.org.upload(chat_lines(12, "steering")).id
        yield svc
    finally:
        svc.srv.terminate()
        svc.srv.kill()


def create(svc: Service, n_epochs: int = 6) -> Job:
    job = Job(
        base_model="tiny-llama",
        training_file=svc.file_id,
        seed=5,
        hyperparameters=jobs_pb2.Hyperparameters(
            n_epochs=n_epochs, learning_rate_multiplier=50, checkpoint_every_steps=1
        ),
    )
    return svc.org.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job))


def get(svc: Service, job_id: str) -> Job:
    return svc.org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))


def events_of(svc: Service, job_id: str) -> list[Event]:
    request = jobs_pb2.ListJobEventsRequest(job_id=job_id, page_size=1000)
    return list(svc.org.jobs.ListJobEvents(request).events)


def wait_until(svc: Service, job_id: str, done, timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    while not done(job := get(svc, job_id)):
        assert time.monotonic() < deadline, f"job is {job_state_name(job.state)}"
        time.sleep(0.1)
    return job


def steer(svc: Service, command: str, job_id: str) -> Job | None:
    """The job after `command` ("cancel", "pause", "resume"), or None if refused."""
    name = command.capitalize() + "Job"
    request = getattr(jobs_pb2, f"{name}Request")(job_id=job_id)
    try:
        return getattr(svc.org.jobs, name)(request)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        assert STATE_NAMES & set(re.findall(r"[a-z_]+", error.details())), error.details()
        return None


def kill_trainer(svc: Service, job_id: str) -> bool:
    if get(svc, job_id).state not in (Job.STATE_RUNNING, Job.STATE_PAUSING):
        return False
    starts = [STARTED.fullmatch(e.message) for e in events_of(svc, job_id)]
    pid = int([m for m in starts if m][-1].group(1))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


@dataclass
class Record:
    cancelled: bool = False  # a cancel was accepted
    kills: int = 0
    accepted: list[str] = field(default_factory=list)


def run_sequence(svc: Service, actions: list[tuple[str, float]]) -> None:
    job = create(svc)
    wait_until(svc, job.id, lambda j: j.progress.total_steps > 0)  # its trainer trains
    record = Record()
    for action, delay in actions:
        time.sleep(delay)
        if action == "kill":
            record.kills += kill_trainer(svc, job.id)
        elif action == "restart":
            svc.restart()
        else:
            if action == "resume":  # let a pause land first, so that resumes happen
                wait_until(svc, job.id, lambda j: j.state != Job.STATE_PAUSING, timeout=30)
            after = steer(svc, action, job.id)
            if after is None:
                continue
            record.accepted.append(action)
            assert not (record.cancelled and action != "cancel"), f"{action} after a cancel"
            record.cancelled |= action == "cancel"
            assert after.state in AFTER[action], (action, job_state_name(after.state))
    # A job left paused is resumed, so that every sequence ends in a final state.
    if wait_until(svc, job.id, lambda j: j.state != Job.STATE_PAUSING).state == Job.STATE_PAUSED:
        assert steer(svc, "resume", job.id) is not None
    done = wait_until(svc, job.id, lambda j: j.state in FINAL)
    event(f"{job_state_name(done.state)} after {'/'.join(record.accepted) or 'no command'}")
    check(svc, done, record)


def check(svc: Service, done: Job, record: Record) -> None:
    events = events_of(svc, done.id)
    log = [e.message for e in events]
    # Cancel wins, and only a cancel ends a job CANCELLED; nothing fails short of its attempts.
    assert (done.state == Job.STATE_CANCELLED) == record.cancelled, (record, log)
    # Final is final: nothing steers it, nothing is appended.
    for command in ("cancel", "pause", "resume"):
        assert steer(svc, command, done.id) is None
    assert get(svc, done.id) == done and len(events_of(svc, done.id)) == len(events)
    # Gapless events; state changes only along the state machine, resumes from PAUSED.
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    states = [e for e in events if e.type == Event.TYPE_STATE]
    for before, now in zip(states, states[1:], strict=False):
        was, to = (Job.State.Value("STATE_" + e.data["state"].upper()) for e in (before, now))
        assert to in ALLOWED.get(was, ()), (before.message, now.message)
        if now.message.startswith("Job resumed"):
            assert was == Job.STATE_PAUSED, before.message
    assert job_state_name(done.state) == states[-1].data["state"]
    # Only failures spend attempts.
    failures = [m for m in log if m.startswith("Trainer attempt") and "restarted" not in m]
    started = any(STARTED.fullmatch(m) for m in log)
    assert done.progress.attempt == (1 + len(failures) if started else 0), log
    assert len(failures) <= record.kills
    if done.state == Job.STATE_FAILED:
        assert done.progress.attempt == MAX_ATTEMPTS, log
    # No step reported twice or after a cancel; a finished job reported each step once.
    metrics = [(e, int(e.data["step"])) for e in events if e.type == Event.TYPE_METRICS]
    reported = [n for _, n in metrics]
    assert reported == sorted(set(reported)), reported
    cancel_at = next((e.sequence for e in events if e.message.startswith("Cancellation")), None)
    if cancel_at is not None:
        late = [n for e, n in metrics if e.sequence > cancel_at]
        assert not late, f"steps {late} were reported after the cancel"
    if done.state == Job.STATE_SUCCEEDED:
        assert reported == list(range(1, done.progress.total_steps + 1))
    saved = [m for m in log if m.startswith("Checkpoint created")]
    assert len(saved) == len(set(saved))


CASES = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # shrinking would restart servers for minutes
    suppress_health_check=list(HealthCheck),
)


EXAMPLES = {  # each bug this suite was written for, once
    "pause/resume cycles spend no attempts": [
        ("pause", 0.3),
        ("resume", 0.0),
        ("pause", 0.3),
        ("resume", 0.0),
    ],
    "resume only from paused": [("resume", 0.3)],
    "cancel wins over a pause": [("cancel", 0.3), ("pause", 0.0), ("resume", 0.0)],
    "kill and restart": [("kill", 0.3), ("pause", 0.3), ("restart", 0.0), ("resume", 0.0)],
}


def explicit(test):
    for actions in EXAMPLES.values():
        test = example(actions=actions)(test)
    return test


@settings(CASES, max_examples=5)
@given(actions=steps)
@explicit
def test_steering_keeps_its_invariants(service: Service, actions) -> None:
    run_sequence(service, actions)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@settings(CASES, max_examples=60)
@given(actions=steps)
def test_steering_keeps_its_invariants_many_sequences(service: Service, actions) -> None:
    run_sequence(service, actions)


def test_a_cancel_stops_the_trainer_within_one_step(service: Service) -> None:
    job = create(service, n_epochs=20)
    wait_until(service, job.id, lambda j: j.progress.step >= 3)
    cancelling = steer(service, "cancel", job.id)
    assert cancelling is not None and cancelling.state == Job.STATE_RUNNING
    done = wait_until(service, job.id, lambda j: j.state in FINAL, timeout=30)
    assert done.state == Job.STATE_CANCELLED
    check(service, done, Record(cancelled=True))
