"""Classification data beyond one record: the labels of a file and the rules across records
and files. No torch here: the upload validator, the job check and the Cohere bridge read it.

`trainer.formats` checks each `{"text", "label"}` row (and a multi-label row in a
single-label file). What only the whole data can show is checked here, each problem naming
the line it was first seen on:

- a training file needs examples of at least 2 labels (single-label: one label is no
  choice at all; multi-label: one label is a yes/no detector, a kind of data Cohere also
  refuses);
- every label of a validation file must be a label of its training file (the classifier
  has no output for another);
- training and validation files are both single-label or both multi-label.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainer.formats import Example, Format, detect_format, read_examples

LABELLED = frozenset({Format.SINGLE_LABEL, Format.MULTI_LABEL})
MAX_LABELS = 1000
"""Distinct labels one file may have: more is a file of ids, not of classes."""
MIN_LABELS = 2


def is_labelled(fmt: str | None) -> bool:
    """Whether a file of format `fmt` (a `Format` or its value) is classification data."""
    return fmt in {f.value for f in LABELLED}


@dataclass
class LabelStat:
    """One label of a file."""

    label: str
    examples: int
    """Examples that have the label."""
    first_line: int
    """The line it is first seen on."""


@dataclass
class LabelTally:
    """The labels of a file, counted as its records are read (in line order)."""

    stats: dict[str, LabelStat] = field(default_factory=dict)
    unlabelled: int = 0
    """Multi-label examples with no label (allowed: an example may have none)."""

    def add(self, example: Example, line: int) -> None:
        if not example.labels:
            self.unlabelled += 1
        for label in example.labels:
            stat = self.stats.get(label)
            if stat is None:
                self.stats[label] = LabelStat(label, 1, line)
            else:
                stat.examples += 1

    def sorted(self) -> list[LabelStat]:
        """By label, the order of the classifier's outputs."""
        return [self.stats[label] for label in sorted(self.stats)]

    def too_many(self) -> str | None:
        """Why the file has too many labels to be classification data, or None."""
        if len(self.stats) <= MAX_LABELS:
            return None
        extra = sorted(self.stats.values(), key=lambda s: s.first_line)[MAX_LABELS]
        return (
            f"the file has {len(self.stats)} distinct labels, more than {MAX_LABELS} "
            f"(the {MAX_LABELS + 1}th, {extra.label!r}, first on line {extra.first_line})"
        )


def training_problem(stats: Iterable[LabelStat]) -> str | None:
    """Why labels `stats` cannot train a classifier (fewer than 2 labels), or None."""
    found = sorted(stats, key=lambda s: s.first_line)
    if len(found) >= MIN_LABELS:
        return None
    if not found:
        return "no example has a label; a classifier needs examples of at least 2 labels"
    only = found[0]
    return (
        f"every labelled example has the label {only.label!r} (first on line "
        f"{only.first_line}); a classifier needs examples of at least {MIN_LABELS} labels"
    )


def unknown_labels(training: Iterable[str], validation: Iterable[LabelStat]) -> list[str]:
    """A sentence for each validation label that the training data does not have."""
    known = sorted(set(training))
    shown = ", ".join(repr(label) for label in known[:20]) + (", …" if len(known) > 20 else "")
    return [
        f"line {stat.first_line}: label {stat.label!r} is not a label of the training "
        f"file (its labels: {shown})"
        for stat in sorted(validation, key=lambda s: s.first_line)
        if stat.label not in set(known)
    ]


def kind_mismatch(training: str, validation: str) -> str | None:
    """Why a validation file of format `validation` cannot validate a classifier trained on
    format `training` (both `Format` values), or None."""
    if validation == training:
        return None
    if not is_labelled(validation):
        return f"is {validation or 'not'} data, not {training.replace('_', '-')} data"
    return (
        f"is {validation.replace('_', '-')} data but the training file is "
        f"{training.replace('_', '-')}; both must be one or the other"
    )


@dataclass(frozen=True)
class LabelScore:
    """How a classifier did on one label."""

    examples: int
    """Examples that have the label."""
    predicted: int
    """Examples it was predicted for."""
    correct: int
    """Examples that have it and were predicted it."""

    @property
    def f1(self) -> float:
        return 2 * self.correct / (self.examples + self.predicted) if self.correct else 0.0


@dataclass(frozen=True)
class Scores:
    """A classifier's metrics over a labelled set."""

    loss: float
    accuracy: float
    """Share of examples predicted right (multi-label: all of their labels, none more)."""
    macro_f1: float
    """F1 averaged over the labels that the examples have or were predicted."""
    per_label: dict[str, LabelScore]

    def as_dict(self) -> dict[str, Any]:
        """For events: JSON types only."""
        return {
            "valid_loss": self.loss,
            "valid_accuracy": self.accuracy,
            "valid_macro_f1": self.macro_f1,
            "per_label": {
                label: {**asdict(score), "f1": score.f1} for label, score in self.per_label.items()
            },
        }


def score(
    truth: Sequence[Sequence[str]],
    predicted: Sequence[Sequence[str]],
    names: Sequence[str],
    loss: float = math.nan,
) -> Scores:
    """Accuracy, macro F1 and per-label counts of `predicted` against `truth` (each example's
    labels: one for single-label)."""
    counts = {name: [0, 0, 0] for name in names}
    right = 0
    for want, got in zip(truth, predicted, strict=True):
        right += set(want) == set(got)
        for label in want:
            counts[label][0] += 1
        for label in got:
            counts[label][1] += 1
            counts[label][2] += label in want
    per_label = {name: LabelScore(*counts[name]) for name in names}
    seen = [s for s in per_label.values() if s.examples or s.predicted]
    return Scores(
        loss=loss,
        accuracy=right / len(truth) if truth else 0.0,
        macro_f1=sum(s.f1 for s in seen) / len(seen) if seen else 0.0,
        per_label=per_label,
    )


@dataclass(frozen=True)
class Labelled:
    """A classification file as the trainer reads it."""

    format: Format
    texts: list[str]
    labels: list[tuple[str, ...]]
    lines: list[int]
    """The line of each example, for messages."""
    tally: LabelTally

    @property
    def multi_label(self) -> bool:
        return self.format == Format.MULTI_LABEL


def read_labelled(path: str | os.PathLike[str], filename: str = "") -> Labelled:
    """A validated classification file; ValueError when it is not one."""
    texts: list[str] = []
    labels: list[tuple[str, ...]] = []
    lines: list[int] = []
    tally = LabelTally()
    fmt: Format | None = None
    for line, example in _numbered(read_examples(path, filename=filename), Path(path)):
        if example.format not in LABELLED:
            raise ValueError(
                f"{filename or Path(path).name} is {example.format} data, not classification "
                'data ({"text": ..., "label": ...} rows)'
            )
        fmt = example.format
        texts.append(example.text)
        labels.append(example.labels)
        lines.append(line)
        tally.add(example, line)
    if fmt is None:
        raise ValueError(f"{filename or Path(path).name} has no examples")
    return Labelled(fmt, texts, labels, lines, tally)


def _numbered(examples: Iterable[Example], path: Path) -> Iterable[tuple[int, Example]]:
    """Examples with their line numbers (blank lines are skipped, but counted)."""
    with path.open(encoding="utf-8-sig", newline="\n") as f:
        numbers = (n for n, raw in enumerate(f, 1) if not raw.isspace())
        yield from zip(numbers, examples, strict=False)


def file_format(path: str | os.PathLike[str]) -> Format | None:
    """The format of the first record of a JSONL file, judged by its keys; None when it
    has none or is not JSONL. Cheap: reads one line."""
    try:
        with Path(path).open(encoding="utf-8-sig", newline="\n") as f:
            for raw in f:
                if not raw.isspace():
                    return detect_format(json.loads(raw))
    except (OSError, ValueError):
        return None
    return None
