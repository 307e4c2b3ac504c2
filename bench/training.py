"""Training throughput: Tunewire's LoRA recipe against a plain Hugging Face `Trainer` + peft.

Same model (a random-init Llama wide enough that matrix work dominates), same tokenized
data (synthetic chat with long-tailed lengths, tokenized once by `trainer.data` so both
see identical ids and assistant-only labels), same hyperparameters (1 epoch, batch 8,
LoRA r=8 / alpha=16 / dropout 0.05 on q,v, AdamW, linear decay to 0 (no warmup), grad
clip 1.0, same seed), same thread count. Baselines: `Trainer` with its default random
sampler and `DataCollatorForSeq2Seq` padding to the longest row (what a user writes for
pre-tokenized chat with -100 labels), the same with `group_by_length` (spelled
`train_sampling_strategy="group_by_length"` in transformers 5), and TRL's `SFTTrainer`
with `padding_free=True`. Quality is the held-out loss each run took away, over five seeds.

Every variant runs in a fresh process (so peak RSS is its own), after two untimed
forward/backward passes; variants are interleaved over the repeats. Timed: from the
start of the training loop to the end of the last optimizer step (model loading,
tokenization and final saves excluded on both sides). Computed and real tokens are
counted by wrapping each side's collate function, so they are what was actually run.
Final loss: token-mean loss of the trained model on a held-out chat set, computed by
the same function for every variant.

`python -m bench.training --worker VARIANT[,VARIANT] --config FILE` runs variants in
this process and prints one JSON line per variant (the runner's child entry point).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import workload
from bench.harness import (
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

NAME = "training"
TITLE = "Training throughput: LoRA recipe vs Hugging Face Trainer + peft"
VARIANTS = ("tunewire", "hf_default", "hf_group_by_length", "trl_padding_free")
LABELS = {
    "tunewire": "Tunewire recipe",
    "hf_default": "HF Trainer (default sampler + DataCollatorForSeq2Seq)",
    "hf_group_by_length": "HF Trainer, group_by_length",
    "trl_padding_free": "TRL SFTTrainer, padding_free",
}
GPU_VARIANTS = {
    "tunewire_checkpointed": ("activations recomputed", {"gradient_checkpointing": True}),
    "tunewire_fused_ce": ("fused linear cross-entropy", {"fused_linear_cross_entropy": True}),
}
"""The recipe's memory options, measured on a GPU against the plain recipe: what each
is, and the Config fields it sets."""
SEEDS = 5
"""Rounds of the full run, one seed each: held-out loss is compared over this many."""

# Peak dense bf16 tensor FLOP/s of GPUs the MFU row knows, by name fragment.
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
}


@dataclass(frozen=True)
class Config:
    model_dir: str
    train_file: str
    eval_file: str
    threads: int
    n_epochs: int = 1
    batch_size: int = 8
    learning_rate: float = 2e-3
    """10x the usual LoRA rate: a random-init base learns little in one epoch at 2e-4."""
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    warmup_ratio: float = 0.0
    """No warmup: the two warmups differ (transformers' first step runs at learning rate 0,
    the recipe's at peak / warmup steps), and over a short run that alone moves the final
    loss; without one both schedules are the same linear decay."""
    max_grad_norm: float = 1.0
    max_seq_len: int = 1024
    seed: int = 42
    gradient_checkpointing: bool = False
    """Tunewire's `tunewire_checkpointed` variant (a GPU run's): activations recomputed."""
    fused_linear_cross_entropy: bool = False
    """Tunewire's `tunewire_fused_ce` variant (a GPU run's): the loss without the logits."""


# --- the runner ------------------------------------------------------------------------------


def run(ctx: Context) -> Section:
    say = log(NAME)
    shape = workload.GPU_MODEL if ctx.gpu else ctx.scale(workload.BENCH_MODEL, workload.QUICK_MODEL)
    n_train = 512 if ctx.gpu else ctx.scale(96, 24)
    # On a GPU, also the recipe's memory options: activations recomputed, the loss fused.
    variants = (*VARIANTS, *GPU_VARIANTS) if ctx.gpu else VARIANTS
    model_dir = workload.bench_model(shape)
    config = Config(
        model_dir=str(model_dir),
        train_file=str(workload.chat_file(n_train, seed=1)),
        eval_file=str(workload.chat_file(128 if ctx.gpu else ctx.scale(48, 8), seed=2)),
        threads=ctx.threads,
    )
    config_path = ctx.work / "config.json"
    config_path.write_text(json.dumps(asdict(config)))
    env = child_env(ctx.threads)

    def child(variants: list[str], seed: int) -> list[dict[str, Any]]:
        argv = [
            sys.executable,
            "-m",
            "bench.training",
            "--worker",
            ",".join(variants),
            "--config",
            str(config_path),
            "--seed",
            str(seed),
        ]
        out = run_json(argv, env, timeout=ctx.scale(900, 120))
        return out["samples"]

    if ctx.quick:
        # One process for all three, to keep CI fast; figures are not meaningful.
        samples = {
            name: [sample]
            for name, sample in zip(variants, child(list(variants), config.seed), strict=True)
        }
    else:
        # Round r trains every variant with seed 42 + r: the spread over rounds is the
        # seed-to-seed noise the final losses are compared against.
        rounds = max(ctx.repeats, SEEDS)
        seeds = {name: iter(range(config.seed, config.seed + rounds)) for name in variants}
        samples = interleaved(
            {name: (lambda name=name: child([name], next(seeds[name]))[0]) for name in variants},
            repeats=rounds,
            warmup=0,
            log=say,
        )
    section = _section(ctx, config, shape, n_train, samples)
    section.repeats = len(samples["tunewire"])  # its seeds' rounds, not the default repeats
    return section


def _section(
    ctx: Context,
    config: Config,
    shape: workload.ModelShape,
    n_train: int,
    samples: dict[str, list[dict[str, Any]]],
) -> Section:
    ours = samples["tunewire"]
    first = ours[0]
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"Model: Llama from a config, random init, hidden {shape.hidden_size}, "
        f"{shape.num_hidden_layers} layers, {shape.num_attention_heads} heads "
        f"({shape.num_key_value_heads} KV), MLP {shape.intermediate_size}, vocab "
        f"{first['vocab']} (tiny-llama's tokenizer): {first['parameters'] / 1e6:.1f}M "
        "parameters, float32.",
        f"Data: {n_train} synthetic chat conversations (seeded; log-normal message lengths, "
        "half with a system prompt, 30% multi-turn), "
        f"{first['real_tokens']:,} tokens: median {first['length_median']}, p90 "
        f"{first['length_p90']}, max {first['length_max']} (max_seq_len "
        f"{config.max_seq_len}); held-out loss on {first['eval_examples']} more.",
        f"Hyperparameters (all four): {config.n_epochs} epoch, batch {config.batch_size}, "
        f"lr {config.learning_rate:g}, warmup {config.warmup_ratio:.0%}, linear decay, "
        f"AdamW, clip {config.max_grad_norm}, LoRA r={config.lora_rank} "
        f"alpha={config.lora_alpha} dropout={config.lora_dropout} on q_proj/v_proj, "
        f"torch threads {config.threads}; round r of the repeats uses seed {config.seed} + r "
        "for every variant (weights, dropout, data order), so the loss spread is seed noise.",
        "Baselines: " + "; ".join(f"{LABELS[v]}" for v in VARIANTS[1:]) + ". The HF "
        "Trainers pad each batch to its longest row; TRL lays each batch end to end in one "
        "row (position ids restarting per sequence, no padding), on the same token ids and "
        "labels. transformers' and TRL's defaults are left as they are (the "
        "adamw_torch_fused optimizer; LengthGroupedSampler's sort windows of "
        f"min(N / (4 x batch), 50) batches, {max(1, min(n_train // (4 * config.batch_size), 50))} "
        "here; TRL's per-step entropy and accuracy metrics) except where TRL's differ from "
        "transformers' (gradient checkpointing and bf16 off, as for the others).",
        "Tunewire: random batches, as HF's default sampler draws them, each split into "
        "micro-batches where padding would cost more than an extra forward/backward pass "
        "(on a CPU; a GPU packs each batch into one row instead: trainer.batching); the "
        "step's loss is the token mean over all its sequences. It used to sort batches by "
        "length in windows of 64 batches, which padded a little less and learned less: "
        "each step saw one kind of example.",
        "Timed: training loop only (first step start to last step end), fresh process per "
        "variant and repeat, 2 untimed forward/backward passes first, variants interleaved "
        f"over {len(ours)} repeat(s); medians. Tokens per CPU-second (process CPU time, "
        "1 thread) is the same work measured so that other load on the machine does not "
        "count.",
    ]
    tps = {v: median_of(samples[v], "tokens_per_s") for v in VARIANTS}
    default, grouped = tps["hf_default"], tps["hf_group_by_length"]
    speed_goals = (
        ("hf_default", ">= 1.8x", 1.8),
        ("hf_group_by_length", "> 1x", 1.0),
        ("trl_padding_free", "> 1x", 1.0),
    )
    for baseline, goal, need in speed_goals:
        ratio = tps["tunewire"] / tps[baseline] if tps[baseline] else None
        section.add(
            Figure(
                "real (non-padding) tokens/s",
                tps["tunewire"],
                tps[baseline],
                "tok/s",
                LABELS[baseline],
                goal=goal,
                met=None if ratio is None else (ratio >= need if need > 1 else ratio > need),
                spread=f"ours {spread_of(ours, 'tokens_per_s')}; "
                f"baseline {spread_of(samples[baseline], 'tokens_per_s')}",
            )
        )
    cpu = {v: median_of(samples[v], "tokens_per_cpu_s") for v in VARIANTS}
    for baseline in VARIANTS[1:]:
        section.add(
            Figure(
                "real tokens per CPU-second",
                cpu["tunewire"],
                cpu[baseline],
                "tok/s",
                LABELS[baseline],
                spread=f"ours {spread_of(ours, 'tokens_per_cpu_s')}; "
                f"baseline {spread_of(samples[baseline], 'tokens_per_cpu_s')}",
            )
        )
    padding = {v: median_of(samples[v], "computed_per_real") for v in VARIANTS}
    for baseline in VARIANTS[1:]:
        section.add(
            Figure(
                "computed tokens / real tokens",
                padding["tunewire"],
                padding[baseline],
                "",
                LABELS[baseline],
                higher_is_better=False,
                goal="ours <= 1.05",
                met=padding["tunewire"] <= 1.05 if padding["tunewire"] else None,
            )
        )
    # What training achieved: the held-out loss it took away, per seed. Absolute losses
    # hide a gap in it (7.69 vs 7.60 is "1%" of the loss but 15% of what was learned).
    reduction = {v: [s["initial_eval_loss"] - s["eval_loss"] for s in samples[v]] for v in VARIANTS}
    mine = reduction["tunewire"]
    initial = median_of(ours, "initial_eval_loss")
    for baseline in VARIANTS[1:]:
        theirs = reduction[baseline]
        noise = statistics.stdev(theirs) if len(theirs) > 1 else 0.0
        section.add(
            Figure(
                f"held-out loss reduction, mean of {len(mine)} seeds",
                statistics.mean(mine),
                statistics.mean(theirs),
                "nats/token",
                LABELS[baseline],
                goal="within the baseline's seed spread (1 s.d.)",
                met=abs(statistics.mean(mine) - statistics.mean(theirs)) <= noise,
                spread=f"ours {_mean_sd(mine)}; baseline {_mean_sd(theirs)}",
                note=f"untrained: {initial:.3f}",
            )
        )
    for baseline in VARIANTS[1:]:
        section.add(
            Figure(
                "mean train loss, last quarter of steps",
                median_of(ours, "late_train_loss"),
                median_of(samples[baseline], "late_train_loss"),
                "nats/token",
                LABELS[baseline],
                higher_is_better=False,
            )
        )
    rss = {v: median_of(samples[v], "peak_rss_mib") for v in VARIANTS}
    for baseline in VARIANTS[1:]:
        section.add(
            Figure(
                "peak RSS during training (whole process)",
                rss["tunewire"],
                rss[baseline],
                "MiB",
                LABELS[baseline],
                higher_is_better=False,
                goal="no worse (<= 1.02x)",
                met=rss["tunewire"] <= 1.02 * rss[baseline] if rss[baseline] else None,
            )
        )
    section.add(
        Figure(
            "optimizer steps per epoch",
            median_of(ours, "steps"),
            median_of(samples["hf_default"], "steps"),
            "",
            LABELS["hf_default"],
            higher_is_better=None,
        ),
        Figure(
            "forward/backward passes per epoch",
            median_of(ours, "micro_batches"),
            median_of(samples["hf_default"], "micro_batches"),
            "",
            LABELS["hf_default"],
            higher_is_better=None,
        ),
    )
    gpu = first.get("gpu")
    if gpu:
        for baseline in VARIANTS[1:]:
            section.add(
                Figure(
                    "model FLOPs utilisation (4N FLOPs per real token)",
                    median_of(ours, "mfu"),
                    median_of(samples[baseline], "mfu"),
                    "",
                    LABELS[baseline],
                    note=gpu,
                ),
                Figure(
                    "peak GPU memory",
                    median_of(ours, "peak_gpu_mib"),
                    median_of(samples[baseline], "peak_gpu_mib"),
                    "MiB",
                    LABELS[baseline],
                    higher_is_better=False,
                ),
            )
        for variant, (what, _) in GPU_VARIANTS.items():
            if measured := samples.get(variant):
                section.add(
                    Figure(
                        f"real tokens/s, {what}",
                        median_of(measured, "tokens_per_s"),
                        tps["tunewire"],
                        "tok/s",
                        "Tunewire recipe, neither",
                    ),
                    Figure(
                        f"peak GPU memory, {what}",
                        median_of(measured, "peak_gpu_mib"),
                        median_of(ours, "peak_gpu_mib"),
                        "MiB",
                        "Tunewire recipe, neither",
                        higher_is_better=False,
                    ),
                )
    else:
        section.add(
            Figure(
                "GPU model FLOPs utilisation (4N FLOPs/token)", None, note="no GPU on this machine"
            )
        )
    ratio_default = tps["tunewire"] / default if default else math.nan
    ratio_grouped = tps["tunewire"] / grouped if grouped else math.nan
    trl = tps["trl_padding_free"]
    ratio_trl = tps["tunewire"] / trl if trl else math.nan
    learned = statistics.mean(mine) / statistics.mean(reduction["hf_default"])
    section.summary = (
        f"{tps['tunewire']:.0f} real tok/s: {ratio_default:.2f}x HF default "
        f"(goal >= 1.8x), {ratio_grouped:.2f}x HF group_by_length, {ratio_trl:.2f}x TRL "
        f"padding-free (goals > 1x); held-out loss reduction {learned:.3f}x HF default's "
        f"over {len(mine)} seeds; computed/real {padding['tunewire']:.3f} (goal <= 1.05)."
    )
    return section


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


# --- the worker (a child process per variant) ------------------------------------------------


def _worker(variants: list[str], config: Config) -> list[dict[str, Any]]:
    import torch

    from trainer import data, models

    torch.set_num_threads(config.threads)
    cuda = torch.cuda.is_available()
    tokenizer = models.load_tokenizer(config.model_dir)
    train_data = data.load_file(config.train_file, tokenizer, config.max_seq_len)
    eval_data = data.load_file(config.eval_file, tokenizer, config.max_seq_len)
    _warm_up(config)
    out = []
    for variant in variants:
        torch.manual_seed(config.seed)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if variant == "tunewire":
            sample, model = _run_tunewire(config)
        elif variant in GPU_VARIANTS:
            sample, model = _run_tunewire(replace(config, **GPU_VARIANTS[variant][1]))
        elif variant == "trl_padding_free":
            sample, model = _run_trl(config, train_data)
        else:
            sample, model = _run_hf(config, train_data, group=variant == "hf_group_by_length")
        sample["eval_loss"] = _eval_loss(model, eval_data.sequences, tokenizer.pad_token_id)
        lengths = sorted(train_data.lengths)
        sample.update(
            real_tokens=sum(lengths),
            length_median=lengths[len(lengths) // 2],
            length_p90=lengths[int(0.9 * (len(lengths) - 1))],
            length_max=lengths[-1],
            eval_examples=len(eval_data.sequences),
            vocab=len(tokenizer),
        )
        out.append(sample)
        del model
    base = models.load_causal_lm(config.model_dir, torch.float32)
    initial = _eval_loss(base, eval_data.sequences, tokenizer.pad_token_id)
    for sample in out:
        sample["initial_eval_loss"] = initial
    return out


def _warm_up(config: Config) -> None:
    """Two untimed forward/backward passes on a LoRA-wrapped copy of the model: thread
    pools, allocator and kernel caches warm before either side is timed."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer import models

    model = models.load_causal_lm(config.model_dir, torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(0, model.config.vocab_size, (config.batch_size, 64))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()


class _Counting:
    """Counts computed (padded) and real tokens of each batch a collate function builds."""

    def __init__(self) -> None:
        self.computed = 0
        self.real = 0
        self.batches = 0

    def add(self, input_ids: Any, attention_mask: Any) -> None:
        """`attention_mask` None: a packed row, all of it real."""
        self.computed += int(input_ids.numel())
        self.real += int(input_ids.numel() if attention_mask is None else attention_mask.sum())
        self.batches += 1


def _run_tunewire(config: Config) -> tuple[dict[str, Any], Any]:
    import torch
    from peft import PeftModel

    from trainer import batching, models
    from trainer.args import TrainArgs
    from trainer.recipe import Callbacks, train

    counting = _Counting()
    collate, pack = batching.collate, batching.pack

    def counting_calls(build: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> batching.Batch:
            batch = build(*args, **kwargs)
            counting.add(batch.input_ids, batch.attention_mask)
            return batch

        return counted

    marks: dict[str, Any] = {"losses": []}

    def on_start(_info: Any) -> None:
        marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()

    def on_metrics(*, step: int, train_loss: float, tokens_trained: int, **_: Any) -> None:
        marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()
        marks["tokens"] = tokens_trained
        marks["losses"].append(train_loss)

    with tempfile.TemporaryDirectory() as output:
        args = TrainArgs(
            base_model=config.model_dir,
            train_file=config.train_file,
            output_dir=output,
            n_epochs=config.n_epochs,
            batch_size=config.batch_size,
            learning_rate_multiplier=config.learning_rate / TrainArgs.base_learning_rate,
            lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            warmup_ratio=config.warmup_ratio,
            max_grad_norm=config.max_grad_norm,
            max_seq_len=config.max_seq_len,
            seed=config.seed,
            cpu_threads=config.threads,
            gradient_checkpointing=config.gradient_checkpointing,
            fused_linear_cross_entropy=config.fused_linear_cross_entropy,
        )
        batching.collate, batching.pack = counting_calls(collate), counting_calls(pack)
        try:
            with PeakRss(_pid()) as rss:
                result = train(args, Callbacks(on_start=on_start, on_metrics=on_metrics))
        finally:
            batching.collate, batching.pack = collate, pack
        base = models.load_causal_lm(config.model_dir, torch.float32)
        model = PeftModel.from_pretrained(base, result.adapter_dir)
    return (
        _sample(
            marks["tokens"],
            marks,
            counting,
            marks["losses"],
            result.steps,
            rss.peak,
            _parameters(model),
            torch.cuda.is_available(),
        ),
        model,
    )


def _run_hf(config: Config, train_data: Any, group: bool) -> tuple[dict[str, Any], Any]:
    import torch
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from trainer import models

    tokenizer = models.load_tokenizer(config.model_dir)
    rows = [
        {
            "input_ids": list(s.input_ids),
            "attention_mask": [1] * len(s.input_ids),
            "labels": list(s.labels),
        }
        for s in train_data.sequences
    ]

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, index: int) -> dict[str, list[int]]:
            return rows[index]

    counting = _Counting()
    pad = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = pad(features)
        counting.add(batch["input_ids"], batch["attention_mask"])
        return batch

    marks: dict[str, Any] = {"losses": [], "steps": 0}

    model = AutoModelForCausalLM.from_pretrained(config.model_dir, dtype=torch.float32)
    model = get_peft_model(model, _lora(config))
    with tempfile.TemporaryDirectory() as output:
        arguments = TrainingArguments(
            **_run_arguments(config, output),
            train_sampling_strategy="group_by_length" if group else "random",
        )
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=Rows(),
            data_collator=collate,
            callbacks=[_clock(marks)],
        )
        # logging_steps=1 is only for the loss curve: printing it would be extra work.
        trainer.remove_callback(PrinterCallback)
        with PeakRss(_pid()) as rss:
            trainer.train()
    return (
        _sample(
            counting.real,
            marks,
            counting,
            marks["losses"],
            marks["steps"],
            rss.peak,
            _parameters(model),
            torch.cuda.is_available(),
        ),
        model,
    )


def _run_trl(config: Config, train_data: Any) -> tuple[dict[str, Any], Any]:
    """TRL's SFTTrainer on the same token ids and labels, padding-free: each batch one row,
    position ids restarting per sequence (what `trainer.batching.pack` does on a GPU)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from trainer import models

    tokenizer = models.load_tokenizer(config.model_dir)
    rows = Dataset.from_list(
        [{"input_ids": list(s.input_ids), "labels": list(s.labels)} for s in train_data.sequences]
    )
    counting = _Counting()

    marks: dict[str, Any] = {"losses": [], "steps": 0}

    model = AutoModelForCausalLM.from_pretrained(config.model_dir, dtype=torch.float32)
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as output:
        arguments = SFTConfig(
            **_run_arguments(config, output),
            # TRL's own default differs from transformers' here: the same run as the others.
            gradient_checkpointing=False,
            padding_free=True,
            max_length=None,  # the sequences are already cut to max_seq_len
        )
        trainer = SFTTrainer(
            model=model,
            args=arguments,
            train_dataset=rows,
            processing_class=tokenizer,
            peft_config=_lora(config),
            callbacks=[_clock(marks)],
        )
        trainer.remove_callback(PrinterCallback)
        # TRL refuses a collator of ours with padding_free: count around its own.
        flatten = trainer.data_collator

        def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
            batch = flatten(features)
            counting.add(batch["input_ids"], None)
            return batch

        trainer.data_collator = collate
        with PeakRss(_pid()) as rss:
            trainer.train()
        model = trainer.model
    return (
        _sample(
            counting.real,
            marks,
            counting,
            marks["losses"],
            marks["steps"],
            rss.peak,
            _parameters(model),
            cuda,
        ),
        model,
    )


def _run_arguments(config: Config, output: str) -> dict[str, Any]:
    """What the HF and TRL peers' training arguments share: the run every variant makes
    (transformers' TrainingArguments, which TRL's SFTConfig extends)."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "output_dir": output,
        "per_device_train_batch_size": config.batch_size,
        "num_train_epochs": config.n_epochs,
        "learning_rate": config.learning_rate,
        "warmup_steps": config.warmup_ratio,
        "lr_scheduler_type": "linear",
        "weight_decay": 0.0,
        "max_grad_norm": config.max_grad_norm,
        "seed": config.seed,
        # logging_steps=1 is only for the loss curve (the Trainer's printer is removed).
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "dataloader_num_workers": 0,
    }


def _lora(config: Config) -> Any:
    """The peers' adapter: the recipe's default preset (q, v) at the run's rank."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )


def _clock(marks: dict[str, Any]) -> Any:
    """A Trainer callback (HF's and TRL's) that marks the loop's start and end, wall and
    CPU, its steps and its logged losses in `marks`."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, *_args: Any, **_kwargs: Any) -> None:
            marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, _args: Any, state: Any, *_rest: Any, **_kwargs: Any) -> None:
            marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()
            marks["steps"] = state.global_step

        def on_log(self, *_args: Any, logs: dict[str, float] | None = None, **_kw: Any) -> None:
            if logs and "loss" in logs:
                marks["losses"].append(logs["loss"])

    return Clock()


def _pid() -> int:
    import os

    return os.getpid()


def _parameters(model: Any) -> dict[str, int]:
    """All base parameters, and those a token's matrix products touch (no embedding)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total = sum(p.numel() for name, p in base.named_parameters() if "lora_" not in name)
    embedding = base.get_input_embeddings().weight.numel()
    return {"total": total, "matmul": total - embedding}


def _sample(
    tokens: int,
    marks: dict[str, Any],
    counting: _Counting,
    losses: list[float],
    steps: int,
    peak_rss: int,
    parameters: dict[str, int],
    cuda: bool,
) -> dict[str, Any]:
    quarter = losses[-max(1, len(losses) // 4) :]
    seconds = marks["end"] - marks["start"]
    cpu_seconds = marks["cpu_end"] - marks["cpu_start"]
    sample: dict[str, Any] = {
        "tokens_per_s": tokens / seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "computed_per_real": counting.computed / counting.real,
        "micro_batches": counting.batches,
        "steps": steps,
        "late_train_loss": sum(quarter) / len(quarter),
        "peak_rss_mib": peak_rss / 2**20,
        "parameters": parameters["total"],
        "gpu": None,
    }
    if cuda:
        import torch

        name = torch.cuda.get_device_name()
        peak = next((flops for key, flops in PEAK_BF16.items() if key in name), None)
        # Useful work only: padding computed is not model FLOPs.
        flops = 4 * parameters["matmul"] * counting.real / seconds
        sample.update(
            gpu=name,
            model_flops_per_s=flops,
            mfu=flops / peak if peak else None,
            peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20,
        )
    return sample


def _eval_loss(model: Any, sequences: list[Any], pad_id: int, batch_size: int = 8) -> float:
    """Token-mean loss over the label tokens of `sequences` (position i predicts i + 1)."""
    import torch
    import torch.nn.functional as F

    from trainer import batching

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    total, count = 0.0, 0
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].input_ids))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = batching.collate(
                [sequences[i] for i in order[start : start + batch_size]], pad_id
            ).to(device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            total += F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                batch.labels[:, 1:].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            ).item()
            count += int((batch.labels[:, 1:] != -100).sum())
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description="training benchmark worker")
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
