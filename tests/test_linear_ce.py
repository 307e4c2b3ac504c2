"""The fused linear cross-entropy option (`TrainArgs.fused_linear_cross_entropy`) on CPU:
the chunked loss against `token_loss` on full logits, then the option in the recipe and
on every model type it allows. (Its CUDA backend, Liger's kernel, needs a GPU.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import ARCHITECTURES, CONFIG, GPT2_CONFIG

from trainer import batching, data, linear_ce, lora, methods, models
from trainer.args import Refused, TrainArgs
from trainer.formats import read_examples
from trainer.recipe import Callbacks, train

ASSETS = Path(__file__).resolve().parent.parent / "trainer" / "assets"
IGNORE = data.IGNORE_INDEX


@pytest.mark.parametrize("chunk_rows", [1, 4, 7, None])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_chunked_loss_is_token_loss_on_the_logits(chunk_rows: int | None, softcap: float | None):
    """Rows with and without targets, chunks that do not divide them (20 loss rows),
    softcapping that changes the loss: the same sum, count and gradients."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 12, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, requires_grad=True)
    bias = torch.randn(50, generator=generator, requires_grad=True)
    labels = torch.randint(0, 50, (3, 12), generator=generator)
    with torch.no_grad():  # every third target the prediction: some right, most not
        predicted = (hidden @ weight.T + bias).argmax(dim=-1)
    labels[:, 1::3] = predicted[:, 0::3][:, :4]
    labels[0, :5] = labels[1, 9:] = labels[2, ::2] = IGNORE  # prompt, padding, scattered

    def reference() -> tuple[torch.Tensor, torch.Tensor]:
        logits = hidden @ weight.T + bias
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return methods.token_loss(logits, labels)

    def fused() -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels[:, 1:]
        return linear_ce.linear_cross_entropy(
            hidden[:, :-1], weight, targets, bias, softcap, chunk_rows=chunk_rows
        )

    results = []
    for compute in (reference, fused):
        loss, correct = compute()
        loss.backward()
        results.append((loss.detach(), correct, [t.grad.clone() for t in (hidden, weight, bias)]))
        hidden.grad = weight.grad = bias.grad = None
    (want, want_correct, want_grads), (got, got_correct, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert got_correct.item() == want_correct.item() > 0
    for mine, theirs in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_no_loss_rows_give_a_zero_loss_that_still_backpropagates() -> None:
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(10, 8)
    loss, correct = linear_ce.linear_cross_entropy(hidden, weight, torch.full((2, 5), IGNORE))
    loss.backward()
    assert (loss.item(), correct.item()) == (0.0, 0)
    assert torch.count_nonzero(hidden.grad) == 0


# --- on the models ---------------------------------------------------------------------------

# Beside tiny_models' families (Mixtral is not among them): a few small experts.
_MIXTRAL = {"num_local_experts": 4, "num_experts_per_tok": 2}


def _tiny_peft(kind: str, tokenizer: Any) -> Any:
    """A 2-layer `kind` model with LoRA (QKVO: gradients throughout each layer), no dropout."""
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = GPT2_CONFIG if kind in ("gpt2", "gpt_bigcode") else CONFIG
    extra = _MIXTRAL if kind == "mixtral" else ARCHITECTURES[kind]
    config = AutoConfig.for_model(
        kind,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **sizes,
        **extra,
    )
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_config(config), lora.lora_config(kind, "QKVO", 4, 8, 0.0)
    )
    for parameter in model.parameters():
        if parameter.requires_grad:  # LoRA's B starts at zero: make the adapter matter
            torch.nn.init.normal_(parameter, std=0.05)
    return model


@pytest.fixture(scope="module")
def chats(tiny: Path) -> tuple[Any, list[data.TokenSequence]]:
    """tiny-llama's tokenizer and four chats: system and user prompts, assistant labels."""
    tokenizer = models.load_tokenizer(tiny)
    examples = list(read_examples(ASSETS / "sample-chat.jsonl"))[:4]
    return tokenizer, data.encode_examples(examples, tokenizer, 128).sequences


@pytest.mark.parametrize("kind", sorted(linear_ce.MODEL_TYPES))
def test_every_allowed_model_type_gets_its_own_loss(
    kind: str, chats: tuple[Any, list[data.TokenSequence]], one_torch_thread: None
) -> None:
    """Padded rows (whose prompts `_logits` skips) and a packed row (the GPU's layout,
    position ids restarting), Gemma 2's softcapped logits included: the fused loss is
    the model's own, with the same correct count and LoRA gradients."""
    tokenizer, sequences = chats
    model = _tiny_peft(kind, tokenizer)
    if kind == "gemma2":
        assert model.config.final_logit_softcapping == 30.0  # what the fused path must apply
    padded, packed = batching.collate(sequences, tokenizer.pad_token_id), batching.pack(sequences)
    assert (padded.labels[:, 0] == IGNORE).all() and packed.position_ids is not None

    def measured(method: methods.Supervised, batch: batching.Batch) -> tuple[Any, ...]:
        model.zero_grad()
        loss, stats = method.measure(model, batch, bf16=False)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        return loss.item(), stats[1].item(), grads

    for batch in (padded, packed):
        want, want_correct, want_grads = measured(methods.Supervised(), batch)
        fused = methods.Supervised(fused_linear_cross_entropy=True)
        got, got_correct, got_grads = measured(fused, batch)
        assert got == pytest.approx(want, rel=1e-5)
        assert got_correct == want_correct
        for mine, theirs in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_gives_the_same_loss_within_its_rounding(
    chats: tuple[Any, list[data.TokenSequence]], one_torch_thread: None
) -> None:
    """What a GPU run computes (the head in bf16, the loss in float32), here on the CPU."""
    tokenizer, sequences = chats
    model = _tiny_peft("llama", tokenizer)
    batch = batching.pack(sequences)
    full = methods.Supervised().measure(model, batch, bf16=True)[0].item()
    fused = methods.Supervised(fused_linear_cross_entropy=True).measure(model, batch, bf16=True)
    assert fused[0].item() == pytest.approx(full, rel=1e-3)


# --- in the recipe ---------------------------------------------------------------------------


def _run(tiny: Path, tmp_path: Path, **options: Any) -> list[tuple[float, ...]]:
    """4 steps of 2 micro-batches on tiny-llama, dropout on, validated every 2 steps:
    each step's (train loss, train accuracy), then each validation's."""
    tmp_path.mkdir()
    train_file, valid_file = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train_file.write_text("".join((ASSETS / "sample-chat.jsonl").open().readlines()[:16]))
    valid_file.write_text((ASSETS / "sample-chat-valid.jsonl").read_text())
    steps: list[tuple[float, ...]] = []
    validations: list[tuple[float, ...]] = []
    args = TrainArgs(
        base_model=str(tiny),
        train_file=str(train_file),
        validation_file=str(valid_file),
        output_dir=str(tmp_path / "run"),
        n_epochs=1,
        batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate_multiplier=100,
        lora_dropout=0.1,
        seed=3,
        eval_every_steps=2,
        **options,
    )
    train(
        args,
        Callbacks(
            on_metrics=lambda **m: steps.append((m["train_loss"], m["train_mean_token_accuracy"])),
            on_validation=lambda **m: validations.append(
                (m["valid_loss"], m["valid_mean_token_accuracy"])
            ),
        ),
    )
    assert len(steps) == 4 and len(validations) == 2
    return steps + validations


def test_the_option_trains_the_same_run(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone and with gradient checkpointing: the same losses, within rounding (dropout
    draws the same masks: the decoder runs the same ops), and the same accuracies."""
    want = _run(tiny, tmp_path / "plain")
    assert any(accuracy > 0 for _, accuracy in want)
    calls: list[int] = []
    fused = linear_ce.linear_cross_entropy
    monkeypatch.setattr(
        linear_ce,
        "linear_cross_entropy",
        lambda hidden, *args, **kwargs: (
            calls.append(hidden.size(0)) or fused(hidden, *args, **kwargs)
        ),
    )
    for name, options in {
        "fused": {"fused_linear_cross_entropy": True},
        "both": {"fused_linear_cross_entropy": True, "gradient_checkpointing": True},
    }.items():
        calls.clear()
        got = _run(tiny, tmp_path / name, **options)
        assert len(calls) >= 8  # every micro-batch's loss, then validation's
        assert [loss for loss, _ in got] == pytest.approx([loss for loss, _ in want], rel=1e-5)
        assert [accuracy for _, accuracy in got] == [accuracy for _, accuracy in want]


def test_a_model_type_whose_logits_it_does_not_know_is_refused(tiny: Path, tmp_path: Path) -> None:
    """Cohere scales its logits (logit_scale): refused before the model loads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("cohere", vocab_size=64, **CONFIG)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "cohere")
    (tmp_path / "train.jsonl").write_text((ASSETS / "sample-chat-valid.jsonl").read_text())
    args = TrainArgs(
        base_model=str(tmp_path / "cohere"),
        train_file=str(tmp_path / "train.jsonl"),
        output_dir=str(tmp_path / "run"),
        fused_linear_cross_entropy=True,
    )
    with pytest.raises(Refused, match=r"^fused_linear_cross_entropy: .* model type cohere,"):
        train(args)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"method": "dpo"}, "is for method supervised; this run's method is dpo"),
        (
            {"sharding": "fsdp"},
            "does not work with sharding fsdp (the LM head's weight is sharded)",
        ),
    ],
)
def test_runs_it_cannot_serve_are_invalid(
    tiny: Path, options: dict[str, Any], problem: str
) -> None:
    args = TrainArgs(
        base_model=str(tiny),
        train_file=str(ASSETS / "sample-chat.jsonl"),
        output_dir="out",
        fused_linear_cross_entropy=True,
        **options,
    )
    found = [str(p) for p in args.problems() if p.field == "fused_linear_cross_entropy"]
    assert found == [f"fused_linear_cross_entropy: {problem}"]
