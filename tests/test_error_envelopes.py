"""Every failure a client of a surface can meet comes in that surface's envelope and
words: unknown paths and methods (refused by the router, outside any route), missing
resources (named as the surface names them: Cohere's datasets, Helix's sessions),
unknown list cursors, and file-validation reports that read as sentences.

Through the real `openai` and `cohere` SDKs where they reach the failure, else httpx,
against the session's `rest` stack (real uvicorn in front of a real server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import cohere
import grpc
import httpx
import openai
import pytest
from cohere.finetuning import BaseModel, FinetunedModel, Settings
from conftest import chat_lines
from test_bridge import Stack

# The `rest` stack (one per session).
pytest_plugins = ["test_bridge"]

GRPC_NAMES = {code.name for code in grpc.StatusCode}
PROBLEM_JSON = "application/problem+json"


@pytest.fixture
def client(rest: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{rest.url}/v1", api_key=rest.key, max_retries=0) as c:
        yield c


@pytest.fixture
def co(rest: Stack) -> Iterator[cohere.Client]:
    with httpx.Client(timeout=60) as transport:
        yield cohere.Client(api_key=rest.key, base_url=f"{rest.url}/cohere", httpx_client=transport)


def openai_envelope(reply: httpx.Response) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] is None or body["error"]["code"].upper() not in GRPC_NAMES
    return body["error"]


def cohere_envelope(reply: httpx.Response) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"message"} and body["message"], body
    return body


def helix_envelope(reply: httpx.Response) -> dict[str, Any]:
    assert reply.headers["content-type"] == PROBLEM_JSON
    body = reply.json()
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == reply.status_code and body["detail"], body
    return body


def native_envelope(reply: httpx.Response) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"code", "message", "details"} and body["message"], body
    return body


# prefix -> (the envelope check, a path under it that some route serves, its methods)
SURFACES = {
    "/v1": (openai_envelope, "/v1/fine_tuning/jobs", "GET, POST"),
    "/api/llm": (openai_envelope, "/api/llm/fine_tuning/jobs", "GET, POST"),
    "/cohere/v1": (cohere_envelope, "/cohere/v1/datasets", "GET, POST"),
    "/api/v1": (helix_envelope, "/api/v1/sessions", "GET, POST"),
    "/tunewire": (native_envelope, "/tunewire/v1/files", "GET, POST"),
}


@pytest.mark.parametrize("prefix", SURFACES)
def test_unknown_path_and_method_answer_in_the_surfaces_envelope(rest: Stack, prefix: str) -> None:
    envelope, served, methods = SURFACES[prefix]
    with rest.http() as http:
        missing = http.get(f"{prefix}/no/such/thing")
        assert missing.status_code == 404, missing.text
        said = envelope(missing)
        assert f"GET {prefix}/no/such/thing" in json.dumps(said)

        refused = http.delete(served)
        assert refused.status_code == 405, refused.text
        # Every method of the path, not only those of its first route.
        assert refused.headers["allow"] == methods
        said = envelope(refused)
        assert "DELETE" in json.dumps(said) and methods in json.dumps(said)
    if prefix == "/tunewire":
        assert (said["code"], missing.json()["code"]) == (
            grpc.StatusCode.UNIMPLEMENTED.value[0],
            grpc.StatusCode.NOT_FOUND.value[0],
        )


def test_outside_every_surface_fastapi_answers(rest: Stack) -> None:
    with rest.http() as http:
        # A prefix only counts at a segment's end: /v10 is not OpenAI's.
        for path in ("/no-surface", "/v10/files"):
            assert http.get(path).json() == {"detail": "Not Found"}


def test_the_sdks_parse_the_routers_refusals(
    client: openai.OpenAI, co: cohere.Client, rest: Stack
) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.get("/no/such/thing", cast_to=object)
    assert unknown.value.code is None and unknown.value.type == "invalid_request_error"
    assert "Invalid URL (GET /v1/no/such/thing)" in unknown.value.message


def test_openai_missing_resources_keep_openai_codes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as job:
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    assert job.value.body["code"] is None and job.value.type == "invalid_request_error"
    assert job.value.body["message"] == "fine-tuning job 'ftjob-nope' not found"
    with pytest.raises(openai.NotFoundError) as file:
        client.files.retrieve("file-nope")
    assert (file.value.body["code"], file.value.body["message"]) == (
        None,
        "file 'file-nope' not found",
    )
    with pytest.raises(openai.NotFoundError) as model:
        client.models.retrieve("ft:nope")
    assert model.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file="file-nope")
    assert bad.value.body["param"] == "training_file" and bad.value.body["code"] is None
    assert bad.value.body["message"] == "'file-nope' does not exist"


def test_invalid_n_examples_is_the_servers_reason(client: openai.OpenAI) -> None:
    few = client.files.create(file=("few.jsonl", chat_lines(3, "env-few")), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as small:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=few.id)
    assert (small.value.param, small.value.code) == ("training_file", "invalid_n_examples")


def test_cohere_says_dataset_and_finetuned_model(co: cohere.Client) -> None:
    with pytest.raises(cohere.NotFoundError) as dataset:
        co.datasets.get("file-nope")
    assert dataset.value.body == {"message": "dataset 'file-nope' not found"}
    with pytest.raises(cohere.NotFoundError) as model:
        co.finetuning.get_finetuned_model("ftjob-nope")
    assert model.value.body == {"message": "finetuned model 'ftjob-nope' not found"}
    chat = BaseModel(base_type="BASE_TYPE_CHAT")
    with pytest.raises(cohere.BadRequestError) as created:
        co.finetuning.create_finetuned_model(
            request=FinetunedModel(
                name="n", settings=Settings(base_model=chat, dataset_id="file-nope")
            )
        )
    message = created.value.body["message"]
    assert message == "settings.dataset_id: 'file-nope' does not exist"


def test_helix_says_session(rest: Stack) -> None:
    with rest.http() as http:
        missing = http.get("/api/v1/sessions/ftjob-nope")
    assert missing.status_code == 404
    assert helix_envelope(missing)["detail"] == "session 'ftjob-nope' not found"


def test_native_keeps_the_resource_info(rest: Stack) -> None:
    with rest.http() as http:
        missing = http.get("/tunewire/v1/jobs/ftjob-nope")
    assert missing.status_code == 404
    body = native_envelope(missing)
    assert body["message"] == "job 'ftjob-nope' not found"
    assert {
        "@type": "type.googleapis.com/google.rpc.ResourceInfo",
        "resource_type": "job",
        "resource_name": "ftjob-nope",
        "owner": "",
        "description": "job 'ftjob-nope' not found",
    } in body["details"]


# --- unknown cursors ---------------------------------------------------------------------


def test_unknown_after_is_a_400_naming_after(client: openai.OpenAI, rest: Stack) -> None:
    training = client.files.create(
        file=("t.jsonl", chat_lines(10, "env-after")), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id)
    for listing in (
        lambda: client.fine_tuning.jobs.list(after="ftjob-gone"),
        lambda: client.fine_tuning.jobs.list_events(job.id, after="ftevent-gone"),
        lambda: client.fine_tuning.jobs.checkpoints.list(job.id, after="ftckpt-gone"),
        lambda: client.files.list(after="file-gone"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            listing()
        assert refused.value.param == "after" and "-gone'" in refused.value.message
        assert refused.value.code is None
    with rest.http() as http:
        for path in ("/v1/webhooks", "/api/llm/fine_tuning/jobs"):
            reply = http.get(path, params={"after": "x-gone"})
            assert reply.status_code == 400, (path, reply.text)
            error = openai_envelope(reply)
            assert error["param"] == "after" and "'x-gone'" in error["message"]


def test_unknown_page_tokens_are_refused(co: cohere.Client, rest: Stack) -> None:
    with pytest.raises(cohere.BadRequestError) as refused:
        co.finetuning.list_finetuned_models(page_token="not-a-token")
    assert "page_token" in refused.value.body["message"]
    with rest.http() as http:
        jobs = http.get("/tunewire/v1/jobs", params={"page_size": 1}).json()["jobs"]
        assert jobs, "the session's server has jobs"
        events = f"/cohere/v1/finetuning/finetuned-models/{jobs[0]['id']}/events"
        # An offset past the end was never issued: the last page's token is "".
        past = http.get(events, params={"page_token": "999999"})
        assert past.status_code == 400 and "page_token" in cohere_envelope(past)["message"]
        for query, field in (
            ({"page_token": "bogus"}, "page_token"),
            ({"after_id": "x"}, "after_id"),
        ):
            native = http.get("/tunewire/v1/jobs", params=query)
            assert native.status_code == 400, native.text
            details = native_envelope(native)["details"]
            assert field in {v["field"] for d in details for v in d.get("field_violations", [])}


# --- file reports ------------------------------------------------------------------------


def test_file_problems_read_as_sentences(client: openai.OpenAI, co: cohere.Client) -> None:
    empty = client.files.create(file=("empty.jsonl", b"\n"), purpose="fine-tune")
    assert empty.status == "error"
    assert empty.status_details == "1 problem(s): The file is empty; it has no examples."
    robot = json.dumps(
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    ).encode()
    broken = client.files.create(
        file=("robot.jsonl", chat_lines(2, "env-robot") + robot + b"\n[1]\n"), purpose="fine-tune"
    )
    assert broken.status_details is not None
    assert broken.status_details.startswith(
        '2 problem(s): Line 3: $.messages[0].role is "robot"; it must be one of system, '
    )
    assert broken.status_details.endswith(" Line 4 must be a JSON object, not an array.")
    for said in (empty.status_details, broken.status_details):
        assert "line 0" not in said.lower() and "$:" not in said

    # Job creation quotes the first problem, in the same words.
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=broken.id)
    assert refused.value.param == "training_file"
    assert refused.value.body["message"].startswith(
        f"'{broken.id}' failed validation with 2 problem(s); fix them and upload it again. "
        'The first: Line 3: $.messages[0].role is "robot"'
    )

    dataset = co.datasets.create(
        name="empty", type="chat-finetune-input", data=("empty.jsonl", b"\n")
    )
    status = co.datasets.get(dataset.id or "").dataset
    assert status.validation_status == "failed"
    assert status.validation_error == "empty.jsonl: The file is empty; it has no examples."
