"""Graders that ask a model: `score_model`, `label_model`, and `text_similarity` with
`cosine`. They call an OpenAI-compatible endpoint the admin configures (any: OpenAI,
vLLM, Ollama, or Tunewire's own bridge at `http://host:8080/v1`), read from the
environment of the process that grades:

- TUNEWIRE_GRADER_BASE_URL: the endpoint's base URL (…/v1); unset refuses model graders
  at create;
- TUNEWIRE_GRADER_API_KEY: its bearer key (optional);
- TUNEWIRE_GRADER_EMBEDDING_MODEL: the embedding model `cosine` uses (POST /embeddings);
  unset refuses `cosine` at create;
- TUNEWIRE_GRADER_TIMEOUT: seconds per request (default 60).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import httpx

NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Endpoint:
    base_url: str = ""
    api_key: str = ""
    embedding_model: str = ""
    timeout: float = 60.0

    @classmethod
    def from_env(cls) -> Endpoint:
        return cls(
            base_url=os.environ.get("TUNEWIRE_GRADER_BASE_URL", "").rstrip("/"),
            api_key=os.environ.get("TUNEWIRE_GRADER_API_KEY", ""),
            embedding_model=os.environ.get("TUNEWIRE_GRADER_EMBEDDING_MODEL", ""),
            timeout=float(os.environ.get("TUNEWIRE_GRADER_TIMEOUT", "60")),
        )


class ModelGraderError(Exception):
    """kind: "server" (the endpoint failed), "parse" (its answer holds no score or label),
    "refusal" (it declined)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _post(endpoint: Endpoint, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    try:
        response = httpx.post(
            f"{endpoint.base_url}{path}", json=body, headers=headers, timeout=endpoint.timeout
        )
    except httpx.HTTPError as error:
        raise ModelGraderError("server", f"{type(error).__name__}: {error}") from None
    if response.status_code != 200:
        raise ModelGraderError(
            "server", f"{path} answered HTTP {response.status_code}: {response.text[:300]}"
        )
    try:
        return response.json()
    except ValueError:
        raise ModelGraderError("server", f"{path} answered something that is not JSON") from None


def chat(
    endpoint: Endpoint, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]
) -> tuple[str, int]:
    """The reply's text and the tokens it cost."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("max_completions_tokens", "max_tokens"),
    ):
        if sampling.get(ours) is not None:
            body[theirs] = sampling[ours]
    reply = _post(endpoint, "/chat/completions", body)
    try:
        message = reply["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise ModelGraderError("server", "the reply has no choices[0].message") from None
    if message.get("refusal"):
        raise ModelGraderError("refusal", str(message["refusal"])[:300])
    usage = reply.get("usage") or {}
    return str(message.get("content") or ""), int(usage.get("total_tokens") or 0)


def parse_score(text: str) -> float:
    """A score from a grader model's answer: `{"result": x}` (OpenAI's score_model
    output), else the last number in the text."""
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict) and isinstance(parsed.get("result"), int | float):
            return float(parsed["result"])
    except ValueError:
        pass
    numbers = NUMBER.findall(text)
    if not numbers:
        raise ModelGraderError("parse", f"no score in the grader model's answer {text[:200]!r}")
    return float(numbers[-1])


def parse_label(text: str, labels: list[str]) -> str:
    """The label a grader model chose: `{"result": label}`, the whole answer, or the one
    label the answer names."""
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict) and parsed.get("result") in labels:
            return str(parsed["result"])
    except ValueError:
        pass
    stripped = text.strip().strip(".\"'").strip()
    if stripped in labels:
        return stripped
    named = [label for label in labels if re.search(rf"\b{re.escape(label)}\b", text)]
    if len(named) == 1:
        return named[0]
    raise ModelGraderError("parse", f"no single label of {labels} in the answer {text[:200]!r}")


def cosine(endpoint: Endpoint, a: str, b: str) -> float:
    reply = _post(endpoint, "/embeddings", {"model": endpoint.embedding_model, "input": [a, b]})
    try:
        u, v = (row["embedding"] for row in sorted(reply["data"], key=lambda r: r["index"]))
    except (KeyError, TypeError, ValueError):
        raise ModelGraderError("server", "the embeddings reply has no two embeddings") from None
    dot = sum(x * y for x, y in zip(u, v, strict=False))
    norms = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
    return dot / norms if norms else 0.0
