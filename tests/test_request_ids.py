"""Request ids: `x-request-id` on every response of the REST bridge (the caller's own
when sane, else a new `req_…`), which OpenAI's SDK shows as `_request_id`; the same id
sent on to the control plane, answered to gRPC callers as initial metadata, and written
in the log lines of the call. One `tunewire up` (gRPC and the bridge in one process)
logging at info, so that a refused call leaves a line to find."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from conftest import Server, chat_lines, fails, launch

from tunewire.v1 import files_pb2, jobs_pb2, models_pb2

REST_READY = re.compile(r"tunewire: serving REST on (\S+):(\d+)")
GENERATED = re.compile(r"req_[0-9a-f]{24}")
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("request-ids")
    server = launch(root / "home", models_dir, root / "logs", TUNEWIRE_LOG_LEVEL="info")
    try:
        yield server
    finally:
        try:
            assert server.terminate() == 0, server.stderr
        finally:
            server.kill()


@pytest.fixture(scope="module")
def url(srv: Server) -> str:
    deadline = time.monotonic() + TIMEOUT
    while not (ready := REST_READY.search(srv.stdout)):
        assert time.monotonic() < deadline, srv.stdout
        time.sleep(0.05)
    return f"http://{ready.group(1)}:{ready.group(2)}"


@pytest.fixture
def http(srv: Server, url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {srv.first_key}"}, timeout=TIMEOUT
    ) as client:
        yield client


def unique(tag: str) -> str:
    return f"{tag}-{time.monotonic_ns()}"


def log_lines(srv: Server, where: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The server's structured log lines that `where` picks, once there are any (a line
    is written when its call ends, which may be just after the reply arrived)."""
    deadline = time.monotonic() + 10
    while True:
        found = []
        for line in srv.stderr.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and where(entry):
                found.append(entry)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_the_openai_sdk_shows_the_request_id(srv: Server, url: str) -> None:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=srv.first_key, max_retries=0) as client:
        listed = client.files.list()
        assert GENERATED.fullmatch(listed._request_id or ""), listed._request_id
        again = client.files.list()
        assert again._request_id != listed._request_id
        mine = unique("sdk")
        chosen = client.files.list(extra_headers={"x-request-id": mine})
        assert chosen._request_id == mine
        with pytest.raises(openai.NotFoundError) as missing:
            client.fine_tuning.jobs.retrieve("ftjob-000000000000000000000000")
        assert GENERATED.fullmatch(missing.value.request_id or ""), missing.value.request_id


def test_every_http_response_echoes_the_callers_id(
    srv: Server, url: str, http: httpx.Client
) -> None:
    def answered(method: str, path: str, client: httpx.Client = http, **kwargs: Any) -> int:
        mine = unique("http")
        reply = client.request(method, path, headers={"x-request-id": mine}, **kwargs)
        assert reply.headers.get_list("x-request-id") == [mine], (path, reply.headers)
        return reply.status_code

    assert answered("GET", "/v1/files") == 200
    assert answered("GET", "/tunewire/v1/files") == 200
    assert answered("GET", "/v1/no/such/path") == 404
    assert answered("GET", "/nowhere") == 404
    assert answered("DELETE", "/v1/files") == 405
    assert answered("GET", "/v1/fine_tuning/jobs/ftjob-000000000000000000000000") == 404
    assert answered("POST", "/v1/fine_tuning/jobs", content=b"{not json") == 400
    assert answered("GET", "/ui/") == 200  # the dashboard
    assert answered("GET", "/openapi.json") == 200
    with httpx.Client(base_url=url, timeout=TIMEOUT) as anonymous:
        assert answered("GET", "/v1/files", client=anonymous) == 401
        assert answered("GET", "/cohere/v1/datasets", client=anonymous) == 401
    with httpx.Client(
        base_url=url, headers={"Authorization": "Bearer tw-nobody"}, timeout=TIMEOUT
    ) as stranger:
        assert answered("POST", "/v1/files", client=stranger, data={"purpose": "x"}) == 401

    # A stream: the id is in its headers, before the first event.
    training = http.post(
        "/v1/files",
        data={"purpose": "fine-tune"},
        files={"file": ("ids.jsonl", chat_lines(10, unique("ids")))},
    ).json()
    job = http.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": training["id"]}
    ).json()
    http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    mine = unique("stream")
    with http.stream(
        "GET",
        f"/tunewire/v1/jobs/{job['id']}/events:stream",
        headers={"x-request-id": mine, "accept": "text/event-stream"},
    ) as stream:
        assert stream.status_code == 200 and stream.headers["x-request-id"] == mine
        assert "cancelled" in stream.read().decode()


def test_an_id_that_is_not_sane_is_replaced(http: httpx.Client) -> None:
    for given in ["x" * 129, "", "caf\u00e9"]:
        reply = http.get("/v1/files", headers={"x-request-id": given.encode("latin-1")})
        assert reply.status_code == 200
        assert GENERATED.fullmatch(reply.headers["x-request-id"]), (given, reply.headers)
    # A byte HTTP forbids: uvicorn refuses the request before the app sees it.
    reply = http.get("/v1/files", headers={"x-request-id": "a\x7fb"})
    assert reply.status_code == 400 and GENERATED.fullmatch(reply.headers["x-request-id"])
    longest = "y" * 128
    assert http.get("/v1/files", headers={"x-request-id": longest}).headers["x-request-id"] == (
        longest
    )


def test_grpc_callers_get_their_id_back_as_initial_metadata(srv: Server) -> None:
    org = srv.default
    mine = unique("grpc")
    request = files_pb2.ListFilesRequest()
    _, call = org.client.files.ListFiles.with_call(
        request, metadata=[*org.client.metadata, ("x-request-id", mine)], timeout=TIMEOUT
    )
    assert dict(call.initial_metadata())["x-request-id"] == mine
    _, call = org.client.files.ListFiles.with_call(
        request, metadata=org.client.metadata, timeout=TIMEOUT
    )
    assert GENERATED.fullmatch(dict(call.initial_metadata())["x-request-id"])

    # Refused calls too, whether the key or the request is what is wrong.
    for metadata, code in [
        ([("authorization", "Bearer tw-nobody")], grpc.StatusCode.UNAUTHENTICATED),
        (org.client.metadata, grpc.StatusCode.NOT_FOUND),
    ]:
        mine = unique("refused")
        try:
            org.client.jobs.GetJob(
                jobs_pb2.GetJobRequest(job_id="ftjob-000000000000000000000000"),
                metadata=[*metadata, ("x-request-id", mine)],
                timeout=TIMEOUT,
            )
        except grpc.RpcError as error:
            assert error.code() == code
            assert dict(error.initial_metadata())["x-request-id"] == mine
        else:
            raise AssertionError("the call succeeded")


def test_log_lines_of_a_call_carry_its_id(srv: Server, http: httpx.Client) -> None:
    org = srv.default
    mine = unique("grpc-log")
    fails(
        grpc.StatusCode.NOT_FOUND,
        org.jobs.GetJob,
        jobs_pb2.GetJobRequest(job_id="ftjob-000000000000000000000000"),
        metadata=[*org.client.metadata, ("x-request-id", mine)],
    )
    [line] = log_lines(srv, lambda entry: entry.get("request_id") == mine)
    assert line["code"] == "NOT_FOUND" and "GetJob" in line["message"], line

    # Through the bridge: its access line and the control plane's line for the call
    # it made, in the one process `tunewire up` runs, under the caller's id.
    mine = unique("http-log")
    reply = http.get(
        "/v1/fine_tuning/jobs/ftjob-000000000000000000000000", headers={"x-request-id": mine}
    )
    assert reply.status_code == 404
    lines = log_lines(srv, lambda entry: entry.get("request_id") == mine)
    by_logger = {line["logger"]: line for line in lines}
    assert set(by_logger) == {"uvicorn.access", "tunewire.rpc"}, lines
    assert "/v1/fine_tuning/jobs/ftjob-" in by_logger["uvicorn.access"]["message"]
    assert by_logger["tunewire.rpc"]["code"] == "NOT_FOUND"


def test_the_inference_worker_logs_under_the_callers_id(srv: Server) -> None:
    org = srv.default
    mine = unique("generate-log")
    replies = org.models.Generate(
        models_pb2.GenerateRequest(model_id="tiny-llama", prompt="Hello", max_tokens=4),
        metadata=[*org.client.metadata, ("x-request-id", mine)],
        timeout=120,
    )
    assert [r.finish_reason for r in replies][-1] == "length"
    # Each worker process logs to a file of its own in the data dir.
    deadline = time.monotonic() + 10
    while not (lines := worker_lines(srv, mine)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("tunewire.worker", "generate")
    ], lines
    assert lines[0]["model"] == "tiny-llama"


def worker_lines(srv: Server, ident: str) -> list[dict[str, Any]]:
    found = []
    for path in (srv.home / "logs").glob("worker-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if f'"request_id": "{ident}"' in line:
                found.append(json.loads(line))
    return found
