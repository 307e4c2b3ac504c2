"""Examples to token ids and labels: what the model reads and which tokens carry loss.

`labels` is aligned with `input_ids`: `labels[i]` is `input_ids[i]` when the model is
trained to predict token i (from the tokens before it), IGNORE_INDEX otherwise. The loss
shifts them (token i is predicted by position i - 1), as Hugging Face models do.

- Chat-like formats (chat, Cohere chat, ShareGPT, Alpaca, and preference examples, whose
  `messages` end with the preferred output) are rendered with the tokenizer's chat template
  (see `models.load_tokenizer` for the default). Loss falls on assistant turns only,
  including the template's end-of-turn markup so the model learns to stop; assistant
  messages with weight 0 carry none.
- Prompt/completion: BOS + prompt + completion + EOS, loss on completion + EOS.
- Text (continued pre-training): BOS + text + EOS cut into `max_seq_len` chunks, loss on
  every token.
- Preference pairs (DPO, `encode_preferences`): each preference example becomes two chat
  sequences sharing their prompt, the input with the preferred output and with the
  non-preferred one; labels mark each output's tokens only (an assistant turn of the input
  is prompt, not output).

An example longer than `max_seq_len` keeps its first `max_seq_len` tokens and is counted
as truncated; one left with no token to learn from is dropped and counted.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from trainer.args import Refused
from trainer.formats import Example, Format, Message, read_examples

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenSequence:
    """One training sequence."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def n_label_tokens(self) -> int:
        """Tokens the loss is computed on; the first one can never be predicted."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


@dataclass
class Encoded:
    """A data file, tokenized."""

    sequences: list[TokenSequence] = field(default_factory=list)
    n_examples: int = 0
    """Examples read from the file (a text document counts once however many chunks)."""
    n_truncated: int = 0
    """Examples cut to max_seq_len."""
    n_dropped: int = 0
    """Examples with no token left to learn from (all weight 0, or truncated to nothing)."""

    @property
    def n_tokens(self) -> int:
        return sum(len(sequence.input_ids) for sequence in self.sequences)

    @property
    def lengths(self) -> list[int]:
        return [len(sequence.input_ids) for sequence in self.sequences]

    @property
    def units(self) -> list[TokenSequence]:
        """What one row of a batch holds: a sequence."""
        return self.sequences

    def fingerprint(self) -> str:
        """SHA-256 of every sequence's ids and labels: a checkpoint's data position only
        means something for the very same sequences."""
        return _fingerprint(self.sequences)


@dataclass(frozen=True)
class PreferencePair:
    """One preference example: its prompt with the preferred output (`chosen`) and with
    the non-preferred one (`rejected`); each sequence's labels mark its output only."""

    chosen: TokenSequence
    rejected: TokenSequence


@dataclass
class EncodedPairs:
    """A preference file, tokenized into pairs (DPO's data); counts as in `Encoded`."""

    pairs: list[PreferencePair] = field(default_factory=list)
    n_examples: int = 0
    n_truncated: int = 0
    """Examples with either sequence cut to max_seq_len."""
    n_dropped: int = 0
    """Examples with an output left with no token to learn from."""

    @property
    def units(self) -> list[PreferencePair]:
        return self.pairs

    @property
    def n_tokens(self) -> int:
        return sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in self.pairs)

    @property
    def lengths(self) -> list[int]:
        """What batching plans by: a pair is two rows padded to the longer of them."""
        return [2 * max(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in self.pairs]

    def fingerprint(self) -> str:
        return _fingerprint(s for pair in self.pairs for s in (pair.chosen, pair.rejected))


def _fingerprint(sequences: Iterable[TokenSequence]) -> str:
    digest = hashlib.sha256()
    for sequence in sequences:
        digest.update(array("q", (len(sequence.input_ids), *sequence.input_ids)).tobytes())
        digest.update(array("q", sequence.labels).tobytes())
    return digest.hexdigest()


def load_file(
    path: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
    filename: str = "",
) -> Encoded:
    """Read and tokenize a data file (any format `trainer.formats` reads); `filename` is
    its upload name when stored under another, which decides text vs JSONL."""
    return encode_examples(read_examples(path, filename=filename), tokenizer, max_seq_len)


def encode_examples(
    examples: Iterable[Example], tokenizer: PreTrainedTokenizerBase, max_seq_len: int
) -> Encoded:
    """Tokenize examples, truncating and dropping as the module docstring says."""
    encoded = Encoded()
    for example in examples:
        encoded.n_examples += 1
        if example.format == Format.TEXT:
            ids = _with_bos_eos(tokenizer, _tokenize(tokenizer, [example.text])[0])
            for start in range(0, len(ids), max_seq_len):
                chunk = tuple(ids[start : start + max_seq_len])
                # A 1-token tail has nothing to predict.
                if len(chunk) >= 2:
                    encoded.sequences.append(TokenSequence(chunk, chunk))
            continue
        if example.format == Format.PROMPT_COMPLETION:
            ids, labels = _encode_prompt_completion(example, tokenizer)
        else:
            ids, labels = _encode_chat(example.messages, tokenizer)
        if len(ids) > max_seq_len:
            encoded.n_truncated += 1
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        sequence = TokenSequence(tuple(ids), tuple(labels))
        if sequence.n_label_tokens == 0:
            encoded.n_dropped += 1
        else:
            encoded.sequences.append(sequence)
    return encoded


def encode_preferences(
    examples: Iterable[Example], tokenizer: PreTrainedTokenizerBase, max_seq_len: int
) -> EncodedPairs:
    """Tokenize preference examples into pairs, truncating each sequence to `max_seq_len`
    and dropping a pair whose output (either one) is left with nothing to learn from."""
    encoded = EncodedPairs()
    for example in examples:
        if example.format != Format.PREFERENCE:
            raise ValueError(f"a {example.format} example is not a preference example")
        encoded.n_examples += 1
        prompt = example.messages[: len(example.messages) - len(example.chosen)]
        sequences = []
        truncated = False
        for output in (example.chosen, example.rejected):
            ids, labels = _encode_chat((*prompt, *output), tokenizer, trained_from=len(prompt))
            if len(ids) > max_seq_len:
                truncated = True
                ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            sequences.append(TokenSequence(tuple(ids), tuple(labels)))
        encoded.n_truncated += truncated
        if any(sequence.n_label_tokens == 0 for sequence in sequences):
            encoded.n_dropped += 1
        else:
            encoded.pairs.append(PreferencePair(*sequences))
    return encoded


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    # Special tokens come from the template or are added explicitly, never implicitly.
    # verbose=False: long documents are chunked afterwards, so the "longer than the
    # maximum" warning would be noise.
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _with_bos_eos(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [*bos, *ids, tokenizer.eos_token_id]


def _encode_prompt_completion(
    example: Example, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    prompt, completion = _tokenize(tokenizer, [example.prompt, example.completion])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    head = [*bos, *prompt]
    tail = [*completion, tokenizer.eos_token_id]
    return [*head, *tail], [IGNORE_INDEX] * len(head) + tail


def _encode_chat(
    messages: tuple[Message, ...], tokenizer: PreTrainedTokenizerBase, trained_from: int = 0
) -> tuple[list[int], list[int]]:
    """Render growing prefixes of the conversation; the text each message adds is one
    segment, trained or not. Tokenizing segments separately keeps every token on one
    side of the mask (a BPE merge can never straddle the boundary). Messages before
    index `trained_from` are never trained (a preference example's prompt)."""
    turns = [{"role": message.role, "content": message.content} for message in messages]
    segments: list[str] = []
    trained: list[bool] = []
    rendered = ""
    for index, message in enumerate(messages):
        if message.role == "assistant":
            # The assistant header ("<|im_start|>assistant\n") is prompt, not answer.
            header = _render(tokenizer, turns[:index], add_generation_prompt=True)
            segments.append(_suffix(rendered, header))
            trained.append(False)
            rendered = header
        full = _render(tokenizer, turns[: index + 1], add_generation_prompt=False)
        segments.append(_suffix(rendered, full))
        trained.append(message.role == "assistant" and message.weight > 0 and index >= trained_from)
        rendered = full
    ids: list[int] = []
    labels: list[int] = []
    for segment_ids, is_trained in zip(_tokenize(tokenizer, segments), trained, strict=True):
        ids += segment_ids
        labels += segment_ids if is_trained else [IGNORE_INDEX] * len(segment_ids)
    return ids, labels


def _render(
    tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, str]], add_generation_prompt: bool
) -> str:
    return tokenizer.apply_chat_template(
        turns, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _suffix(prefix: str, text: str) -> str:
    if not text.startswith(prefix):
        raise Refused(
            "invalid_base_model",
            "base_model",
            "the tokenizer's chat template is not prefix-stable (rendering more messages "
            "changes the text of earlier ones), so assistant tokens cannot be located",
        )
    return text[len(prefix) :]
