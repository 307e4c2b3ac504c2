"""Batches that spend little compute on padding, in an order a resumed run can reproduce.

Length grouping (as Hugging Face's LengthGroupedSampler and Megatron do): shuffle all
sequences, cut the shuffled order into windows of `MEGA_BATCH` batches, sort each window
by length so every batch holds sequences of nearly equal length, then shuffle the batch
order. Sequences still see random neighbours and a random position in the epoch, but
padding shrinks to a few percent on realistically varied lengths.

Within a batch, `split_by_length` then cuts off the rows whose padding would cost more
than an extra forward/backward pass (the long tail of a small data set leaves a 900-token
row beside 300-token ones even after sorting), so computed tokens stay within a few percent
of real ones however few sequences there are to sort. The step's loss is the token mean over
all of its micro-batches, so a split changes speed and peak memory, not the loss or the
gradient (up to float rounding; dropout draws its masks per micro-batch).

The plan is a pure function of (lengths, batch_size, seed, epoch), so a run resumed from a
checkpoint recomputes it and skips straight to its saved batch index.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trainer.data import IGNORE_INDEX, TokenSequence

MEGA_BATCH = 64
"""Batches per sort window: larger windows pad less but make batches less random."""

PASS_COST_TOKENS = {"cpu": 32, "cuda": 1024}
"""What one more forward/backward pass costs, in tokens of work it could have done instead
(fixed per-pass overhead x throughput; measured ~30 on a CPU core for a 14M Llama, and a
GPU pass has a far higher floor). Devices not listed use the "cuda" figure."""


def plan_epoch(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Sequence indices of each batch of epoch `epoch`, in training order. Every sequence
    appears once; only the last batch of the last window may be smaller."""
    # String seeds are hashed with SHA-512: stable across runs, processes and platforms.
    rng = random.Random(f"tunewire:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * MEGA_BATCH
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        # sorted() is stable, so ties keep their shuffled order and the plan stays exact.
        group = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def split_by_length(
    batch: Sequence[int], lengths: Sequence[int], pass_cost: int
) -> list[list[int]]:
    """`batch` as micro-batches, longest first, that minimise computed tokens plus
    `pass_cost` per micro-batch. Exact dynamic programming over the batch sorted by length
    (an optimal split of sorted rows is contiguous); a pure function of its arguments."""
    order = sorted(batch, key=lambda i: lengths[i], reverse=True)
    best = [0] + [0] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        # Rows start..end-1 padded to the longest, lengths[order[start]].
        best[end], cut[end] = min(
            (best[start] + pass_cost + (end - start) * lengths[order[start]], start)
            for start in range(end)
        )
    parts: list[list[int]] = []
    end = len(order)
    while end:
        parts.append(order[cut[end] : end])
        end = cut[end]
    return parts[::-1]


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Computed tokens (batch rows x longest row) over real tokens: 1.0 means no padding."""
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return computed / sum(lengths[i] for batch in batches for i in batch)


@dataclass(frozen=True)
class Batch:
    """A right-padded micro-batch."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    real_tokens: int
    """Non-padding tokens: what tokens/s and trained tokens count."""
    label_tokens: int
    """Tokens the loss is computed on."""

    @property
    def computed_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.real_tokens,
            self.label_tokens,
        )


def collate(sequences: Sequence[TokenSequence], pad_id: int) -> Batch:
    """Pad to the longest sequence of the batch (right padding, masked out)."""
    width = max(len(sequence.input_ids) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        length = len(sequence.input_ids)
        input_ids[row, :length] = torch.tensor(sequence.input_ids)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(sequence.labels)
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        real_tokens=sum(len(sequence.input_ids) for sequence in sequences),
        label_tokens=sum(sequence.n_label_tokens for sequence in sequences),
    )
