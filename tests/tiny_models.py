"""Small models of the common decoder architectures, built from their configs with
tiny-llama's locally trained tokenizer: 2 layers, hidden 64, fixed-seed random weights.

They stand in for real checkpoints of each family (same module names, same attention and
MLP layout) wherever a test needs one: the LoRA presets per architecture, the hub mirror.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

# Per model_type, the config fields beside the shared ones (CONFIG below).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {},
    "gemma": {},
    "gemma2": {"sliding_window": 64},
    "gemma3_text": {"sliding_window": 64},
    "phi3": {},
    # Without dropout in the base, as the others: a run's losses depend on the seed alone.
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "gpt_bigcode": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
}

CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "initializer_range": 0.1,
}
# GPT-2's own names for the same sizes.
GPT2_CONFIG: dict[str, Any] = {
    "n_embd": 64,
    "n_inner": 128,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 256,
    "initializer_range": 0.1,
}


def write_tiny(
    target: Path, model_type: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> Path:
    """Write a `model_type` model with `tokenizer` (and a generation config stopping on
    its EOS) to `target`, as `save_pretrained` writes a hub checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    sizes = GPT2_CONFIG if model_type in ("gpt2", "gpt_bigcode") else CONFIG
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), **special, **sizes, **ARCHITECTURES[model_type]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(**special)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
