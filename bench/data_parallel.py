"""One job on two processes: `torchrun` with two data-parallel ranks of the recipe (gloo,
one torch thread each) against the same run in one process, on this machine's CPUs.

Both runs take the same arguments (model, data, global batch, seed, LoRA dropout 0 so the
runs are the same run); each is a fresh process tree (`python -m trainer train`). Timed:
the training loop's own tokens/s per step, as rank 0 reports it (real tokens of the whole
step over the step's wall time), median over the steps after the first; the final loss
of both must agree, or the comparison would be of two different runs.
"""

from __future__ import annotations

import json
import re
import socket
import statistics
import subprocess
import sys
from pathlib import Path

from bench import workload
from bench.harness import REPO, Context, Figure, Section, child_env, interleaved, log, median_of

NAME = "data_parallel"
TITLE = "One job on two processes (torchrun, gloo) vs one process"
STEP = re.compile(r"^step (\d+)/\d+ .* loss (\S+) .* (\d+) tok/s$", re.MULTILINE)
TORCHRUN = Path(sys.executable).parent / "torchrun"


def run(ctx: Context) -> Section:
    say = log(NAME)
    shape = ctx.scale(workload.BENCH_MODEL, workload.QUICK_MODEL)
    model = workload.bench_model(shape)
    train_file = workload.chat_file(ctx.scale(128, 16), seed=8)
    args = {
        "base_model": str(model),
        "train_file": str(train_file),
        "n_epochs": 1,
        "batch_size": 8,
        "learning_rate_multiplier": 10,
        "lora_dropout": 0.0,
        "seed": 3,
        "cpu_threads": ctx.threads,
    }
    variants = {
        "two ranks": lambda: _train(ctx, args, ranks=2),
        "one process": lambda: _train(ctx, args, ranks=1),
    }
    samples = interleaved(variants, ctx.repeats, warmup=0, log=say)
    return _section(ctx, shape, args, samples)


def _train(ctx: Context, args: dict, ranks: int) -> dict[str, float]:
    out = ctx.work / f"run-{ranks}"
    spec = ctx.work / f"args-{ranks}.json"
    spec.write_text(json.dumps({**args, "output_dir": str(out)}), encoding="utf-8")
    if ranks == 1:
        launcher = [sys.executable]
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        launcher = [
            str(TORCHRUN),
            *("--nnodes", "1", "--nproc-per-node", str(ranks)),
            *("--master-addr", "127.0.0.1", "--master-port", str(port)),
        ]
    done = subprocess.run(
        [*launcher, "-m", "trainer", "train", str(spec)],
        cwd=REPO,
        env=child_env(ctx.threads),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{ranks} rank(s) failed: {done.stderr[-2000:]}")
    steps = [(int(s), float(loss), float(rate)) for s, loss, rate in STEP.findall(done.stderr)]
    if len(steps) < 2:
        raise RuntimeError(f"too few steps reported: {done.stderr[-2000:]}")
    return {
        "tokens_per_s": statistics.median(rate for _, _, rate in steps[1:]),
        "final_loss": steps[-1][1],
        "steps": len(steps),
    }


def _section(ctx: Context, shape: workload.ModelShape, args: dict, samples: dict) -> Section:
    med = {name: {k: median_of(rows, k) for k in rows[0]} for name, rows in samples.items()}
    two, one = med["two ranks"], med["one process"]
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"Model: the {shape.hidden_size}-wide, {shape.num_hidden_layers}-layer benchmark "
        f"Llama ({shape.key}); {ctx.scale(128, 16)} synthetic chat examples, 1 epoch, global "
        f"batch {args['batch_size']}, seed {args['seed']}, LoRA dropout 0, "
        f"{ctx.threads} torch thread(s) per process.",
        "Two ranks: `torchrun --nproc-per-node 2 -m trainer train` (gloo on 127.0.0.1); each "
        "trains every other micro-batch of each step and the gradients are summed. One "
        "process: `python -m trainer train` on the same arguments.",
        f"Timed: rank 0's tokens/s per step (median, first step excluded); "
        f"{ctx.repeats} interleaved repeat(s), medians.",
    ]
    section.add(
        Figure(
            "real tokens/s (whole step)",
            two["tokens_per_s"],
            one["tokens_per_s"],
            "tok/s",
            "one process",
            spread=_spread(samples, "tokens_per_s"),
        ),
        Figure(
            "final train loss",
            two["final_loss"],
            one["final_loss"],
            "nats",
            "one process",
            higher_is_better=None,
            note="the same run: equal within float summation order",
        ),
    )
    ratio = two["tokens_per_s"] / one["tokens_per_s"]
    section.summary = (
        f"Two ranks train {two['tokens_per_s']:.0f} tok/s vs {one['tokens_per_s']:.0f} in one "
        f"process ({ratio:.2f}x on {ctx.threads}-thread processes), final loss "
        f"{two['final_loss']:.4f} vs {one['final_loss']:.4f}."
    )
    section.notes = [
        "GPU (NCCL, one GPU per rank) is the same code with another backend; it is verified "
        "only on a machine with GPUs: run this benchmark there whenever one is available.",
    ]
    return section


def _spread(samples: dict, key: str) -> str:
    return "; ".join(
        f"{name} {min(r[key] for r in rows):.0f}-{max(r[key] for r in rows):.0f}"
        for name, rows in samples.items()
    )
