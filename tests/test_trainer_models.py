"""Base models: tiny-llama, listing, path confinement, safe loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from trainer import lora, models


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    models.init_tiny(root)
    return root


def test_tiny_llama_is_a_complete_offline_model(models_dir: Path) -> None:
    path = models_dir / models.TINY_LLAMA
    assert {p.name for p in path.iterdir()} == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    config = json.loads((path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_key_value_heads"]) == (
        64,
        2,
        2,
    )
    tokenizer = models.load_tokenizer(path)
    assert 2000 <= len(tokenizer) <= 4096
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    assert tokenizer.chat_template == models.DEFAULT_CHAT_TEMPLATE
    model = models.load_causal_lm(path, torch.float32)
    logits = model(torch.tensor([[tokenizer.bos_token_id, 5, 6]])).logits
    assert logits.shape == (1, 3, len(tokenizer))
    # Building again is a no-op.
    assert models.init_tiny(models_dir) == path


def test_tiny_llama_build_is_reproducible(models_dir: Path, tmp_path: Path) -> None:
    again = models.init_tiny(tmp_path)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (models_dir / models.TINY_LLAMA / name).read_bytes()


def test_list_base_models(models_dir: Path) -> None:
    listed = {model.name: model for model in models.list_base_models(models_dir)}
    tiny = listed[models.TINY_LLAMA]
    assert (tiny.architecture, tiny.model_type, tiny.context_length) == (
        "LlamaForCausalLM",
        "llama",
        512,
    )
    weights = models.load_causal_lm(tiny.path, torch.float32).state_dict()
    assert tiny.parameters == sum(tensor.numel() for tensor in weights.values())
    packaged = models.minilm_path()
    assert (models.MINILM in listed) == (packaged is not None)
    if packaged is not None:
        minilm = listed[models.MINILM]
        assert (minilm.architecture, minilm.parameters) == ("BertModel", 22_713_728)
        assert models.resolve_model(models_dir, models.MINILM) == packaged


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../tiny-llama", "'..'"),
        ("tiny-llama/../../etc", "'..'"),
        ("/etc", "absolute"),
        ("", "not a valid"),
        ("no-such-model", "no such model"),
        ("escape", "outside the models dir"),
    ],
)
def test_resolve_model_stays_inside_models_dir(
    models_dir: Path, tmp_path: Path, name: str, reason: str
) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(models_dir / models.TINY_LLAMA, outside)
    (models_dir / "escape").unlink(missing_ok=True)
    (models_dir / "escape").symlink_to(outside)
    with pytest.raises(ValueError, match=reason):
        models.resolve_model(models_dir, name)
    # A link escaping the models dir is not offered either.
    assert "escape" not in {model.name for model in models.list_base_models(models_dir)}


def test_resolve_model_finds_models_by_name(models_dir: Path) -> None:
    expected = (models_dir / models.TINY_LLAMA).resolve()
    assert models.resolve_model(models_dir, models.TINY_LLAMA) == expected


def test_pickled_weights_are_never_loaded(models_dir: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(models_dir / models.TINY_LLAMA / "config.json", pickled)
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        models.load_causal_lm(pickled, torch.float32)


def test_lora_presets_per_architecture() -> None:
    assert lora.target_modules("llama", "QV") == ["q_proj", "v_proj"]
    assert len(lora.target_modules("qwen2", "QKVO_FFN")) == 7
    assert lora.target_modules("gpt2", "QKVO") == ["c_attn", "attn.c_proj"]
    assert lora.target_modules("bert", "QV") == ["query", "value"]
    with pytest.raises(ValueError, match="no LoRA target modules"):
        lora.target_modules("mamba", "QV")
