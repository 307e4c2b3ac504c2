"""The LoRA classification recipe: an encoder (the packaged all-MiniLM-L6-v2, or any BERT)
with a classification head, trained on Cohere's `{"text", "label"}` data.

`recipe.train` hands a run here when its training file is classification data, so a job,
the worker and the callbacks see one entry point. The model is transformers'
`AutoModelForSequenceClassification` (the pooled [CLS] state into a linear head), wrapped
by peft with task type SEQ_CLS: LoRA on the encoder's projections (the job's target-module
preset), and the head and pooler trained whole (`modules_to_save`: they start untrained
or were never trained for this task). Single-label data trains a softmax over the labels
(cross-entropy), multi-label data one sigmoid per label (binary cross-entropy; a label is
predicted when its probability is at least 0.5).

What it shares with the causal-LM recipe: `Callbacks`, `RunInfo` and `TrainResult` (a job
is watched the same way), the learning-rate schedule (`recipe._lr_factor`), the data order
(`batching.plan_epoch`, a pure function of seed and epoch), the loop state and its metrics
CSV, checkpoints (`trainer.checkpoints`: the adapter in peft's file names, optimizer,
scheduler and RNG, so a resumed run reproduces an uninterrupted one), pause, cancel,
validation and early stopping by the same rules, and data-parallel ranks (`Ranks`). What
is its own: reading labels instead of token sequences, the model and its head, the loss,
and the metrics: accuracy (multi-label: every label of the example right), macro F1 and
per-label counts on the validation file.

The labels travel with the adapter, in its safetensors header (`classifier.adapter_metadata`),
so every checkpoint's adapter is a classifier on its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel, TaskType, get_peft_model
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from trainer import batching, checkpoints, classifier, labels, lora, models
from trainer.args import Hyperparameters, Refused, TrainArgs
from trainer.distributed import Ranks
from trainer.formats import is_plain_text
from trainer.recipe import (
    SMALL_MODEL,
    Callbacks,
    RunInfo,
    Status,
    TrainResult,
    _best_path,
    _lr_factor,
    _Progress,
    _write_csv,
)


def is_classification(args: TrainArgs) -> bool:
    """Whether the run's training file is classification data (judged by its first row)."""
    if is_plain_text(args.train_file_name or Path(args.train_file).name):
        return False
    return labels.file_format(args.train_file) in labels.LABELLED


@dataclass(frozen=True)
class Encoded:
    """A classification file, tokenized, with its targets."""

    input_ids: list[list[int]]
    targets: torch.Tensor
    """Single-label: the label index of each example; multi-label: [examples, labels] 0/1."""
    data: labels.Labelled
    n_truncated: int

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    @property
    def n_tokens(self) -> int:
        return sum(self.lengths)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for ids in self.input_ids:
            digest.update(json.dumps(ids).encode())
        digest.update(json.dumps(self.targets.tolist()).encode())
        return digest.hexdigest()


def encode(
    data: labels.Labelled,
    names: list[str],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
) -> Encoded:
    """Token ids (cut to `max_seq_len`, keeping the closing special token) and targets."""
    index = {name: i for i, name in enumerate(names)}
    ids, truncated = [], 0
    for row in tokenizer(data.texts)["input_ids"]:
        if len(row) > max_seq_len:
            row, truncated = [*row[: max_seq_len - 1], row[-1]], truncated + 1
        ids.append(row)
    if data.multi_label:
        targets = torch.zeros(len(data.labels), len(names))
        for row_index, row_labels in enumerate(data.labels):
            for label in row_labels:
                targets[row_index, index[label]] = 1.0
    else:
        targets = torch.tensor([index[row[0]] for row in data.labels], dtype=torch.long)
    return Encoded(ids, targets, data, truncated)


def collate(encoded: Encoded, rows: list[int], pad_id: int) -> batching.Batch:
    """Rows `rows` right-padded; `labels` holds their targets, `label_tokens` their count."""
    width = max(len(encoded.input_ids[i]) for i in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, i in enumerate(rows):
        ids = encoded.input_ids[i]
        input_ids[n, : len(ids)] = torch.tensor(ids)
        attention_mask[n, : len(ids)] = 1
    return batching.Batch(
        input_ids,
        attention_mask,
        encoded.targets[rows],
        real_tokens=int(attention_mask.sum()),
        label_tokens=len(rows),
    )


def _read(path: str, filename: str, field: str) -> labels.Labelled:
    try:
        return labels.read_labelled(path, filename)
    except ValueError as error:
        raise Refused(f"invalid_{field}", field, str(error)) from None


def _check_labels(train: labels.Labelled, valid: labels.Labelled | None) -> None:
    """Refuse data no classifier can be trained or validated on, naming the line."""
    if problem := labels.training_problem(train.tally.stats.values()):
        raise Refused("invalid_training_file", "training_file", problem)
    if valid is None:
        return
    if problem := labels.kind_mismatch(train.format.value, valid.format.value):
        raise Refused("invalid_validation_file", "validation_file", problem)
    if unknown := labels.unknown_labels(train.tally.stats, valid.tally.stats.values()):
        raise Refused("invalid_validation_file", "validation_file", "; ".join(unknown[:5]))


def run(args: TrainArgs, cb: Callbacks) -> TrainResult:
    """One classification run (`recipe.train` has validated `args` and put process-wide
    torch settings back afterwards)."""
    # ---- setup -------------------------------------------------------------------------
    transformers_logging.disable_progress_bar()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    ranks = Ranks.current()
    device = ranks.device()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    output_dir = Path(args.output_dir)
    checkpoint_root = output_dir / "checkpoints"

    base = models.describe(Path(args.base_model), Path(args.base_model).name)
    if models.is_causal_lm(base.architecture) or base.model_type not in lora.TARGET_MODULES:
        raise Refused(
            "invalid_base_model",
            "base_model",
            f"{base.architecture} is not an encoder this recipe can classify with; "
            f"classification fine-tunes an encoder such as {models.MINILM}",
        )
    if device.type == "cpu" and (args.cpu_threads or base.parameters < SMALL_MODEL):
        torch.set_num_threads(args.cpu_threads or 1)
    train_data = _read(args.train_file, args.train_file_name, "training_file")
    valid_data = (
        _read(args.validation_file, args.validation_file_name, "validation_file")
        if args.validation_file
        else None
    )
    _check_labels(train_data, valid_data)
    names = sorted(train_data.tally.stats)
    multi = train_data.multi_label
    tokenizer = classifier.load_tokenizer(args.base_model)
    max_seq_len = min(args.max_seq_len, base.context_length or args.max_seq_len)
    train_set = encode(train_data, names, tokenizer, max_seq_len)
    valid_set = encode(valid_data, names, tokenizer, max_seq_len) if valid_data else None

    resume = checkpoints.load_checkpoint(args.resume_from) if args.resume_from else None
    data_fingerprint = train_set.fingerprint()
    if resume and resume.trainer_state["data_fingerprint"] != data_fingerprint:
        raise Refused(
            "checkpoint_mismatch",
            "resume_from",
            "the checkpoint was trained on other data (or another tokenizer or "
            "max_seq_len), so its data position does not apply",
        )
    hp = (
        Hyperparameters(**resume.trainer_state["hyperparameters"])
        if resume
        else args.resolve_auto(len(train_set.input_ids), train_set.n_tokens)
    )
    lengths = train_set.lengths
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

    model = classifier.load_base(
        args.base_model, names, multi, torch.bfloat16 if bf16 else torch.float32
    )
    config = lora.lora_config(
        base.model_type,
        args.target_modules,
        args.lora_rank,
        args.lora_alpha,
        args.lora_dropout,
        task_type=TaskType.SEQ_CLS,
    )
    config.modules_to_save = classifier.head_modules(model)
    with lora.peft_quietly():
        model = get_peft_model(model, config)
    model.to(device)
    model.train()
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
            n_examples=len(train_set.input_ids),
            n_sequences=len(train_set.input_ids),
            n_tokens=train_set.n_tokens,
            n_validation_examples=len(valid_set.input_ids) if valid_set else 0,
            trainable_parameters=sum(parameter.numel() for parameter in trainable),
            device=str(device),
            dtype="bfloat16" if bf16 else "float32",
            resumed_from_step=progress.step,
        )
    )
    kind = "multi-label" if multi else "single-label"
    cb.on_event(
        "info",
        f"Training a {kind} classifier over {len(names)} labels",
        {
            "labels": names,
            "multi_label": multi,
            "examples": {s.label: s.examples for s in train_data.tally.sorted()},
        },
    )
    for name, encoded in (("train_file", train_set), ("validation_file", valid_set)):
        if encoded is not None and encoded.n_truncated:
            cb.on_event(
                "warn",
                f"{encoded.n_truncated} example(s) in {name} are longer than {max_seq_len} "
                "tokens and were truncated",
                {"file": name, "truncated": encoded.n_truncated, "max_seq_len": max_seq_len},
            )
    if args.early_stopping_patience and valid_set is None:
        cb.on_event("warn", "Early stopping needs validation data; it is off for this run", {})
    if resume:
        cb.on_event("info", f"Resumed from step {progress.step}", {"path": str(resume.path)})

    metadata = classifier.adapter_metadata(names, multi)

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
            "labels": names,
            "multi_label": multi,
        }

    def save_checkpoint() -> Path:
        is_best = progress.checkpointed()
        path = checkpoints.save_checkpoint(
            checkpoint_root, progress.step, model, optimizer, scheduler, trainer_state(), metadata
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
            last_checkpoint=checkpoints.latest_checkpoint(checkpoint_root),
        )

    # ---- train loop ----------------------------------------------------------------------
    pad_id = tokenizer.pad_token_id
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
            micro_batches = [collate(train_set, rows, pad_id) for rows in groups[index]]
            train_loss, train_accuracy = _train_step(
                model, optimizer, scheduler, trainable, micro_batches, multi, bf16, args, ranks
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
            progress.metrics = {
                "step": progress.step,
                "train_loss": train_loss,
                "train_mean_token_accuracy": train_accuracy,
            }
            row: dict[str, float | int | None] = {
                "step": progress.step,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "valid_loss": None,
                "valid_mean_token_accuracy": None,
                "valid_macro_f1": None,
            }
            progress.history.append(row)
            checkpoint_due = last_of_epoch or (
                args.checkpoint_every_steps > 0 and progress.step % args.checkpoint_every_steps == 0
            )
            eval_due = checkpoint_due or (
                args.eval_every_steps > 0 and progress.step % args.eval_every_steps == 0
            )
            validated: dict[str, float] = {}
            if valid_set is not None and eval_due:
                scores = evaluate(model, valid_set, names, pad_id, hp.batch_size, bf16)
                valid_loss = scores.loss
                row["valid_loss"] = valid_loss
                row["valid_mean_token_accuracy"] = scores.accuracy
                row["valid_macro_f1"] = scores.macro_f1
                validated = {
                    "valid_loss": valid_loss,
                    "valid_mean_token_accuracy": scores.accuracy,
                    "valid_macro_f1": scores.macro_f1,
                }
                progress.metrics.update(validated)
                cb.on_validation(
                    step=progress.step,
                    valid_loss=valid_loss,
                    valid_mean_token_accuracy=scores.accuracy,
                )
                cb.on_event(
                    "info",
                    f"Step {progress.step}: validation accuracy={scores.accuracy:.3f}, "
                    f"macro F1={scores.macro_f1:.3f}",
                    {"step": progress.step, **scores.as_dict()},
                )
                if (
                    progress.best_valid_loss is None
                    or valid_loss < progress.best_valid_loss - args.early_stopping_threshold
                ):
                    progress.best_valid_loss = valid_loss
                    progress.evaluations_without_improvement = 0
                else:
                    progress.evaluations_without_improvement += 1
                early_stopped = (
                    0 < args.early_stopping_patience <= progress.evaluations_without_improvement
                )
            # After the validation, with its figures: one report a step (trainer.recipe).
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
        checkpoints.save_adapter(model, staging, metadata)
        tokenizer.save_pretrained(staging)
    _write_csv(output_dir / "metrics.csv", progress.history)
    return result("succeeded", early_stopped, adapter_dir)


def _loss(
    logits: torch.Tensor, targets: torch.Tensor, multi: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over the rows (multi-label: the mean over labels of each row, summed) and
    the number of rows predicted right (multi-label: every label right)."""
    logits = logits.float()
    if multi:
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)
        correct = ((logits >= 0) == targets.bool()).all(-1).sum()
        return loss.sum(), correct
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return loss, (logits.argmax(-1) == targets).sum()


def _train_step(
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainable: list[torch.nn.Parameter],
    micro_batches: list[batching.Batch],
    multi: bool,
    bf16: bool,
    args: TrainArgs,
    ranks: Ranks,
) -> tuple[float, float]:
    """One optimizer step; each micro-batch's summed loss is divided by the rows of the whole
    step, so the gradient is the row mean however rows fall into micro-batches and ranks."""
    device = next(model.parameters()).device
    rows = sum(batch.label_tokens for batch in micro_batches)
    totals = torch.zeros(2, device=device)
    for batch in ranks.mine(micro_batches):
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss_sum, correct = _loss(logits, batch.labels, multi)
        (loss_sum / rows).backward()
        totals += torch.stack([loss_sum.detach(), correct.float()])
    ranks.sum_gradients(trainable)
    loss_total, correct_total = ranks.sum(totals).tolist()
    if args.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_total / rows, correct_total / rows


def evaluate(
    model: torch.nn.Module,
    encoded: Encoded,
    names: list[str],
    pad_id: int,
    batch_size: int,
    bf16: bool = False,
) -> labels.Scores:
    """Loss, accuracy, macro F1 and per-label counts over all of `encoded`."""
    device = next(model.parameters()).device
    multi = encoded.data.multi_label
    order = sorted(range(len(encoded.input_ids)), key=lambda i: len(encoded.input_ids[i]))
    loss_total = 0.0
    predicted: list[tuple[str, ...]] = [()] * len(order)
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = collate(encoded, rows, pad_id).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(
                        input_ids=batch.input_ids, attention_mask=batch.attention_mask
                    ).logits
                loss_total += _loss(logits, batch.labels, multi)[0].item()
                for i, row in zip(rows, logits.float(), strict=True):
                    predicted[i] = classifier.decide(row, names, multi)
    finally:
        model.train(training)
    return labels.score(encoded.data.labels, predicted, names, loss_total / len(order))
