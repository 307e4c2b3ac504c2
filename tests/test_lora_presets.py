"""LoRA target presets on the common architectures: a 2-layer model of each family, built
from its config (tests/tiny_models.py), trained a few steps by the recipe with each
preset; the adapter holds exactly the modules the preset names, and the loss falls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny_models import ARCHITECTURES, write_tiny

from trainer import lora, models
from trainer.args import TrainArgs
from trainer.recipe import Callbacks, train

SAMPLE = Path(__file__).resolve().parent.parent / "trainer" / "assets" / "sample-chat.jsonl"

_LLAMA_LIKE = {
    "QV": ("self_attn.q_proj", "self_attn.v_proj"),
    "QKVO": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    "QKVO_FFN": (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ),
}
# Fused projections: QV adapts q, k and v together in them.
_PHI3 = {
    "QV": ("self_attn.qkv_proj",),
    "QKVO": ("self_attn.qkv_proj", "self_attn.o_proj"),
    "QKVO_FFN": ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"),
}
_GPT2_LIKE = {
    "QV": ("attn.c_attn",),
    "QKVO": ("attn.c_attn", "attn.c_proj"),  # not the MLP's c_proj
    "QKVO_FFN": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
}
# Per model_type: where its layers are, and what each preset adapts in a layer.
EXPECTED = {
    "llama": ("model.layers", _LLAMA_LIKE),
    "mistral": ("model.layers", _LLAMA_LIKE),
    "qwen2": ("model.layers", _LLAMA_LIKE),
    "qwen3": ("model.layers", _LLAMA_LIKE),
    "gemma": ("model.layers", _LLAMA_LIKE),
    "gemma2": ("model.layers", _LLAMA_LIKE),
    "gemma3_text": ("model.layers", _LLAMA_LIKE),
    "phi3": ("model.layers", _PHI3),
    "gpt2": ("transformer.h", _GPT2_LIKE),
    "gpt_bigcode": ("transformer.h", _GPT2_LIKE),
}
PRESETS = ("QV", "QKVO", "QKVO_FFN")


@pytest.fixture(scope="module")
def built(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small model per architecture, with tiny-llama's tokenizer and chat template."""
    root = tmp_path_factory.mktemp("architectures")
    tokenizer = models.load_tokenizer(tiny)
    return {kind: write_tiny(root / kind, kind, tokenizer) for kind in ARCHITECTURES}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:4]))
    return path


def test_every_architecture_tested_has_presets() -> None:
    assert set(EXPECTED) == set(ARCHITECTURES) <= set(lora.TARGET_MODULES)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_preset_adapts_the_modules_it_names_and_the_loss_falls(
    kind: str, preset: str, built: dict[str, Path], data: Path, tmp_path: Path, one_torch_thread
) -> None:
    base = models.describe(built[kind], kind)
    assert models.is_causal_lm(base.architecture) and base.context_length == 256
    losses: list[float] = []
    result = train(
        TrainArgs(
            base_model=str(built[kind]),
            train_file=str(data),
            output_dir=str(tmp_path),
            n_epochs=4,
            batch_size=4,
            learning_rate_multiplier=50,
            target_modules=preset,
            lora_dropout=0.0,
            warmup_ratio=0.0,
            seed=0,
        ),
        Callbacks(on_metrics=lambda **values: losses.append(values["train_loss"])),
    )
    assert result.status == "succeeded" and len(losses) == 4
    assert losses[-1] < losses[0] - 0.1, losses

    layers, per_layer = EXPECTED[kind]
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    adapted = {name.split(".lora_")[0].removeprefix("base_model.model.") for name in weights}
    assert adapted == {f"{layers}.{i}.{module}" for i in (0, 1) for module in per_layer[preset]}
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(lora.target_modules(base.model_type, preset))
