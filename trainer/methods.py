"""Training methods: what one step of the recipe trains on, and how its loss is computed.

The recipe (`trainer/recipe.py`) runs one loop for every method: data order, gradient
accumulation, data-parallel ranks, checkpoints, pause and resume, validation and early
stopping are the same whatever the method. A method decides the rest:

- `load`: how a data file encodes into training units, each with the length batching
  plans by (supervised: token sequences; DPO: preference pairs), refusing a file whose
  examples the method cannot train on;
- `collate`: how a micro-batch of units becomes one padded `batching.Batch`;
- `measure`: a micro-batch's summed loss (to backpropagate) and its summed statistics,
  and `weight`: what a step's loss is the mean over (loss tokens; pairs). The recipe
  divides each micro-batch's loss by the whole step's weight, so a step trains the same
  however its units fall into micro-batches and onto data-parallel ranks;
- `metrics`: a step's (or the validation set's) metrics from the summed statistics.

Every method reports `loss` and `mean_token_accuracy` (the recipe names them train_* and
valid_*); DPO adds its rewards.

DPO (direct preference optimization, Rafailov et al. 2023) on LoRA: the reference policy
is the base model itself, the adapter disabled (peft's `disable_adapter()`), so no second
copy of the model is held. With pi and ref the log-probabilities of an output's tokens,
summed, under the policy and the reference, a pair's loss is the standard sigmoid loss
-log sigmoid(beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected))), and
beta * (pi - ref) is an output's implicit reward. The reference runs in eval mode (no
dropout), in the same micro-batch as the policy, so it costs one forward without backward.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from trainer import batching, data, linear_ce, models
from trainer.args import AUTO_BETA, Hyperparameters, Refused
from trainer.formats import Example, Format, read_examples

# The training sequences of a file as a method reads it: `data.Encoded` or
# `data.EncodedPairs`, each with `units`, `lengths`, `n_tokens` and `fingerprint()`.
Encoded = data.Encoded | data.EncodedPairs


class Method(Protocol):
    name: str
    stats: tuple[str, ...]
    """What `measure` sums, in order; `metrics` reads them by these names."""
    metric_names: tuple[str, ...]
    """The metrics `metrics` returns beyond loss and mean_token_accuracy."""
    packs: bool
    """Whether its batches may be packed rows (`batching.pack`): its loss is per token."""

    def load(
        self,
        path: str | os.PathLike[str],
        tokenizer: PreTrainedTokenizerBase,
        max_seq_len: int,
        filename: str,
        field: str,
    ) -> Encoded: ...

    def with_hyperparameters(self, hp: Hyperparameters) -> Method: ...

    def collate(self, units: list[Any], pad_id: int) -> batching.Batch: ...

    def measure(
        self, model: torch.nn.Module, batch: batching.Batch, bf16: bool
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def weight(self, batch: batching.Batch) -> int: ...

    def metrics(self, stats: dict[str, float], weight: int) -> dict[str, float]: ...


def for_run(
    name: str,
    reinforcement: dict[str, Any] | None = None,
    on_event: Callable[[str, str, dict[str, Any]], None] | None = None,
    fused_linear_cross_entropy: bool = False,
) -> Method:
    """The method a run's `TrainArgs.method` names; reinforcement fine-tuning (its own
    module, `trainer.rft`) takes its spec and reports grader errors through `on_event`,
    and supervised fine-tuning the run's `fused_linear_cross_entropy`."""
    if name == "reinforcement":
        from trainer import rft

        return rft.Reinforcement(spec=reinforcement or {}, on_event=on_event)
    if name == "dpo":
        return DPO()
    return Supervised(fused_linear_cross_entropy=fused_linear_cross_entropy)


PREFERENCE_SHAPE = "preference examples (input, preferred_output, non_preferred_output)"


@dataclass(frozen=True)
class Supervised:
    """Supervised fine-tuning: the token-mean cross-entropy of the outputs."""

    name: str = "supervised"
    stats: tuple[str, ...] = ("loss", "correct")
    metric_names: tuple[str, ...] = ()
    packs: bool = True
    fused_linear_cross_entropy: bool = False
    """The loss from the last hidden states and the LM head's weight, never the batch's
    logits (`TrainArgs.fused_linear_cross_entropy`)."""

    def load(
        self,
        path: str | os.PathLike[str],
        tokenizer: PreTrainedTokenizerBase,
        max_seq_len: int,
        filename: str,
        field: str,
    ) -> data.Encoded:
        def refuse(fmt: Format) -> str | None:
            if fmt != Format.PREFERENCE:
                return None
            return (
                f"the file holds {PREFERENCE_SHAPE}, which train with method dpo; "
                "a supervised job trains on chat, prompt/completion or text data"
            )

        examples = _checked(read_examples(path, filename=filename), refuse, field)
        return data.encode_examples(examples, tokenizer, max_seq_len)

    def with_hyperparameters(self, hp: Hyperparameters) -> Supervised:
        return self

    def collate(self, units: list[data.TokenSequence], pad_id: int) -> batching.Batch:
        return batching.collate(units, pad_id)

    def measure(
        self, model: torch.nn.Module, batch: batching.Batch, bf16: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss over the loss tokens, `stats`: [summed loss, correct argmax
        predictions])."""
        loss_sum, correct = (
            _fused_token_loss(model, batch, bf16)
            if self.fused_linear_cross_entropy
            else token_loss(*_logits(model, batch, bf16))
        )
        return loss_sum, torch.stack([loss_sum.detach(), correct.to(loss_sum.dtype)])

    def weight(self, batch: batching.Batch) -> int:
        return batch.label_tokens

    def metrics(self, stats: dict[str, float], weight: int) -> dict[str, float]:
        return {"loss": stats["loss"] / weight, "mean_token_accuracy": stats["correct"] / weight}


@dataclass(frozen=True)
class DPO:
    """Direct preference optimization against the base model (see the module docstring).

    A micro-batch of k pairs is one batch of 2k rows: the k chosen sequences, then the k
    rejected ones, so the policy and the reference each see the pairs in one forward."""

    beta: float = AUTO_BETA
    name: str = "dpo"
    packs: bool = False  # its loss is per sequence pair
    stats: tuple[str, ...] = (
        "loss",
        "rewards_chosen",
        "rewards_rejected",
        "wins",
        "correct",
        "chosen_tokens",
    )
    metric_names: tuple[str, ...] = (
        "rewards_chosen",
        "rewards_rejected",
        "reward_accuracy",
        "reward_margin",
    )

    def load(
        self,
        path: str | os.PathLike[str],
        tokenizer: PreTrainedTokenizerBase,
        max_seq_len: int,
        filename: str,
        field: str,
    ) -> data.EncodedPairs:
        def refuse(fmt: Format) -> str | None:
            if fmt == Format.PREFERENCE:
                return None
            return f"the file holds {fmt} examples; method dpo trains on {PREFERENCE_SHAPE}"

        examples = _checked(read_examples(path, filename=filename), refuse, field)
        return data.encode_preferences(examples, tokenizer, max_seq_len)

    def with_hyperparameters(self, hp: Hyperparameters) -> DPO:
        return DPO(beta=hp.beta if hp.beta is not None else AUTO_BETA)

    def collate(self, units: list[data.PreferencePair], pad_id: int) -> batching.Batch:
        return batching.collate(
            [pair.chosen for pair in units] + [pair.rejected for pair in units], pad_id
        )

    def measure(
        self, model: torch.nn.Module, batch: batching.Batch, bf16: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed DPO loss over the pairs, `stats`: [summed loss, summed chosen rewards,
        summed rejected rewards, pairs whose chosen reward is higher, correct argmax
        predictions on chosen outputs, chosen output tokens])."""
        pairs = self.weight(batch)
        logps, correct = sequence_logps(*_logits(model, batch, bf16))
        with torch.no_grad():
            reference = reference_logps(model, batch, bf16)
        chosen = self.beta * (logps[:pairs] - reference[:pairs])
        rejected = self.beta * (logps[pairs:] - reference[pairs:])
        loss_sum = -F.logsigmoid(chosen - rejected).sum()
        chosen, rejected = chosen.detach(), rejected.detach()
        chosen_tokens = (batch.labels[:pairs, 1:] != data.IGNORE_INDEX).sum()
        stats = [
            loss_sum.detach(),
            chosen.sum(),
            rejected.sum(),
            (chosen > rejected).sum(),
            correct[:pairs].sum(),
            chosen_tokens,
        ]
        return loss_sum, torch.stack([value.to(loss_sum.dtype) for value in stats])

    def weight(self, batch: batching.Batch) -> int:
        return batch.input_ids.size(0) // 2

    def metrics(self, stats: dict[str, float], weight: int) -> dict[str, float]:
        chosen, rejected, tokens = (
            stats["rewards_chosen"],
            stats["rewards_rejected"],
            stats["chosen_tokens"],
        )
        return {
            "loss": stats["loss"] / weight,
            "mean_token_accuracy": stats["correct"] / tokens if tokens else 0.0,
            "rewards_chosen": chosen / weight,
            "rewards_rejected": rejected / weight,
            "reward_accuracy": stats["wins"] / weight,
            "reward_margin": (chosen - rejected) / weight,
        }


# --- shared pieces ---------------------------------------------------------------------------


def _checked(
    examples: Iterable[Example], refuse: Callable[[Format], str | None], field: str
) -> Iterator[Example]:
    """`examples`, refusing the file at its first example a method cannot train on (a file
    holds one format throughout)."""
    for example in examples:
        if reason := refuse(example.format):
            raise Refused(f"invalid_{field}", field, reason)
        yield example


def _logits(
    model: torch.nn.Module, batch: batching.Batch, bf16: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits and the labels they line up with. Positions before the one that
    predicts the batch's first loss token predict nothing trained (a prompt), so where the
    model can (`logits_to_keep`) its LM head runs from there on only: less work and far
    less memory for the float32 logits of a big vocabulary."""
    device = batch.input_ids.device
    width = batch.labels.size(1)
    # Where the first loss token of any row is, less one (the position predicting it).
    start = int((batch.labels != data.IGNORE_INDEX).any(dim=0).int().argmax()) - 1
    kept = {"logits_to_keep": width - start} if start > 0 and models.keeps_logits(model) else {}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            **kept,
        ).logits
    return logits, batch.labels[:, width - logits.size(1) :]


def _fused_token_loss(
    model: torch.nn.Module, batch: batching.Batch, bf16: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_loss` of the model's logits without them: its decoder's last hidden states
    and its head's weight go to `linear_ce`, which runs the head on the loss tokens only
    (a finer cut than `_logits`' prompt skipping). For the model types whose logits it
    reproduces, `linear_ce.MODEL_TYPES` (the recipe refuses others)."""
    causal_lm: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings()
    with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden = causal_lm.get_decoder()(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).last_hidden_state
        # Position i predicts token i + 1.
        return linear_ce.linear_cross_entropy(
            hidden[:, :-1],
            head.weight,
            batch.labels[:, 1:],
            bias=head.bias,
            softcap=getattr(causal_lm.config, "final_logit_softcapping", None),
        )


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number of correct argmax predictions over loss tokens
    (position i predicts token i + 1)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=data.IGNORE_INDEX,
        reduction="sum",
    )
    correct = ((logits.argmax(dim=-1) == targets) & (targets != data.IGNORE_INDEX)).sum()
    return loss_sum, correct


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the log-probability of its loss tokens, summed, and how many of them are
    the argmax prediction (position i predicts token i + 1)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    token_logps = -F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=data.IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    correct = ((logits.argmax(dim=-1) == targets) & (targets != data.IGNORE_INDEX)).sum(dim=-1)
    return token_logps.sum(dim=-1), correct


def reference_logps(model: Any, batch: batching.Batch, bf16: bool) -> torch.Tensor:
    """Per row, the summed log-probability of its loss tokens under the base model: the
    adapter disabled and the model in eval mode (dropout off), then put back as it was."""
    training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            return sequence_logps(*_logits(model, batch, bf16))[0]
    finally:
        model.train(training)
