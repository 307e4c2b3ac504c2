"""Classifiers: an encoder with a classification head and the LoRA adapter that trained
both, for predictions (the inference worker's Classify), merging into plain transformers
weights, and ONNX export checked against torch in onnxruntime.

A classifier's adapter is a peft SEQ_CLS adapter: LoRA on the encoder, the head (and
pooler) saved whole as `modules_to_save`. Its labels and whether it is multi-label are in
the adapter's safetensors header (`adapter_metadata`), so any copy of its two files (a
checkpoint's, the final one) is a classifier on its own. Merged, it is a Hugging Face
`AutoModelForSequenceClassification` directory whose config names the labels
(`id2label`) and the `problem_type`, loadable without peft or Tunewire.

Single-label confidences are the softmax over the labels (they sum to 1); multi-label
ones are one sigmoid per label, each label predicted at 0.5 or above.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from trainer.checkpoints import ADAPTER_WEIGHTS
from trainer.merge import EventCallback, ExportError, attach_adapter, base_dtype

LABELS_KEY = "tunewire.labels"
MULTI_LABEL_KEY = "tunewire.multi_label"
THRESHOLD = 0.5
"""A multi-label classifier predicts each label whose probability is at least this."""
MAX_LENGTH = 512
"""Longer inputs are cut (keeping the closing special token), as in training."""


@dataclass(frozen=True)
class Head:
    """What a classifier's outputs mean."""

    labels: list[str]
    multi_label: bool


def adapter_metadata(names: Sequence[str], multi_label: bool) -> dict[str, str]:
    """The safetensors header entries that make an adapter a classifier of `names`."""
    return {LABELS_KEY: json.dumps(list(names)), MULTI_LABEL_KEY: json.dumps(multi_label)}


def read_head(adapter: str | os.PathLike[str]) -> Head | None:
    """The head of the classifier whose adapter is in `adapter`; None when the adapter is
    not a classifier's (a generative model's)."""
    path = Path(adapter) / ADAPTER_WEIGHTS
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as weights:
        metadata = weights.metadata() or {}
    if LABELS_KEY not in metadata:
        return None
    return Head(json.loads(metadata[LABELS_KEY]), json.loads(metadata[MULTI_LABEL_KEY]))


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers reports the new head's weights as missing on every load; they are
    missing by design (the adapter brings them)."""
    before = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(before)


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The encoder's own tokenizer: local files only, no remote code."""
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)


def load_base(
    path: str | os.PathLike[str], names: Sequence[str], multi_label: bool, dtype: torch.dtype
) -> PreTrainedModel:
    """The encoder at `path` with a new head of one output per label of `names` (seeded by
    torch's global generator): safetensors only, no remote code, local files only."""
    with _quiet_loading():
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            problem_type="multi_label_classification"
            if multi_label
            else "single_label_classification",
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=True,
        )


def head_modules(model: PreTrainedModel) -> list[str]:
    """The modules trained whole beside LoRA: the head (`classifier`, or `score` in some
    architectures) and the pooler where there is one (BERT's pools [CLS] through a dense
    layer that sentence-embedding models such as MiniLM never trained)."""
    names = [name for name in ("classifier", "score") if hasattr(model, name)]
    if any(name.endswith("pooler") for name, _ in model.named_modules()):
        names.append("pooler")
    return names


def decide(logits: torch.Tensor, names: Sequence[str], multi_label: bool) -> tuple[str, ...]:
    """The labels one row of logits predicts."""
    if multi_label:
        return tuple(name for name, value in zip(names, logits.tolist(), strict=True) if value >= 0)
    return (names[int(logits.argmax())],)


def load(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, Head]:
    """The classifier: base, head and adapter, in eval mode, and its tokenizer."""
    head = read_head(adapter)
    if head is None:
        raise ExportError("not_a_classifier", "the model is not a classifier (it generates text)")
    model = attach_adapter(load_base(base, head.labels, head.multi_label, dtype), adapter)
    return model, load_tokenizer(base), head


@dataclass(frozen=True)
class Classification:
    """One input's result."""

    confidences: list[tuple[str, float]]
    """Every label with its probability, the most likely first."""
    predictions: list[str]
    """Single-label: the most likely label; multi-label: every label at 0.5 or above, the
    most likely first (possibly none)."""
    multi_label: bool


def predict(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    head: Head,
    texts: Sequence[str],
    batch_size: int = 32,
) -> list[Classification]:
    """Classify `texts` (cut to the model's length, as in training)."""
    device = next(model.parameters()).device
    results: list[Classification] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=min(MAX_LENGTH, tokenizer.model_max_length),
                return_tensors="pt",
            )
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits.float()
            for row in probabilities(logits, head.multi_label).tolist():
                ranked = sorted(zip(head.labels, row, strict=True), key=lambda p: -p[1])
                chosen = (
                    [label for label, p in ranked if p >= THRESHOLD]
                    if head.multi_label
                    else [ranked[0][0]]
                )
                results.append(Classification(ranked, chosen, head.multi_label))
    return results


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


class Classifiers:
    """Loaded classifiers for serving, the most recently used kept (each adapter has a head
    of its own, so each is a model of its own: MiniLM's is ~90 MB in float32)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._loaded: OrderedDict[Path, tuple[Any, Any, Head, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def classify(self, base: Path, adapter: Path, texts: Sequence[str]) -> list[Classification]:
        with self._lock:
            entry = self._loaded.get(adapter)
            if entry is None:
                model, tokenizer, head = load(base, adapter)
                entry = (model, tokenizer, head, threading.Lock())
                self._loaded[adapter] = entry
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(adapter)
        model, tokenizer, head, lock = entry
        with lock:  # one request at a time per model: torch modules are not reentrant-safe
            return predict(model, tokenizer, head, texts)

    def unload(self, adapter: Path) -> None:
        with self._lock:
            self._loaded.pop(adapter, None)


# --- merged weights and ONNX -----------------------------------------------------------------


def load_merged(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Head]:
    """The base with the adapter merged in (the head and pooler replaced by the trained
    ones), in `dtype` (default: the base's)."""
    model, tokenizer, head = load(base, adapter, dtype or base_dtype(base))
    merged = model.merge_and_unload(safe_merge=True)
    return merged.eval(), tokenizer, head


def merge_adapter(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    on_event: EventCallback | None = None,
) -> Path:
    """Write the merged classifier to `out_dir` (created; must not hold files): config.json
    with the labels, model.safetensors and the tokenizer."""
    on_event = on_event or _ignore
    out = _empty_dir(out_dir)
    dtype = base_dtype(base)
    on_event(
        f"Merging the adapter and its classification head into the base model "
        f"({str(dtype).removeprefix('torch.')})",
        {"dtype": str(dtype).removeprefix("torch.")},
    )
    model, tokenizer, head = load_merged(base, adapter, dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    size = sum(path.stat().st_size for path in out.glob("*.safetensors"))
    on_event(
        f"Saved merged safetensors ({size:,} bytes), {len(head.labels)} labels",
        {"bytes": size, "labels": head.labels},
    )
    return out


def _ignore(_message: str, _data: dict[str, Any]) -> None:
    return None


def _empty_dir(out_dir: str | os.PathLike[str]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ExportError("output_not_empty", f"{out} already holds files")
    return out


class _Logits(torch.nn.Module):
    """The classifier as a function of two tensors, for tracing."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


# (batch, length, right padding of the second row): held-out shapes, the padded rows
# checking that the mask survived export.
CHECK_SHAPES = ((1, 3, 0), (1, 12, 0), (2, 16, 5), (3, 7, 3), (4, 40, 17))


def _checks(vocab: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(4321)
    for batch, length, padding in CHECK_SHAPES:
        ids = rng.integers(1000, vocab, (batch, length), dtype=np.int64)
        mask = np.ones((batch, length), dtype=np.int64)
        if padding:
            mask[1, length - padding :] = 0
            ids[1, length - padding :] = 0
        yield ids, mask


def verify_onnx(
    path: str | os.PathLike[str],
    model: PreTrainedModel,
    tolerance: float,
    label: str = "float32",
) -> float:
    """Max |logit difference| of the ONNX classifier at `path` against `model` in torch on
    held-out batches; ExportError when above `tolerance` (or not finite)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    vocab = model.get_input_embeddings().num_embeddings
    worst = 0.0
    for ids, mask in _checks(vocab):
        (onnx,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        with torch.inference_mode():
            expected = (
                model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
                .logits.float()
                .numpy()
            )
        diff = np.abs(onnx - expected)
        worst = max(worst, float(diff.max()) if np.isfinite(diff).all() else math.inf)
    if not worst <= tolerance:
        raise ExportError(
            "onnx_tolerance_exceeded",
            f"the {label} ONNX classifier's logits differ from torch's by up to {worst:.3g}, "
            f"over the tolerance of {tolerance:.3g}; the export was not accepted",
        )
    return worst


def export_onnx(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    quantize_int8: bool = False,
    tolerance: float | None = None,
    on_event: EventCallback | None = None,
) -> Any:
    """Merge the classifier in float32 and export it: `model.onnx` (+ its external data)
    with inputs `input_ids`, `attention_mask` [batch, sequence] and output `logits`
    [batch, labels], both axes dynamic; accepted only once onnxruntime agrees with torch
    within `tolerance`. Optionally `model.int8.onnx` (dynamic quantization, measured and
    reported, not gated). Returns an `onnx_export.OnnxExport`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from trainer.onnx_export import (
        DEFAULT_TOLERANCE,
        EXPORT_ATTENTION,
        INT8_FILE,
        ONNX_FILE,
        OnnxExport,
        _attention,
    )

    on_event = on_event or _ignore
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    out = _empty_dir(out_dir)
    on_event("Merging the adapter and its classification head into the base model (float32)", {})
    model, tokenizer, head = load_merged(base, adapter, torch.float32)
    on_event("Exporting the classifier to ONNX with dynamic batch and sequence axes", {})
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    example = (
        torch.randint(vocab, (2, 7), generator=generator),
        torch.ones(2, 7, dtype=torch.long),
    )
    with _attention(model, EXPORT_ATTENTION):
        torch.onnx.export(
            _Logits(model).eval(),
            example,
            str(out / ONNX_FILE),
            dynamo=True,
            external_data=True,
            verbose=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
        )
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
    tokenizer.save_pretrained(out)
    (out / "labels.json").write_text(
        json.dumps({"labels": head.labels, "multi_label": head.multi_label}), encoding="utf-8"
    )
    return OnnxExport(out, diff, int8_diff)
