"""The REST bridge against real servers: `python -m bridge` (real uvicorn) in front of
a real `tunewire up`, called over HTTP. This file holds the harness the other
test_bridge_* files share, and the native REST API, streams, uploads and OpenAPI.

Two stacks, one each per session however many files use them:
- `rest`: the session's `server` (jobs stay queued) behind a bridge with a short
  SSE heartbeat: shapes, errors, uploads, streams of idle jobs.
- `live`: a server of its own that trains (one job at a time) and takes uploads
  up to 4 MiB: end-to-end flows, streams cut mid-job, the size limit.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from conftest import REPO, SAMPLE_CHAT, Server, chat_lines, launch
from google.api import annotations_pb2

from bridge import transcode
from bridge.main import create_app
from bridge.routes.native import BINDINGS
from tunewire.v1 import (
    models_pb2,
)

T = TypeVar("T")
READY = re.compile(r"tunewire: serving REST on (\S+):(\d+)")
START_TIMEOUT = 30.0
TIMEOUT = 60.0
LIVE_UPLOAD_LIMIT = 4 * 1024 * 1024
HEARTBEAT = 0.2
FINAL = {"succeeded", "failed", "cancelled"}

# --- the harness ------------------------------------------------------------------------


@dataclass
class Bridge:
    """A `python -m bridge` process."""

    process: subprocess.Popen
    url: str
    log: Path

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak) of the process, in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return {
            key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE).group(1))
            for key in ("VmRSS", "VmHWM")
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            code = self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        assert code == 0, self.log.read_text()


def start_bridge(grpc_address: str, logs: Path, **env: str) -> Bridge:
    """`python -m bridge` on a free port; returns once it prints its ready line."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "bridge.txt"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "--grpc-address", grpc_address, "--http-port", "0"],
            env={k: v for k, v in os.environ.items() if not k.startswith("TUNEWIRE_")} | env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not (ready := READY.search(log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the bridge did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return Bridge(process, f"http://{ready.group(1)}:{ready.group(2)}", log)


@dataclass
class Stack:
    """A server, a bridge in front of it, and the default org's key."""

    server: Server
    bridge: Bridge
    key: str

    @property
    def url(self) -> str:
        return self.bridge.url

    def http(self, key: str | None = "default") -> httpx.Client:
        """An HTTP client for the bridge, with this stack's key (or `key`, or none)."""
        token = self.key if key == "default" else key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)


_running: dict[str, Any] = {}


def shared(name: str, start: Callable[[], T], stop: Callable[[T], None]) -> Iterator[T]:
    """One instance per session, however many modules import the fixture
    (pytest makes a fixture per module that imports it)."""
    if name in _running:
        yield _running[name]
        return
    _running[name] = value = start()
    try:
        yield value
    finally:
        del _running[name]
        stop(value)


@pytest.fixture(scope="session")
def rest(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    def start() -> Stack:
        logs = tmp_path_factory.mktemp("rest-bridge")
        bridge = start_bridge(server.address, logs, TUNEWIRE_SSE_HEARTBEAT_SECONDS=str(HEARTBEAT))
        return Stack(server, bridge, server.default.key)

    yield from shared("rest", start, lambda stack: stack.bridge.stop())


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    def start() -> Stack:
        root = tmp_path_factory.mktemp("live")
        srv = launch(
            root / "home",
            models_dir,
            root / "logs",
            TUNEWIRE_MAX_RUNNING_JOBS="1",
            TUNEWIRE_MAX_UPLOAD_BYTES=str(LIVE_UPLOAD_LIMIT),
        )
        try:
            bridge = start_bridge(
                srv.address, root / "bridge", TUNEWIRE_SSE_HEARTBEAT_SECONDS=str(HEARTBEAT)
            )
        except BaseException:
            srv.kill()
            raise
        assert srv.first_key, srv.stdout
        return Stack(srv, bridge, srv.first_key)

    def stop(stack: Stack) -> None:
        try:
            stack.bridge.stop()
        finally:
            stack.server.terminate()
            stack.server.kill()

    yield from shared("live", start, stop)


def upload(http: httpx.Client, data: bytes, filename: str = "train.jsonl", **form: str) -> Any:
    """Upload through the native multipart route; returns the File JSON."""
    reply = http.post(
        "/tunewire/v1/files",
        data={"purpose": "PURPOSE_FINE_TUNE", **form},
        files={"file": (filename, data)},
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def create_job(http: httpx.Client, training_file: str, **job: Any) -> Any:
    reply = http.post(
        "/tunewire/v1/jobs",
        json={"base_model": "tiny-llama", "training_file": training_file, **job},
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def wait_for(check: Callable[[], T], timeout: float = 120.0) -> T:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


def sse_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """Parse a text/event-stream: one dict per event (`id`, `data`), or `{"comment": …}`."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def status_of(reply: httpx.Response, code: int, http_status: int) -> dict[str, Any]:
    """A google.rpc.Status body with `code`, answered `http_status`."""
    assert reply.status_code == http_status, reply.text
    body = reply.json()
    assert body["code"] == code and body["message"], body
    return body


def violations(status: dict[str, Any]) -> dict[str, str]:
    found = {}
    for detail in status["details"]:
        if detail["@type"] == "type.googleapis.com/google.rpc.BadRequest":
            found |= {v["field"]: v["description"] for v in detail["field_violations"]}
    return found


# --- native REST: routes from the annotations -------------------------------------------


def test_every_annotated_rpc_is_bound_once() -> None:
    # Every contract file, found on disk: a new one cannot be forgotten here.
    contract = REPO / "protos" / "tunewire" / "v1"
    modules = [
        importlib.import_module(f"tunewire.v1.{path.stem}")
        for path in sorted(contract.glob("*_pb2.py"))
    ]
    annotated = {
        method.full_name
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.GetOptions().HasExtension(annotations_pb2.http)
    }
    assert sorted(b.method.full_name for b in BINDINGS) == sorted(annotated)
    assert not any(name.startswith("tunewire.v1.WorkerService") for name in annotated)
    templates = {(b.http_method, b.template) for b in BINDINGS}
    assert len(templates) == len(BINDINGS)
    assert ("GET", "/v1/jobs/{job_id}/events:stream") in templates
    assert ("GET", "/v1/exports/{export_id}/artifacts/{path=**}") in templates
    # Templates with a custom verb are matched first, greedy ones last.
    verbs = [b.has_verb for b in BINDINGS]
    assert verbs == sorted(verbs, reverse=True)
    assert BINDINGS[-1].path.endswith("{path:path}")


def test_native_files_and_jobs(rest: Stack) -> None:
    with rest.http() as http:
        upload(http, chat_lines(10, "native-first"))
        record = upload(http, chat_lines(12, "native"), "native.jsonl")
        assert record["id"].startswith("file-") and record["state"] == "STATE_PROCESSED"
        assert record["validation"]["example_count"] == "12"  # int64: a JSON string
        assert http.get(f"/tunewire/v1/files/{record['id']}").json() == record

        page = http.get(
            "/tunewire/v1/files", params={"page_size": 1, "purpose": "PURPOSE_FINE_TUNE"}
        )
        assert page.status_code == 200 and len(page.json()["files"]) == 1
        assert page.json()["next_page_token"]
        second = http.get(
            "/tunewire/v1/files",
            params={"page_size": 1, "page_token": page.json()["next_page_token"]},
        ).json()["files"]
        assert second and second[0]["id"] != page.json()["files"][0]["id"]

        tag = os.urandom(4).hex()
        job = create_job(
            http,
            record["id"],
            hyperparameters={"n_epochs": 2, "learningRateMultiplier": 0.5},  # JSON names too
            metadata={"suite": tag},
        )
        assert job["state"] == "STATE_QUEUED" and job["hyperparameters"]["n_epochs"] == 2
        assert job["hyperparameters"]["learning_rate_multiplier"] == 0.5
        assert http.get(f"/tunewire/v1/jobs/{job['id']}").json()["id"] == job["id"]
        listed = http.get("/tunewire/v1/jobs", params={"metadata[suite]": tag}).json()
        assert [j["id"] for j in listed["jobs"]] == [job["id"]]
        assert (
            http.get("/tunewire/v1/jobs", params={"metadata[suite]": "none"}).json()["jobs"] == []
        )

        cancelled = http.post(f"/tunewire/v1/jobs/{job['id']}:cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "STATE_CANCELLED"
        events = http.get(f"/tunewire/v1/jobs/{job['id']}/events", params={"page_size": 2}).json()
        assert [e["sequence"] for e in events["events"]] == ["1", "2"]
        later = http.get(
            f"/tunewire/v1/jobs/{job['id']}/events", params={"after_sequence": 2}
        ).json()["events"]
        assert later[-1]["data"]["state"] == "cancelled"

        content = http.get(f"/tunewire/v1/files/{record['id']}:download")
        assert content.headers["content-type"] == "application/x-ndjson"
        chunks = [json.loads(line)["result"]["chunk"] for line in content.text.splitlines()]
        assert chunks[-1]["sha256"] == record["sha256"]

        bases = http.get("/tunewire/v1/base-models").json()["base_models"]
        assert any(m["id"] == "tiny-llama" and m["kind"] == "KIND_CAUSAL_LM" for m in bases)


def test_ids_with_colons_are_matched_whole(rest: Stack) -> None:
    model = "ft:tiny-llama:default:x:ftjob-000000000000000000000000:ckpt-step-3"
    with rest.http() as http:
        missing = status_of(http.get(f"/tunewire/v1/models/{model}"), 5, 404)
        assert model in missing["message"]
        # `:generate` is a verb only where the template has one; the id keeps its colons.
        generated = http.post(f"/tunewire/v1/models/{model}:generate", json={"prompt": "hi"})
        assert generated.status_code == 404 and model in generated.json()["message"]
        record = upload(http, chat_lines(10, "colons"))
        assert http.get(f"/tunewire/v1/files/{record['id']}:download").status_code == 200
        status_of(http.get(f"/tunewire/v1/files/{record['id']}:nope"), 5, 404)
        # A verb on a path whose template has none is not a route at all.
        assert http.post(f"/tunewire/v1/files/{record['id']}:cancel").status_code in (404, 405)


def test_native_generate_streams_ndjson(rest: Stack) -> None:
    with rest.http() as http:
        reply = http.post(
            "/tunewire/v1/models/tiny-llama:generate",
            json={"prompt": "Hello", "max_tokens": 4, "temperature": 0, "stop": ["\n"]},
        )
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/x-ndjson"
    frames = [json.loads(line) for line in reply.text.splitlines()]
    assert all(set(f) == {"result"} for f in frames)
    assert frames[-1]["result"]["finish_reason"] in ("stop", "length")
    assert int(frames[-1]["result"]["usage"]["completion_tokens"]) <= 4


def test_native_errors_are_google_rpc_status(rest: Stack) -> None:
    with rest.http(key=None) as anonymous:
        status_of(anonymous.get("/tunewire/v1/jobs"), 16, 401)
    with rest.http(key="tw-not-a-key") as stranger:
        status_of(stranger.get("/tunewire/v1/jobs"), 16, 401)
        # The key is checked before the body is read: 401, never 400; a bad query too.
        status_of(stranger.post("/tunewire/v1/jobs", content=b"{not json"), 16, 401)
        status_of(stranger.get("/tunewire/v1/jobs", params={"page_size": "many"}), 16, 401)
        openai = stranger.get("/v1/fine_tuning/jobs", params={"limit": "many"})
        assert openai.status_code == 401 and openai.json()["error"]["code"] == "invalid_api_key"
        status_of(stranger.get("/tunewire/v1/caller"), 16, 401)
    with rest.http() as http:
        caller = http.get("/tunewire/v1/caller").json()
        assert caller["org"] == "default" and caller["key_id"].startswith("key-")
        status_of(http.get("/tunewire/v1/jobs/ftjob-nope"), 5, 404)
        bad = status_of(
            http.post("/tunewire/v1/jobs", json={"base_model": "nope", "training_file": "file-x"}),
            3,
            400,
        )
        assert set(violations(bad)) == {"job.base_model", "job.training_file"}
        assert "unknown query parameter" in violations(
            status_of(http.get("/tunewire/v1/jobs", params={"page_sise": 3}), 3, 400)
        ).get("page_sise", "")
        status_of(http.post("/tunewire/v1/jobs", content=b"{not json"), 3, 400)
        status_of(http.get("/tunewire/v1/jobs", params={"page_size": "many"}), 3, 400)
        status_of(http.get("/tunewire/v1/jobs", params={"metadata": "x"}), 3, 400)
        record = upload(http, chat_lines(10, "errors"))
        job = create_job(http, record["id"])
        http.post(f"/tunewire/v1/jobs/{job['id']}:cancel")
        # FAILED_PRECONDITION is 400 in grpc-gateway's table.
        status_of(http.post(f"/tunewire/v1/jobs/{job['id']}:pause"), 9, 400)
    # Another organization's job looks exactly like a missing one.
    with rest.http(key=rest.server.other.key) as other:
        status_of(other.get(f"/tunewire/v1/jobs/{job['id']}"), 5, 404)


def test_query_parameters_follow_the_json_mapping() -> None:
    """Repeated fields, maps, dotted paths and JSON names, on messages whose RPCs
    take no such query (the server's RPCs cannot show all of them)."""
    values = transcode._query_values(
        models_pb2.GenerateRequest.DESCRIPTOR,
        [("stop", "a"), ("stop", "b"), ("maxTokens", "3"), ("top_p", "0.5")],
        bound=["model_id"],
    )
    assert values == {"stop": ["a", "b"], "max_tokens": "3", "top_p": "0.5"}
    request = models_pb2.GenerateRequest()
    transcode._parse_into(values, request, "")
    assert (list(request.stop), request.max_tokens, request.top_p) == (["a", "b"], 3, 0.5)


# --- streams ----------------------------------------------------------------------------


def test_stream_failures_before_data_get_an_http_status(rest: Stack) -> None:
    with rest.http() as http:
        for accept in ("application/x-ndjson", "text/event-stream"):
            reply = http.get(
                "/tunewire/v1/jobs/ftjob-nope/events:stream", headers={"Accept": accept}
            )
            status_of(reply, 5, 404)


def test_ndjson_stream_of_a_finished_job(rest: Stack) -> None:
    with rest.http() as http:
        job = create_job(http, upload(http, chat_lines(10, "ndjson"))["id"])
        http.post(f"/tunewire/v1/jobs/{job['id']}:cancel")
        reply = http.get(f"/tunewire/v1/jobs/{job['id']}/events:stream")
    frames = [json.loads(line) for line in reply.text.splitlines()]
    assert [f["result"]["event"]["sequence"] for f in frames] == ["1", "2", "3"]
    assert frames[-1]["result"]["event"]["data"] == {"state": "cancelled"}


def test_idle_sse_stream_gets_heartbeats_and_resumes(rest: Stack) -> None:
    with rest.http() as http:
        job = create_job(http, upload(http, chat_lines(10, "sse"))["id"])  # stays queued
        path = f"/tunewire/v1/jobs/{job['id']}/events:stream"
        headers = {"Accept": "text/event-stream"}
        with http.stream("GET", path, headers=headers) as reply:
            assert reply.headers["content-type"].startswith("text/event-stream")
            seen: list[dict[str, str]] = []
            for event in sse_events(reply):
                seen.append(event)
                if sum("comment" in e for e in seen) == 3:
                    break
        ids = [e["id"] for e in seen if "id" in e]
        assert ids == ["1", "2"]  # validating_files, queued; then nothing happens
        assert [
            json.loads(e["data"])["result"]["event"]["sequence"] for e in seen if "id" in e
        ] == ids
        assert [e["comment"] for e in seen if "comment" in e] == ["keep-alive"] * 3

        # Last-Event-ID is the cursor: nothing is replayed, the stream idles on.
        started = time.monotonic()
        with http.stream("GET", path, headers={**headers, "Last-Event-ID": "2"}) as reply:
            first = next(sse_events(reply))
        assert first == {"comment": "keep-alive"} and time.monotonic() - started < 5
        status_of(http.get(path, headers={**headers, "Last-Event-ID": "x"}), 3, 400)
        http.post(f"/tunewire/v1/jobs/{job['id']}:cancel")


def test_sse_stream_cut_mid_job_resumes_exactly_once(live: Stack) -> None:
    with live.http() as http:
        record = upload(http, SAMPLE_CHAT.read_bytes(), SAMPLE_CHAT.name)
        job = create_job(http, record["id"], hyperparameters={"n_epochs": 1})
        path = f"/tunewire/v1/jobs/{job['id']}/events:stream"
        headers = {"Accept": "text/event-stream"}
        first: list[dict[str, Any]] = []
        with http.stream("GET", path, headers=headers) as reply:
            for event in sse_events(reply):
                if "id" in event:
                    first.append(json.loads(event["data"])["result"]["event"])
                    if first[-1]["type"] == "TYPE_METRICS":
                        break  # mid-job: training has started and not finished
        assert first[-1]["type"] == "TYPE_METRICS"
        cut = first[-1]["sequence"]

        rest_of: list[dict[str, Any]] = []
        with http.stream("GET", path, headers={**headers, "Last-Event-ID": cut}) as reply:
            for event in sse_events(reply):
                if "id" in event:
                    rest_of.append(json.loads(event["data"])["result"]["event"])
                    assert event["id"] == rest_of[-1]["sequence"]
        assert rest_of, "the job ended at the cut"
        assert rest_of[-1]["data"]["state"] == "succeeded"

        everything = http.get(path.replace(":stream", ""), params={"page_size": 1000}).json()
        sequences = [int(e["sequence"]) for e in first + rest_of]
        assert sequences == list(range(1, len(everything["events"]) + 1))
        assert [e["id"] for e in first + rest_of] == [e["id"] for e in everything["events"]]


# --- uploads ----------------------------------------------------------------------------

BOUNDARY = "tunewire-test-boundary"


def form_head(purpose: str, filename: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


FORM_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def streamed_upload(
    url: str,
    key: str,
    size: int,
    path: str = "/tunewire/v1/files",
    purpose: str = "PURPOSE_USER_DATA",
) -> tuple[httpx.Response, str, float]:
    """POST a `size`-byte multipart upload generated on the fly (never whole in
    memory); returns the reply, the sha256 sent and the seconds it took."""
    head = form_head(purpose, "big.bin")
    block = os.urandom(64 * 1024)
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            digest.update(piece)
            sent += len(piece)
            yield piece
        yield FORM_TAIL

    started = time.monotonic()
    reply = httpx.post(
        url + path,
        content=body(),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(len(head) + size + len(FORM_TAIL)),
        },
        timeout=300,
    )
    return reply, digest.hexdigest(), time.monotonic() - started


@pytest.fixture
def own_bridge(server: Server, tmp_path: Path) -> Iterator[Bridge]:
    """A fresh bridge process of this test's own, so its memory is this test's."""
    bridge = start_bridge(server.address, tmp_path)
    yield bridge
    bridge.stop()


@pytest.mark.parametrize("megabytes", [30, 300])
def test_upload_is_streamed_in_bounded_memory(
    own_bridge: Bridge, server: Server, megabytes: int
) -> None:
    key = server.default.key
    size = megabytes * 1024 * 1024
    warm, _, _ = streamed_upload(own_bridge.url, key, 1024 * 1024)  # load the upload path
    assert warm.status_code == 200, warm.text
    before = own_bridge.memory_kib()["VmRSS"]

    reply, sha, seconds = streamed_upload(own_bridge.url, key, size)

    assert reply.status_code == 200, reply.text
    record = reply.json()
    assert (int(record["bytes"]), record["sha256"]) == (size, sha)
    growth_mib = (own_bridge.memory_kib()["VmHWM"] - before) / 1024
    print(
        f"{megabytes} MB upload: {size / seconds / 1e6:.0f} MB/s, bridge RSS +{growth_mib:.1f} MiB"
    )
    assert growth_mib < 64
    with httpx.Client(base_url=own_bridge.url, headers={"Authorization": f"Bearer {key}"}) as http:
        for stored in (warm.json(), record):
            assert http.delete(f"/tunewire/v1/files/{stored['id']}").status_code == 200


def stored_blobs(stack: Stack) -> set[str]:
    blobs = stack.server.home / "blobs"
    return {str(p.relative_to(blobs)) for p in blobs.rglob("*") if p.is_file()}


def test_upload_over_the_limit_is_413_and_leaves_nothing(live: Stack) -> None:
    with live.http() as http:
        before_files = {f["id"] for f in http.get("/tunewire/v1/files").json()["files"]}
        before_blobs = stored_blobs(live)

        reply, _, _ = streamed_upload(live.url, live.key, LIVE_UPLOAD_LIMIT + 2 * 1024 * 1024)
        status = status_of(reply, 8, 413)
        assert "upload limit" in status["message"]

        openai = streamed_upload(
            live.url, live.key, LIVE_UPLOAD_LIMIT + 1, path="/v1/files", purpose="user_data"
        )[0]
        assert openai.status_code == 413
        assert openai.json()["error"]["code"] == "file_too_large"

        # The training part fits, the evaluation part does not: the first is deleted too.
        cohere = http.post(
            "/cohere/v1/datasets",
            params={"name": "too-big", "type": "chat-finetune-input"},
            files={
                "data": ("d.jsonl", chat_lines(10, "413")),
                "eval_data": ("e.jsonl", b"x" * (LIVE_UPLOAD_LIMIT + 1)),
            },
        )
        assert cohere.status_code == 413 and "upload limit" in cohere.json()["message"]

        assert {f["id"] for f in http.get("/tunewire/v1/files").json()["files"]} == before_files
        assert stored_blobs(live) == before_blobs


def test_upload_form_rules(rest: Stack) -> None:
    with rest.http() as http:
        name = "../../etc/passwd ünïcode.jsonl"
        record = upload(http, chat_lines(10, "name"), name)
        assert record["filename"] == name  # data only: stored under a generated id
        assert (rest.server.home / "blobs" / "files" / record["id"]).exists()

        not_a_form = http.post("/tunewire/v1/files", json={"file": "x"})
        status_of(not_a_form, 3, 415)
        no_file = http.post("/tunewire/v1/files", files=[("purpose", (None, "PURPOSE_FINE_TUNE"))])
        assert "file" in violations(status_of(no_file, 3, 400))
        truncated = http.post(
            "/tunewire/v1/files",
            content=form_head("PURPOSE_FINE_TUNE", "t.jsonl") + b"{}",
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert "closing boundary" in status_of(truncated, 3, 400)["message"]

        before = {f["id"] for f in http.get("/tunewire/v1/files").json()["files"]}
        # A file before its purpose is stored as fine-tune; another purpose then is refused
        # and the file removed.
        late = http.post(
            "/tunewire/v1/files",
            files=[("file", ("late.bin", b"raw bytes")), ("purpose", (None, "PURPOSE_USER_DATA"))],
        )
        assert "purpose" in violations(status_of(late, 3, 400))
        assert {f["id"] for f in http.get("/tunewire/v1/files").json()["files"]} == before
        fine = http.post(
            "/tunewire/v1/files",
            files=[
                ("file", ("late.jsonl", chat_lines(10, "late"))),
                ("purpose", (None, "PURPOSE_FINE_TUNE")),
            ],
        )
        assert fine.status_code == 200 and fine.json()["state"] == "STATE_PROCESSED"


# --- OpenAPI ----------------------------------------------------------------------------


def test_openapi_lists_every_route_with_schemas(rest: Stack) -> None:
    with rest.http(key=None) as http:
        document = http.get("/openapi.json").json()
    paths = document["paths"]
    for route in create_app("unused:1").routes:
        if not hasattr(route, "methods") or route.path.startswith(("/docs", "/redoc", "/openapi")):
            continue
        path = re.sub(r"\{(\w+):path\}", r"{\1}", route.path)
        assert path in paths, path
        for method in route.methods - {"HEAD"}:
            assert method.lower() in paths[path], (method, path)
    for binding in BINDINGS:
        # Route parameters spell a dotted field (`{job.id}`) with "__", and drop `=**`.
        path = "/tunewire" + re.sub(
            r"\{([\w.]+)(?:=\*\*)?\}",
            lambda m: "{" + m.group(1).replace(".", "__") + "}",
            binding.template,
        )
        operation = paths[path][binding.http_method.lower()]
        assert operation["operationId"] == binding.operation_id
    schemas = document["components"]["schemas"]
    assert {
        "tunewire.v1.Job",
        "tunewire.v1.File",
        "google.rpc.Status",
        "FineTuningJob",
        "Session",
    } <= set(schemas)
    assert schemas["tunewire.v1.Job"]["properties"]["id"]["readOnly"] is True
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs <= set(schemas), refs - set(schemas)
