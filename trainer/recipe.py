"""The LoRA fine-tuning recipe: setup, train loop, checkpoints, finish. One loop for every
method (`trainer.methods`): supervised fine-tuning, and DPO on preference pairs.

`train(args, callbacks)` runs one job from start (or from a checkpoint) to the end. It
knows nothing of gRPC: everything the outside world sees goes through `Callbacks`, and the
outside world steers it through `Callbacks.control()`.

Exactness: the data order is a pure function of (seed, epoch), checkpoints carry the
optimizer, scheduler and RNG states, and the loss of an optimizer step is the mean over
every loss token (DPO: every pair) of its micro-batches whatever their split, so a resumed
run reproduces the losses of an uninterrupted one, and two CPU runs with the same seed
agree bit for bit.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from peft import PeftModel, get_peft_model
from transformers.utils import logging as transformers_logging

from trainer import (
    batching,
    checkpoints,
    linear_ce,
    lora,
    methods,
    models,
    sharding,
    template_check,
)
from trainer.args import Hyperparameters, Refused, TrainArgs
from trainer.distributed import Ranks

Command = Literal["continue", "cancel", "pause"]
Level = Literal["info", "warn", "error"]
Status = Literal["succeeded", "cancelled", "paused"]

SMALL_MODEL = 100_000_000
"""Parameters under which CPU training uses one thread unless `cpu_threads` says otherwise."""

CSV_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


@dataclass(frozen=True)
class RunInfo:
    """What `Callbacks.on_start` receives once data and model are ready."""

    hyperparameters: Hyperparameters
    """n_epochs, batch_size, learning_rate_multiplier with "auto" resolved."""
    total_steps: int
    """Optimizer steps of the whole run."""
    steps_per_epoch: int
    n_examples: int
    """Examples in the training file."""
    n_sequences: int
    """Training sequences after text chunking and dropping empty examples."""
    n_tokens: int
    """Tokens in one epoch of training sequences."""
    n_validation_examples: int
    trainable_parameters: int
    device: str
    dtype: str
    """Compute dtype: bfloat16 (CUDA autocast) or float32."""
    resumed_from_step: int
    """0 for a fresh run."""


class MetricsCallback(Protocol):
    def __call__(
        self,
        *,
        step: int,
        total_steps: int,
        epoch: float,
        train_loss: float,
        train_mean_token_accuracy: float,
        learning_rate: float,
        tokens_per_second: float,
        tokens_trained: int,
        **method_metrics: float,
    ) -> None: ...


class EventCallback(Protocol):
    def __call__(self, level: Level, message: str, data: dict[str, Any]) -> None: ...


class ValidationCallback(Protocol):
    def __call__(
        self,
        *,
        step: int,
        valid_loss: float,
        valid_mean_token_accuracy: float,
        **method_metrics: float,
    ) -> None: ...


class CheckpointCallback(Protocol):
    def __call__(
        self, *, step: int, epoch: float, path: Path, metrics: dict[str, float], best: bool
    ) -> None: ...


def _ignore(*_args: object, **_kwargs: object) -> None:
    return None


def _keep_going() -> Command:
    return "continue"


@dataclass
class Callbacks:
    """How a run talks to whoever started it; every callback is optional. Callbacks run
    on the training thread between steps, so they should be quick; an exception raised by
    one ends the run with that exception."""

    on_start: Callable[[RunInfo], None] = _ignore
    """Once, before the first step: resolved hyperparameters, step and data counts."""
    on_metrics: MetricsCallback = _ignore
    """Every `log_every_steps` optimizer steps, and at every step a validation ran
    (keyword arguments): the step's token-mean train loss and accuracy, the learning rate
    it used, training tokens/s since the last report, and non-padding tokens trained so
    far. `epoch` is fractional progress. A method's own metrics come as more keywords:
    DPO's train_rewards_chosen, train_rewards_rejected, train_reward_accuracy and
    train_reward_margin. After a validation, its figures too, as on_validation has them
    (valid_loss, valid_mean_token_accuracy, ...): at most one report a step."""
    on_event: EventCallback = _ignore
    """(level "info"|"warn"|"error", message, data): things a user should read, e.g. how
    many examples were truncated."""
    on_validation: ValidationCallback = _ignore
    """After each validation (keyword arguments), on the whole validation set, before that
    step's on_metrics; a method's own metrics as more keywords (DPO's
    valid_reward_accuracy, ...)."""
    on_checkpoint: CheckpointCallback = _ignore
    """After a checkpoint directory is complete and in place (keyword arguments); `best`
    when its validation loss is the lowest of the run's checkpoints so far."""
    control: Callable[[], Command] = _keep_going
    """Polled once before every optimizer step: "continue"; "cancel" stops at once
    (status cancelled, nothing written); "pause" writes a checkpoint and returns status
    paused (continue later with `resume_from`)."""


@dataclass(frozen=True)
class TrainResult:
    status: Status
    """succeeded (early stopping included, see `early_stopped`), cancelled or paused."""
    early_stopped: bool
    steps: int
    """Optimizer steps done, counting those before a resume."""
    total_steps: int
    trained_tokens: int
    """Non-padding tokens trained on, counting those before a resume."""
    hyperparameters: Hyperparameters
    adapter_dir: Path | None
    """`output_dir/adapter`: peft adapter files plus the tokenizer; None unless succeeded."""
    metrics_csv: Path | None
    """`output_dir/metrics.csv`; None when cancelled."""
    final_metrics: dict[str, float]
    best_metrics: dict[str, float] | None
    """Metrics of the best checkpoint (lowest valid_loss); None without validation data."""
    best_checkpoint: Path | None
    last_checkpoint: Path | None


@dataclass
class _Progress:
    """The loop's state; saved in every checkpoint's trainer_state.json."""

    step: int = 0
    data_epoch: int = 0
    data_batch: int = 0
    tokens_trained: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float | int | None]] = field(default_factory=list)
    best_valid_loss: float | None = None
    evaluations_without_improvement: int = 0
    best_checkpoint_step: int | None = None
    best_metrics: dict[str, float] | None = None

    def checkpointed(self) -> bool:
        """Record a checkpoint at this step: the best so far when its validation loss is
        the lowest of any checkpoint's. Whether it is."""
        loss = self.metrics.get("valid_loss")
        if loss is not None and (
            self.best_metrics is None or loss < self.best_metrics["valid_loss"]
        ):
            self.best_checkpoint_step = self.step
            self.best_metrics = dict(self.metrics)
        return self.best_checkpoint_step == self.step


def train(args: TrainArgs, callbacks: Callbacks | None = None) -> TrainResult:
    """Run one LoRA fine-tuning job; see the module docstring."""
    args.validate()
    # Process-wide torch settings are put back afterwards, for callers that go on.
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    if args.deterministic:
        # cuBLAS needs this before its first call to pick deterministic kernels.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        from trainer import classify  # its own recipe: an encoder and a head (see there)

        if classify.is_classification(args):
            return classify.run(args, callbacks or Callbacks())
        return _train(args, callbacks or Callbacks())
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)


def _train(args: TrainArgs, cb: Callbacks) -> TrainResult:
    # ---- setup -------------------------------------------------------------------------
    transformers_logging.disable_progress_bar()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    # Data-parallel ranks (torchrun, Ray Train) each run this whole recipe; alone: 0 of 1.
    ranks = Ranks.current()
    device = ranks.device(args.device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    output_dir = Path(args.output_dir)
    checkpoint_root = output_dir / "checkpoints"

    base = models.describe(Path(args.base_model), Path(args.base_model).name)
    if not models.is_causal_lm(base.architecture):
        raise Refused(
            "invalid_base_model",
            "base_model",
            f"{base.architecture} is not a causal language model; "
            "this recipe fine-tunes decoder models",
        )
    if args.fused_linear_cross_entropy and base.model_type not in linear_ce.MODEL_TYPES:
        raise Refused(
            "invalid_base_model",
            "fused_linear_cross_entropy",
            f"is not available for model type {base.model_type}, whose logits it is not "
            f"known to reproduce (it is for {', '.join(sorted(linear_ce.MODEL_TYPES))}); "
            "train without it",
        )
    if device.type == "cpu" and (args.cpu_threads or base.parameters < SMALL_MODEL):
        torch.set_num_threads(args.cpu_threads or 1)
    tokenizer = models.load_tokenizer(args.base_model)
    max_seq_len = min(args.max_seq_len, base.context_length or args.max_seq_len)
    # The method decides what a file encodes into (sequences; DPO's pairs) and refuses
    # data it cannot train on; the rest of the recipe is the same for every method.
    method = methods.for_run(
        args.method, args.reinforcement, cb.on_event, args.fused_linear_cross_entropy
    )
    train_data = method.load(
        args.train_file, tokenizer, max_seq_len, args.train_file_name, "training_file"
    )
    if not train_data.units:
        raise Refused(
            "invalid_training_file", "training_file", "no example has a token to learn from"
        )
    valid_data = (
        method.load(
            args.validation_file,
            tokenizer,
            max_seq_len,
            args.validation_file_name,
            "validation_file",
        )
        if args.validation_file
        else None
    )
    if valid_data is not None and not valid_data.units:
        valid_data = None
    # Correct by construction: an example of each format, encoded as training encodes it,
    # its loss mask and turn endings checked before the model loads (shown after on_start).
    rendered = template_check.inspect(args, tokenizer)

    resume = checkpoints.load_checkpoint(args.resume_from) if args.resume_from else None
    data_fingerprint = train_data.fingerprint()
    if resume and resume.trainer_state["data_fingerprint"] != data_fingerprint:
        raise Refused(
            "checkpoint_mismatch",
            "resume_from",
            "the checkpoint was trained on other data (or another tokenizer or "
            "max_seq_len), so its data position does not apply",
        )
    # A resumed run keeps the hyperparameters it started with, whatever "auto" would say.
    hp = (
        Hyperparameters(**resume.trainer_state["hyperparameters"])
        if resume
        else args.resolve_auto(len(train_data.units), train_data.n_tokens)
    )
    method = method.with_hyperparameters(hp)
    lengths = train_data.lengths
    micro_batches_per_epoch = math.ceil(len(lengths) / hp.batch_size)
    steps_per_epoch = math.ceil(micro_batches_per_epoch / args.gradient_accumulation_steps)
    total_steps = steps_per_epoch * hp.n_epochs
    if resume and resume.trainer_state["total_steps"] != total_steps:
        raise Refused(
            "checkpoint_mismatch",
            "resume_from",
            "the checkpoint's run had another number of steps; resume with the "
            "gradient_accumulation_steps it started with",
        )

    model = models.load_causal_lm(args.base_model, torch.bfloat16 if bf16 else torch.float32)
    if args.gradient_checkpointing:
        # Non-reentrant: the frozen embeddings' outputs need no requires_grad hook for the
        # LoRA weights inside each checkpointed layer to get their gradients.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with lora.peft_quietly():
        model = get_peft_model(
            model,
            lora.lora_config(
                base.model_type,
                args.target_modules,
                args.lora_rank,
                args.lora_alpha,
                args.lora_dropout,
            ),
        )
    sharded = args.sharding == "fsdp" and ranks.world > 1
    if sharded:  # each rank moves only its shards to the device, never the whole model
        model = sharding.shard(model, ranks.world, device)
    else:
        model.to(device)
    model.train()  # from_pretrained leaves models in eval mode: LoRA dropout would be off.
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=args.weight_decay)
    warmup_steps = math.ceil(args.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(_lr_factor, warmup=warmup_steps, total=total_steps, schedule=args.lr_schedule),
    )

    progress = _Progress()
    if resume:
        checkpoints.restore(resume, model, optimizer, scheduler)
        progress = _Progress(**resume.trainer_state["progress"])

    cb.on_start(
        RunInfo(
            hyperparameters=hp,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            n_examples=train_data.n_examples,
            n_sequences=len(train_data.units),
            n_tokens=train_data.n_tokens,
            n_validation_examples=valid_data.n_examples if valid_data else 0,
            trainable_parameters=sum(parameter.numel() for parameter in trainable),
            device=str(device),
            dtype="bfloat16" if bf16 else "float32",
            resumed_from_step=progress.step,
        )
    )
    template_check.report(rendered, cb.on_event)
    for name, encoded in (("train_file", train_data), ("validation_file", valid_data)):
        if encoded is not None and encoded.n_truncated:
            cb.on_event(
                "warn",
                f"{encoded.n_truncated} example(s) in {name} are longer than {max_seq_len} "
                "tokens and were truncated",
                {"file": name, "truncated": encoded.n_truncated, "max_seq_len": max_seq_len},
            )
        if encoded is not None and encoded.n_dropped:
            cb.on_event(
                "warn",
                f"{encoded.n_dropped} example(s) in {name} have no token to learn from "
                "and were skipped",
                {"file": name, "dropped": encoded.n_dropped},
            )
    if args.early_stopping_patience and valid_data is None:
        cb.on_event("warn", "Early stopping needs validation data; it is off for this run", {})
    if resume:
        cb.on_event("info", f"Resumed from step {progress.step}", {"path": str(resume.path)})
    if sharded:
        held, total = sharding.weights_held(model)
        cb.on_event(
            "info",
            f"Sharded over {ranks.world} processes (FSDP): each holds about {held:,} "
            f"of the model's {total:,} weights",
            {"sharding": "fsdp", "weights_held": held, "weights": total},
        )

    def trainer_state() -> dict[str, Any]:
        return {
            "step": progress.step,
            "epoch": progress.step / steps_per_epoch,
            "data_position": {"epoch": progress.data_epoch, "batch": progress.data_batch},
            "total_steps": total_steps,
            "data_fingerprint": data_fingerprint,
            "hyperparameters": asdict(hp),
            "metrics": progress.metrics,
            "progress": asdict(progress),
        }

    def save_checkpoint() -> Path:
        # Best first, so the checkpoint's own state knows whether it is the best.
        is_best = progress.checkpointed()
        path = checkpoints.save_checkpoint(
            checkpoint_root, progress.step, model, optimizer, scheduler, trainer_state()
        )
        best = _best_path(checkpoint_root, progress)
        checkpoints.prune(checkpoint_root, args.keep_checkpoints, protect=best)
        _write_csv(output_dir / "metrics.csv", progress.history)
        cb.on_checkpoint(
            step=progress.step,
            epoch=progress.step / steps_per_epoch,
            path=path,
            metrics=dict(progress.metrics),
            best=is_best,
        )
        return path

    def result(status: Status, early_stopped: bool, adapter_dir: Path | None) -> TrainResult:
        last = checkpoints.latest_checkpoint(checkpoint_root)
        return TrainResult(
            status=status,
            early_stopped=early_stopped,
            steps=progress.step,
            total_steps=total_steps,
            trained_tokens=progress.tokens_trained,
            hyperparameters=hp,
            adapter_dir=adapter_dir,
            metrics_csv=None if status == "cancelled" else output_dir / "metrics.csv",
            final_metrics=dict(progress.metrics),
            best_metrics=progress.best_metrics,
            best_checkpoint=_best_path(checkpoint_root, progress),
            last_checkpoint=last,
        )

    # ---- train loop ----------------------------------------------------------------------
    pad_id = tokenizer.pad_token_id
    pass_cost = batching.PASS_COST_TOKENS.get(device.type, batching.PASS_COST_TOKENS["cuda"])
    # A GPU runs a packed row's attention per sequence; a CPU does better with micro-batches.
    packed = method.packs and device.type == "cuda"
    evaluate = partial(_evaluate, model, method, pad_id=pad_id, batch_size=hp.batch_size, bf16=bf16)
    early_stopped = False
    saved_step = resume.step if resume else -1
    log_tokens, log_seconds = 0, 0.0
    start_epoch, start_batch = progress.data_epoch, progress.data_batch
    for epoch in range(start_epoch, hp.n_epochs):
        plan = batching.plan_epoch(len(lengths), hp.batch_size, args.seed, epoch)
        accumulation = args.gradient_accumulation_steps
        groups = [plan[i : i + accumulation] for i in range(0, len(plan), accumulation)]
        for index in range(start_batch if epoch == start_epoch else 0, len(groups)):
            command = ranks.from_leader(cb.control())
            if command == "cancel":
                return result("cancelled", False, None)
            if command == "pause":
                if saved_step != progress.step:
                    save_checkpoint()
                _write_csv(output_dir / "metrics.csv", progress.history)
                return result("paused", False, None)

            started = time.perf_counter()
            learning_rate = scheduler.get_last_lr()[0]
            micro_batches = (
                [
                    batching.pack([train_data.units[i] for i in part])
                    for batch in groups[index]
                    for part in batching.balance(batch, lengths, ranks.world)
                ]
                if packed
                else [
                    method.collate([train_data.units[i] for i in part], pad_id)
                    for batch in groups[index]
                    for part in batching.split_by_length(batch, lengths, pass_cost)
                ]
            )
            trained = _train_step(
                model,
                method,
                optimizer,
                scheduler,
                trainable,
                micro_batches,
                bf16,
                args.max_grad_norm,
                ranks,
                sharded,
            )
            real_tokens = sum(batch.real_tokens for batch in micro_batches)
            log_tokens += real_tokens
            log_seconds += time.perf_counter() - started
            progress.step += 1
            progress.tokens_trained += real_tokens
            last_of_epoch = index + 1 == len(groups)
            progress.data_epoch, progress.data_batch = (
                (epoch + 1, 0) if last_of_epoch else (epoch, index + 1)
            )
            train_loss, train_accuracy = trained["loss"], trained["mean_token_accuracy"]
            # The method's own metrics (DPO's rewards) beside loss and token accuracy.
            extra = {f"train_{name}": trained[name] for name in method.metric_names}
            progress.metrics = {
                "step": progress.step,
                "train_loss": train_loss,
                "train_mean_token_accuracy": train_accuracy,
                **extra,
            }
            row: dict[str, float | int | None] = {
                "step": progress.step,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "valid_loss": None,
                "valid_mean_token_accuracy": None,
                **extra,
                **{f"valid_{name}": None for name in method.metric_names},
            }
            progress.history.append(row)
            checkpoint_due = last_of_epoch or (
                args.checkpoint_every_steps > 0 and progress.step % args.checkpoint_every_steps == 0
            )
            eval_due = checkpoint_due or (
                args.eval_every_steps > 0 and progress.step % args.eval_every_steps == 0
            )
            validated: dict[str, float] = {}
            if valid_data is not None and eval_due:
                validated = {f"valid_{name}": value for name, value in evaluate(valid_data).items()}
                valid_loss = validated["valid_loss"]
                row.update(validated)
                progress.metrics.update(validated)
                cb.on_validation(step=progress.step, **validated)
                if (
                    progress.best_valid_loss is None
                    or valid_loss < progress.best_valid_loss - args.early_stopping_threshold
                ):
                    progress.best_valid_loss = valid_loss
                    progress.evaluations_without_improvement = 0
                else:
                    progress.evaluations_without_improvement += 1
                early_stopped = (
                    0 < args.early_stopping_patience <= (progress.evaluations_without_improvement)
                )
            # After the validation: the step's one report carries its figures, as OpenAI's
            # metrics events do, so a validation step is reported whatever log_every_steps.
            logged = progress.step % args.log_every_steps == 0 or progress.step == total_steps
            if logged or validated:
                cb.on_metrics(
                    step=progress.step,
                    total_steps=total_steps,
                    epoch=progress.step / steps_per_epoch,
                    train_loss=train_loss,
                    train_mean_token_accuracy=train_accuracy,
                    learning_rate=learning_rate,
                    tokens_per_second=log_tokens / log_seconds if log_seconds else 0.0,
                    tokens_trained=progress.tokens_trained,
                    **extra,
                    **validated,
                )
                log_tokens, log_seconds = 0, 0.0
            if checkpoint_due or early_stopped:
                save_checkpoint()
                saved_step = progress.step
            if early_stopped:
                cb.on_event(
                    "info",
                    f"Early stopping at step {progress.step}: valid_loss has not improved "
                    f"for {progress.evaluations_without_improvement} validations",
                    {"step": progress.step, "best_valid_loss": progress.best_valid_loss},
                )
                break
        if early_stopped:
            break

    # ---- finish --------------------------------------------------------------------------
    adapter_dir = output_dir / "adapter"
    with checkpoints.atomic_dir(adapter_dir) as staging:
        checkpoints.save_adapter(model, staging)
        tokenizer.save_pretrained(staging)
    _write_csv(output_dir / "metrics.csv", progress.history)
    return result("succeeded", early_stopped, adapter_dir)


def _lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup to the peak over `warmup` steps, then linear or cosine decay that
    reaches 0 just after the last step (every real step trains with a positive rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def _train_step(
    model: PeftModel,
    method: methods.Method,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainable: list[torch.nn.Parameter],
    micro_batches: list[batching.Batch],
    bf16: bool,
    max_grad_norm: float,
    ranks: Ranks,
    sharded: bool = False,
) -> dict[str, float]:
    """One optimizer step over accumulated micro-batches; returns its metrics (loss, token
    accuracy, and the method's own).

    Each micro-batch's summed loss is divided by the weight of the whole step (its loss
    tokens; DPO: its pairs), so the gradient is the mean over the step however its units
    fall into micro-batches, and however they fall to data-parallel ranks: each rank trains
    its share, and the summed gradients are those of the whole step (FSDP sums them
    itself, in backward).
    """
    device = next(model.parameters()).device
    weight = sum(method.weight(batch) for batch in micro_batches)
    totals = torch.zeros(len(method.stats), device=device)
    mine = (
        sharding.passes(micro_batches, ranks.rank, ranks.world)
        if sharded
        else ranks.mine(micro_batches)
    )
    for batch in mine:
        if batch is None:  # FSDP: this rank's share ran out; join the others' collectives
            # with the very passes a micro-batch takes (DPO: two forwards), adding nothing.
            loss_sum, _ = method.measure(model, micro_batches[0].to(device), bf16)
            (loss_sum * 0.0).backward()
            continue
        loss_sum, stats = method.measure(model, batch.to(device), bf16)
        (loss_sum / weight).backward()
        totals += stats
    if not sharded:
        ranks.sum_gradients(trainable)
    totals = ranks.sum(totals)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return method.metrics(dict(zip(method.stats, totals.tolist(), strict=True)), weight)


def _evaluate(
    model: PeftModel,
    method: methods.Method,
    encoded: methods.Encoded,
    pad_id: int,
    batch_size: int,
    bf16: bool,
) -> dict[str, float]:
    """The method's metrics (loss, token accuracy, its own) over all of `encoded`,
    batched by length."""
    device = next(model.parameters()).device
    units, lengths = encoded.units, encoded.lengths
    order = sorted(range(len(units)), key=lambda i: lengths[i])
    totals = dict.fromkeys(method.stats, 0.0)
    weight = 0
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = method.collate(
                    [units[i] for i in order[start : start + batch_size]], pad_id
                ).to(device)
                stats = method.measure(model, batch, bf16)[1].tolist()
                for name, value in zip(method.stats, stats, strict=True):
                    totals[name] += value
                weight += method.weight(batch)
    finally:
        model.train()
    return method.metrics(totals, weight)


def _best_path(root: Path, progress: _Progress) -> Path | None:
    if progress.best_checkpoint_step is None:
        return None
    return root / checkpoints.checkpoint_name(progress.best_checkpoint_step)


def _write_csv(path: Path, history: list[dict[str, float | int | None]]) -> None:
    """OpenAI's results-file columns, then the method's own (DPO's rewards); written whole
    to a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    columns = (
        [*CSV_COLUMNS, *(key for key in history[0] if key not in CSV_COLUMNS)]
        if history
        else CSV_COLUMNS
    )
    with staging.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in history:
            writer.writerow(
                "" if row[column] is None else _format(row[column]) for column in columns
            )
    os.replace(staging, path)


def _format(value: float | int | None) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6f}"
