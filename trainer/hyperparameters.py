"""Every hyperparameter a job may set, declared once: its name, type, range, what it is
when left unset ("auto" and its rule, or a fixed default) and its documentation.

The control plane's CreateJob check (`server/job_spec.py`), the trainer's arguments
(`trainer/args.py`), the worker's translation of a job into them, and the OpenAI,
TrueFoundry and Cohere request shapes all read this table; `tests/test_hyperparameters.py`
proves that the contract's field comments (`protos/tunewire/v1/jobs.proto`) state the same
ranges, and that every surface accepts exactly what the table allows. This module imports
neither torch nor gRPC: the control plane reads it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Auto = Literal["auto"]
AUTO: Auto = "auto"

BASE_LEARNING_RATE = 2e-4
"""The peak learning rate at multiplier 1 (the usual LoRA rate). Cohere's API takes an
absolute learning rate: its bridge divides by this."""


@dataclass(frozen=True)
class Hyperparameter:
    """One numeric hyperparameter: a field of `tunewire.v1.Hyperparameters` and of
    `trainer.args.TrainArgs` of the same name."""

    name: str
    type: type[int] | type[float]
    low: float
    high: float
    default: int | float | Auto
    """What an unset field means: "auto" (resolved from the data, see `auto`) or a value."""
    doc: str
    low_open: bool = False
    """The range excludes `low` itself."""
    high_open: bool = False
    """The range excludes `high` itself."""
    auto: str = ""
    """How "auto" is resolved, where `default` is "auto"."""
    method: str = ""
    """The only method that uses it ("dpo"), or "" for every method."""

    @property
    def range(self) -> str:
        """`[1, 50]`, `(0, 100]`: the range as the contract's comments and errors write it."""
        return self.range_in(1.0)

    def range_in(self, scale: float) -> str:
        """The range in a surface's units, `scale` times ours (Cohere's learning rate)."""
        low = "(" if self.low_open else "["
        high = ")" if self.high_open else "]"
        return f"{low}{_number(self.low * scale)}, {_number(self.high * scale)}{high}"

    def allows(self, value: object) -> bool:
        """Whether `value` (not "auto") is a value this field may take."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type is int and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def problem(self, value: object, scale: float = 1.0) -> str | None:
        """Why `value` is refused, in a surface's units (`scale`), or None."""
        if self.allows(value / scale if _is_number(value) else value):
            return None
        if not _is_number(value):
            return f"{value!r} is not a number; it must be in {self.range_in(scale)}"
        shown = _number(value)  # type: ignore[arg-type]
        if self.type is int and not float(value).is_integer():  # type: ignore[arg-type]
            return f"{shown} must be an integer in {self.range_in(scale)}"
        return f"{shown} is out of range {self.range_in(scale)}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: float) -> str:
    # `:g` alone writes 1000000 as 1e+06, and 1000001 as 1e+06 too.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


TABLE: tuple[Hyperparameter, ...] = (
    Hyperparameter(
        "n_epochs",
        int,
        1,
        50,
        AUTO,
        "Passes over the training data.",
        auto="3, raised so that small datasets are seen at least 100 times in all "
        "(100 // examples, at most 25), lowered so that big ones stop near 25,000 examples "
        "seen (25000 // examples, at least 1).",
    ),
    Hyperparameter(
        "batch_size",
        int,
        1,
        256,
        AUTO,
        "Sequences per micro-batch; each optimizer step sees batch_size times the "
        "gradient accumulation steps.",
        auto="0.2% of the examples, clamped to [1, 8], then halved while a batch would hold "
        "more than 16,384 tokens on average.",
    ),
    Hyperparameter(
        "learning_rate_multiplier",
        float,
        0,
        100,
        AUTO,
        f"Scales the base learning rate ({BASE_LEARNING_RATE:g}) to the peak learning rate.",
        low_open=True,
        auto="square-root scaling with the effective batch, 1.0 at 4, clamped to [0.5, 2.0].",
    ),
    Hyperparameter(
        "beta",
        float,
        0,
        2,
        AUTO,
        "DPO's beta: how far the policy may move from the reference.",
        low_open=True,
        auto="0.1.",
        method="dpo",
    ),
    Hyperparameter("lora_rank", int, 1, 256, 8, "Rank r of the LoRA matrices."),
    Hyperparameter(
        "lora_alpha", int, 1, 1024, 16, "LoRA scaling numerator: updates are scaled by alpha / r."
    ),
    Hyperparameter(
        "lora_dropout",
        float,
        0,
        1,
        0.05,
        "Dropout on the LoRA input during training.",
        high_open=True,
    ),
    Hyperparameter(
        "early_stopping_patience",
        int,
        0,
        100,
        0,
        "Validations without improvement before training stops; 0 never stops early.",
    ),
    Hyperparameter(
        "early_stopping_threshold",
        float,
        0,
        1,
        0.0,
        "An improvement is a validation loss below the best so far by more than this.",
    ),
    Hyperparameter(
        "checkpoint_every_steps",
        int,
        0,
        1_000_000,
        0,
        "Also checkpoint every this many optimizer steps; 0 checkpoints at each epoch end only.",
    ),
)
BY_NAME: dict[str, Hyperparameter] = {hp.name: hp for hp in TABLE}

TARGET_MODULES: tuple[str, ...] = ("QV", "QKVO", "QKVO_FFN")
"""The LoRA target-module presets: query and value projections, all attention
projections, or attention plus the feed-forward projections. Unset means QV."""

REINFORCEMENT: tuple[Hyperparameter, ...] = (
    Hyperparameter(
        "eval_interval",
        int,
        1,
        1_000_000,
        AUTO,
        "Validate every this many steps on the validation file.",
        auto="at each epoch end only.",
        method="reinforcement",
    ),
    Hyperparameter(
        "eval_samples",
        int,
        1,
        64,
        AUTO,
        "Completions sampled per validation prompt.",
        auto="2.",
        method="reinforcement",
    ),
    Hyperparameter(
        "compute_multiplier",
        float,
        0.25,
        8,
        AUTO,
        "Scales the completions sampled per training prompt: 8 at 1.0, at least 2.",
        auto="1.",
        method="reinforcement",
    ),
    Hyperparameter(
        "max_completion_tokens",
        int,
        1,
        4096,
        AUTO,
        "Completion tokens sampled at most, per completion.",
        auto="64.",
        method="reinforcement",
    ),
)
"""Reinforcement fine-tuning's own hyperparameters: fields of `tunewire.v1.Reinforcement`
(the method's spec), not of the job's Hyperparameters; n_epochs, batch_size (prompts per
step) and learning_rate_multiplier are the job's, as for every method."""
RFT_AUTO = {
    "eval_interval": 0,
    "eval_samples": 2,
    "compute_multiplier": 1.0,
    "max_completion_tokens": 64,
}
"""What "auto" resolves to for each of them (eval_interval 0: at epoch ends only)."""
