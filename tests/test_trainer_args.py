"""TrainArgs: validation that reports everything at once, and the "auto" rule."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from trainer.args import Hyperparameters, InvalidArgs, TrainArgs


def make_args(tmp_path: Path, **overrides: object) -> TrainArgs:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("")
    values: dict[str, object] = {
        "base_model": str(model),
        "train_file": str(train_file),
        "output_dir": str(tmp_path / "out"),
    }
    return TrainArgs(**{**values, **overrides})  # type: ignore[arg-type]


def test_defaults_are_valid(tmp_path: Path) -> None:
    make_args(tmp_path).validate()


def test_validation_reports_every_problem_naming_its_field(tmp_path: Path) -> None:
    args = make_args(
        tmp_path,
        validation_file=str(tmp_path / "missing.jsonl"),
        n_epochs=0,
        batch_size="big",
        learning_rate_multiplier=-1.0,
        lora_rank=0,
        lora_dropout=1.5,
        target_modules="ALL",
        warmup_ratio=1.0,
        sharding="zero3",
        max_seq_len=4,
        seed=-1,
        keep_checkpoints=0,
        resume_from=str(tmp_path),
    )
    with pytest.raises(InvalidArgs) as raised:
        args.validate()
    fields = [problem.field for problem in raised.value.problems]
    assert fields == [
        "validation_file",
        "resume_from",
        "n_epochs",
        "batch_size",
        "learning_rate_multiplier",
        "lora_rank",
        "lora_dropout",
        "target_modules",
        "warmup_ratio",
        "sharding",
        "max_seq_len",
        "seed",
        "keep_checkpoints",
    ]
    assert "n_epochs: 0 is out of range [1, 50]" in str(raised.value)
    assert "batch_size: 'big' is not a number" in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_wrong_types_are_problems_not_crashes(tmp_path: Path) -> None:
    problems = make_args(tmp_path, train_file=7, n_epochs=True, lora_alpha=False).problems()
    assert [problem.field for problem in problems] == ["train_file", "n_epochs", "lora_alpha"]


def test_from_dict_reports_unknown_and_missing_keys() -> None:
    with pytest.raises(InvalidArgs) as raised:
        TrainArgs.from_dict({"base_model": "m", "epochs": 3})
    assert [str(problem) for problem in raised.value.problems] == [
        "epochs: unknown argument",
        "train_file: required",
        "output_dir: required",
    ]


@pytest.mark.parametrize(
    ("n_examples", "n_tokens", "expected"),
    [
        # Tiny dataset: seen ~100 times in all, batch 1, lr x sqrt(1/4).
        (10, 1_000, Hyperparameters(10, 1, 0.5, 1e-4)),
        (64, 3_000, Hyperparameters(3, 1, 0.5, 1e-4)),
        # 0.2% of 2,000 = 4 examples per batch.
        (2_000, 200_000, Hyperparameters(3, 4, 1.0, 2e-4)),
        # Huge dataset: ~25,000 examples seen, batch capped at 8.
        (20_000, 2_000_000, Hyperparameters(1, 8, 1.41, 2.82e-4)),
        # Long sequences (4,096 tokens each): batch halved until <= 16,384 tokens.
        (5_000, 20_480_000, Hyperparameters(3, 4, 1.0, 2e-4)),
    ],
)
def test_auto_rule(
    tmp_path: Path, n_examples: int, n_tokens: int, expected: Hyperparameters
) -> None:
    resolved = make_args(tmp_path).resolve_auto(n_examples, n_tokens)
    assert asdict(resolved) == pytest.approx(asdict(expected))


def test_explicit_values_win_over_auto(tmp_path: Path) -> None:
    args = make_args(tmp_path, n_epochs=2, batch_size=3, learning_rate_multiplier=4)
    assert args.resolve_auto(10_000, 10**6) == Hyperparameters(2, 3, 4.0, 8e-4)
