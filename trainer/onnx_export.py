"""ONNX export of a merged causal LM, accepted only once onnxruntime agrees with torch.

The graph is traced by `torch.onnx.export(dynamo=True)` (the legacy TorchScript exporter
fails on transformers 5 models) with dynamic batch and sequence axes, and with the KV
cache as inputs and outputs, in the layout optimum and transformers.js use:

- inputs `input_ids` [batch, sequence], `attention_mask` [batch, past + sequence],
  `position_ids` [batch, sequence], `past_key_values.{layer}.key|value`
  [batch, kv_heads, past, head_dim];
- outputs `logits` [batch, sequence, vocab], `present.{layer}.key|value`.

A past of length 0 runs a whole prompt; feeding `present` back as the next call's past
decodes one token at a time without recomputing the prompt.

The shipped graph is traced with transformers' "eager" attention (every architecture has
one: matmul, additive mask, softmax, matmul), whatever the model runs with in torch, and
left as standard ONNX ops for onnxruntime's own load-time fusions. Against the "sdpa"
trace, whose decomposition adds a NaN guard (IsNaN, Where over every score) and a boolean
mask per layer, it takes 2-3% off a 128-token prompt and 3-5% (float32) and ~13% (int8)
off each decoding step (the benchmark Llama, onnxruntime 1.31, one thread, old and new
graphs interleaved). Offline contrib-op fusion (onnxscript's `optimize_for_ort`:
SkipSimplifiedLayerNormalization, MultiHeadAttention; fused before or after int8
quantization) and onnxruntime.transformers' optimizer made no graph faster (0 to 3%
slower), so the graph ships without them. A 128-token prompt spends ~87% of its time in
the Linear layers' MatMuls, which run at ~90 GFLOP/s, one core's float32 FMA peak; the
rest is the attention core and small elementwise ops (`python -m bench onnx` measures
that floor beside the whole graph). Verification compares the graph with the model as it
runs in torch, with its own attention.

Before the export is accepted, onnxruntime runs it on held-out inputs of several batch
sizes and lengths (some rows left-padded) and on incremental decoding steps, against the
same model in torch; the largest |logit difference| over every unpadded position is the
export's measured error and must stay within `tolerance`. An optional int8 dynamic
quantization (weights int8, activations quantized on the fly) is measured the same way
and reported, not gated: its error is the price of its size, for the user to judge.

Output directory: `model.onnx` + `model.onnx.data` (weights as external data, so models
past protobuf's 2 GB limit export too), optionally `model.int8.onnx` + its data, and
`config.json`, `generation_config.json` and the tokenizer, so the directory is all a
runtime needs. The graph is float32 whatever the base's dtype: onnxruntime's CPU kernels
are float32 (and int8).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from trainer.merge import EventCallback, ExportError, load_merged

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_ATTENTION = "eager"
"""The attention implementation the graph is traced with; see the module docstring."""
DEFAULT_TOLERANCE = 1e-3
"""Max |logit difference| accepted between onnxruntime and torch, both float32: kernel
differences stay orders of magnitude below it, a wrong graph (mask, positions, cache)
lands far above it."""

# (batch, length, left padding of the second row): batch 1 and lengths 1..33 cover the
# shapes decoding uses; the padded rows check that the mask and positions survived export.
CHECK_SHAPES = ((1, 1, 0), (1, 9, 0), (2, 16, 5), (3, 5, 2), (4, 33, 7))
# Prefill this many tokens of a (2, 16) batch, then decode the rest one token at a time.
DECODE_PREFILL = 12


@dataclass(frozen=True)
class OnnxExport:
    """A verified export."""

    directory: Path
    max_logit_diff: float
    """Max |logit difference| of the float32 model against torch."""
    int8_max_logit_diff: float | None
    """The same for the int8 model; None when not quantized."""


def _ignore(_message: str, _data: dict[str, Any]) -> None:
    return None


class _WithPast(torch.nn.Module):
    """The model as a function of plain tensors, the cache flattened to key, value per layer."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        # Full (non-sliding) layers keep every position: the graph stays one shape rule for
        # all layers, and a sliding-window model still masks by its config.
        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2], strict=True)))
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def _cache_shape(model: PreTrainedModel) -> tuple[int, int, int]:
    """(layers, kv heads, head dim), read off a real forward pass so every architecture's
    own head arithmetic applies."""
    with torch.inference_mode():
        out = model(input_ids=torch.zeros(1, 2, dtype=torch.long), use_cache=True)
    layers = out.past_key_values.layers
    _, heads, _, dim = layers[0].keys.shape
    return len(layers), heads, dim


def _past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def _positions(mask: np.ndarray) -> np.ndarray:
    """Position ids of a left-padded batch, as `generate` computes them."""
    return np.clip(np.cumsum(mask, axis=-1) - 1, 0, None)


@contextmanager
def _attention(model: PreTrainedModel, implementation: str) -> Iterator[None]:
    """`model` with `implementation` as its attention while the block runs, its own after."""
    own = model.config._attn_implementation
    try:
        model.set_attn_implementation(implementation)
        if model.config._attn_implementation != implementation:  # refused with a warning
            raise ExportError(
                "onnx_unsupported_model",
                f"{type(model).__name__} has no {implementation!r} attention to export",
            )
        yield
    finally:
        model.set_attn_implementation(own)


def _export(model: PreTrainedModel, path: Path) -> None:
    layers, heads, dim = _cache_shape(model)
    # Distinct sizes above 1 everywhere: torch.export specializes 0/1 and may merge equal
    # dims, and either would freeze an axis that must stay dynamic.
    batch, length, past = 2, 5, 3
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    example = (
        torch.randint(vocab, (batch, length), generator=generator),
        torch.ones(batch, past + length, dtype=torch.long),
        torch.arange(past, past + length).expand(batch, -1),
        *(torch.randn(batch, heads, past, dim, generator=generator) for _ in range(2 * layers)),
    )
    b, s, p, t = (torch.export.Dim(name) for name in ("batch", "sequence", "past", "total"))
    names = _past_names(layers)
    torch.onnx.export(
        _WithPast(model).eval(),
        example,
        str(path),
        dynamo=True,
        external_data=True,
        verbose=False,
        input_names=["input_ids", "attention_mask", "position_ids", *names],
        output_names=["logits", *(n.replace("past_key_values", "present") for n in names)],
        dynamic_shapes=(
            {0: b, 1: s},
            {0: b, 1: t},
            {0: b, 1: s},
            tuple({0: b, 2: p} for _ in names),
        ),
    )


def _checks(vocab: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Held-out (input_ids, attention_mask) batches: seeded random tokens, unlike the
    export's example inputs, with the second row of each batch left-padded."""
    rng = np.random.default_rng(1234)
    for batch, length, padding in CHECK_SHAPES:
        ids = rng.integers(0, vocab, (batch, length), dtype=np.int64)
        mask = np.ones((batch, length), dtype=np.int64)
        mask[1:2, :padding] = 0
        yield ids, mask


class _Runner:
    """An ONNX model in onnxruntime, called with numpy arrays and an explicit past."""

    def __init__(self, path: Path) -> None:
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values")]

    def __call__(
        self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits and present for `ids`; `mask` covers past and `ids`."""
        batch, length = ids.shape
        if past is None:
            past = [np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32) for i in self.past]
        feed = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": _positions(mask)[:, -length:],
            **{i.name: value for i, value in zip(self.past, past, strict=True)},
        }
        logits, *present = self.session.run(None, feed)
        return logits, present


def verify_onnx(
    path: str | os.PathLike[str],
    model: PreTrainedModel,
    tolerance: float = DEFAULT_TOLERANCE,
    label: str = "float32",
) -> float:
    """Max |logit difference| of the ONNX model at `path` against `model` in torch over the
    held-out batches and incremental decoding; raises ExportError when above `tolerance`
    (or not finite)."""
    run = _Runner(Path(path))
    vocab = model.get_input_embeddings().num_embeddings
    worst = 0.0

    def compare(onnx: np.ndarray, torch_logits: np.ndarray, mask: np.ndarray) -> None:
        nonlocal worst
        # Padded positions attend to nothing; their logits mean nothing in either runtime.
        diff = np.abs(onnx - torch_logits)[mask.astype(bool)]
        worst = max(worst, float(diff.max()) if np.isfinite(diff).all() else math.inf)

    for ids, mask in _checks(vocab):
        expected = _torch_logits(model, ids, mask)
        compare(run(ids, mask)[0], expected, mask)
        if ids.shape == (2, 16):
            logits, past = run(ids[:, :DECODE_PREFILL], mask[:, :DECODE_PREFILL])
            compare(logits, expected[:, :DECODE_PREFILL], mask[:, :DECODE_PREFILL])
            for end in range(DECODE_PREFILL + 1, ids.shape[1] + 1):
                logits, past = run(ids[:, end - 1 : end], mask[:, :end], past)
                compare(logits, expected[:, end - 1 : end], mask[:, end - 1 : end])
    if not worst <= tolerance:
        raise ExportError(
            "onnx_tolerance_exceeded",
            f"the {label} ONNX model's logits differ from torch's by up to {worst:.3g}, "
            f"over the tolerance of {tolerance:.3g}; the export was not accepted",
        )
    return worst


def _torch_logits(model: PreTrainedModel, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return (
            model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(_positions(mask)),
                use_cache=False,
            )
            .logits.float()
            .numpy()
        )


def export_onnx(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike[str],
    *,
    quantize_int8: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    on_event: EventCallback = _ignore,
) -> OnnxExport:
    """Export `model` (moved to float32 on the CPU) into `out_dir` (created; must not hold
    files) and verify it; see the module docstring."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ExportError("output_not_empty", f"{out} already holds files")
    model = model.to(device="cpu", dtype=torch.float32).eval()
    on_event("Exporting to ONNX with dynamic batch and sequence axes and a KV cache", {})
    with _attention(model, EXPORT_ATTENTION):
        _export(model, out / ONNX_FILE)
    # Against the model as it runs in torch, with its own attention.
    diff = verify_onnx(out / ONNX_FILE, model, tolerance)
    on_event(
        f"Checked in onnxruntime against torch: max |logit diff| {diff:.3g} "
        f"(tolerance {tolerance:.3g})",
        {"max_logit_diff": diff, "tolerance": tolerance},
    )
    int8_diff = None
    if quantize_int8:
        on_event("Quantizing to int8 (dynamic quantization)", {})
        quantize_dynamic(
            out / ONNX_FILE,
            out / INT8_FILE,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
        )
        int8_diff = verify_onnx(out / INT8_FILE, model, math.inf, "int8")
        on_event(
            f"Checked the int8 model: max |logit diff| {int8_diff:.3g}",
            {"int8_max_logit_diff": int8_diff},
        )
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return OnnxExport(out, diff, int8_diff)


def export_adapter(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    quantize_int8: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    on_event: EventCallback = _ignore,
) -> OnnxExport:
    """Merge the adapter into the base in float32 and export the result with `export_onnx`."""
    on_event("Merging the adapter into the base model (float32)", {})
    model, tokenizer = load_merged(base, adapter, torch.float32)
    return export_onnx(
        model,
        tokenizer,
        out_dir,
        quantize_int8=quantize_int8,
        tolerance=tolerance,
        on_event=on_event,
    )
