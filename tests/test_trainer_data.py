"""Tokenization, loss masks, truncation and batching, on tiny-llama's real tokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from trainer import batching, data, models
from trainer.formats import Example, Format, Message


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    return models.load_tokenizer(models.init_tiny(tmp_path_factory.mktemp("models")))


def trained_text(tokenizer: PreTrainedTokenizerBase, sequence: data.TokenSequence) -> str:
    """The text of the tokens that carry loss."""
    return tokenizer.decode(
        [label for label in sequence.labels if label != data.IGNORE_INDEX],
        skip_special_tokens=False,
    )


def chat(*messages: Message) -> Example:
    return Example(Format.CHAT, messages=messages)


def test_chat_loss_falls_on_assistant_turns_only(tokenizer: PreTrainedTokenizerBase) -> None:
    example = chat(
        Message("system", "You are terse."),
        Message("user", "Capital of France?"),
        Message("assistant", "Paris."),
        Message("user", "And Spain?"),
        Message("assistant", "Madrid."),
    )
    encoded = data.encode_examples([example], tokenizer, max_seq_len=512)
    [sequence] = encoded.sequences
    # The sequence is exactly the rendered chat template, token for token in text.
    rendered = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in example.messages], tokenize=False
    )
    assert tokenizer.decode(sequence.input_ids, skip_special_tokens=False) == rendered
    assert trained_text(tokenizer, sequence) == "Paris.<|im_end|>\nMadrid.<|im_end|>\n"
    assert len(sequence.labels) == len(sequence.input_ids)


def test_weight_zero_assistant_message_carries_no_loss(tokenizer: PreTrainedTokenizerBase) -> None:
    example = chat(
        Message("user", "Say hi."),
        Message("assistant", "Hello, wrong style.", weight=0),
        Message("user", "Again."),
        Message("assistant", "Hi!"),
    )
    [sequence] = data.encode_examples([example], tokenizer, 512).sequences
    assert trained_text(tokenizer, sequence) == "Hi!<|im_end|>\n"


def test_example_with_only_weight_zero_answers_is_dropped(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    example = chat(Message("user", "Hi"), Message("assistant", "Hello", weight=0))
    encoded = data.encode_examples([example], tokenizer, 512)
    assert (encoded.sequences, encoded.n_dropped, encoded.n_examples) == ([], 1, 1)


def test_prompt_completion_loss_on_completion_and_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    example = Example(Format.PROMPT_COMPLETION, prompt="Q: 2+3?\nA:", completion=" five")
    [sequence] = data.encode_examples([example], tokenizer, 512).sequences
    assert sequence.input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(sequence.input_ids) == "<|begin_of_text|>Q: 2+3?\nA: five<|im_end|>"
    assert trained_text(tokenizer, sequence) == " five<|im_end|>"


def test_preference_example_trains_on_preferred_output(tokenizer: PreTrainedTokenizerBase) -> None:
    example = Example(
        Format.PREFERENCE,
        messages=(Message("user", "Capital of Italy?"), Message("assistant", "Rome, friend!")),
        rejected=(Message("assistant", "No idea."),),
    )
    [sequence] = data.encode_examples([example], tokenizer, 512).sequences
    assert trained_text(tokenizer, sequence) == "Rome, friend!<|im_end|>\n"
    assert "No idea" not in tokenizer.decode(sequence.input_ids)


def test_text_is_chunked_with_loss_on_every_token(tokenizer: PreTrainedTokenizerBase) -> None:
    text = " ".join(f"word{i}" for i in range(300))
    encoded = data.encode_examples([Example(Format.TEXT, text=text)], tokenizer, max_seq_len=64)
    assert len(encoded.sequences) > 3
    assert all(len(sequence.input_ids) <= 64 for sequence in encoded.sequences)
    assert all(sequence.labels == sequence.input_ids for sequence in encoded.sequences)
    stream = [token for sequence in encoded.sequences for token in sequence.input_ids]
    assert tokenizer.decode(stream) == f"<|begin_of_text|>{text}<|im_end|>"
    # Chunking is not truncation: nothing is lost.
    assert (encoded.n_examples, encoded.n_truncated, encoded.n_dropped) == (1, 0, 0)


def test_long_examples_are_truncated_and_counted(tokenizer: PreTrainedTokenizerBase) -> None:
    short = chat(Message("user", "Hi"), Message("assistant", "Hello"))
    long = chat(Message("user", "Tell me. " * 5), Message("assistant", "Sure thing. " * 40))
    encoded = data.encode_examples([short, long, long], tokenizer, max_seq_len=48)
    assert encoded.n_truncated == 2
    assert encoded.lengths[1:] == [48, 48]
    # A truncation that leaves no answer token drops the example too.
    unanswerable = chat(Message("user", "Tell me. " * 30), Message("assistant", "Sure."))
    encoded = data.encode_examples([unanswerable], tokenizer, max_seq_len=48)
    assert (encoded.n_truncated, encoded.n_dropped, encoded.sequences) == (1, 1, [])


def test_load_file_reads_formats_through_trainer_formats(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    cohere = {"messages": [{"role": "User", "content": "Hi"}, {"role": "Chatbot", "content": "Yo"}]}
    openai = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    }
    sequences = []
    for name, row in (("cohere.jsonl", cohere), ("openai.jsonl", openai)):
        (tmp_path / name).write_text(json.dumps(row) + "\n", encoding="utf-8")
        sequences += data.load_file(tmp_path / name, tokenizer, 512).sequences
    assert sequences[0] == sequences[1]
    assert trained_text(tokenizer, sequences[0]) == "Yo<|im_end|>\n"

    # A document stored under a generated blob name is still text when uploaded as .txt.
    blob = tmp_path / "file-abc123"
    blob.write_text("Plain text becomes one document.", encoding="utf-8")
    [sequence] = data.load_file(blob, tokenizer, 512, filename="notes.txt").sequences
    assert sequence.labels == sequence.input_ids


def chat_like_lengths(n: int, seed: int = 0) -> list[int]:
    """Lengths spread like real chat data: a long tail from ~20 to ~2,000 tokens."""
    rng = random.Random(seed)
    return [min(2048, max(16, int(rng.lognormvariate(5.5, 0.8)))) for _ in range(n)]


def test_random_batches_split_into_micro_batches_pad_little() -> None:
    lengths = chat_like_lengths(4000)
    plan = batching.plan_epoch(len(lengths), batch_size=8, seed=1, epoch=0)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    # Random batches, as HF's Trainer draws them, pad to 2.5x the real tokens; split where
    # padding costs more than a pass, they compute almost only real ones.
    assert batching.padding_ratio(lengths, plan) > 2
    parts = [part for batch in plan for part in batching.split_by_length(batch, lengths, 32)]
    assert batching.padding_ratio(lengths, parts) <= 1.05


def test_balance_gives_each_rank_a_near_equal_share() -> None:
    lengths = [900, 300, 300, 299, 298, 50]
    groups = batching.balance(range(6), lengths, 2)
    assert sorted(i for group in groups for i in group) == list(range(6))
    loads = sorted(sum(lengths[i] for i in group) for group in groups)
    assert loads == [950, 1197]  # longest first, each to the lightest share
    assert batching.balance([3], lengths, 4) == [[3]]  # never an empty share


def test_batch_order_is_a_pure_function_of_seed_and_epoch() -> None:
    plan = batching.plan_epoch(300, 4, seed=7, epoch=2)
    assert plan == batching.plan_epoch(300, 4, seed=7, epoch=2)
    assert plan != batching.plan_epoch(300, 4, seed=7, epoch=3)
    assert plan != batching.plan_epoch(300, 4, seed=8, epoch=2)


def test_split_by_length_splits_only_where_padding_costs_more_than_a_pass() -> None:
    lengths = [900, 300, 300, 299, 298]
    parts = batching.split_by_length(range(5), lengths, pass_cost=32)
    # The 900-token row alone; padding the others to it would waste ~2,400 tokens.
    assert parts == [[0], [1, 2, 3, 4]]
    assert sorted(i for part in parts for i in part) == list(range(5))
    # Rows of equal length are never split, and a split is a pure function.
    assert batching.split_by_length([0, 1, 2], [50, 50, 50], pass_cost=32) == [[0, 1, 2]]
    assert parts == batching.split_by_length(range(5), lengths, pass_cost=32)
    # A costly pass (a GPU's) keeps the batch whole.
    assert batching.split_by_length(range(5), lengths, pass_cost=10_000) == [[0, 1, 2, 3, 4]]


def test_collate_pads_right_and_masks_padding(tokenizer: PreTrainedTokenizerBase) -> None:
    examples = [
        chat(Message("user", "Hi"), Message("assistant", "Hello there, how are you?")),
        chat(Message("user", "Hi"), Message("assistant", "Yo")),
    ]
    sequences = data.encode_examples(examples, tokenizer, 512).sequences
    batch = batching.collate(sequences, tokenizer.pad_token_id)
    long, short = (len(s.input_ids) for s in sequences)
    assert batch.input_ids.shape == (2, long)
    assert batch.attention_mask.sum().item() == batch.real_tokens == long + short
    assert (batch.labels[1, short:] == data.IGNORE_INDEX).all()
    assert (batch.input_ids[1, short:] == tokenizer.pad_token_id).all()
    assert batch.label_tokens == sum(s.n_label_tokens for s in sequences)
    assert batch.computed_tokens == 2 * long
