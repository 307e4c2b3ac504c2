"""ONNX: `trainer.onnx_export.export_adapter` on a trained adapter (export time), then the
merged model in onnxruntime (float32 and int8) against torch eager on the same merged
weights: batch-1 latency of a 128-token prompt, greedy generation tokens/s with the KV
cache, and the logit difference and top-1 agreement on held-out chat text.

The adapter is trained first with the recipe (the benchmark Llama, a few steps at a high
rate so the merge really changes the weights). Both runtimes use the same thread count
(torch.set_num_threads; onnxruntime intra-op threads, inter-op 1). Latency: the prompt
run from an empty cache, producing logits and the cache on both sides. Generation: the
same greedy loop for both (prefill, then one token at a time feeding the cache back).
Variants interleaved after a warm-up run each; medians.

Beside them, the float32 latency floor: a graph of the model's Linear layers alone (each a
MatMul on its own 128-token input, nothing else) in onnxruntime with the same options. No
float32 graph of the whole model can run faster, so torch eager over it is the most any
float32 export can reach on this machine.
"""

from __future__ import annotations

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

NAME = "onnx"
TITLE = "ONNX export and onnxruntime (fp32, int8) vs torch eager"
PROMPT = 128
NEW_TOKENS = 64


def run(ctx: Context) -> Section:
    say = log(NAME)
    import numpy as np
    import torch

    from trainer import data
    from trainer.merge import load_merged
    from trainer.onnx_export import INT8_FILE, ONNX_FILE, export_adapter

    set_threads(ctx.threads)
    shape = ctx.scale(workload.BENCH_MODEL, workload.QUICK_MODEL)
    base = workload.bench_model(shape)
    adapter = _train_adapter(ctx, base)
    out = ctx.work / "export"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    phases: list[tuple[float, str]] = []
    started = time.perf_counter()
    export = export_adapter(
        base,
        adapter,
        out,
        quantize_int8=True,
        on_event=lambda message, _data: phases.append((time.perf_counter(), message)),
    )
    export_seconds = time.perf_counter() - started
    say(f"exported in {export_seconds:.1f} s")
    set_threads(ctx.threads)  # the export may have changed it

    model, tokenizer = load_merged(base, adapter, torch.float32)
    model.eval()
    sessions = {
        "onnx fp32": _session(out / ONNX_FILE, ctx.threads),
        "onnx int8": _session(out / INT8_FILE, ctx.threads),
    }
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    prompt = rng.integers(0, vocab, (1, PROMPT), dtype=np.int64)
    held_out = data.load_file(workload.chat_file(ctx.scale(16, 4), seed=5), tokenizer, 256)
    gen_prompt = np.array([held_out.sequences[0].input_ids[:32]], dtype=np.int64)
    runs = ctx.scale(20, 3)

    matmuls, matmul_flop = _matmuls_alone(model, PROMPT, ctx.threads)
    variants: dict[str, Any] = {
        "torch latency": lambda: _latency(lambda: _torch_forward(model, prompt), runs),
        "onnx fp32 matmuls alone": lambda: _latency(matmuls, runs),
        "onnx fp32 latency": lambda: _latency(
            lambda: _onnx_forward(sessions["onnx fp32"], prompt), runs
        ),
        "onnx int8 latency": lambda: _latency(
            lambda: _onnx_forward(sessions["onnx int8"], prompt), runs
        ),
        "torch generate": lambda: _generate_rate(
            lambda ids, state: _torch_step(model, ids, state), gen_prompt
        ),
        "onnx fp32 generate": lambda: _generate_rate(
            lambda ids, state: _onnx_step(sessions["onnx fp32"], ids, state), gen_prompt
        ),
        "onnx int8 generate": lambda: _generate_rate(
            lambda ids, state: _onnx_step(sessions["onnx int8"], ids, state), gen_prompt
        ),
    }
    samples = interleaved(variants, ctx.repeats, warmup=1, log=say)
    agreement = {
        name: _agreement(model, session, held_out.sequences) for name, session in sessions.items()
    }
    generated = {
        name: _generate(step, gen_prompt)["tokens"]
        for name, step in (
            ("torch", lambda ids, state: _torch_step(model, ids, state)),
            ("onnx fp32", lambda ids, state: _onnx_step(sessions["onnx fp32"], ids, state)),
            ("onnx int8", lambda ids, state: _onnx_step(sessions["onnx int8"], ids, state)),
        )
    }
    return _section(
        ctx,
        shape,
        export,
        export_seconds,
        phases,
        started,
        samples,
        agreement,
        generated,
        out,
        matmul_flop,
    )


def _train_adapter(ctx: Context, base: Path) -> Path:
    from trainer.args import TrainArgs
    from trainer.recipe import train

    output = ctx.work / "adapter-run"
    adapter = output / "adapter"
    if (adapter / "adapter_config.json").is_file():
        return adapter
    result = train(
        TrainArgs(
            base_model=str(base),
            train_file=str(workload.chat_file(ctx.scale(48, 8), seed=4)),
            output_dir=str(output),
            n_epochs=1,
            batch_size=8,
            learning_rate_multiplier=25,
            target_modules="QKVO_FFN",
            seed=4,
            cpu_threads=ctx.threads,
        )
    )
    return result.adapter_dir


def _session(model: Path | bytes, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _matmuls_alone(model: Any, length: int, threads: int) -> tuple[Any, int]:
    """A call running the model's Linear layers alone in onnxruntime, each as a MatMul on its
    own [1, length, in_features] input (the float32 latency floor; see the docstring), and
    the floating-point operations of one call."""
    import numpy as np
    import torch
    from onnx import TensorProto, helper, numpy_helper

    inputs: dict[int, Any] = {}
    nodes, weights, outputs = [], [], []
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for i, linear in enumerate(linears):
        x = f"x{linear.in_features}"
        inputs.setdefault(
            linear.in_features,
            helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, length, linear.in_features]),
        )
        weight = linear.weight.detach().float().numpy().T.copy()
        weights.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "matmuls", list(inputs.values()), outputs, weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    session = _session(proto.SerializeToString(), threads)
    rng = np.random.default_rng(0)
    feed = {f"x{n}": rng.standard_normal((1, length, n), dtype=np.float32) for n in inputs}
    flop = sum(2 * length * linear.in_features * linear.out_features for linear in linears)
    return (lambda: session.run(None, feed)), flop


def _empty_past(session: Any) -> list[Any]:
    import numpy as np

    return [
        np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_key_values")
    ]


def _onnx_feed(session: Any, ids: Any, past: list[Any], length: int) -> dict[str, Any]:
    import numpy as np

    total = length + ids.shape[1]
    names = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values")]
    return {
        "input_ids": ids,
        "attention_mask": np.ones((1, total), dtype=np.int64),
        "position_ids": np.arange(length, total, dtype=np.int64)[None],
        **dict(zip(names, past, strict=True)),
    }


def _onnx_forward(session: Any, ids: Any) -> Any:
    return session.run(None, _onnx_feed(session, ids, _empty_past(session), 0))[0]


def _torch_forward(model: Any, ids: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids), use_cache=True).logits


def _latency(call: Any, runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    times.sort()
    return {"ms": 1000 * times[len(times) // 2]}


def _torch_step(model: Any, ids: Any, state: dict[str, Any]) -> int:
    import torch

    with torch.inference_mode():
        out = model(
            input_ids=torch.from_numpy(ids), past_key_values=state.get("cache"), use_cache=True
        )
    state["cache"] = out.past_key_values
    return int(out.logits[0, -1].argmax())


def _onnx_step(session: Any, ids: Any, state: dict[str, Any]) -> int:
    past = state.get("past") or _empty_past(session)
    length = state.get("length", 0)
    logits, *present = session.run(None, _onnx_feed(session, ids, past, length))
    state["past"], state["length"] = present, length + ids.shape[1]
    return int(logits[0, -1].argmax())


def _generate(step: Any, prompt: Any) -> dict[str, Any]:
    """Greedy: the prompt, then NEW_TOKENS one at a time (no stop token: fixed work)."""
    import numpy as np

    state: dict[str, Any] = {}
    started = time.perf_counter()
    token = step(prompt, state)
    tokens = [token]
    for _ in range(NEW_TOKENS - 1):
        token = step(np.array([[token]], dtype=np.int64), state)
        tokens.append(token)
    seconds = time.perf_counter() - started
    return {"tokens_per_s": NEW_TOKENS / seconds, "tokens": tokens}


def _generate_rate(step: Any, prompt: Any) -> dict[str, float]:
    return {"tokens_per_s": _generate(step, prompt)["tokens_per_s"]}


def _agreement(model: Any, session: Any, sequences: list[Any]) -> dict[str, float]:
    """Max |logit diff| and top-1 agreement over every position of held-out sequences."""
    import numpy as np

    worst, agree, total = 0.0, 0, 0
    for sequence in sequences:
        ids = np.array([sequence.input_ids], dtype=np.int64)
        expected = _torch_forward(model, ids).float().numpy()
        got = _onnx_forward(session, ids)
        worst = max(worst, float(np.abs(got - expected).max()))
        agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
        total += ids.shape[1]
    return {"max_logit_diff": worst, "top1": agree / total, "positions": total}


PHASES = {
    "Merging": "merge",
    "Exporting": "trace + fp32 check",
    "Checked in": "-",
    "Quantizing": "int8 quantize + check",
    "Checked the int8": "config + tokenizer",
}


def _phase(message: str) -> str:
    return next(
        (name for prefix, name in PHASES.items() if message.startswith(prefix)),
        message.split(" ")[0],
    )


def _section(
    ctx: Context,
    shape: workload.ModelShape,
    export: Any,
    export_seconds: float,
    phases: list[tuple[float, str]],
    started: float,
    samples: dict[str, list],
    agreement: dict[str, dict[str, float]],
    generated: dict[str, list[int]],
    out: Path,
    matmul_flop: int,
) -> Section:
    m = {name: {k: median_of(rows, k) for k in rows[0]} for name, rows in samples.items()}
    torch_ms = m["torch latency"]["ms"]
    torch_tps = m["torch generate"]["tokens_per_s"]
    size = {p.name: p.stat().st_size for p in out.iterdir()}
    fp32_bytes = size.get("model.onnx", 0) + size.get("model.onnx.data", 0)
    int8_bytes = sum(v for k, v in size.items() if k.startswith("model.int8"))
    section = Section(name=NAME, title=TITLE)
    section.method = [
        f"Model: the benchmark Llama ({shape.key}) merged with a LoRA adapter trained by the "
        "recipe (QKVO_FFN, a few steps at 5e-3); float32 weights in both runtimes.",
        f"Latency: batch 1, a {PROMPT}-token prompt from an empty cache (logits + cache "
        "out), median of "
        f"{ctx.scale(20, 3)} runs per sample. Generation: greedy, a 32-token chat prompt + "
        f"{NEW_TOKENS} new tokens, the same loop for both runtimes.",
        "Floor: the model's Linear layers alone, each a MatMul on its own "
        f"{PROMPT}-token input, in onnxruntime with the same options (every other op left "
        "out): no fp32 graph of the model runs faster.",
        "Agreement: every position of held-out chat sequences, ONNX vs torch logits.",
        f"Threads {ctx.threads} for torch and onnxruntime; interleaved, 1 warm-up + "
        f"{len(samples['torch latency'])} repeat(s); medians.",
    ]
    timeline = [*phases, (started + export_seconds, "")]
    steps = "; ".join(
        f"{_phase(b[1])} {c[0] - b[0]:.1f} s" for b, c in zip(timeline, timeline[1:], strict=False)
    )
    section.add(
        Figure(
            "export time (merge, trace, verify, int8 quantize, verify)",
            export_seconds,
            None,
            "s",
            higher_is_better=False,
            note=steps,
        ),
    )
    floor_ms = m["onnx fp32 matmuls alone"]["ms"]
    section.add(
        Figure(
            f"batch-1 latency, {PROMPT}-token prompt, fp32 Linear MatMuls alone (floor)",
            floor_ms,
            torch_ms,
            "ms",
            "torch eager",
            higher_is_better=False,
            note=f"{torch_ms / floor_ms:.2f}x faster: the most any fp32 graph can reach "
            f"here ({matmul_flop / floor_ms / 1e6:.0f} GFLOP/s)",
            spread=spread_of(samples["onnx fp32 matmuls alone"], "ms"),
        )
    )
    for kind, need in (("fp32", 1.5), ("int8", 2.0)):
        name = f"onnx {kind}"
        ms = m[f"{name} latency"]["ms"]
        tps = m[f"{name} generate"]["tokens_per_s"]
        section.add(
            Figure(
                f"batch-1 latency, {PROMPT}-token prompt, {kind}",
                ms,
                torch_ms,
                "ms",
                "torch eager",
                higher_is_better=False,
                goal=f">= {need}x faster",
                met=torch_ms / ms >= need,
                note=f"{torch_ms / ms:.2f}x faster",
                spread=spread_of(samples[f"{name} latency"], "ms"),
            ),
            Figure(
                f"greedy generation, {kind}",
                tps,
                torch_tps,
                "tok/s",
                "torch eager",
                goal=f">= {need}x",
                met=tps / torch_tps >= need,
                spread=spread_of(samples[f"{name} generate"], "tokens_per_s"),
            ),
            Figure(
                f"max |logit diff| vs torch, {kind}",
                agreement[name]["max_logit_diff"],
                None,
                "",
                higher_is_better=False,
                note=f"export's own check: {export.max_logit_diff:.2e}"
                if kind == "fp32"
                else f"export's own check: {export.int8_max_logit_diff:.2e}",
            ),
            Figure(
                f"top-1 agreement with torch, {kind}",
                agreement[name]["top1"],
                1.0,
                "",
                "torch eager",
                note=f"{int(agreement[name]['positions'])} positions; "
                f"greedy text identical: {generated[name] == generated['torch']}",
            ),
        )
    section.add(
        Figure(
            "model files, int8 vs fp32",
            int8_bytes / 2**20,
            fp32_bytes / 2**20,
            "MiB",
            "fp32 ONNX",
            higher_is_better=False,
        )
    )
    fp32 = torch_ms / m["onnx fp32 latency"]["ms"]
    int8 = torch_ms / m["onnx int8 latency"]["ms"]
    section.summary = (
        f"Export {export_seconds:.0f} s. Batch-1 {PROMPT}-token latency: fp32 {fp32:.2f}x, "
        f"int8 {int8:.2f}x torch eager (goals 1.5x, 2x; fp32 Linear MatMuls alone: "
        f"{torch_ms / floor_ms:.2f}x); greedy generation fp32 "
        f"{m['onnx fp32 generate']['tokens_per_s'] / torch_tps:.2f}x, int8 "
        f"{m['onnx int8 generate']['tokens_per_s'] / torch_tps:.2f}x; top-1 agreement "
        f"{agreement['onnx fp32']['top1']:.1%} (fp32), {agreement['onnx int8']['top1']:.1%} "
        "(int8)."
    )
    return section
