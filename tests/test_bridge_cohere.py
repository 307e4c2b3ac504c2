"""Cohere's fine-tuning API on the bridge (`/cohere/v1`, and v2's chat), through the
official `cohere` SDK with `base_url`: datasets (with evaluation data, Cohere's chat
roles), a finetuned model from creation to deletion, pausing and resuming one by its
status, and chatting with it through both versions of Cohere's chat."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import cohere
import httpx
import pytest
from cohere.finetuning import (
    BaseModel,
    FinetunedModel,
    Hyperparameters,
    Settings,
    WandbConfig,
)
from test_bridge import Stack, sse_events

from bench import intents

# The `rest` and `live` stacks (one each per session).
pytest_plugins = ["test_bridge"]


def cohere_rows(n: int, tag: str) -> bytes:
    return b"".join(
        json.dumps(
            {
                "messages": [
                    {"role": "System", "content": "You answer in one word."},
                    {"role": "User", "content": f"Question {i} about {tag}?"},
                    {"role": "Chatbot", "content": f"Answer{i}"},
                ]
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


@pytest.fixture
def transport() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def sdk(stack: Stack, transport: httpx.Client, key: str | None = None) -> cohere.Client:
    return cohere.Client(
        api_key=key or stack.key, base_url=f"{stack.url}/cohere", httpx_client=transport
    )


def test_cohere_sdk_datasets_and_fine_tuning(live: Stack, transport: httpx.Client) -> None:
    co = sdk(live, transport)
    created = co.datasets.create(
        name="support-chats",
        type="chat-finetune-input",
        data=("train.jsonl", cohere_rows(12, "train")),
        eval_data=("eval.jsonl", cohere_rows(10, "eval")),
    )
    dataset = co.wait(created).dataset  # the SDK's poll until validated
    assert (dataset.id, dataset.name, dataset.dataset_type) == (
        created.id,
        "support-chats",
        "chat-finetune-input",
    )
    assert dataset.validation_status == "validated" and dataset.validation_error is None
    assert [(p.index, p.num_rows) for p in dataset.dataset_parts] == [(0, 12), (1, 10)]
    listed = co.datasets.list(limit=100).datasets
    assert created.id in [d.id for d in listed]
    # The evaluation file shows inside its dataset, not as one of its own.
    assert dataset.dataset_parts[1].id not in [d.id for d in listed]

    model = co.finetuning.create_finetuned_model(
        request=FinetunedModel(
            name="support bot",
            settings=Settings(
                base_model=BaseModel(base_type="BASE_TYPE_CHAT"),
                dataset_id=created.id,
                hyperparameters=Hyperparameters(
                    train_epochs=1,
                    learning_rate=1e-4,
                    lora_rank=4,
                    lora_target_modules="LORA_TARGET_MODULES_QKVO",
                ),
                wandb=WandbConfig(project="support", api_key="never-stored"),
            ),
        )
    ).finetuned_model
    assert model.status == "STATUS_QUEUED" and model.name == "support bot"
    assert model.creator_id and model.creator_id.startswith("key-")  # the caller's key
    assert model.settings.base_model.base_type == "BASE_TYPE_CHAT"
    assert model.settings.dataset_id == created.id
    assert model.settings.base_model.name == "tiny-llama"  # the server's default
    chosen = model.settings.hyperparameters
    assert (chosen.train_epochs, chosen.lora_rank) == (1, 4)
    assert chosen.lora_target_modules == "LORA_TARGET_MODULES_QKVO"
    assert chosen.learning_rate == pytest.approx(1e-4)
    assert model.settings.wandb.project == "support" and not model.settings.wandb.api_key

    page = co.finetuning.list_finetuned_models(page_size=1, order_by="created_at desc")
    assert [m.id for m in page.finetuned_models] == [model.id]
    assert page.total_size >= 1

    deadline = time.monotonic() + 120
    while (current := co.finetuning.get_finetuned_model(model.id).finetuned_model).status in (
        "STATUS_QUEUED",
        "STATUS_FINETUNING",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert current.status == "STATUS_READY"
    assert current.completed_at and current.completed_at >= current.created_at
    assert isinstance(current.settings.hyperparameters.train_batch_size, int)  # resolved

    events = co.finetuning.list_events(model.id).events
    assert [e.status for e in events] == ["STATUS_READY", "STATUS_FINETUNING", "STATUS_QUEUED"]
    oldest_first = co.finetuning.list_events(model.id, order_by="created_at").events
    assert [e.status for e in oldest_first] == [e.status for e in reversed(events)]

    steps = co.finetuning.list_training_step_metrics(model.id, page_size=2)
    first = [s.step_number for s in steps.step_metrics]
    assert len(first) == 2 and first[0] > first[1] and steps.next_page_token  # newest first
    assert "train_loss" in steps.step_metrics[0].metrics
    later = co.finetuning.list_training_step_metrics(
        model.id, page_size=2, page_token=steps.next_page_token
    )
    assert later.step_metrics and later.step_metrics[0].step_number < first[1]

    # PATCH: repeating the settings is accepted; changing them is refused.
    same = co.finetuning.update_finetuned_model(
        model.id, name="support bot", settings=current.settings
    )
    assert same.finetuned_model.id == model.id
    moved = current.settings.model_copy(update={"dataset_id": dataset.dataset_parts[0].id})
    with pytest.raises(cohere.BadRequestError) as immutable:
        co.finetuning.update_finetuned_model(model.id, name="support bot", settings=moved)
    assert "settings.dataset_id" in immutable.value.body["message"]
    renamed = co.finetuning.update_finetuned_model(
        model.id, name="renamed", settings=current.settings
    )
    assert renamed.finetuned_model.name == "renamed"
    assert co.finetuning.get_finetuned_model(model.id).finetuned_model.name == "renamed"

    assert co.finetuning.delete_finetuned_model(model.id) == {}
    with pytest.raises(cohere.NotFoundError):
        co.finetuning.get_finetuned_model(model.id)
    co.datasets.delete(created.id)
    with pytest.raises(cohere.NotFoundError):
        co.datasets.get(created.id)


def test_cohere_errors(rest: Stack, transport: httpx.Client) -> None:
    with pytest.raises(cohere.UnauthorizedError) as refused:
        sdk(rest, transport, key="tw-wrong").finetuning.list_finetuned_models()
    assert refused.value.body == {"message": "invalid or revoked API key"}
    co = sdk(rest, transport)
    with pytest.raises(cohere.NotFoundError):
        co.finetuning.get_finetuned_model("ftjob-nope")
    with pytest.raises(cohere.BadRequestError) as wrong_type:
        co.datasets.create(name="x", type="embed-input", data=("d.jsonl", cohere_rows(10, "x")))
    assert "chat-finetune-input" in wrong_type.value.body["message"]
    few = co.datasets.create(
        name="few", type="chat-finetune-input", data=("d.jsonl", cohere_rows(3, "few"))
    )
    with pytest.raises(cohere.BadRequestError) as small:
        co.finetuning.create_finetuned_model(
            request=FinetunedModel(
                name="small",
                settings=Settings(
                    base_model=BaseModel(base_type="BASE_TYPE_CHAT"), dataset_id=few.id
                ),
            )
        )
    assert small.value.body["message"].startswith("settings.dataset_id: Training file has 3")
    broken = co.datasets.create(
        name="broken",
        type="chat-finetune-input",
        data=("d.jsonl", b'{"messages": [{"role": "Robot", "content": "x"}]}\n'),
    )
    status = co.datasets.get(broken.id).dataset
    assert status.validation_status == "failed" and "line 1" in status.validation_error.lower()
    for made in (few, broken):
        co.datasets.delete(made.id)


# --- a generative fine-tune: status, chat, rename, delete ----------------------------------

ONGOING = ("STATUS_QUEUED", "STATUS_FINETUNING")


def wait_status(co: cohere.Client, model_id: str, leaving: tuple[str, ...]) -> FinetunedModel:
    """The model once its status is none of `leaving`."""
    deadline = time.monotonic() + 180
    while (current := co.finetuning.get_finetuned_model(model_id).finetuned_model).status in (
        leaving
    ):
        assert time.monotonic() < deadline, current.status
        time.sleep(0.1)
    return current


def set_status(co: cohere.Client, model: FinetunedModel, status: str) -> FinetunedModel:
    """PATCH with a status: this SDK's update takes only a name and settings, so the
    status goes as an extra body field, as Cohere's API reference has it."""
    return co.finetuning.update_finetuned_model(
        model.id,
        name=model.name,
        settings=model.settings,
        request_options={"additional_body_parameters": {"status": status}},
    ).finetuned_model


@pytest.fixture(scope="module")
def generative(live: Stack) -> Iterator[tuple[cohere.Client, FinetunedModel]]:
    """One BASE_TYPE_GENERATIVE fine-tune for the tests below, created once: 3 epochs of
    60 rows at batch 1, long enough for a pause to land mid-run."""
    with httpx.Client(timeout=60) as transport:
        co = sdk(live, transport)
        data = co.datasets.create(
            name="generative", type="chat-finetune-input", data=("t.jsonl", cohere_rows(60, "g"))
        )
        co.wait(data)
        model = co.finetuning.create_finetuned_model(
            request=FinetunedModel(
                name="writer",
                settings=Settings(
                    base_model=BaseModel(base_type="BASE_TYPE_GENERATIVE"),
                    dataset_id=data.id,
                    hyperparameters=Hyperparameters(train_epochs=3, train_batch_size=1),
                ),
            )
        ).finetuned_model
        yield co, model
        with contextlib.suppress(cohere.NotFoundError):  # the last test deletes it
            co.finetuning.delete_finetuned_model(model.id)
        co.datasets.delete(data.id)


@pytest.fixture(scope="module")
def trained(generative: tuple[cohere.Client, FinetunedModel]) -> FinetunedModel:
    """The generative fine-tune once ready (resumed if a failed test left it paused)."""
    co, model = generative
    current = wait_status(co, model.id, ONGOING)
    if current.status == "STATUS_PAUSED":
        set_status(co, current, "STATUS_READY")
        current = wait_status(co, model.id, ONGOING)
    assert current.status == "STATUS_READY"
    return current


def test_cohere_status_pauses_and_resumes(
    generative: tuple[cohere.Client, FinetunedModel],
) -> None:
    co, model = generative
    # The base type comes back as asked (chat and generative train alike here).
    assert model.settings.base_model.base_type == "BASE_TYPE_GENERATIVE"
    assert model.creator_id and model.creator_id.startswith("key-")
    # Only pausing and resuming are changes a status can ask for.
    running = wait_status(co, model.id, ("STATUS_QUEUED",))
    assert running.status == "STATUS_FINETUNING", running.status
    for refused in ("STATUS_FAILED", "STATUS_DELETED", "STATUS_DEPLOYING_API"):
        with pytest.raises(cohere.BadRequestError) as wrong:
            set_status(co, running, refused)
        assert wrong.value.body["message"].startswith("status: "), wrong.value.body
    pausing = set_status(co, running, "STATUS_PAUSED")
    assert pausing.status in ("STATUS_FINETUNING", "STATUS_PAUSED")  # at its next step
    paused = wait_status(co, model.id, ("STATUS_FINETUNING",))
    assert paused.status == "STATUS_PAUSED"
    assert paused.updated_at > model.updated_at  # a change of state is an update
    assert set_status(co, paused, "STATUS_PAUSED").status == "STATUS_PAUSED"  # no change
    events = co.finetuning.list_events(model.id, order_by="created_at").events
    assert [e.status for e in events][-2:] == ["STATUS_FINETUNING", "STATUS_PAUSED"]

    resumed = set_status(co, paused, "STATUS_READY")
    assert resumed.status in ONGOING
    done = wait_status(co, model.id, ONGOING)
    assert done.status == "STATUS_READY"
    events = co.finetuning.list_events(model.id, order_by="created_at").events
    assert [e.status for e in events] == [
        "STATUS_QUEUED",
        "STATUS_FINETUNING",
        "STATUS_PAUSED",
        "STATUS_QUEUED",
        "STATUS_FINETUNING",
        "STATUS_READY",
    ]
    with pytest.raises(cohere.BadRequestError) as ready:
        set_status(co, done, "STATUS_PAUSED")
    assert "succeeded" in ready.value.body["message"]


PROMPT = "Question 7 about g?"
PREAMBLE = "You answer in one word."


def test_cohere_chat_v1_and_v2(
    live: Stack, transport: httpx.Client, trained: FinetunedModel
) -> None:
    """The fine-tune answers Cohere's v1 and v2 chat, whole and streamed, by its id;
    greedy, the same conversation gets the same text from every form."""
    co = sdk(live, transport)
    co2 = cohere.ClientV2(api_key=live.key, base_url=f"{live.url}/cohere", httpx_client=transport)
    greedy = {"temperature": 0, "max_tokens": 12, "seed": 1}
    reply = co.chat(model=trained.id, message=PROMPT, preamble=PREAMBLE, **greedy)
    assert reply.text and reply.generation_id and reply.response_id
    assert reply.finish_reason in ("COMPLETE", "MAX_TOKENS")
    tokens = reply.meta.tokens
    assert tokens.input_tokens > 0 and 0 < tokens.output_tokens <= 12
    assert reply.meta.billed_units.output_tokens == tokens.output_tokens
    assert [(m.role, m.message) for m in reply.chat_history] == [
        ("SYSTEM", PREAMBLE),
        ("USER", PROMPT),
        ("CHATBOT", reply.text),
    ]
    # With Cohere's `-ft` spelling too, and a history instead of a preamble.
    again = co.chat(
        model=trained.id + "-ft",
        message=PROMPT,
        chat_history=[{"role": "SYSTEM", "message": PREAMBLE}],
        **greedy,
    )
    assert again.text == reply.text

    events = list(co.chat_stream(model=trained.id, message=PROMPT, preamble=PREAMBLE, **greedy))
    kinds = [e.event_type for e in events]
    assert kinds[0] == "stream-start" and kinds[-1] == "stream-end"
    assert set(kinds[1:-1]) == {"text-generation"}
    assert events[0].generation_id
    streamed = "".join(e.text for e in events[1:-1])
    assert streamed == events[-1].response.text == reply.text
    assert events[-1].finish_reason == reply.finish_reason
    # The same events as server-sent events, for a client that asks with `Accepts`.
    with transport.stream(
        "POST",
        f"{live.url}/cohere/v1/chat",
        headers={"Authorization": f"Bearer {live.key}", "Accepts": "text/event-stream"},
        json={"model": trained.id, "message": PROMPT, "preamble": PREAMBLE, "stream": True}
        | greedy,
    ) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        sent = [e for e in sse_events(raw) if "data" in e]
    assert [e["event"] for e in sent] == kinds
    assert [json.loads(e["data"])["event_type"] for e in sent] == kinds
    assert json.loads(sent[-1]["data"])["response"]["text"] == reply.text

    messages = [{"role": "system", "content": PREAMBLE}, {"role": "user", "content": PROMPT}]
    answer = co2.chat(model=trained.id, messages=messages, **greedy)
    assert answer.id and answer.message.role == "assistant"
    assert [(c.type, c.text) for c in answer.message.content] == [("text", reply.text)]
    assert answer.finish_reason == reply.finish_reason
    assert answer.usage.tokens.output_tokens == tokens.output_tokens

    events2 = list(co2.chat_stream(model=trained.id, messages=messages, **greedy))
    kinds = [e.type for e in events2]
    assert kinds[:2] == ["message-start", "content-start"]
    assert kinds[-2:] == ["content-end", "message-end"]
    assert set(kinds[2:-2]) == {"content-delta"}
    assert events2[0].delta.message.role == "assistant"
    text = "".join(e.delta.message.content.text for e in events2[2:-2])
    assert text == reply.text
    end = events2[-1].delta
    assert end.finish_reason == reply.finish_reason
    assert end.usage.tokens.output_tokens == tokens.output_tokens

    # What cannot be honoured is refused, naming the field; unknown models are 404.
    with pytest.raises(cohere.BadRequestError) as unsupported:
        co2.chat(model=trained.id, messages=messages, k=5, documents=["a doc"])
    assert unsupported.value.body["message"].startswith("k: "), unsupported.value.body
    assert "documents: " in unsupported.value.body["message"]
    with pytest.raises(cohere.NotFoundError):
        co.chat(model="ftjob-" + "0" * 24, message=PROMPT)


def test_cohere_rename_updates_and_delete_removes(
    live: Stack, transport: httpx.Client, trained: FinetunedModel
) -> None:
    co = sdk(live, transport)
    before = co.finetuning.get_finetuned_model(trained.id).finetuned_model
    renamed = co.finetuning.update_finetuned_model(
        trained.id, name="writer v2", settings=before.settings
    ).finetuned_model
    assert renamed.name == "writer v2" and renamed.updated_at > before.updated_at
    kept = co.finetuning.get_finetuned_model(trained.id).finetuned_model
    assert (kept.name, kept.updated_at) == ("writer v2", renamed.updated_at)
    assert kept.settings.base_model.base_type == "BASE_TYPE_GENERATIVE"  # still as asked
    chat = before.settings.model_copy(
        update={
            "base_model": before.settings.base_model.model_copy(
                update={"base_type": "BASE_TYPE_CHAT"}
            )
        }
    )
    with pytest.raises(cohere.BadRequestError) as retyped:
        co.finetuning.update_finetuned_model(trained.id, name="writer v2", settings=chat)
    assert "settings.base_model.base_type" in retyped.value.body["message"]

    total = co.finetuning.list_finetuned_models(page_size=1).total_size
    assert co.finetuning.delete_finetuned_model(trained.id) == {}
    listed = co.finetuning.list_finetuned_models(page_size=1000)
    assert trained.id not in [m.id for m in listed.finetuned_models]
    assert listed.total_size == total - 1
    for gone in (
        lambda: co.finetuning.get_finetuned_model(trained.id),
        lambda: co.finetuning.list_events(trained.id),
        lambda: co.finetuning.delete_finetuned_model(trained.id),
        lambda: co.chat(model=trained.id, message=PROMPT),
    ):
        with pytest.raises(cohere.NotFoundError):
            gone()


# --- classification ------------------------------------------------------------------------


def intent_rows(n: int, seed: int, multi: bool = False) -> bytes:
    rows = intents.multi_label(n, seed) if multi else intents.single_label(n, seed)
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def test_cohere_sdk_classification(live: Stack, transport: httpx.Client) -> None:
    """Cohere's classify fine-tuning flow, unchanged: a single-label dataset, a
    BASE_TYPE_CLASSIFICATION model on the real MiniLM, wait, classify."""
    co = sdk(live, transport)
    created = co.datasets.create(
        name="intents",
        type="single-label-classification-finetune-input",
        data=("train.jsonl", intent_rows(24, seed=1)),
        eval_data=("eval.jsonl", intent_rows(8, seed=2)),
    )
    dataset = co.wait(created).dataset
    assert dataset.dataset_type == "single-label-classification-finetune-input"
    assert dataset.validation_status == "validated", dataset.validation_error
    model = co.finetuning.create_finetuned_model(
        request=FinetunedModel(
            name="intent classifier",
            settings=Settings(
                base_model=BaseModel(base_type="BASE_TYPE_CLASSIFICATION"),
                dataset_id=created.id,
                hyperparameters=Hyperparameters(
                    train_epochs=1, train_batch_size=8, learning_rate=1e-3
                ),
            ),
        )
    ).finetuned_model
    assert model.settings.base_model.base_type == "BASE_TYPE_CLASSIFICATION"
    assert model.settings.base_model.name == "all-MiniLM-L6-v2"
    assert model.settings.multi_label is False

    deadline = time.monotonic() + 180
    while (current := co.finetuning.get_finetuned_model(model.id).finetuned_model).status in (
        "STATUS_QUEUED",
        "STATUS_FINETUNING",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert current.status == "STATUS_READY"
    listed = co.finetuning.list_finetuned_models(page_size=100).finetuned_models
    mine = next(m for m in listed if m.id == model.id)
    assert mine.settings.base_model.base_type == "BASE_TYPE_CLASSIFICATION"

    texts = ["please don't end my plan, just pause it", "I'd rather upgrade it than close it"]
    for name in (model.id + "-ft", model.id):  # Cohere's guide calls it with "-ft"
        response = co.classify(inputs=texts, model=name)
        assert [c.input for c in response.classifications] == texts
        for found in response.classifications:
            assert found.classification_type == "single-label"
            assert found.prediction in intents.LABELS and found.predictions == [found.prediction]
            assert sorted(found.labels) == intents.LABELS
            assert found.confidence == pytest.approx(found.labels[found.prediction].confidence)
            assert sum(v.confidence for v in found.labels.values()) == pytest.approx(1, abs=1e-5)
            assert found.confidence == max(v.confidence for v in found.labels.values())

    # PATCH: the same settings are accepted; another base type is refused.
    same = co.finetuning.update_finetuned_model(
        model.id, name="intents v2", settings=current.settings
    )
    assert same.finetuned_model.name == "intents v2"
    chat = current.settings.model_copy(
        update={
            "base_model": BaseModel(
                name=current.settings.base_model.name, base_type="BASE_TYPE_CHAT"
            )
        }
    )
    with pytest.raises(cohere.BadRequestError) as immutable:
        co.finetuning.update_finetuned_model(model.id, name="intents v2", settings=chat)
    assert "settings.base_model.base_type" in immutable.value.body["message"]

    assert co.finetuning.delete_finetuned_model(model.id) == {}
    with pytest.raises(cohere.NotFoundError):
        co.classify(inputs=texts, model=model.id)
    co.datasets.delete(created.id)


def test_cohere_classification_data_errors(rest: Stack, transport: httpx.Client) -> None:
    """Each problem names its part and line; a dataset of the wrong type is not kept."""
    co = sdk(rest, transport)
    multi = co.datasets.create(
        name="topics",
        type="multi-label-classification-finetune-input",
        data=("train.jsonl", intent_rows(12, seed=3, multi=True)),
    )
    dataset = co.datasets.get(multi.id).dataset
    assert dataset.dataset_type == "multi-label-classification-finetune-input"
    assert dataset.validation_status == "validated", dataset.validation_error

    with pytest.raises(cohere.BadRequestError) as wrong:
        co.datasets.create(
            name="wrong",
            type="single-label-classification-finetune-input",
            data=("train.jsonl", intent_rows(12, seed=3, multi=True)),
        )
    message = wrong.value.body["message"]
    assert "a list of labels per example (line 1)" in message
    assert "multi-label-classification-finetune-input" in message
    with pytest.raises(cohere.BadRequestError) as chat:
        co.datasets.create(
            name="chat", type="chat-finetune-input", data=("t.jsonl", intent_rows(12, 4))
        )
    assert "single-label-classification-finetune-input" in chat.value.body["message"]

    one = b"".join(
        json.dumps({"text": f"text {i}", "label": "spam"}).encode() + b"\n" for i in range(12)
    )
    single = co.datasets.create(
        name="one", type="single-label-classification-finetune-input", data=("t.jsonl", one)
    )
    status = co.datasets.get(single.id).dataset
    assert status.validation_status == "failed"
    assert "'spam' (first on line 1)" in status.validation_error

    unknown = intent_rows(2, seed=5) + b'{"text": "where is my refund", "label": "refund"}\n'
    paired = co.datasets.create(
        name="paired",
        type="single-label-classification-finetune-input",
        data=("t.jsonl", intent_rows(12, seed=6)),
        eval_data=("e.jsonl", unknown),
    )
    status = co.datasets.get(paired.id).dataset
    assert status.validation_status == "failed"
    assert "eval_data line 3: label 'refund' is not a label of the training file" in (
        status.validation_error
    )
    broken = co.datasets.create(
        name="broken",
        type="single-label-classification-finetune-input",
        data=("t.jsonl", b'{"text": "a", "label": "x"}\n{"text": "", "label": ["y"]}\n'),
    )
    status = co.datasets.get(broken.id).dataset
    assert status.validation_status == "failed" and "line 2" in status.validation_error.lower()

    with pytest.raises(cohere.BadRequestError) as examples:
        co.classify(inputs=["x"], examples=[{"text": "a", "label": "b"}], model="m")
    assert "examples" in examples.value.body["message"]
    for made in (multi, single, paired, broken):
        co.datasets.delete(made.id)
