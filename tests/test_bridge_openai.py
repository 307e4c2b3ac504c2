"""OpenAI's API on the bridge (`/v1`), and TrueFoundry's files and jobs (`/api/llm`): the
official `openai` SDK, pointed at the bridge with `base_url`, runs a whole
fine-tune unchanged; objects and errors have OpenAI's shapes."""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import SAMPLE_CHAT, chat_lines
from test_bridge import FINAL, Stack

JOB_KEYS = {
    "object",
    "id",
    "created_at",
    "error",
    "fine_tuned_model",
    "finished_at",
    "hyperparameters",
    "model",
    "organization_id",
    "result_files",
    "seed",
    "status",
    "trained_tokens",
    "training_file",
    "validation_file",
    "estimated_finish",
    "integrations",
    "metadata",
    "method",
    "user_provided_suffix",
}
FILE_KEYS = {
    "id",
    "object",
    "bytes",
    "created_at",
    "filename",
    "purpose",
    "status",
    "status_details",
    "expires_at",
}

# The `rest` and `live` stacks (one each per session).
pytest_plugins = ["test_bridge"]


def sdk(stack: Stack, key: str | None = "default") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.url}/v1",
        api_key=stack.key if key == "default" else key,
        max_retries=0,
    )


@pytest.fixture
def client(rest: Stack) -> Iterator[openai.OpenAI]:
    with sdk(rest) as c:
        yield c


def test_openai_sdk_runs_a_whole_fine_tune(live: Stack) -> None:
    with sdk(live) as client:
        uploaded = client.files.create(file=SAMPLE_CHAT.open("rb"), purpose="fine-tune")
        assert (uploaded.object, uploaded.status, uploaded.purpose) == (
            "file",
            "processed",
            "fine-tune",
        )
        assert uploaded.bytes == SAMPLE_CHAT.stat().st_size
        held_out = client.files.create(
            file=("held-out.jsonl", chat_lines(10, "sdk-flow")), purpose="fine-tune"
        )

        job = client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=uploaded.id,
            validation_file=held_out.id,
            suffix="sdk-flow",
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
        )
        assert job.status in ("validating_files", "queued") and job.object == "fine_tuning.job"
        assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == "auto"

        seen = {job.status}
        while job.status not in FINAL:
            time.sleep(0.3)
            job = client.fine_tuning.jobs.retrieve(job.id)
            seen.add(job.status)
        assert job.status == "succeeded", job.error
        assert "running" in seen
        assert job.fine_tuned_model == f"ft:tiny-llama:default:sdk-flow:{job.id}"
        assert job.finished_at and job.finished_at >= job.created_at
        assert job.trained_tokens and job.trained_tokens > 0
        # "auto" is shown resolved once training has planned it.
        assert isinstance(job.hyperparameters.batch_size, int)
        assert isinstance(job.hyperparameters.learning_rate_multiplier, float)
        assert job.method.supervised.hyperparameters.n_epochs == 1
        assert job.result_files and client.files.retrieve(job.result_files[0]).purpose == (
            "fine-tune-results"
        )

        events = client.fine_tuning.jobs.list_events(job.id, limit=5)
        assert len(events.data) == 5 and events.has_more
        assert events.data[0].data == {"state": "succeeded"}  # newest first
        older = client.fine_tuning.jobs.list_events(job.id, limit=100, after=events.data[-1].id)
        every = [e.id for e in events.data + older.data]
        assert len(every) == len(set(every))
        metrics = [e for e in events.data + older.data if e.type == "metrics"]
        assert metrics and {"step", "train_loss"} <= set(metrics[0].data)
        # A step that validated has the figures in its metrics event, where OpenAI's
        # clients read them; the last step of an epoch always validates.
        assert {"valid_loss", "valid_mean_token_accuracy"} <= set(metrics[0].data)
        assert metrics[0].data["step"] == metrics[0].data["total_steps"]
        for event in metrics:
            validated = "valid_loss" in event.data
            shape = r"Step \d+/\d+: training loss=\d+\.\d\d" + (
                r", validation loss=\d+\.\d\d" if validated else ""
            )
            assert re.fullmatch(shape, event.message), event
        all_events = list(client.fine_tuning.jobs.list_events(job.id, limit=7))  # auto-paging
        assert [e.id for e in all_events] == every

        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
        assert checkpoints.data and checkpoints.first_id == checkpoints.data[0].id
        checkpoint = checkpoints.data[0]
        assert checkpoint.object == "fine_tuning.job.checkpoint"
        assert checkpoint.fine_tuned_model_checkpoint == (
            f"{job.fine_tuned_model}:ckpt-step-{checkpoint.step_number}"
        )
        assert checkpoint.metrics.step == checkpoint.step_number
        assert checkpoint.metrics.train_loss is not None
        assert checkpoint.step_number == metrics[0].data["step"]
        assert checkpoint.metrics.valid_loss == pytest.approx(metrics[0].data["valid_loss"])

        chat = client.chat.completions.create(
            model=job.fine_tuned_model,
            messages=[{"role": "user", "content": "Which city is the capital of Nepal?"}],
            max_tokens=8,
            temperature=0,
        )
        assert chat.object == "chat.completion" and chat.model == job.fine_tuned_model
        assert chat.choices[0].message.role == "assistant"
        assert isinstance(chat.choices[0].message.content, str)
        assert chat.choices[0].finish_reason in ("stop", "length")
        assert chat.usage.completion_tokens <= 8
        assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

        assert job.fine_tuned_model in {m.id for m in client.models.list()}
        deleted = client.models.delete(job.fine_tuned_model)
        assert (deleted.id, deleted.deleted) == (job.fine_tuned_model, True)
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(job.fine_tuned_model)


def test_chat_and_completions_stream_chunks(client: openai.OpenAI) -> None:
    # Base models generate too, so this needs no training.
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        ],
        max_completion_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 6

    whole = client.completions.create(model="tiny-llama", prompt="Hello", max_tokens=4, seed=1)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert isinstance(whole.choices[0].text, str) and whole.usage.completion_tokens <= 4
    pieces = list(
        client.completions.create(model="tiny-llama", prompt="Hello", max_tokens=4, stream=True)
    )
    assert pieces and all(p.object == "text_completion" for p in pieces)

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="ft:tiny-llama:default::ftjob-000000000000000000000000",
            messages=[{"role": "user", "content": "hi"}],
        )
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert refused.value.param == "n"


TOOLS = [
    {
        "type": "function",
        "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
    }
]


def test_generation_refuses_what_it_does_not_serve(client: openai.OpenAI, rest: Stack) -> None:
    hi = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**hi, tools=TOOLS)
    assert refused.value.param == "tools" and refused.value.type == "invalid_request_error"
    assert "tools are not supported" in refused.value.message
    for given, param in [
        ({"tools": TOOLS, "tool_choice": "auto", "stream": True}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [TOOLS[0]["function"]]}, "functions"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"logit_bias": {"42": 10}}, "logit_bias"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"store": True}, "store"),
    ]:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**hi, **given)
        assert refused.value.param == param, given
        assert param in refused.value.message and "not supported" in refused.value.message
    tool_turn = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**{**hi, "messages": [*hi["messages"], tool_turn]})
    assert refused.value.param == "messages"

    # OpenAI's "none" is plain chat; values that change nothing are served as absent.
    chat = client.chat.completions.create(
        **hi,
        tools=TOOLS,
        tool_choice="none",
        parallel_tool_calls=False,
        logprobs=False,
        presence_penalty=0,
        frequency_penalty=0,
        logit_bias={},
        response_format={"type": "text"},
        modalities=["text"],
        n=1,
        user="someone",
        metadata={"k": "v"},
        temperature=0,
    )
    assert isinstance(chat.choices[0].message.content, str)
    assert chat.choices[0].message.tool_calls is None and chat.choices[0].logprobs is None

    for given, param in [
        ({"logprobs": 2}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"presence_penalty": 1}, "presence_penalty"),
    ]:
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(model="tiny-llama", prompt="Hi", max_tokens=4, **given)
        assert refused.value.param == param, given
    client.completions.create(model="tiny-llama", prompt="Hi", max_tokens=4, echo=False, best_of=1)

    # Every refusal at once, as elsewhere; the envelope names the first.
    with rest.http() as http:
        both = http.post("/v1/chat/completions", json={**hi, "tools": TOOLS, "logprobs": True})
    error = error_of(both)
    assert both.status_code == 400 and error["param"] == "tools"
    assert "tools:" in error["message"] and "logprobs:" in error["message"]


def test_files(client: openai.OpenAI, rest: Stack) -> None:
    data = chat_lines(10, "openai-files")
    older = client.files.create(file=("older.jsonl", chat_lines(10, "older")), purpose="fine-tune")
    uploaded = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    notes = client.files.create(file=("notes.txt", b"anything"), purpose="user_data")
    assert notes.purpose == "user_data" and notes.status == "processed"
    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).read() == data

    newest = client.files.list(limit=2)
    assert [f.id for f in newest.data] == [notes.id, uploaded.id] and newest.has_more
    assert newest.last_id == uploaded.id
    assert notes.id not in {f.id for f in client.files.list(purpose="fine-tune", limit=50)}
    oldest_first = [f.id for f in client.files.list(order="asc", limit=10_000)]
    assert oldest_first.index(uploaded.id) < oldest_first.index(notes.id)

    broken = client.files.create(
        file=("bad.jsonl", b'{"messages": []}\nnot json\n'), purpose="fine-tune"
    )
    assert broken.status == "error" and "Line 2 is not valid JSON" in broken.status_details

    with rest.http() as http:
        raw = http.get(f"/v1/files/{uploaded.id}").json()
    assert set(raw) == FILE_KEYS and raw["object"] == "file"

    for f in (older, uploaded, notes, broken):
        assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError) as wrong:
        client.files.create(file=("x.jsonl", data), purpose="batch")
    assert wrong.value.param == "purpose"


def test_job_shapes_and_steering(client: openai.OpenAI, rest: Stack) -> None:
    training = client.files.create(file=("t.jsonl", chat_lines(10, "shapes")), purpose="fine-tune")
    validation = client.files.create(
        file=("v.jsonl", chat_lines(10, "shapes-v")), purpose="fine-tune"
    )
    tag = os.urandom(4).hex()
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training.id,
        validation_file=validation.id,
        hyperparameters={"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5},
        seed=42,
        suffix="shapes",
        metadata={"suite": tag},
        integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["a"]}}],
        extra_headers={"Idempotency-Key": f"shapes-{tag}"},
    )
    assert job.status == "queued" and job.seed == 42 and job.user_provided_suffix == "shapes"
    assert job.hyperparameters.model_dump() == {
        "n_epochs": 3,
        "batch_size": "auto",
        "learning_rate_multiplier": 0.5,
    }
    assert job.method.type == "supervised"
    assert job.integrations[0].wandb.project == "p" and job.metadata == {"suite": tag}
    assert (job.fine_tuned_model, job.finished_at, job.error, job.trained_tokens) == (None,) * 4
    request = {
        "model": "tiny-llama",
        "training_file": training.id,
        "validation_file": validation.id,
        "hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5},
        "seed": 42,
        "suffix": "shapes",
        "metadata": {"suite": tag},
        "integrations": [{"type": "wandb", "wandb": {"project": "p", "tags": ["a"]}}],
    }
    again = client.fine_tuning.jobs.create(
        **request, extra_headers={"Idempotency-Key": f"shapes-{tag}"}
    )
    assert again.id == job.id
    # The same key with other parameters is refused, as Stripe refuses it.
    with pytest.raises(openai.BadRequestError) as reused:
        client.fine_tuning.jobs.create(
            **{**request, "suffix": "other"}, extra_headers={"Idempotency-Key": f"shapes-{tag}"}
        )
    assert reused.value.param == "request_id"
    assert "already used with other parameters" in reused.value.message

    with rest.http() as http:
        raw = http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    assert set(raw) == JOB_KEYS
    assert isinstance(raw["created_at"], int) and raw["validation_file"] == validation.id

    others = [
        client.fine_tuning.jobs.create(
            model="tiny-llama", training_file=training.id, metadata={"suite": tag}
        )
        for _ in range(2)
    ]
    listed = client.fine_tuning.jobs.list(metadata={"suite": tag}, limit=2)
    assert [j.id for j in listed.data] == [others[1].id, others[0].id] and listed.has_more
    paged = [j.id for j in client.fine_tuning.jobs.list(metadata={"suite": tag}, limit=1)]
    assert paged == [others[1].id, others[0].id, job.id]

    with pytest.raises(openai.BadRequestError) as not_running:
        client.fine_tuning.jobs.pause(job.id)
    assert "queued" in not_running.value.message
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(job.id)
    for other in others:
        client.fine_tuning.jobs.cancel(other.id)
    events = client.fine_tuning.jobs.list_events(job.id)
    states = [e.data["state"] for e in events.data if e.data and "state" in e.data]
    assert states == ["cancelled", "queued", "validating_files"]
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []

    # Tunewire's LoRA settings ride in OpenAI's hyperparameters (the SDK passes them on).
    lora = {"lora_rank": 64, "lora_alpha": 64, "lora_dropout": 0, "target_modules": "QKVO_FFN"}
    tuned = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training.id, hyperparameters=lora
    )
    client.fine_tuning.jobs.cancel(tuned.id)
    with rest.http() as http:
        native = http.get(f"/tunewire/v1/jobs/{tuned.id}").json()["hyperparameters"]
    assert native == {**lora, "target_modules": "TARGET_MODULES_QKVO_FFN"}
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=training.id,
            hyperparameters={"target_modules": "ALL"},
        )
    assert bad.value.param == "hyperparameters.target_modules"


def error_of(reply: Any) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_errors_use_the_openai_envelope(client: openai.OpenAI, rest: Stack) -> None:
    with rest.http(key=None) as anonymous:
        missing = anonymous.get("/v1/fine_tuning/jobs")
    assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
    with sdk(rest, key="tw-wrong") as stranger, pytest.raises(openai.AuthenticationError) as bad:
        stranger.models.list()
    assert bad.value.code == "invalid_api_key"

    with pytest.raises(openai.NotFoundError) as unknown:
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    assert unknown.value.type == "invalid_request_error"

    few = client.files.create(file=("few.jsonl", chat_lines(3, "few")), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as small:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=few.id)
    assert (small.value.param, small.value.code) == ("training_file", "invalid_n_examples")
    assert small.value.body["message"] == (
        "Training file has 3 example(s), but must have at least 10 examples"
    )

    enough = client.files.create(file=("ok.jsonl", chat_lines(10, "enough")), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as unknown_model:
        client.fine_tuning.jobs.create(model="gpt-nope", training_file=enough.id)
    assert unknown_model.value.param == "model"
    with pytest.raises(openai.BadRequestError) as out_of_range:
        client.fine_tuning.jobs.create(
            model="tiny-llama", training_file=enough.id, hyperparameters={"n_epochs": 0}
        )
    assert out_of_range.value.param == "hyperparameters.n_epochs"
    assert "out of range" in out_of_range.value.message

    with rest.http() as http:
        typo = http.post(
            "/v1/fine_tuning/jobs", json={"model": "m", "training_file": "f", "epochs": 2}
        )
        assert typo.status_code == 400 and error_of(typo)["param"] == "epochs"
        auto_typo = http.post(
            "/v1/fine_tuning/jobs",
            json={"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": "many"}},
        )
        assert error_of(auto_typo)["param"] == "hyperparameters.n_epochs"


def test_models(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert models["tiny-llama"].owned_by == "tunewire" and models["tiny-llama"].object == "model"
    assert client.models.retrieve("tiny-llama").id == "tiny-llama"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ft:tiny-llama:default::ftjob-000000000000000000000000")


def test_truefoundry_jobs_take_the_openai_shape(rest: Stack) -> None:
    with rest.http() as http:
        uploaded = http.post(
            "/v1/files",
            data={"purpose": "fine-tune"},
            files={"file": ("tf.jsonl", io.BytesIO(chat_lines(10, "truefoundry")))},
        ).json()
        body = {
            "model": "tiny-llama",
            "training_file": uploaded["id"],
            "hyperparameters": {"n_epochs": 1},
            "integrations": [],
            "metadata": {"team": "tf"},
            "method": {"type": "supervised"},
            "seed": 123,
            "suffix": "tf",
        }
        created = http.post(
            "/api/llm/fine_tuning/jobs", json=body, headers={"x-tfy-metadata": "anything"}
        )
        assert created.status_code == 200, created.text
        job = created.json()
        assert set(job) == JOB_KEYS and job["object"] == "fine_tuning.job"
        assert (job["status"], job["seed"], job["metadata"]) == ("queued", 123, {"team": "tf"})
        listed = http.get("/api/llm/fine_tuning/jobs", params={"metadata[team]": "tf"}).json()
        assert job["id"] in [j["id"] for j in listed["data"]]
        assert (
            http.post(f"/api/llm/fine_tuning/jobs/{job['id']}/cancel").json()["status"]
            == "cancelled"
        )
        missing = http.get("/api/llm/fine_tuning/jobs/ftjob-nope")
        assert missing.status_code == 404 and error_of(missing)["code"] is None  # as OpenAI's


def test_truefoundry_serves_files_for_the_openai_sdk(rest: Stack) -> None:
    # TrueFoundry's clients are OpenAI's SDK with base_url ".../api/llm": it uploads to
    # /api/llm/files, then creates the job with that file under the same prefix.
    with openai.OpenAI(base_url=f"{rest.url}/api/llm", api_key=rest.key, max_retries=0) as tf:
        data = chat_lines(10, "truefoundry-sdk")
        uploaded = tf.files.create(file=("tf-sdk.jsonl", data), purpose="fine-tune")
        assert (uploaded.object, uploaded.status, uploaded.bytes) == (
            "file",
            "processed",
            len(data),
        )
        assert tf.files.retrieve(uploaded.id) == uploaded
        assert tf.files.content(uploaded.id).read() == data
        assert tf.files.list(limit=1).data[0].id == uploaded.id  # newest first

        job = tf.fine_tuning.jobs.create(
            model="tiny-llama", training_file=uploaded.id, suffix="tf-sdk"
        )
        assert job.training_file == uploaded.id and job.status in ("validating_files", "queued")
        assert tf.fine_tuning.jobs.cancel(job.id).status == "cancelled"

        # One set of files, whichever surface uploaded them.
        with sdk(rest) as client:
            assert client.files.retrieve(uploaded.id) == uploaded
        notes = tf.files.create(file=("notes.txt", b"anything"), purpose="user_data")
        assert tf.files.delete(notes.id).deleted
        with pytest.raises(openai.NotFoundError):
            tf.files.retrieve(notes.id)
