"""Cohere's fine-tuning API on the bridge (`/cohere/v1`), through the official
`cohere` SDK with `base_url`: datasets (with evaluation data, Cohere's chat
roles), and a finetuned model from creation to deletion."""

from __future__ import annotations

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
from test_bridge import Stack

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
    assert co.finetuning.get_finetuned_model(model.id).finetuned_model.status == "STATUS_DELETED"
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
    assert status.validation_status == "failed" and "line 1" in status.validation_error
    for made in (few, broken):
        co.datasets.delete(made.id)


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
    assert status.validation_status == "failed" and "line 2" in status.validation_error

    with pytest.raises(cohere.BadRequestError) as examples:
        co.classify(inputs=["x"], examples=[{"text": "a", "label": "b"}], model="m")
    assert "examples" in examples.value.body["message"]
    for made in (multi, single, paired, broken):
        co.datasets.delete(made.id)
