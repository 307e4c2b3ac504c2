"""DPO: Tunewire's recipe (method dpo) against TRL's `DPOTrainer`, the same run on both.

Same model (the benchmark Llama, random init), same LoRA (r=8, alpha=16, dropout 0, q/v,
the adapter built by the same `trainer.lora.lora_config`, so its initial weights are the
same under the same seed), same beta, learning rate, linear decay to 0 with no warmup,
AdamW, clip 1.0, 1 epoch, same thread count. Both take the reference from the base model
with the adapter disabled and compute it in every step (TRL's default; no precompute).

Same data, token for token and in the same order: synthetic preference pairs (seeded chat
from `bench.workload`; the preferred output is the conversation's answer, the rejected
one the same words shuffled) are tokenized once by `trainer.data` and handed to TRL as its
own pre-tokenized columns (prompt_ids, chosen_ids, rejected_ids), laid out in the order of
Tunewire's batch plan (`trainer.batching.plan_epoch`) and read by TRL's sequential sampler,
so step k of each side trains the very same pairs. TRL's defaults are kept except where
they would make it a different run or do extra work: gradient checkpointing off (TRL turns
it on by default; Tunewire does not checkpoint), and its own dataset preparation skipped
(the ids are given). TRL's `disable_dropout` (on by default) changes nothing with LoRA
dropout 0 on a dropout-free Llama.

Timed: the training loop (first step start to last step end), fresh process per variant
and repeat, variants interleaved. Loss curve: each side's per-step DPO loss, recorded from
the loss each computes (TRL's log rounds to 4 digits), compared step by step. Held-out
reward accuracy, margin and loss: of both trained adapters, by one function (the recipe's
own evaluation).

`python -m bench.dpo --worker VARIANT[,VARIANT] --config FILE` runs variants in this
process and prints one JSON line (the runner's child entry point).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import workload
from bench.harness import (
    WORK,
    Context,
    Figure,
    PeakRss,
    Section,
    child_env,
    interleaved,
    log,
    median_of,
    run_json,
    spread_of,
)

NAME = "dpo"
TITLE = "DPO: the recipe's method dpo vs TRL DPOTrainer"
VARIANTS = ("tunewire", "trl")
LABELS = {"tunewire": "Tunewire recipe (method dpo)", "trl": "TRL DPOTrainer"}
CURVE_TOLERANCE = 1e-4
"""Largest per-step difference of the DPO loss (nats) that still counts as the same curve:
the sides differ only in float summation order (micro-batch splits, padding widths, TRL's
tiled LM head, fused AdamW); measured: a few 1e-6 over 24 steps."""


@dataclass(frozen=True)
class Config:
    model_dir: str
    train_file: str
    eval_file: str
    threads: int
    n_epochs: int = 1
    batch_size: int = 4
    """Pairs per step (8 sequences)."""
    learning_rate: float = 2e-3
    """10x the usual LoRA rate: a random-init base learns little in one epoch at 2e-4."""
    beta: float = 0.1
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_len: int = 1024
    seed: int = 42


# --- data ------------------------------------------------------------------------------------


MAX_WORDS = 240
"""Conversations longer than this are left out, so no pair is truncated (or dropped) even
in the quick model's 512-token context: both sides then train every pair of the file."""


def preference_file(n: int, seed: int) -> Path:
    """`n` preference pairs from `workload.chat_examples(.., seed)` of at most MAX_WORDS
    words: the prompt is every message before the last answer; the preferred output is that
    answer and the rejected one its words in a seeded random order (same tokens, broken
    text: a preference the adapter can learn). Written once under bench/.work/data."""
    path = WORK / "data" / f"preference-n{n}-s{seed}-w{MAX_WORDS}.jsonl"
    if path.is_file():
        return path
    rng = random.Random(f"bench-dpo:{seed}")
    short = [
        example
        for example in workload.chat_examples(4 * n, seed)
        if sum(len(m["content"].split()) for m in example["messages"]) <= MAX_WORDS
    ]
    lines = []
    for example in short[:n]:
        *prompt, answer = example["messages"]
        words = answer["content"].split()
        shuffled = words[:]
        while len(words) > 1 and shuffled == words:
            rng.shuffle(shuffled)
        record = {
            "input": {"messages": prompt},
            "preferred_output": [answer],
            "non_preferred_output": [{"role": "assistant", "content": " ".join(shuffled)}],
        }
        lines.append(json.dumps(record) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("".join(lines), encoding="utf-8")
    staging.replace(path)
    return path


# --- the runner ------------------------------------------------------------------------------


def run(ctx: Context) -> Section:
    say = log(NAME)
    shape = ctx.scale(workload.BENCH_MODEL, workload.QUICK_MODEL)
    n_train = ctx.scale(96, 16)  # a multiple of the batch: every step is a full batch
    config = Config(
        model_dir=str(workload.bench_model(shape)),
        train_file=str(preference_file(n_train, seed=11)),
        eval_file=str(preference_file(ctx.scale(32, 8), seed=12)),
        threads=ctx.threads,
    )
    config_path = ctx.work / "config.json"
    config_path.write_text(json.dumps(asdict(config)))
    env = child_env(ctx.threads)

    def child(variants: list[str]) -> list[dict[str, Any]]:
        argv = [sys.executable, "-m", "bench.dpo", "--worker", ",".join(variants)]
        out = run_json([*argv, "--config", str(config_path)], env, timeout=ctx.scale(900, 120))
        return out["samples"]

    if ctx.quick:  # one process for both, to keep CI fast; figures are not meaningful
        samples = {
            name: [sample] for name, sample in zip(VARIANTS, child(list(VARIANTS)), strict=True)
        }
    else:
        samples = interleaved(
            {name: (lambda name=name: child([name])[0]) for name in VARIANTS},
            repeats=ctx.repeats,
            warmup=0,
            log=say,
        )
    return _section(config, shape, n_train, samples)


def _section(
    config: Config,
    shape: workload.ModelShape,
    n_train: int,
    samples: dict[str, list[dict[str, Any]]],
) -> Section:
    ours, theirs = samples["tunewire"], samples["trl"]
    first = ours[0]
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"Model: Llama from a config, random init, hidden {shape.hidden_size}, "
        f"{shape.num_hidden_layers} layers, {shape.num_attention_heads} heads "
        f"({shape.num_key_value_heads} KV), vocab {first['vocab']}: "
        f"{first['parameters'] / 1e6:.1f}M parameters, float32.",
        f"Data: {n_train} synthetic preference pairs (seeded chat from bench.workload; "
        "preferred: the answer; rejected: its words shuffled), "
        f"{first['real_tokens']:,} tokens in both sequences of every pair; held-out metrics "
        f"on {first['eval_pairs']} more pairs.",
        f"Hyperparameters (both): {config.n_epochs} epoch, {config.batch_size} pairs per "
        f"step ({first['steps']} steps), beta {config.beta}, lr {config.learning_rate:g}, "
        f"no warmup, linear decay, AdamW, clip {config.max_grad_norm}, LoRA "
        f"r={config.lora_rank} alpha={config.lora_alpha} dropout={config.lora_dropout} on "
        f"q_proj/v_proj, seed {config.seed}, torch threads {config.threads}.",
        "Same run on both sides: the same token ids, in the same order (TRL reads Tunewire's "
        "batch plan through its sequential sampler, pre-tokenized), the same initial "
        "adapter; the reference is the base model with the adapter disabled, computed in "
        "every step on both sides. TRL's defaults otherwise, but gradient checkpointing off "
        "(TRL's default is on; Tunewire never checkpoints).",
        "Timed: training loop only, fresh process per variant and repeat, interleaved over "
        f"{len(ours)} repeat(s); medians. Loss curve: the DPO loss each side computed at "
        "each step (not TRL's log, rounded to 4 digits); held-out metrics of both adapters "
        "by the recipe's own evaluation.",
    ]
    tps = {v: median_of(samples[v], "tokens_per_s") for v in VARIANTS}
    ratio = tps["tunewire"] / tps["trl"] if tps["trl"] else None
    section.add(
        Figure(
            "real tokens/s (both sequences of each pair)",
            tps["tunewire"],
            tps["trl"],
            "tok/s",
            LABELS["trl"],
            goal=">= 1x",
            met=None if ratio is None else ratio >= 1.0,
            spread=f"ours {spread_of(ours, 'tokens_per_s')}; "
            f"baseline {spread_of(theirs, 'tokens_per_s')}",
        ),
        Figure(
            "real tokens per CPU-second",
            median_of(ours, "tokens_per_cpu_s"),
            median_of(theirs, "tokens_per_cpu_s"),
            "tok/s",
            LABELS["trl"],
            spread=f"ours {spread_of(ours, 'tokens_per_cpu_s')}; "
            f"baseline {spread_of(theirs, 'tokens_per_cpu_s')}",
        ),
    )
    # The curves of the same repeat (same seed, same data) side by side.
    gaps = [
        max(abs(a - b) for a, b in zip(o["losses"], t["losses"], strict=True))
        for o, t in zip(ours, theirs, strict=True)
    ]
    gap = max(gaps)
    section.add(
        Figure(
            "loss curve: largest per-step |difference|",
            gap,
            None,
            "nats",
            higher_is_better=None,
            goal=f"<= {CURVE_TOLERANCE:g}",
            met=gap <= CURVE_TOLERANCE,
            note=f"over {len(first['losses'])} steps x {len(gaps)} run(s); loss at step 1: "
            f"{first['losses'][0]:.6f} vs {theirs[0]['losses'][0]:.6f} (ln 2 = {math.log(2):.6f})",
        ),
        Figure(
            "train loss, last step",
            median_of(ours, "last_loss"),
            median_of(theirs, "last_loss"),
            "nats",
            LABELS["trl"],
            higher_is_better=False,
        ),
    )
    for key, metric, better in (
        ("valid_reward_accuracy", "held-out reward accuracy after training", True),
        ("valid_reward_margin", "held-out reward margin after training", True),
        ("valid_loss", "held-out DPO loss after training", False),
    ):
        section.add(
            Figure(
                metric,
                median_of(ours, key),
                median_of(theirs, key),
                "",
                LABELS["trl"],
                higher_is_better=better,
                note=f"untrained: {first['initial'][key]:.3f}",
            )
        )
    section.add(
        Figure(
            "peak RSS during training (whole process)",
            median_of(ours, "peak_rss_mib"),
            median_of(theirs, "peak_rss_mib"),
            "MiB",
            LABELS["trl"],
            higher_is_better=False,
        )
    )
    cpu_ratio = median_of(ours, "tokens_per_cpu_s") / median_of(theirs, "tokens_per_cpu_s")
    section.summary = (
        f"{tps['tunewire']:.0f} real tok/s vs TRL {tps['trl']:.0f} ({ratio:.2f}x, goal >= 1x; "
        f"{cpu_ratio:.2f}x per CPU-second); "
        f"loss curves equal within {gap:.1e} nats per step (tolerance {CURVE_TOLERANCE:g}); "
        f"held-out reward accuracy {median_of(ours, 'valid_reward_accuracy'):.2f} vs "
        f"{median_of(theirs, 'valid_reward_accuracy'):.2f}."
    )
    return section


# --- the worker (a child process per variant) ------------------------------------------------


def _worker(variants: list[str], config: Config) -> list[dict[str, Any]]:
    import torch

    from trainer import methods, models

    torch.set_num_threads(config.threads)
    tokenizer = models.load_tokenizer(config.model_dir)
    # The recipe caps max_seq_len at the model's context; TRL truncates to the same.
    context = models.describe(Path(config.model_dir), "bench").context_length
    config = replace(config, max_seq_len=min(config.max_seq_len, context or config.max_seq_len))
    method = methods.DPO(beta=config.beta)
    train_data = method.load(config.train_file, tokenizer, config.max_seq_len, "", "train_file")
    eval_data = method.load(config.eval_file, tokenizer, config.max_seq_len, "", "eval_file")
    # Every batch full and no pair cut: TRL's sequential batches are then Tunewire's.
    assert train_data.n_truncated == train_data.n_dropped == 0, "shorten the data"
    assert len(train_data.pairs) % config.batch_size == 0, "a multiple of the batch"
    initial = _held_out(_fresh_adapter(config), method, eval_data, tokenizer.pad_token_id)
    out = []
    for variant in variants:
        runner = _run_tunewire if variant == "tunewire" else _run_trl
        sample, model = runner(config, train_data, tokenizer)
        held_out = _held_out(model, method, eval_data, tokenizer.pad_token_id)
        sample.update({f"valid_{name}": value for name, value in held_out.items()})
        sample.update(
            initial={f"valid_{name}": value for name, value in initial.items()},
            real_tokens=train_data.n_tokens,
            eval_pairs=len(eval_data.pairs),
            vocab=len(tokenizer),
            last_loss=sample["losses"][-1],
            steps=len(sample["losses"]),
        )
        out.append(sample)
        del model
    return out


def _fresh_adapter(config: Config) -> Any:
    import torch
    from peft import get_peft_model

    from trainer import lora, models

    base = models.load_causal_lm(config.model_dir, torch.float32)
    lora_config = lora.lora_config(
        base.config.model_type, "QV", config.lora_rank, config.lora_alpha, config.lora_dropout
    )
    with lora.peft_quietly():
        return get_peft_model(base, lora_config)


def _held_out(model: Any, method: Any, encoded: Any, pad_id: int) -> dict[str, float]:
    import torch

    from trainer.recipe import _evaluate

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return _evaluate(model, method, encoded, pad_id, 8, bf16)


def _plan(train_data: Any, config: Config) -> list[int]:
    """The pairs in the order Tunewire trains them, epoch after epoch."""
    from trainer import batching

    return [
        index
        for epoch in range(config.n_epochs)
        for batch in batching.plan_epoch(
            len(train_data.lengths), config.batch_size, config.seed, epoch
        )
        for index in batch
    ]


def _run_tunewire(config: Config, train_data: Any, tokenizer: Any) -> tuple[dict[str, Any], Any]:
    import torch
    from peft import PeftModel

    from trainer import models
    from trainer.args import TrainArgs
    from trainer.recipe import Callbacks, train

    marks: dict[str, Any] = {"losses": []}

    def on_start(_info: Any) -> None:
        marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()

    def on_metrics(*, train_loss: float, tokens_trained: int, **_: Any) -> None:
        marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()
        marks["tokens"] = tokens_trained
        marks["losses"].append(train_loss)

    with tempfile.TemporaryDirectory() as output:
        args = TrainArgs(
            base_model=config.model_dir,
            train_file=config.train_file,
            output_dir=output,
            method="dpo",
            beta=config.beta,
            n_epochs=config.n_epochs,
            batch_size=config.batch_size,
            learning_rate_multiplier=config.learning_rate / TrainArgs.base_learning_rate,
            lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            warmup_ratio=0.0,
            max_grad_norm=config.max_grad_norm,
            max_seq_len=config.max_seq_len,
            seed=config.seed,
            cpu_threads=config.threads,
        )
        with PeakRss(_pid()) as rss:
            result = train(args, Callbacks(on_start=on_start, on_metrics=on_metrics))
        base = models.load_causal_lm(config.model_dir, torch.float32)
        model = PeftModel.from_pretrained(base, result.adapter_dir)
    assert marks["tokens"] == train_data.n_tokens * config.n_epochs
    return _sample(marks, rss.peak, model), model


def _run_trl(config: Config, train_data: Any, tokenizer: Any) -> tuple[dict[str, Any], Any]:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trainer import data, lora, models

    rows = []
    for index in _plan(train_data, config):
        pair = train_data.pairs[index]
        chosen, rejected = pair.chosen, pair.rejected
        start = next(i for i, label in enumerate(chosen.labels) if label != data.IGNORE_INDEX)
        for sequence in (chosen, rejected):  # the output is everything after the prompt
            assert sequence.input_ids[:start] == chosen.input_ids[:start]
            assert sequence.labels[start:] == sequence.input_ids[start:]
        rows.append(
            {
                "prompt_ids": list(chosen.input_ids[:start]),
                "chosen_ids": list(chosen.input_ids[start:]),
                "rejected_ids": list(rejected.input_ids[start:]),
            }
        )
    losses: list[float] = []

    class Pretokenized(DPOTrainer):
        """TRL's trainer on ids it is given (its own tokenizing skipped), recording each
        training step's exact loss."""

        def _prepare_dataset(self, dataset: Any, *_args: Any, **_kwargs: Any) -> Any:
            return dataset

        def _compute_loss(self, model: Any, inputs: Any, return_outputs: bool) -> Any:
            out = super()._compute_loss(model, inputs, return_outputs)
            if self.model.training:
                losses.append(float((out[0] if return_outputs else out).detach()))
            return out

    marks: dict[str, Any] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *_args: Any, **_kwargs: Any) -> None:
            marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, *_args: Any, **_kwargs: Any) -> None:
            marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()

    cuda = torch.cuda.is_available()
    torch.manual_seed(config.seed)
    base = models.load_causal_lm(config.model_dir, torch.float32)
    lora_config = lora.lora_config(
        base.config.model_type, "QV", config.lora_rank, config.lora_alpha, config.lora_dropout
    )
    with tempfile.TemporaryDirectory() as output:
        arguments = DPOConfig(
            output_dir=output,
            per_device_train_batch_size=config.batch_size,
            num_train_epochs=1,  # the dataset holds every epoch's plan, in order
            learning_rate=config.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=config.max_grad_norm,
            beta=config.beta,
            max_length=config.max_seq_len,
            seed=config.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(),
            gradient_checkpointing=False,
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
        )
        trainer = Pretokenized(
            model=base,
            args=arguments,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=lora_config,
            callbacks=[Clock()],
        )
        trainer.remove_callback(PrinterCallback)
        with PeakRss(_pid()) as rss:
            trainer.train()
    marks.update(losses=losses, tokens=train_data.n_tokens * config.n_epochs)
    return _sample(marks, rss.peak, trainer.model), trainer.model


def _pid() -> int:
    import os

    return os.getpid()


def _sample(marks: dict[str, Any], peak_rss: int, model: Any) -> dict[str, Any]:
    seconds = marks["end"] - marks["start"]
    cpu_seconds = marks["cpu_end"] - marks["cpu_start"]
    base = model.get_base_model()
    return {
        "tokens_per_s": marks["tokens"] / seconds,
        "tokens_per_cpu_s": marks["tokens"] / cpu_seconds,
        "seconds": seconds,
        "losses": marks["losses"],
        "peak_rss_mib": peak_rss / 2**20,
        "parameters": sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="DPO benchmark worker")
    parser.add_argument("--worker", required=True, help="comma-separated variants")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--seed", type=int, help="overrides the config's seed")
    options = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    config = Config(**json.loads(options.config.read_text()))
    if options.seed is not None:
        config = replace(config, seed=options.seed)
    samples = _worker(options.worker.split(","), config)
    print(json.dumps({"samples": samples}), flush=True)


if __name__ == "__main__":
    main()
