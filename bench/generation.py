"""Generation speed: Tunewire's generator, in-process and through a real `tunewire up`,
against Hugging Face `model.generate`, merged and with a LoRA adapter; and many adapters
of one base interleaved against one.

One adapter, trained for real: a job through the service's API (QKVO_FFN, a checkpoint
every step), so its B weights are non-zero and each step's checkpoint is a different
fine-tuned model of the same base. Its merge (`trainer.merge.merge_adapter`) is a second
base model in the server's models dir.

Every variant decodes greedily from the same chat prompt, rendered by the model's chat
template, a fixed number of new tokens: HF with `min_new_tokens` so EOS never ends it
early, Tunewire with `max_tokens` (its usage says how many came; a random model never
picked EOS here). Tokens per second are new tokens over the time of the whole call,
prompt included, on both sides.

1. In-process, merged: HF `generate` on the merged model vs `Generator.generate(merged,
   None, ...)`; process CPU time of this process (torch threads fixed), interleaved.
2. In-process, adapter: HF `generate` on `PeftModel.from_pretrained(base, adapter)`
   (unmerged) vs `Generator.generate(base, adapter, ...)`; the same way.
3. Through the service: `ModelService.Generate` over gRPC on the merged base model and
   on the fine-tuned model, wall time on the client from the call to the last reply,
   against HF's wall time for the same tokens in this process, interleaved.
4. Many adapters: the same number of Generate calls on 8 fine-tuned models (a step's
   checkpoint each) round-robin vs all on 1, one at a time and 8 at once; wall time.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

from bench import workload
from bench.harness import (
    Context,
    Figure,
    Section,
    interleaved,
    log,
    median_of,
    set_threads,
    spread_of,
)
from bench.servers import tunewire_up, wait_job

NAME = "generation"
TITLE = "Generation: Tunewire's generator and Generate vs HF generate, merged and adapter"
ADAPTERS = 8
HYPERPARAMETERS = {
    "n_epochs": 1,
    "batch_size": 2,
    "learning_rate_multiplier": 10.0,
    "checkpoint_every_steps": 1,
}
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."},
]
GOAL_MERGED = 1.0
GOAL_ADAPTER = 0.95


def run(ctx: Context) -> Section:
    import grpc

    from bridge.cli.client import Client

    say = log(NAME)
    set_threads(ctx.threads)
    shape = workload.GPU_MODEL if ctx.gpu else ctx.scale(workload.BENCH_MODEL, workload.QUICK_MODEL)
    tokens = ctx.scale(128, 16)
    models_dir = ctx.work / "models"
    shutil.rmtree(models_dir, ignore_errors=True)
    models_dir.mkdir(parents=True)
    # Copied, not linked: a symlink out of the models dir is refused.
    base = Path(shutil.copytree(workload.bench_model(shape), models_dir / shape.key))
    with tunewire_up(ctx.work / "home", models_dir, ctx.threads) as server:
        client = Client(server.address, server.key)
        try:
            model, checkpoints = _train(client, shape.key, ctx)
            adapter = _adapter_dir(server.home, model)
            merged = _merge(base, adapter, models_dir / f"{shape.key}-merged")
            say(f"trained {model} ({len(checkpoints)} checkpoint models), merged")
            hf = _Hf(base, adapter, merged, tokens)
            ours = _Ours(tokens)
            rounds = ctx.repeats * ctx.scale(2, 1)  # a call is about a second: noisy
            # CPU time where both run on one core; a GPU's work is not the process's.
            timed = _wall if ctx.gpu else _cpu_time
            in_process = interleaved(
                {
                    "hf merged": lambda: timed(lambda: hf.generate(hf.merged)),
                    "tunewire merged": lambda: timed(lambda: ours.generate(merged, None)),
                    "hf adapter": lambda: timed(lambda: hf.generate(hf.peft)),
                    "tunewire adapter": lambda: timed(lambda: ours.generate(base, adapter)),
                },
                rounds,
                log=say,
            )
            service = _Service(client, tokens)
            through = interleaved(
                {
                    "hf merged": lambda: _wall(lambda: hf.generate(hf.merged)),
                    "service merged": lambda: _wall(lambda: service.one(merged.name)),
                    "hf adapter": lambda: _wall(lambda: hf.generate(hf.peft)),
                    "service adapter": lambda: _wall(lambda: service.one(model)),
                },
                rounds,
                log=say,
            )
            many = checkpoints[:ADAPTERS]
            calls = len(many)
            fanout = interleaved(
                {
                    "1 adapter, one at a time": lambda: service.sequential([model] * calls),
                    f"{len(many)} adapters, one at a time": lambda: service.sequential(
                        (many * calls)[:calls]
                    ),
                    "1 adapter, 8 at once": lambda: service.concurrent([model] * calls),
                    f"{len(many)} adapters, 8 at once": lambda: service.concurrent(
                        (many * calls)[:calls]
                    ),
                },
                ctx.repeats,
                log=say,
            )
        except grpc.RpcError as error:
            raise RuntimeError(f"{error.code().name}: {error.details()}") from error
        finally:
            client.close()
    return _section(ctx, shape, tokens, len(many), calls, in_process, through, fanout)


# --- setup -----------------------------------------------------------------------------------


def _train(client: Any, base_model: str, ctx: Context) -> tuple[str, list[str]]:
    """A real job through the API: its fine-tuned model and the checkpoint models."""
    from tunewire.v1 import files_pb2, jobs_pb2

    meta = client.metadata
    train_file = workload.chat_file(2 * ADAPTERS, seed=6)
    uploaded = client.upload(train_file, files_pb2.File.PURPOSE_FINE_TUNE, "train.jsonl")
    hp = jobs_pb2.Hyperparameters(
        **HYPERPARAMETERS, target_modules=jobs_pb2.Hyperparameters.TARGET_MODULES_QKVO_FFN
    )
    job = client.jobs.CreateJob(
        jobs_pb2.CreateJobRequest(
            job=jobs_pb2.Job(
                base_model=base_model, training_file=uploaded.id, seed=1, hyperparameters=hp
            )
        ),
        metadata=meta,
        timeout=60,
    )
    done = wait_job(client.jobs, meta, job.id, timeout=ctx.scale(600, 150))
    if done.state != jobs_pb2.Job.STATE_SUCCEEDED:
        raise RuntimeError(f"the training job ended {jobs_pb2.Job.State.Name(done.state)}")
    listed = client.jobs.ListCheckpoints(
        jobs_pb2.ListCheckpointsRequest(job_id=job.id, page_size=100), metadata=meta, timeout=60
    )
    return done.fine_tuned_model, [c.model for c in listed.checkpoints]


def _adapter_dir(home: Path, model: str) -> Path:
    """The fine-tuned model's adapter where the server keeps it (its local blob store)."""
    import sqlite3

    with sqlite3.connect(f"file:{home / 'tunewire.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT adapter_path FROM models WHERE id = ?", [model]).fetchone()
    if row is None:
        raise RuntimeError(f"model {model!r} is not in the server's database")
    return home / "blobs" / row[0]


def _merge(base: Path, adapter: Path, out: Path) -> Path:
    from trainer.merge import merge_adapter

    return merge_adapter(base, adapter, out)


# --- the variants ----------------------------------------------------------------------------


class _Hf:
    """The baseline: transformers' `generate`, greedy, exactly `tokens` new tokens."""

    def __init__(self, base: Path, adapter: Path, merged: Path, tokens: int) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokens = tokens
        tokenizer = AutoTokenizer.from_pretrained(merged)
        text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
        self.ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        # Where and in what precision Tunewire's generator runs (trainer.generation).
        cuda = torch.cuda.is_available()
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
        device = "cuda" if cuda else "cpu"
        self.ids = self.ids.to(device)
        load = AutoModelForCausalLM.from_pretrained
        self.merged = load(merged, dtype=dtype).to(device).eval()
        self.peft = PeftModel.from_pretrained(load(base, dtype=dtype), adapter).to(device).eval()

    def generate(self, model: Any) -> int:
        import torch

        with torch.inference_mode():
            out = model.generate(
                **self.ids,
                max_new_tokens=self.tokens,
                min_new_tokens=self.tokens,
                do_sample=False,
            )
        return out.shape[1] - self.ids["input_ids"].shape[1]


class _Ours:
    """Tunewire's generator in this process, as the inference worker calls it."""

    def __init__(self, tokens: int) -> None:
        from trainer.generation import Generator, SamplingParams

        self.generator = Generator()
        self.params = SamplingParams(max_tokens=tokens, temperature=0)

    def generate(self, model: Path, adapter: Path | None) -> int:
        chunks = list(self.generator.generate(model, adapter, MESSAGES, self.params))
        usage = chunks[-1].usage
        assert usage is not None
        return usage.completion_tokens


class _Service:
    """`ModelService.Generate` over gRPC, read to the end by this client."""

    def __init__(self, client: Any, tokens: int) -> None:
        self.client = client
        self.tokens = tokens

    def one(self, model: str) -> int:
        from tunewire.v1 import models_pb2

        request = models_pb2.GenerateRequest(
            model_id=model,
            messages=[models_pb2.ChatMessage(**m) for m in MESSAGES],
            max_tokens=self.tokens,
            temperature=0,
        )
        replies = list(
            self.client.models.Generate(request, metadata=self.client.metadata, timeout=600)
        )
        return replies[-1].usage.completion_tokens

    def sequential(self, models: list[str]) -> dict[str, float]:
        return _wall(lambda: sum(self.one(m) for m in models))

    def concurrent(self, models: list[str]) -> dict[str, float]:
        produced = [0] * len(models)

        def call(i: int) -> None:
            produced[i] = self.one(models[i])

        def all_at_once() -> int:
            threads = [threading.Thread(target=call, args=(i,)) for i in range(len(models))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return sum(produced)

        return _wall(all_at_once)


def _cpu_time(generate: Any) -> dict[str, float]:
    started = time.process_time()
    tokens = generate()
    seconds = time.process_time() - started
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def _wall(generate: Any) -> dict[str, float]:
    import torch

    started = time.perf_counter()
    tokens = generate()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


# --- the report ------------------------------------------------------------------------------


def _section(
    ctx: Context,
    shape: workload.ModelShape,
    tokens: int,
    adapters: int,
    calls: int,
    in_process: dict[str, list[dict[str, float]]],
    through: dict[str, list[dict[str, float]]],
    fanout: dict[str, list[dict[str, float]]],
) -> Section:
    def rate(samples: dict[str, list[dict[str, float]]], name: str) -> float | None:
        return median_of(samples[name], "tokens_per_s")

    def pair(
        samples: dict[str, list[dict[str, float]]],
        metric: str,
        ours: str,
        baseline: str,
        baseline_name: str,
        unit: str,
        goal: float | None = None,
        note: str = "",
    ) -> Figure:
        figure = Figure(
            metric,
            rate(samples, ours),
            rate(samples, baseline),
            unit,
            baseline_name,
            spread=f"{spread_of(samples[ours], 'tokens_per_s')} vs "
            f"{spread_of(samples[baseline], 'tokens_per_s')}".strip(" vs"),
            note=note,
        )
        if goal is not None and figure.ratio is not None:
            figure.goal = f">= {goal:g}x"
            figure.met = figure.ratio >= goal
        return figure

    cpu, wall = "tok/CPU-s", "tok/s"
    figures = [
        pair(
            in_process,
            "in-process, merged",
            "tunewire merged",
            "hf merged",
            "HF generate, merged",
            cpu,
            GOAL_MERGED,
        ),
        pair(
            in_process,
            "in-process, adapter",
            "tunewire adapter",
            "hf adapter",
            "HF generate, PeftModel",
            cpu,
            GOAL_ADAPTER,
        ),
        pair(
            through,
            "Generate through the service, merged",
            "service merged",
            "hf merged",
            "HF generate, merged",
            wall,
            GOAL_MERGED,
            "client wall time: worker -> control plane -> client",
        ),
        pair(
            through,
            "Generate through the service, adapter",
            "service adapter",
            "hf adapter",
            "HF generate, PeftModel",
            wall,
            GOAL_ADAPTER,
            "client wall time: worker -> control plane -> client",
        ),
    ]
    many_seq, many_par = f"{adapters} adapters, one at a time", f"{adapters} adapters, 8 at once"
    figures += [
        pair(
            fanout,
            f"{adapters} adapters round-robin vs 1, one at a time",
            many_seq,
            "1 adapter, one at a time",
            "1 adapter, one at a time",
            wall,
        ),
        pair(
            fanout,
            f"{adapters} adapters vs 1, 8 requests at once",
            many_par,
            "1 adapter, 8 at once",
            "1 adapter, 8 at once",
            wall,
        ),
    ]
    section = Section(name=NAME, title=TITLE)
    section.add(*figures)
    section.notes = [
        "Through the service each token is one message from the inference worker to the "
        "control plane and on to the client: CPU time that shares the cores with the "
        "forward passes, where HF's loop runs alone.",
        "Adapter to adapter, the generator switches each layer's active adapter itself "
        "rather than by peft's set_adapter, which walks every module and re-freezes every "
        "loaded adapter (8 ms a switch with 9 loaded, more than a forward pass here): "
        "before that, 8 adapters at once ran at 0.50x the tokens/s of 1.",
    ]
    section.method = [
        f"Model: the {shape.hidden_size}-wide, {shape.num_hidden_layers}-layer benchmark "
        f"Llama ({shape.key}); adapter: a real job through the API (QKVO_FFN, rank 8, "
        f"{2 * ADAPTERS} examples, batch 2, a checkpoint every step), merged for the "
        "merged variants.",
        f"Greedy decoding of {tokens} new tokens from a {len(MESSAGES)}-message chat prompt "
        "(the chat template's rendering); HF with min_new_tokens = max_new_tokens; tokens "
        "per second over the whole call, prompt included.",
        "In-process: this process's CPU time (torch threads "
        f"{ctx.threads}); service: the client's wall time per Generate call, HF's wall time "
        "in this process as the baseline, interleaved with it.",
        f"Many adapters: {calls} Generate calls per variant, round-robin over {adapters} "
        "checkpoint models of the job vs all on its final model; one at a time, and all at "
        "once from as many client threads.",
        f"Variants interleaved after a warm-up, medians: {ctx.repeats * ctx.scale(2, 1)} "
        f"rounds in-process and through the service, {ctx.repeats} of many adapters.",
    ]
    parts = []
    for figure in figures[:4]:
        if figure.ratio is not None:
            verdict = "" if figure.met is None else (" met" if figure.met else " MISSED")
            parts.append(f"{figure.metric} {figure.ratio:.2f}x ({figure.goal}{verdict})")
    for figure in figures[4:]:
        if figure.ratio is not None:
            parts.append(f"{figure.metric}: {figure.ratio:.2f}x the tokens/s")
    section.summary = "; ".join(parts) + "."
    return section
