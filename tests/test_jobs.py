"""JobService against a real server: create, read, list, steer and watch jobs.

The server runs no trainers (TUNEWIRE_MAX_RUNNING_JOBS=0), so created jobs stay QUEUED.
"""

from __future__ import annotations

import contextlib
import queue
import secrets
import sqlite3
import threading

import grpc
import pytest
from conftest import (
    ID,
    File,
    Job,
    Org,
    Server,
    chat_lines,
    every_page,
    fails,
    invalid,
    make_job,
)
from google.protobuf import field_mask_pb2

from tunewire.v1 import auth_pb2, events_pb2, jobs_pb2

Code = grpc.StatusCode
Event = events_pb2.Event
Hyperparameters = jobs_pb2.Hyperparameters


def events_of(org: Org, job_id: str, **request) -> list[Event]:
    """Every event of a job through ListJobEvents, following page tokens."""

    def fetch(token: str) -> jobs_pb2.ListJobEventsResponse:
        return org.jobs.ListJobEvents(
            jobs_pb2.ListJobEventsRequest(job_id=job_id, page_token=token, **request)
        )

    return [event for page in every_page(fetch) for event in page.events]


def states(events: list[Event]) -> list[str]:
    return [e.data["state"] for e in events if e.type == Event.TYPE_STATE]


def cancel(org: Org, job_id: str) -> Job:
    return org.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id))


class Watcher:
    """StreamJobEvents in a thread; events arrive on a queue, then None when it ends."""

    def __init__(self, org: Org, job_id: str, after: int = 0) -> None:
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.call = org.jobs.StreamJobEvents(
            jobs_pb2.StreamJobEventsRequest(job_id=job_id, after_sequence=after)
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for reply in self.call:
                self.events.put(reply.event)
        except grpc.RpcError as error:
            self.error = error
        self.events.put(None)

    def take(self, n: int) -> list[Event]:
        """The next `n` events; fails if the stream ends or stalls first."""
        got = []
        for _ in range(n):
            event = self.events.get(timeout=10)
            assert event is not None, f"stream ended early after {got}: {self.error}"
            got.append(event)
        return got

    def rest(self) -> list[Event]:
        """Every remaining event; the stream must end by itself, without error."""
        got = []
        while (event := self.events.get(timeout=10)) is not None:
            got.append(event)
            assert len(got) < 1000, "the stream never ends"
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()
        assert self.error is None, self.error
        return got


@pytest.fixture(scope="module")
def org(server: Server) -> Org:
    """An org of its own, so listings here see only this module's jobs."""
    return server.new_org("jobs")


@pytest.fixture(scope="module")
def train_file(org: Org) -> File:
    return org.upload_sample()


# --- CreateJob / GetJob -----------------------------------------------------------------------


def test_create_queues_the_job_and_echoes_the_request(org: Org, train_file: File) -> None:
    valid = org.upload(chat_lines(3, "valid"), "valid.jsonl")
    hp = Hyperparameters(n_epochs=2, batch_size=4, learning_rate_multiplier=0.5, lora_rank=8)
    job = org.create_job(
        train_file.id,
        validation_file=valid.id,
        suffix="my-model.v1",
        seed=42,
        metadata={"team": "search", "run": "1"},
        hyperparameters=hp,
        # Output-only fields in a request are ignored.
        id="ftjob-000000000000000000000000",
        state=Job.STATE_SUCCEEDED,
        fine_tuned_model="ft:stolen",
        organization="other",
    )

    assert ID.match(job.id) and job.id.startswith("ftjob-")
    assert job.id != "ftjob-000000000000000000000000"
    assert job.state == Job.STATE_QUEUED
    assert (job.base_model, job.training_file, job.validation_file) == (
        "tiny-llama",
        train_file.id,
        valid.id,
    )
    assert (job.suffix, job.seed, dict(job.metadata)) == (
        "my-model.v1",
        42,
        {"team": "search", "run": "1"},
    )
    assert job.hyperparameters == hp
    assert job.method.type == jobs_pb2.Method.TYPE_SUPERVISED
    assert (job.organization, job.fine_tuned_model) == ("jobs", "")
    assert job.create_time.seconds > 0 and not job.HasField("finish_time")
    assert org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)) == job

    events = events_of(org, job.id)
    assert [e.sequence for e in events] == [1, 2]
    assert states(events) == ["validating_files", "queued"]
    assert all(e.parent == job.id and ID.match(e.id) for e in events)


def test_create_generates_a_seed_when_unset(org: Org, train_file: File) -> None:
    seeds = {org.create_job(train_file.id).seed for _ in range(3)}
    assert all(0 <= s <= 2_147_483_647 for s in seeds)
    assert len(seeds) > 1


def test_create_accepts_every_boundary_value(org: Org, train_file: File) -> None:
    hp = Hyperparameters(
        n_epochs=50,
        batch_size=256,
        learning_rate_multiplier=100,
        lora_rank=256,
        lora_alpha=1024,
        lora_dropout=0,
        early_stopping_patience=0,
        early_stopping_threshold=1,
        checkpoint_every_steps=0,
    )
    job = org.create_job(
        train_file.id,
        hyperparameters=hp,
        seed=2_147_483_647,
        suffix="s" * 64,
        metadata={f"k{i:02d}" + "k" * 61: "v" * 512 for i in range(16)},
    )
    assert job.state == Job.STATE_QUEUED
    assert job.hyperparameters == hp
    assert org.create_job(train_file.id, seed=0).seed == 0


def test_create_with_the_same_request_id_returns_the_same_job(
    server: Server, org: Org, train_file: File
) -> None:
    request_id = f"retry-{secrets.token_hex(8)}"
    tag = {"idempotency": request_id}
    first = org.create_job(train_file.id, request_id=request_id, metadata=tag)
    again = org.create_job(train_file.id, request_id=request_id, metadata=tag)
    assert again == first
    listed = org.jobs.ListJobs(jobs_pb2.ListJobsRequest(metadata=tag)).jobs
    assert [j.id for j in listed] == [first.id]
    assert [e.sequence for e in events_of(org, first.id)] == [1, 2]

    # The key belongs to the org: another org's job with it is a different job.
    mine = server.default.create_job(
        server.default.upload_sample().id, request_id=request_id, metadata=tag
    )
    assert mine.id != first.id


def test_a_request_id_reused_with_other_parameters_is_refused(org: Org, train_file: File) -> None:
    request_id = f"reuse-{secrets.token_hex(8)}"
    tag = {"idempotency": request_id}
    first = org.create_job(train_file.id, request_id=request_id, metadata=tag)
    for other in (
        {"metadata": tag, "suffix": "other"},
        {"metadata": tag, "hyperparameters": Hyperparameters(n_epochs=2)},
        {"metadata": {"idempotency": "other"}},
    ):
        violations = _bad_create(org, request_id, training_file=train_file.id, **other)
        assert set(violations) == {"request_id"}
        assert "already used with other parameters" in violations["request_id"]
    # Nothing was created by the refused reuses, and the same request still answers.
    listed = org.jobs.ListJobs(jobs_pb2.ListJobsRequest(metadata=tag)).jobs
    assert [j.id for j in listed] == [first.id]
    assert org.create_job(train_file.id, request_id=request_id, metadata=tag) == first


def _bad_create(org: Org, request_id: str = "", **fields) -> dict[str, str]:
    request = jobs_pb2.CreateJobRequest(job=make_job(**fields), request_id=request_id)
    return invalid(org.jobs.CreateJob, request)


@pytest.mark.parametrize(
    ("name", "value", "range_text"),
    [
        ("n_epochs", 0, "[1, 50]"),
        ("n_epochs", 51, "[1, 50]"),
        ("batch_size", 0, "[1, 256]"),
        ("batch_size", 257, "[1, 256]"),
        ("learning_rate_multiplier", 0, "(0, 100]"),
        ("learning_rate_multiplier", 100.5, "(0, 100]"),
        ("learning_rate_multiplier", -1, "(0, 100]"),
        ("lora_rank", 0, "[1, 256]"),
        ("lora_rank", 257, "[1, 256]"),
        ("lora_alpha", 0, "[1, 1024]"),
        ("lora_alpha", 1025, "[1, 1024]"),
        ("lora_dropout", 1, "[0, 1)"),
        ("lora_dropout", -0.1, "[0, 1)"),
        ("early_stopping_patience", -1, "[0, 100]"),
        ("early_stopping_threshold", 1.5, "[0, 1]"),
        ("checkpoint_every_steps", -1, "[0, 1000000]"),
        ("checkpoint_every_steps", 1_000_001, "1000001 is out of range [0, 1000000]"),
    ],
)
def test_create_names_a_hyperparameter_out_of_range(
    org: Org, train_file: File, name: str, value: float, range_text: str
) -> None:
    violations = _bad_create(
        org, training_file=train_file.id, hyperparameters=Hyperparameters(**{name: value})
    )
    field = f"job.hyperparameters.{name}"
    assert set(violations) == {field}
    assert range_text in violations[field]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"base_model": ""}, "job.base_model"),
        ({"base_model": "gpt-4o"}, "job.base_model"),
        ({"base_model": "../tiny-llama"}, "job.base_model"),
        ({"seed": -1}, "job.seed"),
        ({"seed": 2_147_483_648}, "job.seed"),
        ({"suffix": "has space"}, "job.suffix"),
        ({"suffix": "s" * 65}, "job.suffix"),
        ({"suffix": "slash/"}, "job.suffix"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "job.metadata"),
        ({"metadata": {"k" * 65: "v"}}, f"job.metadata[{'k' * 65!r}]"),
        ({"metadata": {"": "v"}}, "job.metadata['']"),
        ({"metadata": {"key": "v" * 513}}, "job.metadata['key']"),
        ({"integrations": [jobs_pb2.Integration(type="slack")]}, "job.integrations[0].type"),
        (
            {"integrations": [jobs_pb2.Integration(type="wandb", project="p")] * 6},
            "job.integrations",
        ),
        ({"integrations": [jobs_pb2.Integration(type="wandb")]}, "job.integrations[0].project"),
        (
            {"integrations": [jobs_pb2.Integration(type="mlflow")]},
            "job.integrations[0].tracking_uri",
        ),
        ({"request_id": "r" * 129}, "request_id"),
        ({"validation_file": "file-000000000000000000000000"}, "job.validation_file"),
    ],
)
def test_create_names_the_bad_field(org: Org, train_file: File, fields: dict, field: str) -> None:
    violations = _bad_create(org, training_file=train_file.id, **fields)
    assert set(violations) == {field}


def test_create_names_the_unknown_base_model_and_the_known_ones(org: Org, train_file: File) -> None:
    violations = _bad_create(org, training_file=train_file.id, base_model="llama-9000")
    assert "llama-9000" in violations["job.base_model"]
    assert "tiny-llama" in violations["job.base_model"]


def test_create_checks_the_training_file(server: Server, org: Org) -> None:
    missing = f"file-{secrets.token_hex(12)}"
    other_orgs = server.other.upload_sample()
    broken = org.upload(b'{"messages": 1}\n' + chat_lines(20, "broken"), "broken.jsonl")
    assert broken.state == File.STATE_ERROR
    too_few = org.upload(chat_lines(9, "few"), "few.jsonl")
    assert too_few.state == File.STATE_PROCESSED
    user_data = org.upload(chat_lines(20, "ud"), "ud.jsonl", File.PURPOSE_USER_DATA)

    for training_file, says in [
        ("", "required"),
        (missing, missing),
        (other_orgs.id, other_orgs.id),
        (broken.id, "failed validation"),
        (too_few.id, "at least 10"),
        (user_data.id, "purpose"),
    ]:
        violations = _bad_create(org, training_file=training_file)
        assert set(violations) == {"job.training_file"}, training_file
        assert says in violations["job.training_file"]


def test_create_reports_every_problem_at_once(org: Org) -> None:
    violations = _bad_create(
        org,
        base_model="nope",
        training_file="",
        seed=-5,
        suffix="bad suffix",
        hyperparameters=Hyperparameters(n_epochs=0, lora_rank=1000),
        request_id="r" * 200,
    )
    assert set(violations) == {
        "job.base_model",
        "job.training_file",
        "job.seed",
        "job.suffix",
        "job.hyperparameters.n_epochs",
        "job.hyperparameters.lora_rank",
        "request_id",
    }


def test_failed_creates_leave_no_job(server: Server) -> None:
    fresh = server.new_org("no-jobs")
    record = fresh.upload_sample()
    _bad_create(fresh, training_file=record.id, base_model="nope")
    _bad_create(fresh, training_file=record.id, seed=-1, request_id="rid")
    assert list(fresh.jobs.ListJobs(jobs_pb2.ListJobsRequest()).jobs) == []
    # The request id of a refused create is not used up.
    assert fresh.create_job(record.id, request_id="rid").state == Job.STATE_QUEUED


@pytest.mark.parametrize(
    "rpc",
    [
        "GetJob",
        "CancelJob",
        "PauseJob",
        "ResumeJob",
        "DeleteJob",
        "ListJobEvents",
        "StreamJobEvents",
        "ListCheckpoints",
    ],
)
def test_unknown_job_is_not_found(org: Org, rpc: str) -> None:
    job_id = f"ftjob-{secrets.token_hex(12)}"
    request = getattr(jobs_pb2, f"{rpc}Request")(job_id=job_id)
    failure = fails(Code.NOT_FOUND, getattr(org.jobs, rpc), request)
    assert failure.message == f"job {job_id!r} not found"


# --- ListJobs ---------------------------------------------------------------------------------


def test_list_pages_newest_first_and_filters_by_metadata(server: Server) -> None:
    fresh = server.new_org("list-jobs")
    record = fresh.upload_sample()
    made = [
        fresh.create_job(record.id, metadata={"team": "a" if i % 2 else "b", "n": str(i)}).id
        for i in range(5)
    ]

    pages = [
        [j.id for j in page.jobs]
        for page in every_page(
            lambda token: fresh.jobs.ListJobs(
                jobs_pb2.ListJobsRequest(page_size=2, page_token=token)
            )
        )
    ]
    assert pages == [[made[4], made[3]], [made[2], made[1]], [made[0]]]

    def listed(**metadata: str) -> list[str]:
        return [j.id for j in fresh.jobs.ListJobs(jobs_pb2.ListJobsRequest(metadata=metadata)).jobs]

    assert listed(team="a") == [made[3], made[1]]
    assert listed(team="b", n="4") == [made[4]]
    assert listed(team="a", n="4") == []
    assert listed(team="c") == []


def test_list_filters_by_any_metadata_key(org: Org, train_file: File) -> None:
    key = 'quote"key'
    job = org.create_job(train_file.id, metadata={key: "v"})
    listed = org.jobs.ListJobs(jobs_pb2.ListJobsRequest(metadata={key: "v"})).jobs
    assert [j.id for j in listed] == [job.id]


def test_list_rejects_bad_paging(org: Org) -> None:
    assert set(invalid(org.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_token="nope"))) == {
        "page_token"
    }
    assert set(invalid(org.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_size=-2))) == {"page_size"}


# --- CancelJob / PauseJob / ResumeJob ---------------------------------------------------------


def test_cancel_a_queued_job(org: Org, train_file: File) -> None:
    job = org.create_job(train_file.id)
    cancelled = cancel(org, job.id)

    assert cancelled.id == job.id
    assert cancelled.state == Job.STATE_CANCELLED
    assert cancelled.HasField("finish_time")
    assert org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)) == cancelled
    events = events_of(org, job.id)
    assert [e.sequence for e in events] == [1, 2, 3]
    assert states(events) == ["validating_files", "queued", "cancelled"]
    assert events[-1].type == Event.TYPE_STATE

    # A finished job can't be cancelled again, and nothing is appended.
    failure = fails(Code.FAILED_PRECONDITION, cancel, org, job.id)
    assert "cancelled" in failure.message
    assert len(events_of(org, job.id)) == 3


@pytest.mark.parametrize("rpc", ["PauseJob", "ResumeJob"])
def test_pause_and_resume_need_a_running_or_paused_job(
    org: Org, train_file: File, rpc: str
) -> None:
    job = org.create_job(train_file.id)
    request = getattr(jobs_pb2, f"{rpc}Request")(job_id=job.id)
    call = getattr(org.jobs, rpc)

    assert "queued" in fails(Code.FAILED_PRECONDITION, call, request).message
    assert org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id)).state == Job.STATE_QUEUED
    cancel(org, job.id)
    assert "cancelled" in fails(Code.FAILED_PRECONDITION, call, request).message
    assert len(events_of(org, job.id)) == 3


# --- DeleteJob --------------------------------------------------------------------------------


def test_delete_cancels_and_hides_the_job(server: Server) -> None:
    fresh = server.new_org("delete-jobs")
    record = fresh.upload_sample()
    kept, doomed = (fresh.create_job(record.id, metadata={"team": "a"}) for _ in range(2))
    caller = fresh.auth.GetCaller(auth_pb2.GetCallerRequest())
    assert doomed.creator == caller.key_id  # the key that created it
    created = doomed.create_time.ToNanoseconds()
    assert doomed.update_time.ToNanoseconds() >= created > 0  # queued: its last change

    fresh.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=doomed.id))
    for rpc in ("GetJob", "CancelJob", "ListJobEvents", "DeleteJob"):
        request = getattr(jobs_pb2, f"{rpc}Request")(job_id=doomed.id)
        assert fails(Code.NOT_FOUND, getattr(fresh.jobs, rpc), request).message == (
            f"job {doomed.id!r} not found"
        )
    listed = fresh.jobs.ListJobs(jobs_pb2.ListJobsRequest())
    assert ([j.id for j in listed.jobs], listed.total_size) == ([kept.id], 1)
    by_metadata = fresh.jobs.ListJobs(jobs_pb2.ListJobsRequest(metadata={"team": "a"}))
    assert [j.id for j in by_metadata.jobs] == [kept.id]
    # A queued job was cancelled first: a deleted job never trains.
    with contextlib.closing(sqlite3.connect(server.home / "tunewire.db")) as db:
        (state,) = db.execute("SELECT state FROM jobs WHERE id = ?", [doomed.id]).fetchone()
    assert state == Job.STATE_CANCELLED


# --- ListJobEvents ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_job(org: Org, train_file: File) -> Job:
    job = org.create_job(train_file.id)
    return cancel(org, job.id)


def test_list_events_pages_oldest_first(org: Org, finished_job: Job) -> None:
    def fetch(token: str) -> jobs_pb2.ListJobEventsResponse:
        return org.jobs.ListJobEvents(
            jobs_pb2.ListJobEventsRequest(job_id=finished_job.id, page_size=1, page_token=token)
        )

    pages = [[e.sequence for e in page.events] for page in every_page(fetch)]
    assert pages == [[1], [2], [3]]
    whole = org.jobs.ListJobEvents(
        jobs_pb2.ListJobEventsRequest(job_id=finished_job.id, page_size=3)
    )
    assert ([e.sequence for e in whole.events], whole.next_page_token) == ([1, 2, 3], "")


@pytest.mark.parametrize(
    ("after", "page_size", "sequences"),
    [(0, 0, [1, 2, 3]), (1, 0, [2, 3]), (2, 1, [3]), (3, 0, []), (99, 0, [])],
)
def test_list_events_after_a_sequence(
    org: Org, finished_job: Job, after: int, page_size: int, sequences: list[int]
) -> None:
    events = events_of(org, finished_job.id, after_sequence=after, page_size=page_size)
    assert [e.sequence for e in events] == sequences


def test_list_events_rejects_bad_requests(org: Org, finished_job: Job) -> None:
    request = jobs_pb2.ListJobEventsRequest
    job_id = finished_job.id
    assert set(invalid(org.jobs.ListJobEvents, request(job_id=job_id, after_sequence=-1))) == {
        "after_sequence"
    }
    assert set(invalid(org.jobs.ListJobEvents, request(job_id=job_id, page_token="x"))) == {
        "page_token"
    }
    assert set(invalid(org.jobs.ListJobEvents, request(job_id=job_id, page_size=-1))) == {
        "page_size"
    }


# --- StreamJobEvents --------------------------------------------------------------------------


def test_stream_replays_then_tails_until_the_job_ends(org: Org, train_file: File) -> None:
    job = org.create_job(train_file.id)
    watcher = Watcher(org, job.id)
    replayed = watcher.take(2)
    assert [e.sequence for e in replayed] == [1, 2]
    assert states(replayed) == ["validating_files", "queued"]
    assert watcher.events.empty()  # nothing more until something happens

    cancel(org, job.id)

    tail = watcher.rest()  # ends on its own once the job is final
    assert [e.sequence for e in tail] == [3]
    assert states(tail) == ["cancelled"]


def test_streams_resumed_from_a_cursor_get_each_later_event_once(
    org: Org, train_file: File
) -> None:
    job = org.create_job(train_file.id)
    watchers = {after: Watcher(org, job.id, after) for after in (0, 1, 2, 5)}
    assert [e.sequence for e in watchers[0].take(2)] == [1, 2]
    assert [e.sequence for e in watchers[1].take(1)] == [2]

    cancel(org, job.id)

    got = {after: w.rest() for after, w in watchers.items()}
    assert [e.sequence for e in got[0]] == [3]
    assert [e.sequence for e in got[1]] == [3]
    assert [e.sequence for e in got[2]] == [3]
    assert [e.sequence for e in got[5]] == []
    # Each cursor saw a gapless run of unique sequences after it.
    assert [e.id for e in got[0]] == [e.id for e in got[2]]


@pytest.mark.parametrize(("after", "sequences"), [(0, [1, 2, 3]), (1, [2, 3]), (3, [])])
def test_stream_of_a_finished_job_replays_and_ends(
    org: Org, finished_job: Job, after: int, sequences: list[int]
) -> None:
    replies = org.jobs.StreamJobEvents(
        jobs_pb2.StreamJobEventsRequest(job_id=finished_job.id, after_sequence=after), timeout=10
    )
    events = [r.event for r in replies]
    assert [e.sequence for e in events] == sequences
    assert events == events_of(org, finished_job.id, after_sequence=after)


def test_stream_rejects_a_negative_cursor(org: Org, finished_job: Job) -> None:
    request = jobs_pb2.StreamJobEventsRequest(job_id=finished_job.id, after_sequence=-1)
    assert set(invalid(org.jobs.StreamJobEvents, request)) == {"after_sequence"}


# --- ListCheckpoints --------------------------------------------------------------------------


def test_a_new_job_has_no_checkpoints(org: Org, train_file: File) -> None:
    job = org.create_job(train_file.id)
    page = org.jobs.ListCheckpoints(jobs_pb2.ListCheckpointsRequest(job_id=job.id))
    assert (list(page.checkpoints), page.next_page_token) == ([], "")
    request = jobs_pb2.ListCheckpointsRequest(job_id=job.id, page_token="bad")
    assert set(invalid(org.jobs.ListCheckpoints, request)) == {"page_token"}


def test_update_job_changes_metadata_only(org: Org, train_file: File) -> None:
    job = org.create_job(train_file.id, metadata={"team": "a"})
    mask = field_mask_pb2.FieldMask(paths=["metadata"])
    changed = org.jobs.UpdateJob(
        jobs_pb2.UpdateJobRequest(job=Job(id=job.id, metadata={"team": "b"}), update_mask=mask)
    )
    assert dict(changed.metadata) == {"team": "b"}
    assert changed.update_time.ToNanoseconds() > job.update_time.ToNanoseconds()
    got = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert dict(got.metadata) == {"team": "b"} and got.base_model == job.base_model
    listed = org.jobs.ListJobs(jobs_pb2.ListJobsRequest(metadata={"team": "b"})).jobs
    assert job.id in [j.id for j in listed]

    immutable = field_mask_pb2.FieldMask(paths=["metadata", "suffix"])
    refused = invalid(
        org.jobs.UpdateJob, jobs_pb2.UpdateJobRequest(job=Job(id=job.id), update_mask=immutable)
    )
    assert "suffix" in refused["update_mask"]
    assert "update_mask" in invalid(
        org.jobs.UpdateJob, jobs_pb2.UpdateJobRequest(job=Job(id=job.id))
    )
    too_many = {f"k{i}": "v" for i in range(17)}
    assert "job.metadata" in invalid(
        org.jobs.UpdateJob,
        jobs_pb2.UpdateJobRequest(job=Job(id=job.id, metadata=too_many), update_mask=mask),
    )
    fails(
        grpc.StatusCode.NOT_FOUND,
        org.jobs.UpdateJob,
        jobs_pb2.UpdateJobRequest(job=Job(id="ftjob-" + "0" * 24), update_mask=mask),
    )


@pytest.mark.parametrize("workers", [0, 9, -1])
def test_create_names_a_process_count_out_of_range(
    org: Org, train_file: File, workers: int
) -> None:
    violations = _bad_create(
        org, training_file=train_file.id, compute=jobs_pb2.Compute(workers=workers)
    )
    assert violations == {"job.compute.workers": f"{workers} is out of range [1, 8]"}
