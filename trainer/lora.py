"""LoRA target-module presets per architecture, and the peft config built from them.

Presets name projections the way OpenAI-compatible and Cohere APIs do (QV, QKVO,
QKVO_FFN); each architecture family calls those projections differently. Names are module
name suffixes, which is how peft matches `target_modules`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from peft import LoraConfig, TaskType

_LLAMA_LIKE = {
    "QV": ("q_proj", "v_proj"),
    "QKVO": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "QKVO_FFN": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}

_GPT2_LIKE = {
    "QV": ("c_attn",),
    "QKVO": ("c_attn", "attn.c_proj"),
    "QKVO_FFN": ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"),
}

TARGET_MODULES: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    # Gemma 3's text model (Gemma3ForCausalLM); `gemma3` is the multimodal one.
    "gemma3_text": _LLAMA_LIKE,
    # Phi-3 fuses q/k/v into one projection and gate/up into another.
    "phi3": {
        "QV": ("qkv_proj",),
        "QKVO": ("qkv_proj", "o_proj"),
        "QKVO_FFN": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    },
    # GPT-2 fuses q/k/v into c_attn; "attn.c_proj" keeps the MLP's c_proj out of QKVO.
    "gpt2": _GPT2_LIKE,
    "gpt_bigcode": _GPT2_LIKE,  # StarCoder, SantaCoder: GPT-2's module names
    # BERT's attention output and FFN output are both `*.output.dense`.
    "bert": {
        "QV": ("query", "value"),
        "QKVO": ("query", "key", "value", "attention.output.dense"),
        "QKVO_FFN": (
            "query",
            "key",
            "value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ),
    },
}


def target_modules(model_type: str, preset: str) -> list[str]:
    """The module-name suffixes that preset `preset` adapts in a `model_type` model."""
    if model_type not in TARGET_MODULES:
        known = ", ".join(sorted(TARGET_MODULES))
        raise ValueError(f"no LoRA target modules for model type {model_type!r} (known: {known})")
    return list(TARGET_MODULES[model_type][preset])


def lora_config(
    model_type: str,
    preset: str,
    rank: int,
    alpha: float,
    dropout: float,
    task_type: TaskType = TaskType.CAUSAL_LM,
) -> LoraConfig:
    """A peft LoraConfig for the architecture and preset."""
    return LoraConfig(
        task_type=task_type,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules(model_type, preset),
        bias="none",
    )


@contextmanager
def peft_quietly() -> Iterator[None]:
    """Wrap models with peft without its one known warning: peft 0.21 probes transformers'
    deprecated `is_gradient_checkpointing` (a FutureWarning not ours to fix, which a
    server's quiet log must not show)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        yield
