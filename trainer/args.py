"""The arguments of one training run, their validation, and the rule that resolves "auto"."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trainer.hyperparameters import AUTO, BASE_LEARNING_RATE, BY_NAME, TABLE, TARGET_MODULES, Auto

TargetPreset = Literal["QV", "QKVO", "QKVO_FFN"]
Schedule = Literal["linear", "cosine"]
Method = Literal["supervised", "dpo", "reinforcement"]
Sharding = Literal["replicated", "fsdp"]

SCHEDULES: tuple[str, ...] = ("linear", "cosine")
SHARDINGS: tuple[str, ...] = ("replicated", "fsdp")
METHODS: tuple[str, ...] = ("supervised", "dpo", "reinforcement")
# The job's hyperparameters, each a TrainArgs field; a row with a `method` (DPO's beta)
# belongs to runs of that method only.
JOB_HYPERPARAMETERS = TABLE
AUTO_BETA = 0.1
"""DPO's beta when "auto": OpenAI's default, and the DPO paper's."""


def _default(name: str) -> Any:
    return BY_NAME[name].default


@dataclass(frozen=True)
class ArgProblem:
    """One thing wrong with the arguments."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidArgs(ValueError):
    """Raised by `TrainArgs.validate` with every problem found, not just the first."""

    def __init__(self, problems: list[ArgProblem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = problems


class Refused(ValueError):
    """A run that cannot go ahead and would fail the same way on every attempt: the data,
    the base model or the checkpoint does not fit. Reported with `code`, never retried."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.code, self.field = code, field


@dataclass(frozen=True)
class Hyperparameters:
    """The concrete values a run uses once "auto" is resolved; reported back to the user."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    """`base_learning_rate * learning_rate_multiplier`: the peak learning rate."""
    beta: float | None = None
    """DPO's beta; None for a supervised run."""


@dataclass
class TrainArgs:
    """Everything one LoRA fine-tuning run needs. Paths are local paths; the
    control plane resolves model names and file ids before it builds these."""

    base_model: str
    """Directory of the base model (config.json, safetensors weights, tokenizer)."""
    train_file: str
    """Training data: JSONL in any format `trainer.formats` reads, or a .txt/.md document."""
    output_dir: str
    """Where the run writes `checkpoints/`, `adapter/` and `metrics.csv`."""
    validation_file: str | None = None
    """Optional validation data in the same formats; enables valid_loss and early stopping."""
    train_file_name: str = ""
    """The name `train_file` was uploaded as, when stored under another: a .txt/.md name
    makes the file one text document, anything else is read as JSONL."""
    validation_file_name: str = ""
    """Likewise for `validation_file`."""
    method: Method = "supervised"
    """What a step trains (see `trainer.methods`): "supervised" (the loss on the outputs
    of chat, completion or text data) or "dpo" (direct preference optimization on
    preference data: the preferred output against the other, relative to the base)."""

    reinforcement: dict[str, Any] | None = None
    """Method "reinforcement" only (see `trainer.rft`): {"grader": OpenAI's grader JSON,
    and any of eval_interval, eval_samples, compute_multiplier, max_completion_tokens}."""

    # The job's hyperparameters: their ranges, defaults and documentation are declared
    # once, in trainer/hyperparameters.py ("auto" is resolved by `resolve_auto`).
    n_epochs: int | Auto = _default("n_epochs")
    batch_size: int | Auto = _default("batch_size")
    learning_rate_multiplier: float | Auto = _default("learning_rate_multiplier")
    beta: float | Auto = _default("beta")
    """DPO only: left "auto" (AUTO_BETA) for other methods."""
    lora_rank: int = _default("lora_rank")
    lora_alpha: int = _default("lora_alpha")
    lora_dropout: float = _default("lora_dropout")
    early_stopping_patience: int = _default("early_stopping_patience")
    early_stopping_threshold: float = _default("early_stopping_threshold")
    checkpoint_every_steps: int = _default("checkpoint_every_steps")
    target_modules: TargetPreset = "QV"
    """Which projections get adapters: one of `trainer.hyperparameters.TARGET_MODULES`."""

    base_learning_rate: float = BASE_LEARNING_RATE
    """Peak learning rate at multiplier 1."""
    warmup_ratio: float = 0.1
    """Fraction of the optimizer steps spent warming the learning rate up linearly from 0."""
    lr_schedule: Schedule = "linear"
    """Decay after warmup, to 0 at the last step: "linear" or "cosine"."""
    weight_decay: float = 0.0
    """AdamW weight decay on the adapter weights."""
    gradient_accumulation_steps: int = 1
    """Micro-batches whose gradients are summed before each optimizer step."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm; 0 disables clipping."""
    max_seq_len: int = 1024
    """Longer examples are truncated (and counted); capped at the model's context length."""
    seed: int = 42
    """Seeds weight init, dropout and data order: same seed, same data, same losses."""
    cpu_threads: int = 0
    """Torch threads when training on CPU; 0 picks 1 for models under 100M parameters
    (their ops are too small for threads to pay off, and spinning threads slow down
    by 10-30x when other processes share the cores) and torch's default otherwise."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where each rank trains: "auto" is one CUDA device per rank where there is CUDA,
    else the CPU."""
    deterministic: bool = False
    """Ask torch for deterministic kernels (needed on CUDA for bit-identical reruns; CPU
    runs are deterministic anyway)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of holding them:
    about a third more compute for a fraction of the activation memory (long sequences,
    big models on small GPUs). The same losses and gradients."""
    fused_linear_cross_entropy: bool = False
    """Compute the supervised loss from the last hidden states and the LM head's weight,
    a chunk of loss tokens at a time, never holding the batch's logits (float32, tokens x
    vocabulary, with their gradient most of the activation memory of a big vocabulary):
    Liger's fused kernel on CUDA where `liger-kernel` is installed (the `gpu` extra),
    else torch, recomputing each chunk in backward (`trainer.linear_ce`). The same losses
    and gradients. Method supervised only (DPO's and reinforcement's log-probabilities
    still come from the logits), not with sharding fsdp (the head's weight is sharded),
    and for the model types whose logits it reproduces (`linear_ce.MODEL_TYPES`)."""
    sharding: Sharding = "replicated"
    """How data-parallel ranks hold the model: "replicated" (each whole) or "fsdp" (each
    1/world of every weight, for a model that does not fit one device). Alone, the same."""

    eval_every_steps: int = 0
    """Validate every N optimizer steps; 0 validates only at checkpoints and epoch ends."""
    keep_checkpoints: int = 3
    """How many of the most recent checkpoints to keep (the best one is always kept too)."""
    log_every_steps: int = 1
    """Report train metrics through `Callbacks.on_metrics` every N optimizer steps."""
    resume_from: str | None = None
    """A checkpoint dir (`.../checkpoints/step-000123`) to continue from exactly."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainArgs:
        """Build from JSON-like data; unknown or missing keys raise InvalidArgs together."""
        known = {field.name: field for field in dataclasses.fields(cls)}
        problems = [ArgProblem(key, "unknown argument") for key in values if key not in known]
        problems += [
            ArgProblem(name, "required")
            for name, field in known.items()
            if name not in values
            and field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        ]
        if problems:
            raise InvalidArgs(problems)
        return cls(**values)

    def problems(self) -> list[ArgProblem]:
        """Every problem with these arguments, each naming its field."""
        found: list[ArgProblem] = []

        def check(ok: bool, field: str, message: str) -> None:
            if not ok:
                found.append(ArgProblem(field, message))

        check(
            _is_file(self.base_model, "config.json"),
            "base_model",
            f"{self.base_model!r} is not a model directory",
        )
        check(_is_file(self.train_file), "train_file", f"{self.train_file!r} not found")
        if self.validation_file is not None:
            check(
                _is_file(self.validation_file),
                "validation_file",
                f"{self.validation_file!r} not found",
            )
        check(isinstance(self.output_dir, str) and bool(self.output_dir), "output_dir", "required")
        if self.resume_from is not None:
            check(
                _is_file(self.resume_from, "trainer_state.json"),
                "resume_from",
                f"{self.resume_from!r} is not a checkpoint directory",
            )

        check(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}")
        if self.method == "reinforcement" or self.reinforcement is not None:
            from trainer import rft  # its spec's checks; torch-free until it trains

            found += [
                ArgProblem(f, m) for f, m in rft.spec_problems(self.method, self.reinforcement)
            ]
        for hp in JOB_HYPERPARAMETERS:
            value = getattr(self, hp.name)
            if hp.method and hp.method != self.method:
                check(
                    value == AUTO,
                    hp.name,
                    f"is a {hp.method} hyperparameter; this run's method is {self.method}",
                )
            elif value != AUTO or hp.default != AUTO:
                check(hp.allows(value), hp.name, hp.problem(value) or "")
        check(
            _is_number(self.base_learning_rate) and 0 < self.base_learning_rate < 1,
            "base_learning_rate",
            "must be in (0, 1)",
        )

        check(
            self.target_modules in TARGET_MODULES,
            "target_modules",
            f"must be one of {', '.join(TARGET_MODULES)}",
        )

        check(
            _is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1,
            "warmup_ratio",
            "must be in [0, 1)",
        )
        check(
            self.lr_schedule in SCHEDULES, "lr_schedule", f"must be one of {', '.join(SCHEDULES)}"
        )
        check(
            _is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0"
        )
        check(self.sharding in SHARDINGS, "sharding", f"must be one of {', '.join(SHARDINGS)}")
        if self.fused_linear_cross_entropy:
            check(
                self.method == "supervised",
                "fused_linear_cross_entropy",
                f"is for method supervised; this run's method is {self.method}",
            )
            check(
                self.sharding != "fsdp",
                "fused_linear_cross_entropy",
                "does not work with sharding fsdp (the LM head's weight is sharded)",
            )
        check(
            _is_int(self.gradient_accumulation_steps) and self.gradient_accumulation_steps >= 1,
            "gradient_accumulation_steps",
            "must be an integer >= 1",
        )
        check(
            _is_number(self.max_grad_norm) and self.max_grad_norm >= 0,
            "max_grad_norm",
            "must be >= 0",
        )
        check(
            _is_int(self.max_seq_len) and self.max_seq_len >= 8,
            "max_seq_len",
            "must be an integer >= 8",
        )
        check(
            _is_int(self.seed) and 0 <= self.seed <= 2**31 - 1,
            "seed",
            "must be an integer in [0, 2147483647]",
        )

        check(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
        for name in (
            "eval_every_steps",
            "cpu_threads",
        ):
            check(
                _is_int(getattr(self, name)) and getattr(self, name) >= 0,
                name,
                "must be an integer >= 0",
            )
        check(
            _is_int(self.keep_checkpoints) and self.keep_checkpoints >= 1,
            "keep_checkpoints",
            "must be an integer >= 1",
        )
        check(
            _is_int(self.log_every_steps) and self.log_every_steps >= 1,
            "log_every_steps",
            "must be an integer >= 1",
        )
        return found

    def validate(self) -> None:
        """Raise InvalidArgs listing every problem, if there is any."""
        if found := self.problems():
            raise InvalidArgs(found)

    def resolve_auto(self, n_examples: int, n_tokens: int) -> Hyperparameters:
        """Replace each "auto" with a value from the dataset's size (OpenAI's published rule,
        adapted to LoRA on one device), as each row's `auto` in trainer/hyperparameters.py
        says. `n_examples` counts training sequences, `n_tokens` their tokens."""
        if self.n_epochs != "auto":
            n_epochs = int(self.n_epochs)
        elif n_examples * 3 < 100:
            n_epochs = min(25, 100 // max(n_examples, 1))
        elif n_examples * 3 > 25_000:
            n_epochs = max(1, 25_000 // n_examples)
        else:
            n_epochs = 3

        if self.batch_size != "auto":
            batch_size = int(self.batch_size)
        else:
            batch_size = min(8, max(1, round(n_examples * 0.002)))
            mean_tokens = n_tokens / max(n_examples, 1)
            while batch_size > 1 and batch_size * mean_tokens > 16_384:
                batch_size //= 2

        if self.learning_rate_multiplier != "auto":
            multiplier = float(self.learning_rate_multiplier)
        else:
            effective = batch_size * self.gradient_accumulation_steps
            multiplier = round(min(2.0, max(0.5, math.sqrt(effective / 4))), 2)

        beta = None
        if self.method == "dpo":
            beta = AUTO_BETA if self.beta == AUTO else float(self.beta)

        return Hyperparameters(
            n_epochs=n_epochs,
            batch_size=batch_size,
            learning_rate_multiplier=multiplier,
            learning_rate=self.base_learning_rate * multiplier,
            beta=beta,
        )


def _is_file(value: object, *parts: str) -> bool:
    return isinstance(value, str) and bool(value) and Path(value, *parts).is_file()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
