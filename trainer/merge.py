"""Merging a LoRA adapter into its base model: plain transformers weights that need no peft.

`merge_adapter(base, adapter, out_dir)` writes `out_dir` as a Hugging Face model directory
(config.json, generation_config.json, model*.safetensors, the tokenizer with its chat
template), in the base's own dtype, so `AutoModelForCausalLM.from_pretrained(out_dir)`
loads the fine-tuned model without peft installed.

`python -m trainer.merge BASE ADAPTER OUT` does the same from a shell and reports on
stdout as JSON lines (see `report_lines`): the export service runs it as a child process,
so a crash or a kill never takes the server with it and the memory of a merge is returned
when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

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


def report_lines(work: Callable[[EventCallback], dict[str, Any]]) -> int:
    """Run `work(on_event)` and print one JSON object per line on stdout:
    `{"event": message, "data": {...}}` as it goes, then `{"result": {...}}`, or
    `{"error": {"code", "message"}}`. Returns the process exit code (0 on success).
    Unexpected errors print their traceback on stderr and a message that names no path."""

    def emit(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)

    try:
        result = work(lambda message, data: emit({"event": message, "data": data}))
    except ExportError as error:
        emit({"error": {"code": error.code, "message": str(error)}})
        return 1
    except Exception as error:  # noqa: BLE001 - reported as a line; the traceback goes to stderr
        traceback.print_exc()
        emit(
            {
                "error": {
                    "code": "export_failed",
                    "message": f"export failed unexpectedly ({type(error).__name__}); "
                    "the server log has the details",
                }
            }
        )
        return 1
    emit({"result": result})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.merge", description="Merge a LoRA adapter into its base model."
    )
    parser.add_argument("base", help="base model directory")
    parser.add_argument("adapter", help="adapter directory (final adapter or checkpoint)")
    parser.add_argument("out", help="output directory (created; must be empty)")
    options = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()  # the log is a file: no progress bars
    return report_lines(
        lambda on_event: {
            "path": str(merge_adapter(options.base, options.adapter, options.out, on_event))
        }
    )


if __name__ == "__main__":
    sys.exit(main())
