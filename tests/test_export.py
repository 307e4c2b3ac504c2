"""Merging adapters and exporting to ONNX (trainer.merge, trainer.onnx_export) on tiny-llama:
merged logits equal base + adapter logits, ONNX logits equal torch's in onnxruntime."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from memorization import ANSWERS, EARLY_STEP, checkpoint, memorized, question
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from trainer import merge, models, onnx_export
from trainer.generation import Generator, SamplingParams
from trainer.merge import ExportError, load_merged, merge_adapter
from trainer.onnx_export import INT8_FILE, ONNX_FILE, OnnxExport, export_adapter, verify_onnx

TOKENIZER_FILES = ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return memorized(tiny, tmp_path_factory.getbasetemp() / "memorized", "a")


@pytest.fixture(scope="module")
def exported(
    tiny: Path, run: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[OnnxExport, list[str]]:
    """The final adapter exported to ONNX with int8, and the progress messages it reported."""
    events: list[str] = []
    done = export_adapter(
        tiny,
        run / "adapter",
        tmp_path_factory.mktemp("onnx") / "export",
        quantize_int8=True,
        on_event=lambda message, data: events.append(message),
    )
    return done, events


def batch(tiny: Path) -> dict[str, torch.Tensor]:
    """Two prompts of different lengths, the shorter one left-padded."""
    tokenizer = models.load_tokenizer(tiny)
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(question(i), tokenize=False, add_generation_prompt=True)
        for i in (0, 5)
    ]
    return dict(tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt"))


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits


def test_merged_model_matches_base_plus_adapter(tiny: Path, run: Path, tmp_path: Path) -> None:
    out = merge_adapter(tiny, run / "adapter", tmp_path / "merged")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES]
    )
    # Plain transformers weights: the base's tensor names, no adapter files for peft to find.
    with safe_open(out / "model.safetensors", "pt") as merged_file:
        with safe_open(tiny / "model.safetensors", "pt") as base_file:
            assert sorted(merged_file.keys()) == sorted(base_file.keys())
    merged = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert type(merged).__name__ == "LlamaForCausalLM"

    inputs = batch(tiny)
    adapted = merge.attach_adapter(models.load_causal_lm(tiny, torch.float32), run / "adapter")
    expected = logits(adapted, inputs)
    torch.testing.assert_close(logits(merged, inputs), expected, atol=1e-5, rtol=1e-5)
    base = models.load_causal_lm(tiny, torch.float32)
    assert not torch.allclose(logits(base, inputs), expected, atol=1e-2)


def test_merge_keeps_the_base_dtype(tiny: Path, run: Path, tmp_path: Path) -> None:
    bf16 = tmp_path / "tiny-bf16"
    models.load_causal_lm(tiny, torch.bfloat16).save_pretrained(bf16)
    models.load_tokenizer(tiny).save_pretrained(bf16)

    out = merge_adapter(bf16, run / "adapter", tmp_path / "merged")
    with safe_open(out / "model.safetensors", "pt") as merged_file:
        assert {merged_file.get_tensor(k).dtype for k in merged_file.keys()} == {torch.bfloat16}
    merged = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert merged.dtype == torch.bfloat16
    inputs = batch(tiny)
    adapted = merge.attach_adapter(models.load_causal_lm(bf16, torch.bfloat16), run / "adapter")
    # bfloat16 keeps 8 bits of mantissa: one merged rounding step apart, not bit for bit.
    torch.testing.assert_close(
        logits(merged, inputs).float(), logits(adapted, inputs).float(), atol=0.1, rtol=0.05
    )


def test_merge_refuses_a_non_empty_output(tiny: Path, run: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already holds files"):
        merge_adapter(tiny, run / "adapter", tmp_path / "out")


def test_a_checkpoint_merges_to_different_weights(tiny: Path, run: Path, tmp_path: Path) -> None:
    final = merge_adapter(tiny, run / "adapter", tmp_path / "final")
    early = merge_adapter(tiny, checkpoint(run, EARLY_STEP), tmp_path / "early")

    def digest(path: Path) -> str:
        return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()

    assert digest(final) != digest(early)
    inputs = batch(tiny)
    final_logits = logits(load_merged(tiny, run / "adapter")[0], inputs)
    early_logits = logits(load_merged(tiny, checkpoint(run, EARLY_STEP))[0], inputs)
    assert (final_logits - early_logits).abs().max() > 0.1


def test_onnx_export_files_and_report(exported: tuple[OnnxExport, list[str]]) -> None:
    done, events = exported
    assert sorted(p.name for p in done.directory.iterdir()) == sorted(
        [
            ONNX_FILE,
            f"{ONNX_FILE}.data",
            INT8_FILE,
            f"{INT8_FILE}.data",
            "config.json",
            "generation_config.json",
            *TOKENIZER_FILES,
        ]
    )
    assert 0 < done.max_logit_diff <= onnx_export.DEFAULT_TOLERANCE
    assert done.max_logit_diff < done.int8_max_logit_diff < 5.0
    assert events[0] == "Merging the adapter into the base model (float32)"
    assert any(f"max |logit diff| {done.max_logit_diff:.3g}" in e for e in events)
    assert events[-1] == f"Checked the int8 model: max |logit diff| {done.int8_max_logit_diff:.3g}"


@pytest.mark.parametrize(("batch_size", "length"), [(1, 1), (1, 24), (3, 7), (6, 40)])
def test_onnx_logits_match_torch(
    exported: tuple[OnnxExport, list[str]], tiny: Path, run: Path, batch_size: int, length: int
) -> None:
    model, _ = load_merged(tiny, run / "adapter", torch.float32)
    session = onnxruntime.InferenceSession(
        str(exported[0].directory / ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    generator = torch.Generator().manual_seed(batch_size * 100 + length)
    ids = torch.randint(0, 2048, (batch_size, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, : length // 3] = 0  # the last row left-padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = logits(model, {"input_ids": ids, "attention_mask": mask, "position_ids": positions})

    past = {
        i.name: np.zeros((batch_size, i.shape[1], 0, i.shape[3]), np.float32)
        for i in session.get_inputs()
        if i.name.startswith("past_key_values")
    }
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    got = session.run(["logits"], {**feed, "position_ids": positions.numpy(), **past})[0]
    keep = mask.bool()
    np.testing.assert_allclose(got[keep.numpy()], expected[keep].numpy(), atol=1e-4, rtol=1e-4)


def test_onnx_decodes_with_its_kv_cache(exported: tuple[OnnxExport, list[str]], tiny: Path):
    """Prompt in one call, then token by token feeding `present` back: the same logits as
    one pass over the whole sequence."""
    session = onnxruntime.InferenceSession(
        str(exported[0].directory / ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values")]
    ids = batch(tiny)["input_ids"][:1].numpy()
    length = ids.shape[1]

    def call(chunk: np.ndarray, start: int, past: list[np.ndarray] | None) -> list[np.ndarray]:
        end = start + chunk.shape[1]
        if past is None:
            past = [np.zeros((1, 2, 0, 16), np.float32) for _ in names]
        return session.run(
            None,
            {
                "input_ids": chunk,
                "attention_mask": np.ones((1, end), np.int64),
                "position_ids": np.arange(start, end)[None],
                **dict(zip(names, past, strict=True)),
            },
        )

    whole = call(ids, 0, None)[0]
    logits_, *past = call(ids[:, :-3], 0, None)
    steps = [logits_[:, -1]]
    for position in range(length - 3, length):
        logits_, *past = call(ids[:, position : position + 1], position, past)
        steps.append(logits_[:, -1])
    assert past[0].shape == (1, 2, length, 16)
    np.testing.assert_allclose(np.stack(steps, 1), whole[:, -4:], atol=1e-4, rtol=1e-4)


def test_onnx_over_tolerance_is_refused(exported: tuple[OnnxExport, list[str]], tiny: Path):
    # Checked against the base model, the fine-tuned graph is far off: the gate must say so.
    base = models.load_causal_lm(tiny, torch.float32)
    with pytest.raises(ExportError, match="over the tolerance of 0.001") as error:
        verify_onnx(exported[0].directory / ONNX_FILE, base)
    assert error.value.code == "onnx_tolerance_exceeded"


def test_export_leaves_the_models_attention_as_it_was(tiny: Path, run: Path, tmp_path: Path):
    model, tokenizer = load_merged(tiny, run / "adapter", torch.float32)
    assert model.config._attn_implementation == "sdpa"
    onnx_export.export_onnx(model, tokenizer, tmp_path / "export")
    assert model.config._attn_implementation == "sdpa"
    assert all(
        layer.self_attn.config._attn_implementation == "sdpa" for layer in model.model.layers
    )


def test_int8_difference_is_reproducible(
    exported: tuple[OnnxExport, list[str]], tiny: Path, run: Path
) -> None:
    done = exported[0]
    model, _ = load_merged(tiny, run / "adapter", torch.float32)
    measured = verify_onnx(done.directory / INT8_FILE, model, tolerance=float("inf"))
    assert measured == pytest.approx(done.int8_max_logit_diff, rel=1e-5)


def test_onnx_export_generates_the_trained_answers(exported: tuple[OnnxExport, list[str]]):
    generator = Generator()
    greedy = SamplingParams(temperature=0, max_tokens=32)
    answers = [
        "".join(c.text for c in generator.generate_onnx(exported[0].directory, question(i), greedy))
        for i in range(len(ANSWERS["a"]))
    ]
    assert answers == list(ANSWERS["a"])
    assert generator.base_loads == 0
