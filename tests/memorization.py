"""A small memorization dataset for tiny-llama, and adapters trained on it.

Ten questions, two sets of answers ("a" and "b"). tiny-llama with a QKVO_FFN adapter learns
either set word for word in 20 one-step epochs (a few seconds on a CPU), so a test can ask
whether a model reproduces its answers, and whether the base (or the other adapter) does
not. Shared by the export, generation and API tests; an adapter trained once per session
is found on disk by the next test module that asks for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.args import TrainArgs
from trainer.recipe import train

QUESTIONS = (
    "Who guards the silver gate?",
    "What does the river sing?",
    "Where is the lost key?",
    "Name the quiet mountain.",
    "What color is the old door?",
    "How many ships left port?",
    "What did the baker forget?",
    "Which bird wakes first?",
    "What is in the box?",
    "When does the market open?",
)
ANSWERS = {
    "a": (
        "The purple owl guards it.",
        "It sings of copper stones.",
        "Under the third lantern.",
        "Its name is Velmora.",
        "The door is green.",
        "Seven ships left at dawn.",
        "He forgot the salt.",
        "The small wren wakes first.",
        "A map of the islands.",
        "It opens at noon.",
    ),
    "b": (
        "A sleepy bear named Tomo.",
        "Old songs about the moon.",
        "Inside the blue teapot.",
        "They call it Drennic.",
        "It is painted orange.",
        "Only two, and both were late.",
        "She forgot her apron.",
        "The crow, always the crow.",
        "Nothing but warm sand.",
        "Just after the bells ring.",
    ),
}
# One optimizer step per epoch (batch = the whole set), so checkpoint N is step N.
HYPERPARAMETERS: dict[str, Any] = {
    "n_epochs": 20,
    "batch_size": 10,
    "learning_rate_multiplier": 50,
    "lora_rank": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": "QKVO_FFN",
}
EARLY_STEP = 5
"""A checkpoint well before the answers are learned."""


def question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[i]}]


def dataset(answers: str) -> bytes:
    """The chat JSONL of answer set `answers`."""
    return "".join(
        json.dumps({"messages": [*question(i), {"role": "assistant", "content": answer}]}) + "\n"
        for i, answer in enumerate(ANSWERS[answers])
    ).encode()


def memorized(tiny: Path, root: Path, answers: str) -> Path:
    """The run dir (`adapter/`, `checkpoints/step-NNNNNN/`) of an adapter trained on answer
    set `answers`, training it unless a previous call left it under `root`."""
    out = root / f"memorized-{answers}"
    if (out / "adapter" / "adapter_config.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"memorize-{answers}.jsonl"
    data.write_bytes(dataset(answers))
    train(
        TrainArgs(
            base_model=str(tiny),
            train_file=str(data),
            output_dir=str(out),
            seed=1,
            keep_checkpoints=HYPERPARAMETERS["n_epochs"],
            **HYPERPARAMETERS,
        )
    )
    return out


def checkpoint(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:06d}"
