"""Shutdown and slow clients: SIGTERM with watchers and an upload in flight, and watchers
that never read.

Real `tunewire up` processes. The stalled-watcher test gives a finished job tens of
thousands of large events (written straight into the server's database, the quickest way
to a long log) and holds streams of it open without reading, measuring the server's RSS.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import Org, Server, chat_lines, sha256, upload_requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import GRACE_SECONDS
from server.store.db import connect, write
from tunewire.v1 import events_pb2, files_pb2, jobs_pb2

Event = events_pb2.Event
Code = grpc.StatusCode


class Watcher:
    """Streams a job's events on a thread from a cursor; records how the stream ended."""

    def __init__(self, org: Org, job_id: str, after: int = 0) -> None:
        self.events: list[Event] = []
        self.ended: Code | None = None
        self.details = ""
        request = jobs_pb2.StreamJobEventsRequest(job_id=job_id, after_sequence=after)
        self._call = org.jobs.StreamJobEvents(request, timeout=120)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for reply in self._call:
                self.events.append(reply.event)
            self.ended = Code.OK
        except grpc.RpcError as error:
            self.ended, self.details = error.code(), error.details() or ""

    def wait_events(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < n:
            assert time.monotonic() < deadline, [e.message for e in self.events]
            time.sleep(0.02)

    def join(self, timeout: float = 30) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"


def slow_upload(data: bytes, chunks: int, pause: float) -> Iterator[files_pb2.UploadFileRequest]:
    size = -(-len(data) // chunks)
    for i, request in enumerate(upload_requests(data, "in-flight.jsonl", chunk=size)):
        if i:
            time.sleep(pause)
        yield request


def test_sigterm_with_watchers_drains_cleanly_and_watchers_resume_after_restart(
    start_server: Callable[..., Server],
) -> None:
    srv = start_server()
    org = srv.default
    job = org.create_job(org.upload(chat_lines(12, "sigterm")).id)
    watchers = [Watcher(org, job.id) for _ in range(3)]
    for watcher in watchers:
        watcher.wait_events(2)  # validating, queued; then they wait for more
    health = health_pb2_grpc.HealthStub(org.client.channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=60
    )
    statuses: list[int] = []
    follow = threading.Thread(target=lambda: statuses.extend(r.status for r in health), daemon=True)
    follow.start()

    # An upload is in flight when the signal arrives: it must complete.
    data = chat_lines(20_000, "in-flight")
    uploaded: list[files_pb2.File] = []
    upload = threading.Thread(
        target=lambda: uploaded.append(org.files.UploadFile(slow_upload(data, 20, 0.1))),
        daemon=True,
    )
    upload.start()
    time.sleep(0.5)
    started = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(timeout=GRACE_SECONDS + 15) == 0, srv.stderr
    took = time.monotonic() - started
    upload.join(10)
    follow.join(10)

    assert statuses[:2] == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]
    assert uploaded and uploaded[0].sha256 == sha256(data), "the in-flight upload was cut off"
    assert took < GRACE_SECONDS + 5, took
    for watcher in watchers:
        watcher.join()
        # Ended at once with where to resume (UNAVAILABLE is what clients retry on),
        # not cancelled when the grace ran out.
        assert watcher.ended == Code.UNAVAILABLE, (watcher.ended, watcher.details)
        assert "after_sequence=2" in watcher.details, watcher.details
        assert [e.sequence for e in watcher.events] == [1, 2]

    # After a restart each watcher resumes from its cursor and misses nothing.
    again = start_server(home=srv.home)
    org2 = again.org(srv.first_key, "default")
    kept = org2.files.GetFile(files_pb2.GetFileRequest(file_id=uploaded[0].id))
    assert kept == uploaded[0]
    resumed = [Watcher(org2, job.id, after=w.events[-1].sequence) for w in watchers]
    org2.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    log = org2.jobs.ListJobEvents(jobs_pb2.ListJobEventsRequest(job_id=job.id)).events
    for before, after in zip(watchers, resumed, strict=True):
        after.join()
        assert after.ended == Code.OK
        assert before.events + after.events == list(log)
    assert log[-1].message == "Job cancelled"


# --- watchers that never read -----------------------------------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def long_log(srv: Server, org: Org, events: int, size: int) -> str:
    """A cancelled job whose log has `events` more events of `size` bytes each, written
    into the database before the job's final (cancelled) event."""
    job = org.create_job(org.upload(chat_lines(12, f"long-{events}")).id)
    db = connect(srv.home / "tunewire.db")
    try:
        with write(db):
            (last,) = db.execute(
                "SELECT MAX(sequence) FROM events WHERE parent = ?", [job.id]
            ).fetchone()
            for i in range(last + 1, last + events + 1):
                event = Event(id=f"ftevent-{i:024x}", parent=job.id, sequence=i, message="x" * size)
                db.execute(
                    "INSERT INTO events (parent, sequence, proto) VALUES (?, ?, ?)",
                    [job.id, i, event.SerializeToString()],
                )
    finally:
        db.close()
    org.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    return job.id


def stalled_watchers(
    srv: Server, watchers: int, events: int, size: int, seconds: float
) -> tuple[float, float]:
    """Open `watchers` streams of a long log, read one event each, then read nothing for
    `seconds`. Returns (server RSS growth in MiB, MiB the streams still had to send)."""
    org = srv.default
    job_id = long_log(srv, org, events, size)
    calls = []
    # The server's first lookups import torch: let that settle before measuring.
    org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
    baseline = rss_mib(srv.process.pid)
    peak = baseline
    try:
        for _ in range(watchers):
            request = jobs_pb2.StreamJobEventsRequest(job_id=job_id)
            call = org.jobs.StreamJobEvents(request, timeout=120)
            next(call)
            calls.append(call)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peak = max(peak, rss_mib(srv.process.pid))
            time.sleep(0.1)
        # The streams are alive and whole: one drains to the end.
        assert sum(1 for _ in calls[0]) == events + 2  # one read, the rest, "Job cancelled"
    finally:
        for call in calls:
            call.cancel()
    return peak - baseline, watchers * events * size / 2**20


def test_watchers_that_never_read_do_not_grow_server_memory(
    start_server: Callable[..., Server],
) -> None:
    srv = start_server()
    growth, pending = stalled_watchers(srv, watchers=4, events=10_000, size=4096, seconds=3)
    assert pending > 150
    assert growth < 40, f"server RSS grew {growth:.0f} MiB with {pending:.0f} MiB unsent"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_many_watchers_that_never_read(start_server: Callable[..., Server]) -> None:
    srv = start_server()
    growth, pending = stalled_watchers(srv, watchers=16, events=50_000, size=4096, seconds=10)
    print(f"\nFIGURE stalled-watchers: RSS +{growth:.0f} MiB with {pending:.0f} MiB unsent")
    assert growth < 64, f"server RSS grew {growth:.0f} MiB with {pending:.0f} MiB unsent"
