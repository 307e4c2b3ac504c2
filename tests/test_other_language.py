"""The API from another language: a Node.js client built from protos/ alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import REPO, SAMPLE_CHAT, Server, sha256

from tunewire.v1 import files_pb2, jobs_pb2

CLIENT = REPO / "tests" / "clients" / "client.js"
NODE_MODULES = REPO / ".venv" / "node_modules"
NPM_INSTALL = (
    "npm install --silent --no-audit --no-fund --prefix .venv "
    "@grpc/grpc-js@1.14.7 @grpc/proto-loader@0.8.1"
)
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_client_uploads_creates_watches_and_cancels(server: Server) -> None:
    if not (NODE_MODULES / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"the node client's packages are missing; run: {NPM_INSTALL}")
    org = server.new_org("node")
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES), "TUNEWIRE_API_KEY": org.key}
    done = subprocess.run(
        [NODE, str(CLIENT), server.address, str(SAMPLE_CHAT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, (done.stdout, done.stderr)
    steps = {}
    for line in lines:
        steps.setdefault(line["step"], []).append(line)

    assert "tiny-llama" in steps["base_models"][0]["ids"]
    (upload,) = steps["upload"]
    data = SAMPLE_CHAT.read_bytes()
    assert (upload["state"], upload["bytes"], upload["sha256"]) == (
        "STATE_PROCESSED",
        len(data),
        sha256(data),
    )
    assert (upload["format"], upload["example_count"]) == ("chat", 64)
    (job,) = steps["job"]
    assert (job["state"], job["base_model"], job["training_file"]) == (
        "STATE_QUEUED",
        "tiny-llama",
        upload["id"],
    )
    assert steps["cancel"] == [{"step": "cancel", "state": "STATE_CANCELLED"}]
    events = steps["event"]
    assert [e["sequence"] for e in events] == [1, 2, 3]
    assert [e["state"] for e in events] == ["validating_files", "queued", "cancelled"]
    assert {e["type"] for e in events} == {"TYPE_STATE"}
    # The stream ended by itself after the last event, and the job is final.
    order = [line["step"] for line in lines]
    assert order.index("stream_end") == max(i for i, s in enumerate(order) if s == "event") + 1
    assert steps["final"] == [{"step": "final", "state": "STATE_CANCELLED"}]
    not_found, invalid = steps["error"]
    assert (not_found["rpc"], not_found["name"]) == ("GetJob", "NOT_FOUND")
    assert not_found["details"] == "job 'ftjob-000000000000000000000000' not found"
    assert (invalid["rpc"], invalid["name"], invalid["status_details"]) == (
        "CreateJob",
        "INVALID_ARGUMENT",
        True,
    )
    assert "job.base_model" in invalid["details"]

    # What Node did is what Python sees.
    record = org.files.GetFile(files_pb2.GetFileRequest(file_id=upload["id"]))
    assert record.sha256 == sha256(data)
    stored = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job["id"]))
    assert (stored.state, stored.suffix, dict(stored.metadata)) == (
        jobs_pb2.Job.STATE_CANCELLED,
        "node",
        {"client": "node"},
    )
    listed = org.jobs.ListJobEvents(jobs_pb2.ListJobEventsRequest(job_id=job["id"])).events
    assert [(e.id, e.sequence) for e in listed] == [(e["id"], e["sequence"]) for e in events]
