"""Seeded classification data whose class depends on meaning, not on a keyword.

Account requests over four actions (cancel, downgrade, pause, upgrade), each said with one of
several synonyms. Every text names the action wanted *and* an action not wanted, so both
labels' words are in it: which one is the label depends on negation and construction
("please don't X it, just Y it", "I'd rather Y than X", "instead of X-ing, Y"). A bag of
words, or a mean of word vectors, sees the same words for either reading; a model that
reads the sentence tells them apart.

Multi-label rows ask for zero, one or two actions and refuse others the same ways.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ACTIONS: dict[str, tuple[str, ...]] = {
    "cancel": ("cancel", "terminate", "close", "end"),
    "downgrade": ("downgrade", "scale down", "reduce", "shrink"),
    "pause": ("pause", "freeze", "suspend", "put on hold"),
    "upgrade": ("upgrade", "move up", "boost", "expand"),
}
LABELS = sorted(ACTIONS)
OBJECTS = ("my plan", "the subscription", "my account", "our membership", "the contract")
SINGLE = (
    "I want to {a} {o}, not {b} it",
    "please don't {b} {o}, just {a} it",
    "I'd rather {a} {o} than {b} it",
    "instead of trying to {b} {o}, I need to {a} it",
    "do not {b} {o}. {A} it",
    "no need to {b} {o}; {a} it please",
    "could you {a} {o} rather than {b} it",
    "I never asked to {b} {o}, I asked to {a} it",
)
MULTI_TWO = (
    "I want to {a} and {a2} {o}, but not {b} it",
    "please {a} {o} and then {a2} it; don't {b} it",
    "don't {b} {o}: {a} it, and {a2} it as well",
)
MULTI_ONE = SINGLE
MULTI_NONE = (
    "don't {b} {o}, and don't {c} it either",
    "I never asked to {b} or {c} {o}",
    "please neither {b} nor {c} {o}",
)


def _pick(rng: random.Random, label: str) -> str:
    return rng.choice(ACTIONS[label])


def single_label(n: int, seed: int) -> list[dict[str, str]]:
    """`n` rows `{"text", "label"}`, labels drawn uniformly."""
    rng = random.Random(f"intents:single:{seed}")
    rows = []
    for _ in range(n):
        label = rng.choice(LABELS)
        other = rng.choice([x for x in LABELS if x != label])
        a, b = _pick(rng, label), _pick(rng, other)
        text = rng.choice(SINGLE).format(a=a, A=a.capitalize(), b=b, o=rng.choice(OBJECTS))
        rows.append({"text": text, "label": label})
    return rows


def multi_label(n: int, seed: int) -> list[dict[str, object]]:
    """`n` rows `{"text", "label": [...]}` with 0, 1 or 2 labels."""
    rng = random.Random(f"intents:multi:{seed}")
    rows: list[dict[str, object]] = []
    for _ in range(n):
        count = rng.choice((0, 1, 1, 2, 2))
        wanted = rng.sample(LABELS, count)
        others = [x for x in LABELS if x not in wanted]
        b, c = (_pick(rng, x) for x in rng.sample(others, 2))
        fill = {"b": b, "c": c, "o": rng.choice(OBJECTS)}
        if count == 2:
            template = rng.choice(MULTI_TWO)
            fill |= {"a": _pick(rng, wanted[0]), "a2": _pick(rng, wanted[1])}
        elif count == 1:
            template = rng.choice(MULTI_ONE)
            fill |= {"a": _pick(rng, wanted[0])}
            fill["A"] = fill["a"].capitalize()
        else:
            template = rng.choice(MULTI_NONE)
        rows.append({"text": template.format(**fill), "label": sorted(wanted)})
    return rows


def write_jsonl(rows: list[dict[str, object]], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
