"""Correct by construction: the data rendered through the base model's chat template and
checked before anything trains.

Two mistakes make a fine-tune wrong without any error: a loss mask that trains on
something other than the assistant turns (or misses one), and assistant turns that do not
end with a token generation stops on, so the model never learns to stop and every reply
runs to max_tokens (the most common reason fine-tunes "never stop talking"). Before a run
trains, `inspect` takes the first example of each data format in its files, encodes it
with `trainer.data` (the very code training uses), and:

- refuses the run (`Refused`, code `invalid_base_model`) when the trained spans are not
  exactly the assistant turns: an assistant turn's text outside every trained span, a
  trained span holding no assistant turn, or another message's text trained on;
- warns when a trained assistant turn does not end with a stop token (the tokenizer's EOS
  or one of generation_config's `eos_token_id`, followed by whitespace at most), naming
  the token it ends with instead and how to fix the base model.

`report` then shows each example as the model trains on it, the trained spans wrapped in
«», in the run's first events, with the warnings beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from trainer import data
from trainer.args import Refused, TrainArgs
from trainer.formats import Example, Format, Message, read_examples

OPEN, CLOSE = "«", "»"
"""What wraps the trained spans of a rendered example."""
SCANNED = 100
"""Examples of a file read to find one with a token to learn from."""
SHOWN_RUN_CHARS = 1000
"""A longer run of rendered text is shown as its head and tail."""
SHOWN_CHARS = 8000
"""So is a longer rendered example (an event's data stays small)."""
NO_TRUNCATION = 1 << 30

# Formats whose examples have turns the check can locate; text trains on every token.
_CHECKED = {
    Format.CHAT,
    Format.COHERE_CHAT,
    Format.SHAREGPT,
    Format.ALPACA,
    Format.PROMPT_COMPLETION,
    Format.PREFERENCE,
}

EventCallback = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class Rendered:
    """One example as the model trains on it, and what is wrong with it."""

    file: str
    """The job field the example comes from: training_file or validation_file."""
    format: str
    text: str
    """The rendered example, every trained span wrapped in «»."""
    trained_spans: int
    problems: tuple[str, ...]
    """Why the loss mask is not exactly the assistant turns; the run is refused."""
    warnings: tuple[str, ...]
    """Why the model would not learn to stop; the run goes on, warned."""


def inspect(args: TrainArgs, tokenizer: PreTrainedTokenizerBase) -> list[Rendered]:
    """Render and check the first example of the run's training file and, when its
    format differs, of its validation file; raise `Refused` if a loss mask is wrong."""
    stops = stop_token_ids(args.base_model, tokenizer)
    found: list[Rendered] = []
    files = [("training_file", args.train_file, args.train_file_name)]
    if args.validation_file:
        files.append(("validation_file", args.validation_file, args.validation_file_name))
    for field, path, filename in files:
        example = first_example(read_examples(path, filename=filename), tokenizer)
        if example is None or example.format in {r.format for r in found}:
            continue
        rendered = check_example(example, tokenizer, stops, field)
        if rendered.problems:
            raise Refused(
                "invalid_base_model",
                "base_model",
                f"the chat template does not train on exactly the assistant turns of the "
                f"first {example.format} example of the {field.replace('_', ' ')}: "
                + "; ".join(rendered.problems),
            )
        found.append(rendered)
    return found


def report(rendered: Iterable[Rendered], on_event: EventCallback) -> None:
    """Each example as an info event (its text in data["rendered"]), then its warnings."""
    for example in rendered:
        on_event(
            "info",
            f"An example of the {example.file.replace('_', ' ')} ({example.format}) as the "
            f"model trains on it; {OPEN}{CLOSE} marks the tokens that carry loss",
            {
                "file": example.file,
                "format": example.format,
                "rendered": example.text,
                "trained_spans": example.trained_spans,
            },
        )
        for warning in example.warnings:
            on_event(
                "warn",
                warning,
                {"file": example.file, "format": example.format, "reason": "no_stop_token"},
            )


def stop_token_ids(
    model_dir: str | os.PathLike[str], tokenizer: PreTrainedTokenizerBase
) -> set[int]:
    """The tokens generation stops on, as `trainer.generation` decides them: the
    generation config's eos_token_id (one or several; the model config's when there is no
    generation_config.json), and the tokenizer's EOS."""
    found: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        ids = config.get("eos_token_id") if isinstance(config, dict) else None
        if ids is None and isinstance(config, dict):  # multimodal configs nest the text's
            ids = (config.get("text_config") or {}).get("eos_token_id")
        found.update(i for i in (ids if isinstance(ids, list) else [ids]) if isinstance(i, int))
        break
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


def first_example(
    examples: Iterable[Example], tokenizer: PreTrainedTokenizerBase
) -> Example | None:
    """The first example with a token to learn from, among the first `SCANNED`."""
    for example in islice(examples, SCANNED):
        if any(sequence.n_label_tokens for sequence in _sequences(example, tokenizer)):
            return example
    return None


def check_example(
    example: Example, tokenizer: PreTrainedTokenizerBase, stops: set[int], field: str = ""
) -> Rendered:
    """Encode `example` as training does and check its loss mask and turn endings."""
    sequences = _sequences(example, tokenizer)
    if not sequences:  # the template rendered no assistant token to learn from
        return Rendered(field, str(example.format), "", 0, ("no token carries loss",), ())
    problems: list[str] = []
    warnings: list[str] = []
    if example.format in _CHECKED:
        outputs, untrained = _expected(example)
        for sequence, trained in zip(sequences, outputs, strict=True):
            problems += _mask_problems(tokenizer, sequence, trained, untrained)
            warnings += _stop_problems(tokenizer, sequence, stops)
    return Rendered(
        file=field,
        format=str(example.format),
        text=mark(tokenizer, sequences[0]),
        trained_spans=len(_spans(sequences[0].labels)),
        problems=tuple(dict.fromkeys(problems)),
        warnings=tuple(dict.fromkeys(warnings)),
    )


def mark(tokenizer: PreTrainedTokenizerBase, sequence: data.TokenSequence) -> str:
    """The sequence's text with every trained span wrapped in «»."""
    out: list[str] = []
    for start, end, trained in _runs(sequence.labels):
        text = _shorten(_decode(tokenizer, sequence.input_ids[start:end]), SHOWN_RUN_CHARS)
        out.append(f"{OPEN}{text}{CLOSE}" if trained else text)
    return _shorten("".join(out), SHOWN_CHARS)


def sample_conversation(system: bool = True) -> Example:
    """A small chat (system, user, assistant, user, assistant) for checking a model's
    template when no data is at hand (`tunewire models add`); some templates (Gemma's)
    refuse a system message, so it can go without."""
    turns = (
        Message("user", "What is the capital of France?"),
        Message("assistant", "Paris."),
        Message("user", "And of Spain?"),
        Message("assistant", "Madrid."),
    )
    if system:
        turns = (Message("system", "You are a terse assistant."), *turns)
    return Example(Format.CHAT, messages=turns)


# ---- internals --------------------------------------------------------------------------


def _sequences(example: Example, tokenizer: PreTrainedTokenizerBase) -> list[data.TokenSequence]:
    """What training encodes the example into, untruncated (a preference example: its
    chosen and its rejected sequence). A text document shows only its beginning."""
    if example.format == Format.TEXT:
        head = tokenizer(example.text[:SHOWN_RUN_CHARS], add_special_tokens=False)["input_ids"]
        ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + head
        return [data.TokenSequence(tuple(ids), tuple(ids))]
    if example.format == Format.PREFERENCE:
        pairs = data.encode_preferences([example], tokenizer, NO_TRUNCATION).pairs
        return [pairs[0].chosen, pairs[0].rejected] if pairs else []
    return data.encode_examples([example], tokenizer, NO_TRUNCATION).sequences[:1]


def _expected(example: Example) -> tuple[list[list[str]], list[str]]:
    """For each sequence of the example, the texts that must carry loss, in order; and
    the texts that must not."""

    def learned(messages: Iterable[Message]) -> list[str]:
        return [m.content for m in messages if m.role == "assistant" and m.weight > 0]

    if example.format == Format.PROMPT_COMPLETION:
        outputs, untrained = [[example.completion]], [example.prompt]
    elif example.format == Format.PREFERENCE:
        prompt = example.messages[: len(example.messages) - len(example.chosen)]
        outputs = [learned(example.chosen), learned(example.rejected)]
        untrained = [m.content for m in prompt]
    else:
        outputs = [learned(example.messages)]
        untrained = [
            m.content for m in example.messages if not (m.role == "assistant" and m.weight > 0)
        ]
    return [[t for t in o if t.strip()] for o in outputs], [u for u in untrained if u.strip()]


def _mask_problems(
    tokenizer: PreTrainedTokenizerBase,
    sequence: data.TokenSequence,
    trained: list[str],
    untrained: list[str],
) -> Iterator[str]:
    runs = [
        (sequence.input_ids[start:end], is_trained)
        for start, end, is_trained in _runs(sequence.labels)
    ]
    spans = [_decode(tokenizer, ids) for ids, is_trained in runs if is_trained]
    # Markup that is a special token never reads as a message's text.
    plain = [_decode(tokenizer, ids, skip_special=True) for ids, is_trained in runs if is_trained]
    # Each turn that must carry loss lies in a trained span, in order.
    held = [False] * len(spans)
    span, offset = 0, 0
    for content in trained:
        needle = content.strip()
        while span < len(spans) and (at := spans[span].find(needle, offset)) < 0:
            span, offset = span + 1, 0
        if span == len(spans):
            yield f"the assistant turn {_quote(needle)} carries no loss"
            return
        held[span] = True
        offset = at + len(needle)
    for text, is_held in zip(spans, held, strict=True):
        if not is_held and text.strip():
            yield f"{OPEN}{_quote(text, 60)}{CLOSE} carries loss but is no assistant turn"
    # No other message's text carries loss (unless an assistant turn quotes it).
    for content in untrained:
        needle = content.strip()
        if any(needle in text for text in plain) and not any(needle in t for t in trained):
            yield f"the non-assistant turn {_quote(needle)} carries loss"


def _stop_problems(
    tokenizer: PreTrainedTokenizerBase, sequence: data.TokenSequence, stops: set[int]
) -> Iterator[str]:
    names = ", ".join(f"{_token(tokenizer, i)!r} (id {i})" for i in sorted(stops)) or "nothing"
    for start, end in _spans(sequence.labels):
        ids = sequence.input_ids[start:end]
        last = max((i for i, token in enumerate(ids) if token in stops), default=None)
        if last is not None and not _decode(tokenizer, ids[last + 1 :]).strip():
            continue
        ending = next((t for t in reversed(ids) if _decode(tokenizer, [t]).strip()), ids[-1])
        if ending in tokenizer.all_special_ids or _is_added(tokenizer, ending):
            what = f"end with {_token(tokenizer, ending)!r} (id {ending})"
            fix = f"add {ending} to eos_token_id in the base model's generation_config.json"
        else:
            what = "end with no special token"
            fix = (
                "make the base model's chat template end assistant turns with "
                f"{tokenizer.eos_token!r}"
            )
        yield (
            f"Assistant turns {what}, but generation stops only on {names}: the "
            "fine-tuned model will not learn to stop and will talk until max_tokens. "
            f"To fix it, {fix}"
        )
        return


def _runs(labels: tuple[int, ...]) -> Iterator[tuple[int, int, bool]]:
    """(start, end, trained) of each maximal run of trained or untrained tokens."""
    start = 0
    for index in range(1, len(labels) + 1):
        if index == len(labels) or (labels[index] == data.IGNORE_INDEX) != (
            labels[start] == data.IGNORE_INDEX
        ):
            yield start, index, labels[start] != data.IGNORE_INDEX
            start = index


def _spans(labels: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(start, end) for start, end, trained in _runs(labels) if trained]


def _decode(
    tokenizer: PreTrainedTokenizerBase, ids: Iterable[int], skip_special: bool = False
) -> str:
    return tokenizer.decode(
        list(ids), skip_special_tokens=skip_special, clean_up_tokenization_spaces=False
    )


def _token(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    return _decode(tokenizer, [token_id])


def _is_added(tokenizer: PreTrainedTokenizerBase, token_id: int) -> bool:
    return token_id in getattr(tokenizer, "added_tokens_decoder", {})


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}…[{len(text) - 2 * half} characters]…{text[-half:]}"


def _quote(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
