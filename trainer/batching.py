"""Batches that train as well as random ones and spend little compute on padding, in an
order a resumed run can reproduce.

Batches are random, as Hugging Face's Trainer draws them: length-sorted batches (its
group_by_length, or sort windows) pad less, but every step then sees one kind of example
(short single-turn chats in one, long multi-turn ones in the next), and the run learns
measurably less (bench/training.py: 15% less held-out loss reduction with windows of 64
batches). Padding is removed within each batch instead, by how the device runs it best:

- On a CPU, `split_by_length` cuts a batch into micro-batches of near-equal lengths,
  where padding would cost more than an extra forward/backward pass.
- On a GPU, `pack` lays a batch's sequences end to end in one row whose position ids
  restart at each sequence (attention stays within each; flash-attention's varlen path
  runs it as separate sequences). On a CPU its attention mask costs more than splitting.

Either way the step's loss is the token mean over all its sequences: the layout changes
speed and peak memory, not the loss or the gradient (up to float rounding; dropout draws
its masks per micro-batch).

The plan is a pure function of (number of sequences, batch_size, seed, epoch), so a run
resumed from a checkpoint recomputes it and skips straight to its saved batch index.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trainer.data import IGNORE_INDEX, TokenSequence

PASS_COST_TOKENS = {"cpu": 32, "cuda": 1024}
"""What one more forward/backward pass costs, in tokens of work it could have done instead
(fixed per-pass overhead x throughput; measured ~30 on a CPU core for a 14M Llama, and a
GPU pass has a far higher floor). Devices not listed use the "cuda" figure."""


def plan_epoch(count: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Sequence indices of each batch of epoch `epoch`, in training order: a shuffle of
    all `count` cut into batches; only the last may be smaller."""
    # String seeds are hashed with SHA-512: stable across runs, processes and platforms.
    order = list(range(count))
    random.Random(f"tunewire:{seed}:{epoch}").shuffle(order)
    return [order[i : i + batch_size] for i in range(0, count, batch_size)]


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


def balance(batch: Sequence[int], lengths: Sequence[int], parts: int) -> list[list[int]]:
    """`batch` as at most `parts` non-empty groups of near-equal total length (longest
    first, each to the lightest group): one packed row per data-parallel rank."""
    groups: list[list[int]] = [[] for _ in range(min(parts, len(batch)))]
    loads = [0] * len(groups)
    for i in sorted(batch, key=lambda i: lengths[i], reverse=True):
        lightest = loads.index(min(loads))
        groups[lightest].append(i)
        loads[lightest] += lengths[i]
    return groups


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Computed tokens (batch rows x longest row) over real tokens: 1.0 means no padding."""
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return computed / sum(lengths[i] for batch in batches for i in batch)


@dataclass(frozen=True)
class Batch:
    """A micro-batch: right-padded rows with an attention mask, or one packed row whose
    position ids restart at each sequence (`pack`)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor
    real_tokens: int
    """Non-padding tokens: what tokens/s and trained tokens count."""
    label_tokens: int
    """Tokens the loss is computed on."""
    position_ids: torch.Tensor | None = None
    """Packed rows only: each token's position within its own sequence."""

    @property
    def computed_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device) -> Batch:
        def moved(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=True)

        return Batch(
            moved(self.input_ids),
            moved(self.attention_mask),
            moved(self.labels),
            self.real_tokens,
            self.label_tokens,
            moved(self.position_ids),
        )


def pack(sequences: Sequence[TokenSequence]) -> Batch:
    """The sequences end to end in one row, no padding. Position ids restart at each
    sequence, and from them transformers masks attention to within each sequence (SDPA,
    eager and flash-attention varlen alike), so every token sees exactly what it would
    alone. A sequence's first label is dropped: its first token is predicted by the
    previous sequence's last position, which it does not see."""
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for sequence in sequences:
        input_ids += sequence.input_ids
        labels += (IGNORE_INDEX, *sequence.labels[1:])
        positions += range(len(sequence.input_ids))
    return Batch(
        input_ids=torch.tensor([input_ids]),
        attention_mask=None,
        labels=torch.tensor([labels]),
        real_tokens=len(input_ids),
        label_tokens=sum(sequence.n_label_tokens for sequence in sequences),
        position_ids=torch.tensor([positions]),
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
