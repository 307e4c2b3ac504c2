"""Reinforcement fine-tuning (OpenAI's `method.reinforcement`) as a method of the one
recipe (`trainer.methods`): the loop, checkpoints, pause and resume, validation and
data-parallel ranks are the recipe's; this module decides what one step trains on.

One step, GRPO-style (Shao et al. 2024), on a batch of prompts:
1. sample: the current policy (the adapter on, eval mode) samples `group` completions per
   prompt, `group` = max(2, round(8 * compute_multiplier)), temperature 1;
2. grade: the job's grader (`trainer.graders`) scores each completion against its
   dataset row (`{{item.*}}`) — python graders in their sandbox, several at a time; a
   grader that fails scores 0 and is reported as an event, never ending the job;
3. advantages: each completion's reward minus its group's mean, over the group's spread
   (+1e-4), so a step learns only from prompts whose completions differ;
4. loss: per completion token, the clipped surrogate min(r A, clip(r, 1 - 0.2, 1 + 0.2) A)
   with r = pi / pi_old (pi_old: the sampling policy, without dropout), minus beta_kl = 0.04
   times the k3 estimate of KL(pi || ref), ref being the base with the adapter disabled
   (peft's `disable_adapter()`); the mean over a completion's tokens, summed over the
   step's completions, over which the recipe takes the mean.

Validation samples `eval_samples` completions per validation prompt and reports the mean
reward; `valid_loss` is minus that mean (lower is better, as the recipe's best checkpoint
and early stopping expect). Metrics of a step: reward mean and spread, each grader's
mean score (`score_{name}`), grader latency p50/p95 and errors, KL, completion length.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer import batching, data, graders
from trainer.args import Hyperparameters, Refused
from trainer.hyperparameters import REINFORCEMENT, RFT_AUTO

CLIP = 0.2
BETA_KL = 0.04
GROUP_AT_1 = 8
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
EventSink = Callable[[str, str, dict[str, Any]], None]


def spec_problems(method: str, spec: dict[str, Any] | None) -> list[tuple[str, str]]:
    """What is wrong with a run's reinforcement spec (TrainArgs.reinforcement)."""
    if method != "reinforcement":
        return [("reinforcement", f"only for method reinforcement; this run's is {method}")]
    if not isinstance(spec, dict) or "grader" not in spec:
        return [("reinforcement.grader", "required")]
    found = graders.problems(spec["grader"], "reinforcement.grader")
    rows = {row.name: row for row in REINFORCEMENT}
    for key, value in spec.items():
        if key == "grader":
            continue
        if key not in rows:
            found.append((f"reinforcement.{key}", "unknown setting"))
        elif problem := rows[key].problem(value):
            found.append((f"reinforcement.{key}", problem))
    return found


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    item: dict[str, Any]


@dataclass
class Prompts:
    """A reinforcement data file: its prompts, rendered and tokenized, each with its row."""

    prompts: list[Prompt] = field(default_factory=list)
    n_examples: int = 0
    n_truncated: int = 0
    n_dropped: int = 0
    room: int = 0
    """Completion tokens each prompt may grow by; what batching plans for."""

    @property
    def units(self) -> list[Prompt]:
        return self.prompts

    @property
    def n_tokens(self) -> int:
        return sum(len(p.ids) for p in self.prompts)

    @property
    def lengths(self) -> list[int]:
        return [len(p.ids) + self.room for p in self.prompts]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for prompt in self.prompts:
            digest.update(json.dumps([prompt.ids, prompt.item], sort_keys=True).encode())
        return digest.hexdigest()


@dataclass
class PromptBatch:
    """A micro-batch of prompts; sampling happens in `measure`, which counts the tokens
    it trained on into `real_tokens` (what the recipe reports as trained)."""

    prompts: list[Prompt]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    real_tokens: int = 0

    def to(self, device: torch.device | str) -> PromptBatch:
        self.device = torch.device(device)
        return self

    @property
    def input_ids(self) -> torch.Tensor:  # the recipe reads only its device
        return torch.zeros(len(self.prompts), 1, dtype=torch.long, device=self.device)


class Reinforcement:
    """The reinforcement method (see the module docstring)."""

    name = "reinforcement"
    packs = False  # its batches are prompts to sample from

    def __init__(self, spec: dict[str, Any], on_event: EventSink | None = None) -> None:
        self.spec = spec
        self.grader: dict[str, Any] = spec.get("grader") or {}
        settings = {**RFT_AUTO, **{k: v for k, v in spec.items() if k in RFT_AUTO}}
        self.eval_interval = int(settings["eval_interval"])
        self.eval_samples = int(settings["eval_samples"])
        self.compute_multiplier = float(settings["compute_multiplier"])
        self.group = max(2, round(GROUP_AT_1 * self.compute_multiplier))
        self.max_new_tokens = int(settings["max_completion_tokens"])
        self.on_event = on_event or (lambda *_: None)
        self.leaves = graders.leaf_names(self.grader)
        self.stats: tuple[str, ...] = (
            "loss",
            "correct",
            "tokens",
            "completions",
            "reward_sum",
            "reward_sq",
            "kl_sum",
            "errors",
            *(f"score_{leaf}" for leaf in self.leaves),
        )
        self.metric_names: tuple[str, ...] = (
            "reward_mean",
            "reward_std",
            "kl",
            "completion_length",
            "grader_errors",
            "grader_latency_p50",
            "grader_latency_p95",
            *(f"score_{leaf}" for leaf in self.leaves),
        )
        self.tokenizer: Any = None
        self.pad_id = 0
        self.context = graders.Context()
        self.latencies: list[float] = []
        self.errors_so_far = 0

    # --- data --------------------------------------------------------------------------------

    def load(
        self,
        path: str | os.PathLike[str],
        tokenizer: Any,
        max_seq_len: int,
        filename: str,
        field: str,
    ) -> Prompts:
        self.tokenizer = tokenizer
        room = min(self.max_new_tokens, max(1, max_seq_len // 2))
        self.max_new_tokens = room
        out = Prompts(room=room)
        with open(path, encoding="utf-8-sig") as handle:
            for line, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                record = json.loads(raw)
                messages = record.get("messages") if isinstance(record, dict) else None
                if not isinstance(messages, list) or not messages:
                    raise Refused(
                        f"invalid_{field}",
                        field,
                        f"line {line} is not a reinforcement prompt: it needs messages",
                    )
                if messages[-1].get("role") == "assistant":
                    raise Refused(
                        f"invalid_{field}",
                        field,
                        f"line {line}: a prompt's last message must not be the assistant's",
                    )
                turns = [
                    {"role": ROLES.get(m.get("role"), "user"), "content": str(m.get("content"))}
                    for m in messages
                ]
                text = tokenizer.apply_chat_template(
                    turns, tokenize=False, add_generation_prompt=True
                )
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                out.n_examples += 1
                limit = max_seq_len - room
                if len(ids) > limit:  # keep the end: the question and the assistant header
                    ids = ids[-limit:]
                    out.n_truncated += 1
                out.prompts.append(Prompt(tuple(ids), record))
        return out

    def with_hyperparameters(self, hp: Hyperparameters) -> Reinforcement:
        return self

    def collate(self, units: list[Prompt], pad_id: int) -> PromptBatch:
        self.pad_id = pad_id
        return PromptBatch(list(units))

    def weight(self, batch: PromptBatch) -> int:
        return len(batch.prompts) * self.group

    # --- one micro-batch ------------------------------------------------------------------

    def measure(
        self, model: Any, batch: PromptBatch, bf16: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        evaluating = torch.is_inference_mode_enabled() or not torch.is_grad_enabled()
        n = self.eval_samples if evaluating else self.group
        rows, owners = self._sample(model, batch, n)
        texts = [
            self.tokenizer.decode(completion, skip_special_tokens=True) for _, completion in rows
        ]
        results = graders.run_many(
            self.grader,
            [(text, batch.prompts[owner].item) for text, owner in zip(texts, owners, strict=True)],
            self.context,
        )
        self._report(results)
        device = batch.device
        rewards = torch.tensor([r.reward for r in results], dtype=torch.float32, device=device)
        lengths = torch.tensor([len(c) for _, c in rows], dtype=torch.float32, device=device)
        batch.real_tokens += int(sum(len(p) + len(c) for p, c in rows))
        scores = [
            sum((r.sub_rewards or {self.leaves[0]: r.reward}).get(leaf, 0.0) for r in results)
            for leaf in self.leaves
        ]
        base = [
            rewards.sum(),
            (rewards * rewards).sum(),
            torch.tensor(float(sum(r.failed for r in results)), device=device),
            *(torch.tensor(float(s), device=device) for s in scores),
        ]
        count = torch.tensor(float(len(rows)), device=device)
        if evaluating:
            zero = torch.zeros((), device=device)
            loss = -rewards.sum()
            stats = [loss, zero, lengths.sum(), count, base[0], base[1], zero, *base[2:]]
            return loss, torch.stack([s.float() for s in stats])

        grouped = rewards.view(len(batch.prompts), n)
        advantages = (grouped - grouped.mean(dim=1, keepdim=True)) / (
            grouped.std(dim=1, unbiased=False, keepdim=True) + 1e-4
        )
        advantages = advantages.reshape(-1)
        collated = batching.collate(
            [
                data.TokenSequence(tuple(p) + tuple(c), (data.IGNORE_INDEX,) * len(p) + tuple(c))
                for p, c in rows
            ],
            self.pad_id,
        ).to(device)
        mask = (collated.labels[:, 1:] != data.IGNORE_INDEX).float()
        with torch.no_grad():
            old = self._token_logps(model, collated, bf16, adapter=True)
            ref = self._token_logps(model, collated, bf16, adapter=False)
        logits = _logits(model, collated, bf16)
        new, correct = _token_logps_from(logits, collated.labels)
        ratio = torch.exp(new - old)
        a = advantages[:, None]
        surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - CLIP, 1 + CLIP) * a)
        kl = torch.exp(ref - new) - (ref - new) - 1
        per_token = -(surrogate - BETA_KL * kl) * mask
        tokens = mask.sum(dim=1).clamp(min=1)
        loss = (per_token.sum(dim=1) / tokens).sum()
        kl_sum = ((kl.detach() * mask).sum(dim=1) / tokens).sum()
        stats = [
            loss.detach(),
            correct.sum().float(),
            mask.sum(),
            count,
            base[0],
            base[1],
            kl_sum,
            *base[2:],
        ]
        return loss, torch.stack([s.float() for s in stats])

    def metrics(self, stats: dict[str, float], weight: int) -> dict[str, float]:
        count = stats["completions"] or 1.0
        mean = stats["reward_sum"] / count
        latencies = sorted(self.latencies)
        self.latencies = []
        return {
            "loss": stats["loss"] / count,
            "mean_token_accuracy": stats["correct"] / stats["tokens"] if stats["tokens"] else 0.0,
            "reward_mean": mean,
            "reward_std": math.sqrt(max(0.0, stats["reward_sq"] / count - mean * mean)),
            "kl": stats["kl_sum"] / count,
            "completion_length": stats["tokens"] / count,
            "grader_errors": stats["errors"],
            "grader_latency_p50": _percentile(latencies, 0.5),
            "grader_latency_p95": _percentile(latencies, 0.95),
            **{f"score_{leaf}": stats[f"score_{leaf}"] / count for leaf in self.leaves},
        }

    # --- pieces ----------------------------------------------------------------------------

    def _sample(
        self, model: Any, batch: PromptBatch, n: int
    ) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
        """n completions per prompt from the current policy: (prompt ids, completion ids
        up to and including the end-of-sequence token), and each one's prompt index."""
        eos = self.tokenizer.eos_token_id
        rows: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for index, prompt in enumerate(batch.prompts):
                    ids = torch.tensor([list(prompt.ids)] * n, device=batch.device)
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        do_sample=True,
                        temperature=1.0,
                        top_k=0,
                        top_p=1.0,
                        max_new_tokens=self.max_new_tokens,
                        pad_token_id=self.pad_id,
                        eos_token_id=eos,
                    )
                    for row in out[:, ids.size(1) :].tolist():
                        completion = row[: row.index(eos) + 1] if eos in row else row
                        rows.append((list(prompt.ids), completion))
                        owners.append(index)
        finally:
            model.train(training)
        return rows, owners

    def _token_logps(self, model: Any, batch: Any, bf16: bool, adapter: bool) -> torch.Tensor:
        training = model.training
        model.eval()
        try:
            if adapter:
                return _token_logps_from(_logits(model, batch, bf16), batch.labels)[0]
            with model.disable_adapter():
                return _token_logps_from(_logits(model, batch, bf16), batch.labels)[0]
        finally:
            model.train(training)

    def _report(self, results: list[graders.Result]) -> None:
        self.latencies += [r.execution_time for r in results]
        failed = [r for r in results if r.failed]
        if not failed:
            return
        self.errors_so_far += len(failed)
        by_message: dict[str, int] = {}
        for result in failed:
            by_message[result.message] = by_message.get(result.message, 0) + 1
        for message, count in by_message.items():
            kinds = sorted(
                {k for r in failed if r.message == message for k, on in r.errors.items() if on}
            )
            self.on_event(
                "warn",
                f"Grader error on {count} of {len(results)} samples "
                f"({self.errors_so_far} so far): {message[:500]}",
                {"grader_error": kinds, "count": count, "total": self.errors_so_far},
            )


def _logits(model: Any, batch: Any, bf16: bool) -> torch.Tensor:
    with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        return model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits


def _token_logps_from(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position (i predicts i + 1): the label's log-probability (0 where masked), and
    per row how many labels are the argmax."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    safe = targets.clamp(min=0)
    logps = torch.log_softmax(logits, dim=-1).gather(-1, safe[..., None]).squeeze(-1)
    masked = targets != data.IGNORE_INDEX
    correct = ((logits.argmax(dim=-1) == targets) & masked).sum(dim=-1)
    return logps * masked, correct


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]
