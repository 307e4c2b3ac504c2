"""Paging that costs the same on page 1 and page 1,000: keyset cursors (page tokens and
ids), order, indexed filters, on gRPC and on the bridge's OpenAI and Cohere surfaces.
Each list is walked with a small page to its end and must give every object once, in
order; unknown cursors are refused, never answered with an empty page. (Timings are
bench/listing.py's; no test here times anything.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from conftest import Org, Server, every_page, fails, invalid, launch
from test_bridge import Bridge, start_bridge

from server import auth, lifecycle
from server.events import EventLog
from server.ids import timestamp
from server.store import db as store_db
from server.store import records
from server.store.db import connect, write
from server.store.migrations import MIGRATIONS
from tunewire.v1 import checkpoints_pb2, events_pb2, files_pb2, jobs_pb2, models_pb2

Job, File, Event = jobs_pb2.Job, files_pb2.File, events_pb2.Event
N = 23  # jobs, files, models, and events and checkpoints of one job
T0 = 1_700_000_000.0
PAGE = 4


@dataclass
class Store:
    server: Server
    bridge: Bridge
    org: Org
    other: Org
    job: str
    jobs: list[str]  # oldest first
    files: list[str]
    fine_tune_files: list[str]
    models: list[str]
    events: list[str]
    checkpoints: list[str]

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.org.key}"}
        return httpx.Client(base_url=self.bridge.url, headers=headers, timeout=60)


def _fill(home: Path) -> dict[str, Any]:
    """A store written the way the control plane writes: N of each for org `default`."""
    db = connect(home / "tunewire.db")
    keys = {"default": auth.create_key(db, "default"), "other": auth.create_key(db, "other")}
    events = EventLog(db)
    made: dict[str, list[str]] = {k: [] for k in ("jobs", "files", "fine_tune", "models")}
    with write(db):
        for i in range(N):
            at = T0 + i
            purpose = File.PURPOSE_FINE_TUNE if i % 3 == 0 else File.PURPOSE_USER_DATA
            record = File(
                id=f"file-{i:024x}",
                filename=f"f{i}.jsonl",
                purpose=purpose,
                create_time=timestamp(at),
            )
            records.put(db, "files", record, org="default", purpose=purpose, created_at=at)
            made["files"].append(record.id)
            if purpose == File.PURPOSE_FINE_TUNE:
                made["fine_tune"].append(record.id)
            job = Job(
                id=f"ftjob-{i:024x}",
                organization="default",
                base_model="tiny-llama",
                training_file=made["files"][0],
                state=Job.STATE_CANCELLED,
                create_time=timestamp(at),
                metadata={"group": str(i % 3), "parity": str(i % 2)},
            )
            lifecycle.insert(db, job, None, "")
            made["jobs"].append(job.id)
            model = models_pb2.FineTunedModel(
                id=f"ft:tiny-llama:default::{job.id}", job_id=job.id, create_time=timestamp(at)
            )
            db["models"].insert(
                {
                    "id": model.id,
                    "org": "default",
                    "job_id": job.id,
                    "checkpoint_id": None,
                    "created_at": at,
                    "adapter_path": "x",
                    "proto": model.SerializeToString(),
                }
            )
            made["models"].append(model.id)
        parent = made["jobs"][-1]
        # A job's life: state events around N metrics events, the final one last.
        event_ids = [
            events.append(parent, "queued", type=Event.TYPE_STATE, data={"state": "queued"}).id
        ]
        for step in range(1, N - 1):
            event_ids.append(
                events.append(
                    parent, f"step {step}", type=Event.TYPE_METRICS, data={"step": step}
                ).id
            )
        event_ids.append(
            events.append(parent, "done", type=Event.TYPE_STATE, data={"state": "cancelled"}).id
        )
        checkpoint_ids = []
        for step in range(1, N + 1):
            checkpoint = checkpoints_pb2.Checkpoint(
                id=f"ftckpt-{step:024x}", job_id=parent, step=step, create_time=timestamp(T0 + step)
            )
            db["checkpoints"].insert(
                {
                    "id": checkpoint.id,
                    "job_id": parent,
                    "step": step,
                    "created_at": T0 + step,
                    "path": "x",
                    "proto": checkpoint.SerializeToString(),
                }
            )
            checkpoint_ids.append(checkpoint.id)
    db.conn.close()
    return {**made, "keys": keys, "job": parent, "events": event_ids, "checkpoints": checkpoint_ids}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("listing")
    made = _fill(root / "home")
    server = launch(root / "home", None, root / "logs", TUNEWIRE_MAX_RUNNING_JOBS="0")
    bridge = start_bridge(server.address, root / "bridge")
    try:
        yield Store(
            server=server,
            bridge=bridge,
            org=server.org(made["keys"]["default"], "default"),
            other=server.org(made["keys"]["other"], "other"),
            job=made["job"],
            jobs=made["jobs"],
            files=made["files"],
            fine_tune_files=made["fine_tune"],
            models=made["models"],
            events=made["events"],
            checkpoints=made["checkpoints"],
        )
    finally:
        bridge.stop()
        server.terminate()


def walk(call: Any, request: Any, items: str) -> list[str]:
    """Every id of a listing, page by page (PAGE at a time), by next_page_token."""

    def fetch(token: str) -> Any:
        request.page_size, request.page_token = PAGE, token
        return call(request)

    return [item.id for page in every_page(fetch) for item in getattr(page, items)]


def walk_after(call: Any, request: Any, items: str) -> list[str]:
    """Every id of a listing, page by page, each page after the last id seen."""
    seen: list[str] = []
    while True:
        request.page_size, request.after_id = PAGE, seen[-1] if seen else ""
        page = [item.id for item in getattr(call(request), items)]
        if not page:
            return seen
        seen += page


# --- gRPC -------------------------------------------------------------------------------


def test_jobs_every_page_once_in_order(store: Store) -> None:
    jobs = store.org.jobs
    newest = store.jobs[::-1]
    assert walk(jobs.ListJobs, jobs_pb2.ListJobsRequest(), "jobs") == newest
    assert walk_after(jobs.ListJobs, jobs_pb2.ListJobsRequest(), "jobs") == newest
    oldest = jobs_pb2.ListJobsRequest(order_by="create_time")
    assert walk(jobs.ListJobs, oldest, "jobs") == store.jobs
    assert (
        walk_after(jobs.ListJobs, jobs_pb2.ListJobsRequest(order_by="create_time asc"), "jobs")
        == store.jobs
    )
    page = jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1))
    assert page.total_size == N
    assert store.other.jobs.ListJobs(jobs_pb2.ListJobsRequest()).total_size == 0


def test_jobs_metadata_filters_page_in_order(store: Store) -> None:
    jobs = store.org.jobs
    group = [j for i, j in enumerate(store.jobs) if i % 3 == 1]
    request = jobs_pb2.ListJobsRequest(metadata={"group": "1"})
    assert walk(jobs.ListJobs, request, "jobs") == group[::-1]
    assert (
        walk_after(jobs.ListJobs, jobs_pb2.ListJobsRequest(metadata={"group": "1"}), "jobs")
        == group[::-1]
    )
    both = [j for i, j in enumerate(store.jobs) if i % 3 == 1 and i % 2 == 0]
    request = jobs_pb2.ListJobsRequest(
        metadata={"group": "1", "parity": "0"}, order_by="create_time"
    )
    assert walk(jobs.ListJobs, request, "jobs") == both
    assert walk(jobs.ListJobs, jobs_pb2.ListJobsRequest(metadata={"group": "9"}), "jobs") == []


def test_metadata_index_follows_updates(store: Store) -> None:
    from google.protobuf import field_mask_pb2

    jobs = store.org.jobs
    target = store.jobs[0]
    jobs.UpdateJob(
        jobs_pb2.UpdateJobRequest(
            job=Job(id=target, metadata={"group": "0", "parity": "0", "moved": "yes"}),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        )
    )
    assert walk(jobs.ListJobs, jobs_pb2.ListJobsRequest(metadata={"moved": "yes"}), "jobs") == [
        target
    ]
    jobs.UpdateJob(
        jobs_pb2.UpdateJobRequest(
            job=Job(id=target, metadata={"group": "0", "parity": "0"}),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        )
    )
    assert walk(jobs.ListJobs, jobs_pb2.ListJobsRequest(metadata={"moved": "yes"}), "jobs") == []


def test_files_models_checkpoints_every_page_once(store: Store) -> None:
    files, models, jobs = store.org.files, store.org.models, store.org.jobs
    assert walk(files.ListFiles, files_pb2.ListFilesRequest(), "files") == store.files[::-1]
    by_purpose = files_pb2.ListFilesRequest(purpose=File.PURPOSE_FINE_TUNE, order_by="create_time")
    assert walk(files.ListFiles, by_purpose, "files") == store.fine_tune_files
    assert walk_after(files.ListFiles, files_pb2.ListFilesRequest(), "files") == store.files[::-1]
    assert walk(models.ListModels, models_pb2.ListModelsRequest(), "models") == store.models[::-1]
    assert (
        walk_after(
            models.ListModels, models_pb2.ListModelsRequest(order_by="create_time"), "models"
        )
        == store.models
    )
    request = jobs_pb2.ListCheckpointsRequest(job_id=store.job)
    assert walk(jobs.ListCheckpoints, request, "checkpoints") == store.checkpoints[::-1]
    request = jobs_pb2.ListCheckpointsRequest(job_id=store.job)
    assert walk_after(jobs.ListCheckpoints, request, "checkpoints") == store.checkpoints[::-1]


def test_events_both_orders_by_token_and_by_id(store: Store) -> None:
    jobs = store.org.jobs

    def request(**fields: Any) -> jobs_pb2.ListJobEventsRequest:
        return jobs_pb2.ListJobEventsRequest(job_id=store.job, **fields)

    assert walk(jobs.ListJobEvents, request(), "events") == store.events
    newest = store.events[::-1]
    assert walk(jobs.ListJobEvents, request(order_by="sequence desc"), "events") == newest
    assert walk_after(jobs.ListJobEvents, request(order_by="sequence desc"), "events") == newest
    assert walk_after(jobs.ListJobEvents, request(), "events") == store.events
    last = jobs.ListJobEvents(request(order_by="sequence desc", page_size=1))
    assert [e.id for e in last.events] == [store.events[-1]] and last.next_page_token
    states = request(types=[Event.TYPE_STATE])
    assert walk(jobs.ListJobEvents, states, "events") == [store.events[0], store.events[-1]]
    metrics = request(types=[Event.TYPE_METRICS], order_by="sequence desc")
    assert walk(jobs.ListJobEvents, metrics, "events") == store.events[-2:0:-1]
    floor = request(after_sequence=N - 3)
    assert walk(jobs.ListJobEvents, floor, "events") == store.events[N - 3 :]


def test_unknown_cursors_are_refused(store: Store) -> None:
    org, other = store.org, store.other
    for call, req in (
        (org.jobs.ListJobs, jobs_pb2.ListJobsRequest(after_id="ftjob-nope")),
        (other.jobs.ListJobs, jobs_pb2.ListJobsRequest(after_id=store.jobs[3])),  # not theirs
        (org.files.ListFiles, files_pb2.ListFilesRequest(after_id="file-nope")),
        (org.models.ListModels, models_pb2.ListModelsRequest(after_id="ft:nope")),
        (
            org.jobs.ListJobEvents,
            jobs_pb2.ListJobEventsRequest(job_id=store.job, after_id="ftevent-x"),
        ),
        (
            org.jobs.ListCheckpoints,
            jobs_pb2.ListCheckpointsRequest(job_id=store.job, after_id="ftckpt-x"),
        ),
    ):
        assert "after_id" in invalid(call, req)
    assert "order_by" in invalid(org.jobs.ListJobs, jobs_pb2.ListJobsRequest(order_by="name"))
    assert "page_token" in invalid(
        org.jobs.ListJobs, jobs_pb2.ListJobsRequest(page_token="bm9wZQ==", page_size=1)
    )
    token = org.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1)).next_page_token
    both = jobs_pb2.ListJobsRequest(page_token=token, after_id=store.jobs[0])
    assert "page_token" in invalid(org.jobs.ListJobs, both)


def test_stream_replays_in_batches(store: Store) -> None:
    jobs = store.org.jobs
    for size in (0, 1, 5, 1000):
        replies = list(
            jobs.StreamJobEvents(
                jobs_pb2.StreamJobEventsRequest(job_id=store.job, max_batch_size=size)
            )
        )
        if size > 1:
            assert all(not r.HasField("event") and 0 < len(r.events) <= size for r in replies)
            got = [e.id for r in replies for e in r.events]
        else:
            got = [r.event.id for r in replies]
        assert got == store.events
    later = jobs_pb2.StreamJobEventsRequest(
        job_id=store.job, max_batch_size=7, after_sequence=N - 2
    )
    assert [e.id for r in jobs.StreamJobEvents(later) for e in r.events] == store.events[N - 2 :]
    failure = fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: list(
            jobs.StreamJobEvents(
                jobs_pb2.StreamJobEventsRequest(job_id=store.job, max_batch_size=1001)
            )
        ),
    )
    assert "max_batch_size" in failure.violations


# --- the bridge -------------------------------------------------------------------------


def openai_walk(http: httpx.Client, path: str, limit: int, **params: Any) -> list[str]:
    """Every id of an OpenAI list, `after` the last id seen, until has_more is false."""
    seen: list[str] = []
    while True:
        query = {"limit": limit, **params, **({"after": seen[-1]} if seen else {})}
        page = http.get(path, params=query)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [item["id"] for item in body["data"]]
        assert len(body["data"]) <= limit
        if not body["has_more"]:
            return seen


def test_openai_lists_page_by_id(store: Store) -> None:
    with store.http() as http:
        assert openai_walk(http, "/v1/fine_tuning/jobs", 5) == store.jobs[::-1]
        group = [j for i, j in enumerate(store.jobs) if i % 3 == 2][::-1]
        assert openai_walk(http, "/v1/fine_tuning/jobs", 2, **{"metadata[group]": "2"}) == group
        events = f"/v1/fine_tuning/jobs/{store.job}/events"
        assert openai_walk(http, events, 1) == store.events[::-1]
        one = http.get(events, params={"limit": 1}).json()
        assert [e["id"] for e in one["data"]] == [store.events[-1]] and one["has_more"]
        checkpoints = f"/v1/fine_tuning/jobs/{store.job}/checkpoints"
        assert openai_walk(http, checkpoints, 6) == store.checkpoints[::-1]
        assert openai_walk(http, "/v1/files", 7) == store.files[::-1]
        assert openai_walk(http, "/v1/files", 3, order="asc") == store.files
        assert openai_walk(http, "/v1/files", 2, purpose="fine-tune") == store.fine_tune_files[::-1]
        everything = http.get("/v1/files").json()  # OpenAI's default limit: 10,000
        assert [f["id"] for f in everything["data"]] == store.files[::-1]
        assert not everything["has_more"] and everything["last_id"] == store.files[0]
        tf = "/api/llm/fine_tuning/jobs"
        assert openai_walk(http, tf, 9) == store.jobs[::-1]


def test_openai_unknown_after_is_an_error(store: Store) -> None:
    with store.http() as http:
        for path in (
            "/v1/fine_tuning/jobs",
            f"/v1/fine_tuning/jobs/{store.job}/events",
            f"/v1/fine_tuning/jobs/{store.job}/checkpoints",
            "/v1/files",
        ):
            refused = http.get(path, params={"after": "nope-123"})
            assert refused.status_code == 400, (path, refused.text)
            error = refused.json()["error"]
            assert error["param"] == "after" and error["type"] == "invalid_request_error"


def test_cohere_pages_by_cursor(store: Store) -> None:
    with store.http() as http:
        seen, token, totals = [], "", set()
        while True:
            page = http.get(
                "/cohere/v1/finetuning/finetuned-models",
                params={"page_size": 5, **({"page_token": token} if token else {})},
            ).json()
            seen += [m["id"] for m in page["finetuned_models"]]
            totals.add(page["total_size"])
            if not (token := page["next_page_token"]):
                break
        assert seen == store.jobs and totals == {N}  # Cohere's default: oldest first
        newest = http.get(
            "/cohere/v1/finetuning/finetuned-models",
            params={"page_size": 3, "order_by": "created_at desc"},
        ).json()
        assert [m["id"] for m in newest["finetuned_models"]] == store.jobs[:-4:-1]
        steps, token = [], ""
        path = f"/cohere/v1/finetuning/finetuned-models/{store.job}/training-step-metrics"
        while True:
            page = http.get(
                path, params={"page_size": 4, **({"page_token": token} if token else {})}
            ).json()
            steps += [s["step_number"] for s in page["step_metrics"]]
            if not (token := page["next_page_token"]):
                break
        assert steps == list(range(N - 2, 0, -1))
        events = http.get(f"/cohere/v1/finetuning/finetuned-models/{store.job}/events").json()
        assert [e["status"] for e in events["events"]] == ["STATUS_DELETED", "STATUS_QUEUED"]
        bad = http.get("/cohere/v1/finetuning/finetuned-models", params={"page_token": "x"})
        assert bad.status_code == 400, bad.text


# --- the migration ----------------------------------------------------------------------


def test_migration_indexes_an_older_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store made before migration 5: its events get ids and types, its jobs' metadata
    and counts are indexed, and lists read them."""
    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS[:4])
    db = connect(tmp_path / "old.db")
    event = Event(id="ftevent-old", parent="ftjob-a", sequence=1, type=Event.TYPE_STATE)
    with write(db):
        db.execute(
            "INSERT INTO events (parent, sequence, proto) VALUES (?, ?, ?)",
            ["ftjob-a", 1, event.SerializeToString()],
        )
        db.execute(
            "INSERT INTO jobs (id, org, state, created_at, training_file, metadata, proto)"
            " VALUES ('ftjob-a', 'o', 6, 1.0, 'file-a', '{\"k\": \"v\"}', x'')"
        )
    db.conn.close()
    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS)
    db = connect(tmp_path / "old.db")
    assert db.execute("SELECT id, type FROM events").fetchall() == [
        ("ftevent-old", Event.TYPE_STATE)
    ]
    assert db.execute("SELECT job_id, key, value FROM job_metadata").fetchall() == [
        ("ftjob-a", "k", "v")
    ]
    assert db.execute("SELECT org, n FROM job_counts").fetchall() == [("o", 1)]
    assert EventLog(db).sequence_of("ftjob-a", "ftevent-old") == 1
