"""Merging a LoRA adapter into its base model: plain transformers weights that need no peft.

`merge_adapter(base, adapter, out_dir)` writes `out_dir` as a Hugging Face model directory
(config.json, generation_config.json, model*.safetensors, the tokenizer with its chat
template), in the base's own dtype, so `AutoModelForCausalLM.from_pretrained(out_dir)`
loads the fine-tuned model without peft installed.

Export workers (`trainer.worker.export`) run it for the export service.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from trainer import models
from trainer.lora import peft_quietly

EventCallback = Callable[[str, dict[str, Any]], None]
"""(message, data): progress a user should read."""


class ExportError(ValueError):
    """A failure the user can act on; `code` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _ignore(_message: str, _data: dict[str, Any]) -> None:
    return None


def base_dtype(base: str | os.PathLike[str]) -> torch.dtype:
    """The dtype the base model's weights are stored in (float32 when its config says none)."""
    dtype = AutoConfig.from_pretrained(base, local_files_only=True, trust_remote_code=False).dtype
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def attach_adapter(
    model: PreTrainedModel, adapter: str | os.PathLike[str], name: str = "default"
) -> PeftModel:
    """Wrap `model` with the adapter in `adapter` (a final adapter or a checkpoint dir)
    for inference. The base's modules are adapted in place."""
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError("adapter_missing", f"no adapter in {adapter.name!r}")
    with peft_quietly():
        return PeftModel.from_pretrained(model, adapter, adapter_name=name).eval()


def load_merged(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base with the adapter merged into its weights, in `dtype` (default: the base's),
    and the tokenizer training used (see `models.load_tokenizer`)."""
    model = models.load_causal_lm(base, dtype or base_dtype(base))
    # safe_merge checks the merged weights for NaNs before they replace the base's.
    merged = attach_adapter(model, adapter).merge_and_unload(safe_merge=True)
    return merged.eval(), models.load_tokenizer(base)


def merge_adapter(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    on_event: EventCallback = _ignore,
) -> Path:
    """Write the merged model to `out_dir` (created; must not hold files) and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ExportError("output_not_empty", f"{out} already holds files")
    dtype = base_dtype(base)
    on_event(
        f"Merging the adapter into the base model ({str(dtype).removeprefix('torch.')})",
        {"dtype": str(dtype).removeprefix("torch.")},
    )
    model, tokenizer = load_merged(base, adapter, dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    size = sum(path.stat().st_size for path in out.glob("*.safetensors"))
    on_event(f"Saved merged safetensors ({size:,} bytes)", {"bytes": size})
    return out
