"""Cross-entropy of the LM head's outputs without a batch's logits.

A batch's float32 logits (tokens x vocabulary, and as much again for their gradient) are
most of a training step's activation memory with a big vocabulary. Computed here from the
last hidden states and the head's weight instead, a chunk of tokens at a time: on CUDA by
Liger's fused Triton kernel where `liger-kernel` is installed (it computes each chunk's
gradient in the forward, then drops the chunk), elsewhere in torch, which recomputes
each chunk's logits in backward (`torch.utils.checkpoint`) rather than keep them. Both
give `methods.token_loss`'s sum and correct count, up to float rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer.data import IGNORE_INDEX

MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
        "gpt2",
        "gpt_bigcode",
    }
)
"""Model types whose causal LM's logits are its head applied to its decoder's last hidden
state, then at most Gemma 2 and 3's final softcapping, which this reproduces (transformers
5's forwards). Others may scale their logits (Cohere's logit_scale, Granite's
logits_scaling) in ways it does not know."""

CHUNK_LOGITS = 1 << 23
"""Float32 logits per chunk of the torch path (32 MiB): big enough for efficient matmuls,
a bounded cost however many tokens a batch holds."""


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed cross-entropy of the logits `hidden @ weight.T + bias` (softcapped as
    `tanh(logits / softcap) * softcap` when given) against `targets`, and how many of
    their argmax predictions are right, over the rows whose target is not IGNORE_INDEX.
    `hidden` is [..., hidden size] and `targets` [...] (a row per position); `chunk_rows`
    is the torch path's chunk (default: CHUNK_LOGITS logits' worth)."""
    # Only rows with a target need logits at all: prompts, padding and each packed
    # sequence's first position are dropped before the head runs, which is why this is
    # faster than the full logits, not only smaller.
    kept = targets != IGNORE_INDEX
    hidden, targets = hidden[kept], targets[kept]
    liger = _liger() if hidden.device.type == "cuda" else None
    # Liger divides its accuracy by the row count: no rows take the torch path.
    if liger is None or not targets.numel():
        return _chunked(hidden, weight, targets, bias, softcap, chunk_rows)
    # A Triton kernel is outside autocast: it takes the head's dtype as it is given.
    fused = liger(
        hidden.to(weight.dtype),
        weight,
        targets,
        bias=bias,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
        softcap=softcap,
        return_token_accuracy=True,
    )
    # Its accuracy is the mean over the rows; the count is what the methods sum.
    return fused.loss, torch.round(fused.token_accuracy * targets.numel()).long()


def _chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    chunk_rows: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`linear_cross_entropy` in torch on rows that all have a target, a chunk at a time:
    backward recomputes each chunk's logits instead of keeping them."""
    rows = chunk_rows or max(1, CHUNK_LOGITS // weight.size(0))
    # At least one chunk, empty when there are no rows: a zero loss still in the graph,
    # as token_loss's is, for a backward that must run all the same.
    losses, correct = zip(
        *(
            checkpoint(
                _chunk,
                hidden[start : start + rows],
                weight,
                bias,
                targets[start : start + rows],
                softcap,
                use_reentrant=False,
            )
            for start in range(0, max(targets.numel(), 1), rows)
        ),
        strict=True,
    )
    return torch.stack(losses).sum(), torch.stack(correct).sum()


def _chunk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    # The head in the model's dtype (bf16 under autocast), the loss in float32: as the
    # model's forward and token_loss compute it.
    logits = F.linear(hidden, weight, bias).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return loss, (logits.argmax(dim=-1) == targets).sum()


@functools.cache
def _liger() -> Callable[..., Any] | None:
    try:  # the `gpu` extra: Triton kernels, CUDA only
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy
