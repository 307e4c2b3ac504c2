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


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_a_packed_row_trains_as_its_sequences_do_alone(
    kind: str, built: dict[str, Path], one_torch_thread: None
) -> None:
    """What a GPU trains (`batching.pack`, one row, position ids restarting per sequence)
    gives the loss and gradients of the same sequences padded in rows, for each family:
    transformers must keep attention within each packed sequence."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer import batching, data, methods
    from trainer.formats import Example, Format

    tokenizer = models.load_tokenizer(built[kind])
    model = AutoModelForCausalLM.from_pretrained(built[kind], dtype=torch.float32)
    model.eval()  # no dropout: the two layouts must run the same arithmetic
    texts = ["The capital of Nepal is Kathmandu.", "Hi", "Rivers run to the sea, always."]
    # Text examples train on every token, the first included: packing must not let one
    # sequence's last position learn the next one's first token.
    examples = [Example(Format.TEXT, text=t) for t in texts]
    sequences = data.encode_examples(examples, tokenizer, 64).sequences
    supervised = methods.Supervised()

    def measured(batch: batching.Batch) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss, _ = supervised.measure(model, batch, bf16=False)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    padded, padded_grads = measured(batching.collate(sequences, tokenizer.pad_token_id))
    packed_batch = batching.pack(sequences)
    assert packed_batch.input_ids.shape == (1, sum(len(s.input_ids) for s in sequences))
    assert packed_batch.label_tokens == sum(s.n_label_tokens for s in sequences)
    packed, packed_grads = measured(packed_batch)
    assert packed == pytest.approx(padded, rel=1e-5)
    for mine, theirs in zip(packed_grads, padded_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-5)  # float rounding
