"""The LoRA recipe end to end on tiny-llama (CPU, a few steps per run): checkpoint files,
exact reruns and resumes, pause and cancel, early stopping, learning."""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from trainer import checkpoints, data, models
from trainer.args import TrainArgs
from trainer.recipe import Callbacks, Command, RunInfo, TrainResult, train

ASSETS = resources.files("trainer") / "assets"


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    lines = (ASSETS / "sample-chat.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (root / "train.jsonl").write_text("".join(lines[:16]), encoding="utf-8")
    (root / "learnable.jsonl").write_text("".join(lines[:8]), encoding="utf-8")
    (root / "valid.jsonl").write_text(
        (ASSETS / "sample-chat-valid.jsonl").read_text(encoding="utf-8"), encoding="utf-8"
    )
    return {path.stem: path for path in root.iterdir()}


@dataclass
class Recorder:
    """Keeps what the callbacks saw; `commands` scripts control()'s answers."""

    commands: Iterator[Command] = field(default_factory=lambda: itertools.repeat("continue"))
    starts: list[RunInfo] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_start=self.starts.append,
            on_metrics=lambda **values: self.metrics.append(values),
            on_event=lambda level, message, data: self.events.append((level, message, data)),
            on_validation=lambda **values: self.validations.append(values),
            on_checkpoint=self.on_checkpoint,
            control=lambda: next(self.commands),
        )

    def on_checkpoint(self, **values: Any) -> None:
        # The directory must be complete when announced.
        names = {path.name for path in values["path"].iterdir()}
        assert names == set(checkpoints.CHECKPOINT_FILES)
        self.checkpoints.append(values)

    @property
    def losses(self) -> list[float]:
        return [values["train_loss"] for values in self.metrics]


# 16 examples, micro-batches of 2, 2 micro-batches per step: 4 steps per epoch, 8 in all.
# Dropout on, so exact reruns and resumes also prove the RNG state is restored.
def make_args(tiny: Path, files: dict[str, Path], output_dir: Path, **overrides: Any) -> TrainArgs:
    values: dict[str, Any] = {
        "base_model": str(tiny),
        "train_file": str(files["train"]),
        "validation_file": str(files["valid"]),
        "output_dir": str(output_dir),
        "n_epochs": 2,
        "batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate_multiplier": 10,
        "lora_dropout": 0.1,
        "seed": 3,
        "checkpoint_every_steps": 2,
        "keep_checkpoints": 10,
        "deterministic": True,
    }
    return TrainArgs(**{**values, **overrides})


def run(args: TrainArgs, commands: list[Command] | None = None) -> tuple[TrainResult, Recorder]:
    recorder = Recorder()
    if commands is not None:
        recorder.commands = itertools.chain(commands, itertools.repeat("continue"))
    return train(args, recorder.callbacks()), recorder


@pytest.fixture(scope="module")
def baseline(
    tiny: Path, files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, Recorder]:
    """One uninterrupted run that the other tests compare against."""
    return run(make_args(tiny, files, tmp_path_factory.mktemp("baseline")))


def test_run_reports_through_callbacks(baseline: tuple[TrainResult, Recorder]) -> None:
    result, recorder = baseline
    assert (result.status, result.early_stopped, result.steps, result.total_steps) == (
        "succeeded",
        False,
        8,
        8,
    )
    [info] = recorder.starts
    assert (info.total_steps, info.steps_per_epoch, info.n_examples) == (8, 4, 16)
    assert info.device == "cpu"
    assert (info.hyperparameters.batch_size, info.hyperparameters.learning_rate) == (2, 2e-3)
    assert [values["step"] for values in recorder.metrics] == list(range(1, 9))
    assert all(values["learning_rate"] > 0 for values in recorder.metrics)
    assert recorder.metrics[-1]["tokens_trained"] == result.trained_tokens == 2 * info.n_tokens
    assert [values["step"] for values in recorder.validations] == [2, 4, 6, 8]
    assert [values["step"] for values in recorder.checkpoints] == [2, 4, 6, 8]
    assert [values["epoch"] for values in recorder.checkpoints] == [0.5, 1.0, 1.5, 2.0]
    # Its one event: the first example as the model trains on it (trainer.template_check).
    [(level, _, shown)] = recorder.events
    assert level == "info" and shown["rendered"].count("«") == 1


def test_checkpoint_files(baseline: tuple[TrainResult, Recorder]) -> None:
    result, _ = baseline
    root = result.last_checkpoint.parent
    assert sorted(path.name for path in root.iterdir()) == [
        "step-000002",
        "step-000004",
        "step-000006",
        "step-000008",
    ]
    for path in root.iterdir():
        assert sorted(p.name for p in path.iterdir()) == sorted(checkpoints.CHECKPOINT_FILES)

    mid_epoch = json.loads((root / "step-000006" / "trainer_state.json").read_text())
    assert mid_epoch["step"] == 6
    assert mid_epoch["epoch"] == 1.5
    assert mid_epoch["data_position"] == {"epoch": 1, "batch": 2}
    assert set(mid_epoch["metrics"]) == {
        "step",
        "train_loss",
        "train_mean_token_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    }
    state = torch.load(root / "step-000006" / "state.pt", weights_only=True)
    assert set(state) == {"optimizer", "scheduler", "rng"}
    assert state["scheduler"]["last_epoch"] == 6

    weights = load_file(root / "step-000006" / "adapter_model.safetensors")
    assert {name: tuple(tensor.shape) for name, tensor in weights.items()} == {
        f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_{ab}.weight": shape
        for layer in (0, 1)
        for proj, out in (("q_proj", 64), ("v_proj", 32))
        for ab, shape in (("A", (8, 64)), ("B", (out, 8)))
    }
    config = json.loads((root / "step-000006" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (8, 16, "LORA")
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]

    assert sorted(path.name for path in result.adapter_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert sorted(path.name for path in result.adapter_dir.parent.iterdir()) == [
        "adapter",
        "checkpoints",
        "metrics.csv",
    ]


# peft 0.21 probes transformers' deprecated `is_gradient_checkpointing`.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")
def test_adapter_loads_with_peft_and_merges(
    baseline: tuple[TrainResult, Recorder], tiny: Path
) -> None:
    result, _ = baseline
    final = load_file(result.adapter_dir / "adapter_model.safetensors")
    last = load_file(result.last_checkpoint / "adapter_model.safetensors")
    assert all(torch.equal(final[name], last[name]) for name in final)

    input_ids = torch.tensor([[0, 3, 300, 301, 302, 1]])
    base_logits = models.load_causal_lm(tiny, torch.float32)(input_ids).logits
    base = models.load_causal_lm(tiny, torch.float32)
    model = PeftModel.from_pretrained(base, result.adapter_dir)
    adapted = model(input_ids).logits
    merged = model.merge_and_unload()(input_ids).logits
    assert not torch.allclose(adapted, base_logits, atol=1e-3)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


def test_metrics_csv(baseline: tuple[TrainResult, Recorder]) -> None:
    result, recorder = baseline
    with result.metrics_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    ]
    assert [int(row["step"]) for row in rows] == list(range(1, 9))
    assert [float(row["train_loss"]) for row in rows] == pytest.approx(recorder.losses, abs=1e-6)
    assert [int(row["step"]) for row in rows if row["valid_loss"]] == [2, 4, 6, 8]


def test_same_seed_same_losses(
    baseline: tuple[TrainResult, Recorder], tiny: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    _, first = baseline
    _, again = run(make_args(tiny, files, tmp_path / "again"))
    assert again.losses == first.losses
    assert again.validations == first.validations
    _, other = run(make_args(tiny, files, tmp_path / "other", seed=4))
    assert other.losses != first.losses


def test_gradient_checkpointing_trains_the_same_run(
    baseline: tuple[TrainResult, Recorder], tiny: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    """Activations recomputed in backward, for memory: the same losses, within rounding
    (dropout's masks are replayed by torch's checkpoint, so they match too)."""
    _, first = baseline
    _, checkpointed = run(make_args(tiny, files, tmp_path / "gc", gradient_checkpointing=True))
    assert checkpointed.losses == pytest.approx(first.losses, rel=1e-5)
    valid = [[v["valid_loss"] for v in run.validations] for run in (checkpointed, first)]
    assert valid[0] == pytest.approx(valid[1], rel=1e-5)


def test_resume_from_mid_run_checkpoint_continues_exactly(
    baseline: tuple[TrainResult, Recorder], tiny: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    result, first = baseline
    checkpoint = result.last_checkpoint.parent / "step-000006"  # mid-epoch 2
    resumed, recorder = run(make_args(tiny, files, tmp_path, resume_from=str(checkpoint)))
    assert recorder.starts[0].resumed_from_step == 6
    assert [values["step"] for values in recorder.metrics] == [7, 8]
    assert recorder.losses == first.losses[6:]
    assert resumed.final_metrics == result.final_metrics
    assert resumed.trained_tokens == result.trained_tokens
    assert resumed.metrics_csv.read_text() == result.metrics_csv.read_text()
    final = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    expected = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(final[name], expected[name]) for name in expected)


def test_resume_refuses_other_data(
    baseline: tuple[TrainResult, Recorder], tiny: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = baseline[0].last_checkpoint
    args = make_args(
        tiny, files, tmp_path, train_file=str(files["learnable"]), resume_from=str(checkpoint)
    )
    with pytest.raises(ValueError, match="trained on other data"):
        train(args)


def test_pause_writes_a_checkpoint_to_resume_from(
    baseline: tuple[TrainResult, Recorder], tiny: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    _, first = baseline
    # control() is polled before each step: the 4th answer comes after 3 steps.
    paused, before = run(
        make_args(tiny, files, tmp_path / "a"), ["continue", "continue", "continue", "pause"]
    )
    assert (paused.status, paused.steps, paused.adapter_dir) == ("paused", 3, None)
    assert paused.last_checkpoint == tmp_path / "a" / "checkpoints" / "step-000003"
    assert [values["step"] for values in before.checkpoints] == [2, 3]
    resumed, after = run(
        make_args(tiny, files, tmp_path / "b", resume_from=str(paused.last_checkpoint))
    )
    assert resumed.status == "succeeded"
    assert before.losses + after.losses == first.losses


def test_cancel_stops_at_once(tiny: Path, files: dict[str, Path], tmp_path: Path) -> None:
    result, recorder = run(make_args(tiny, files, tmp_path), ["continue", "continue", "cancel"])
    assert (result.status, result.steps, result.adapter_dir, result.metrics_csv) == (
        "cancelled",
        2,
        None,
        None,
    )
    assert not (tmp_path / "adapter").exists()
    assert len(recorder.metrics) == 2


def test_loss_falls_on_a_learnable_dataset(
    tiny: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    args = make_args(
        tiny,
        files,
        tmp_path,
        train_file=str(files["learnable"]),
        validation_file=None,
        n_epochs=10,
        gradient_accumulation_steps=1,
        learning_rate_multiplier=50,
        target_modules="QKVO_FFN",
        lora_dropout=0.0,
        checkpoint_every_steps=0,
    )
    result, recorder = run(args)
    losses = recorder.losses
    assert len(losses) == 40
    assert sum(losses[-4:]) / 4 < 0.5 * losses[0]
    assert result.final_metrics["train_mean_token_accuracy"] > 0.5
    assert result.best_checkpoint is None  # best needs validation data


def test_early_stopping(tiny: Path, files: dict[str, Path], tmp_path: Path) -> None:
    # No improvement in one step here beats a threshold of 1 nat (the most the table
    # allows), so the 2nd validation stops the run.
    args = make_args(
        tiny,
        files,
        tmp_path,
        eval_every_steps=1,
        checkpoint_every_steps=0,
        early_stopping_patience=1,
        early_stopping_threshold=1.0,
    )
    result, recorder = run(args)
    assert (result.status, result.early_stopped, result.steps) == ("succeeded", True, 2)
    assert result.adapter_dir is not None and result.adapter_dir.is_dir()
    assert result.best_checkpoint == tmp_path / "checkpoints" / "step-000002"
    assert result.best_metrics["valid_loss"] == recorder.validations[-1]["valid_loss"]
    assert [event[0] for event in recorder.events] == ["info", "info"]  # the example first
    assert "Early stopping at step 2" in recorder.events[1][1]


def test_keeps_last_k_checkpoints_and_the_best(
    tiny: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    result, recorder = run(
        make_args(tiny, files, tmp_path, checkpoint_every_steps=1, keep_checkpoints=2)
    )
    kept = [path.name for path in checkpoints.list_checkpoints(tmp_path / "checkpoints")]
    best = min(recorder.checkpoints, key=lambda values: values["metrics"]["valid_loss"])
    assert result.best_checkpoint == best["path"]
    losses = [values["metrics"]["valid_loss"] for values in recorder.checkpoints]
    lowest_yet = [loss < min(losses[:i], default=math.inf) for i, loss in enumerate(losses)]
    assert [values["best"] for values in recorder.checkpoints] == lowest_yet
    assert kept == sorted({best["path"].name, "step-000007", "step-000008"})
    assert checkpoints.latest_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints" / (
        "step-000008"
    )


def test_truncated_examples_are_reported_once(
    tiny: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    expected = data.load_file(files["train"], models.load_tokenizer(tiny), 40).n_truncated
    assert expected > 0
    _, recorder = run(make_args(tiny, files, tmp_path, max_seq_len=40, n_epochs=1))
    warnings = [event for event in recorder.events if event[0] == "warn"]
    assert [(event[2]["file"], event[2]["truncated"]) for event in warnings] == [
        ("train_file", expected),
        ("validation_file", warnings[1][2]["truncated"]),
    ]


def test_sample_dataset_trains(tiny: Path, tmp_path: Path) -> None:
    """The shipped walk-through dataset: a few epochs, seconds on a CPU."""
    args = TrainArgs(
        base_model=str(tiny),
        train_file=str(ASSETS / "sample-chat.jsonl"),
        validation_file=str(ASSETS / "sample-chat-valid.jsonl"),
        output_dir=str(tmp_path),
        learning_rate_multiplier=10,
        target_modules="QKVO_FFN",
    )
    result, recorder = run(args)
    assert recorder.starts[0].hyperparameters.n_epochs == 3
    assert recorder.validations[-1]["valid_loss"] < recorder.losses[0] - 1.5


def test_interrupted_checkpoint_write_is_never_loaded(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    with checkpoints.atomic_dir(root / "step-000001") as staging:
        (staging / "trainer_state.json").write_text("{}")
    # A write that dies half-way publishes nothing and cleans up after itself ...
    with pytest.raises(RuntimeError), checkpoints.atomic_dir(root / "step-000002") as staging:
        (staging / "trainer_state.json").write_text("{}")
        raise RuntimeError("killed")
    # ... and one killed outright leaves only a staging dir, which nothing reads.
    leftover = root / ".tmp-step-000003-x1y2"
    leftover.mkdir()
    (leftover / "trainer_state.json").write_text("{")
    assert checkpoints.latest_checkpoint(root) == root / "step-000001"
    checkpoints.prune(root, keep=5)
    assert sorted(path.name for path in root.iterdir()) == ["step-000001"]
