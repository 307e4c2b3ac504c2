"""Seeded inputs the benchmarks share: the benchmark Llama, synthetic chat data with a
long-tailed length distribution, and large JSONL files. Everything is a pure function of
its arguments and cached under bench/.work, so reruns and the baseline see the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bench.harness import WORK


@dataclass(frozen=True)
class ModelShape:
    """A Llama built from a config with random weights; the tokenizer is tiny-llama's."""

    hidden_size: int = 512
    intermediate_size: int = 1408
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    max_position_embeddings: int = 1024
    initializer_range: float = 0.05
    """Above Llama's 0.02 so a frozen random lm_head leaves the adapters room to lower the
    loss (see trainer.models.init_tiny); it changes no cost."""
    seed: int = 0

    @property
    def key(self) -> str:
        return (
            f"llama-h{self.hidden_size}-i{self.intermediate_size}-l{self.num_hidden_layers}"
            f"-a{self.num_attention_heads}-kv{self.num_key_value_heads}"
            f"-p{self.max_position_embeddings}-r{self.initializer_range}-s{self.seed}"
        )


BENCH_MODEL = ModelShape()
"""Wide enough that matrix work dominates a step: ~14M parameters, 4 layers of 512."""
GPU_MODEL = ModelShape(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=4,
    max_position_embeddings=2048,
)
"""For `make bench-gpu`: ~0.7B parameters (TinyLlama-1.1B's width at 16 layers), enough
matrix work per step for a GPU's throughput and MFU to mean something."""
QUICK_MODEL = ModelShape(
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def tiny_llama() -> Path:
    """tiny-llama (its tokenizer is the benchmark model's), built once under bench/.work."""
    target = WORK / "models" / "tiny-llama"
    if (target / "config.json").is_file():
        return target  # without importing torch
    from trainer.models import init_tiny

    return init_tiny(WORK / "models")


def bench_model(shape: ModelShape = BENCH_MODEL) -> Path:
    """The model directory for `shape`, built once (safetensors + tokenizer)."""
    root = WORK / "models"
    target = root / shape.key
    if (target / "config.json").is_file():
        return target  # without importing torch
    from trainer.models import load_tokenizer, write_llama

    tokenizer = load_tokenizer(tiny_llama())
    tokenizer.model_max_length = shape.max_position_embeddings
    config = asdict(shape)
    return write_llama(target, tokenizer, seed=config.pop("seed"), **config)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- chat data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatShape:
    """Lengths in words, drawn from log-normal distributions (a long right tail, as in real
    chat sets: most conversations are short, a few are very long)."""

    user_median: float = 18.0
    user_sigma: float = 0.9
    answer_median: float = 40.0
    answer_sigma: float = 1.0
    system_share: float = 0.5
    """Share of conversations that open with a system message."""
    extra_turn_share: float = 0.3
    """Chance of each further user/assistant turn (geometric: 1 turn, 30% 2, 9% 3, ...)."""
    max_words: int = 900
    """Per message; the trainer truncates to max_seq_len anyway."""


def _corpus_words() -> list[str]:
    text = (resources.files("trainer") / "assets" / "corpus.txt").read_text(encoding="utf-8")
    return text.split()


def _span(rng: random.Random, words: list[str], median: float, sigma: float, cap: int) -> str:
    """A contiguous stretch of the corpus (wrapping), so the text has real word statistics
    an adapter can learn; its length is log-normal around `median` words."""
    length = max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))
    start = rng.randrange(len(words))
    return " ".join(words[(start + i) % len(words)] for i in range(length))


def chat_examples(n: int, seed: int, shape: ChatShape = ChatShape()) -> list[dict[str, Any]]:
    """`n` chat examples in OpenAI's format, a pure function of (n, seed, shape)."""
    rng = random.Random(f"bench-chat:{seed}:{asdict(shape)}")
    words = _corpus_words()
    examples = []
    for _ in range(n):
        messages = []
        if rng.random() < shape.system_share:
            messages.append(
                {"role": "system", "content": _span(rng, words, 12, 0.4, shape.max_words)}
            )
        while True:
            messages.append(
                {
                    "role": "user",
                    "content": _span(
                        rng, words, shape.user_median, shape.user_sigma, shape.max_words
                    ),
                }
            )
            messages.append(
                {
                    "role": "assistant",
                    "content": _span(
                        rng, words, shape.answer_median, shape.answer_sigma, shape.max_words
                    ),
                }
            )
            if rng.random() >= shape.extra_turn_share:
                break
        examples.append({"messages": messages})
    return examples


def chat_file(n: int, seed: int, shape: ChatShape = ChatShape()) -> Path:
    """`chat_examples(n, seed)` as JSONL under bench/.work/data (written once)."""
    path = _mkdir(WORK / "data") / f"chat-n{n}-s{seed}-{_digest(asdict(shape))}.jsonl"
    if not path.is_file():
        lines = "".join(json.dumps(e) + "\n" for e in chat_examples(n, seed, shape))
        _atomic_write(path, lines.encode())
    return path


def big_jsonl(size_bytes: int, seed: int = 0) -> Path:
    """A JSONL chat file of at least `size_bytes`: lines drawn (seeded) from a pool of 4,096
    synthetic conversations, so it is valid training data all the way through."""
    path = _mkdir(WORK / "data") / f"big-{size_bytes}-s{seed}.jsonl"
    if path.is_file():
        return path
    rng = random.Random(f"bench-big:{seed}")
    pool = [(json.dumps(e) + "\n").encode() for e in chat_examples(4096, seed)]
    staging = path.with_name(f".{path.name}.tmp")
    written = 0
    with open(staging, "wb") as out:
        while written < size_bytes:
            block = b"".join(rng.choice(pool) for _ in range(1024))
            out.write(block)
            written += len(block)
    os.replace(staging, path)
    return path


def _digest(value: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def _atomic_write(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    os.replace(staging, path)
