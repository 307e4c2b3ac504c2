"""OpenAI's graders, in pure Python: `string_check`, `text_similarity`, `python`,
`score_model`, `label_model` and `multi`, as the JSON objects OpenAI's API takes.

- `problems(grader)` checks one before anything runs, each problem with the path of its
  field (`grader.graders.exact.operation`), so a job or a validate call is refused with
  every problem at once;
- `run(grader, output_text, item)` grades one model sample against one dataset item and
  returns OpenAI's run result: the reward, each sub-grader's score, and which error kinds
  happened. A grader that fails (a template naming a missing field, a python grader that
  raises or runs past its limits, a grader model that does not answer) scores 0 with its
  error flagged; it never raises.

Imports neither torch nor gRPC: the control plane validates and runs graders too (python
graders always in their sandbox subprocess, see `trainer.graders.sandbox`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from trainer.graders import formula, remote, sandbox, similarity, templates

TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model", "multi")
OPERATIONS = ("eq", "ne", "like", "ilike")
ROLES = ("user", "assistant", "system", "developer")
SAMPLING = ("temperature", "top_p", "seed", "max_completions_tokens", "reasoning_effort")
MAX_NAME = 256
KEYS: dict[str, frozenset[str]] = {
    "string_check": frozenset({"type", "name", "input", "reference", "operation"}),
    "text_similarity": frozenset({"type", "name", "input", "reference", "evaluation_metric"}),
    "python": frozenset({"type", "name", "source", "image_tag"}),
    "score_model": frozenset({"type", "name", "input", "model", "range", "sampling_params"}),
    "label_model": frozenset({"type", "name", "input", "model", "labels", "passing_labels"}),
    "multi": frozenset({"type", "name", "graders", "calculate_output"}),
}
ERROR_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)
Problem = tuple[str, str]


@dataclass
class Context:
    """Where graders run: the model endpoint and the python sandbox's limits."""

    endpoint: remote.Endpoint = field(default_factory=remote.Endpoint.from_env)
    limits: sandbox.Limits = field(default_factory=sandbox.Limits.from_env)


# --- checking ---------------------------------------------------------------------------------


def sub_graders(grader: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A multi grader's graders by name. OpenAI documents `graders` as a map of names to
    graders; its SDK's types also allow one grader, which counts under its own name."""
    graders = grader.get("graders")
    if isinstance(graders, dict) and "type" in graders and isinstance(graders["type"], str):
        return {str(graders.get("name") or "grader"): graders}
    return graders if isinstance(graders, dict) else {}


def problems(
    grader: object, path: str = "grader", context: Context | None = None, nested: bool = False
) -> list[Problem]:
    """Every problem with `grader`, each with the path of its field."""
    context = context or Context()
    if not isinstance(grader, dict):
        return [(path, "must be a grader object with a type")]
    kind = grader.get("type")
    if kind not in TYPES or (nested and kind == "multi"):
        allowed = [t for t in TYPES if not (nested and t == "multi")]
        return [(f"{path}.type", f"unknown grader type {kind!r}; one of {', '.join(allowed)}")]
    found: list[Problem] = [
        (f"{path}.{key}", f"unknown field for a {kind} grader")
        for key in grader
        if key not in KEYS[kind]
    ]
    name = grader.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        found.append((f"{path}.name", f"required: a name of 1 to {MAX_NAME} characters"))

    def template(key: str) -> None:
        if key not in grader:
            found.append((f"{path}.{key}", "required"))
            return
        found.extend((f"{path}.{key}", why) for why in templates.problems(grader[key]))

    if kind == "string_check":
        template("input")
        template("reference")
        if grader.get("operation") not in OPERATIONS:
            found.append((f"{path}.operation", f"must be one of {', '.join(OPERATIONS)}"))
    elif kind == "text_similarity":
        template("input")
        template("reference")
        metric = grader.get("evaluation_metric")
        if metric not in similarity.EVALUATION_METRICS:
            found.append(
                (
                    f"{path}.evaluation_metric",
                    f"must be one of {', '.join(similarity.EVALUATION_METRICS)}",
                )
            )
        elif metric == "cosine" and not (
            context.endpoint.base_url and context.endpoint.embedding_model
        ):
            found.append(
                (
                    f"{path}.evaluation_metric",
                    "cosine needs an embedding model, and none is configured on this server "
                    "(its admin sets TUNEWIRE_GRADER_BASE_URL and "
                    "TUNEWIRE_GRADER_EMBEDDING_MODEL)",
                )
            )
    elif kind == "python":
        if why := sandbox.check_source(grader.get("source")):
            found.append((f"{path}.source", why))
        if "image_tag" in grader and not isinstance(grader["image_tag"], str | None):
            found.append((f"{path}.image_tag", "must be a string"))
    elif kind in ("score_model", "label_model"):
        found += _model_problems(grader, path, kind, context)
    else:  # multi
        graders = sub_graders(grader)
        if not graders:
            found.append((f"{path}.graders", "required: a map of names to graders"))
        for key, sub in graders.items():
            if not key.isidentifier():
                found.append((f"{path}.graders.{key}", "a grader's key must be an identifier"))
            found += problems(sub, f"{path}.graders.{key}", context, nested=True)
        try:
            formula.parse(grader.get("calculate_output"), graders)
        except formula.FormulaError as error:
            found.append((f"{path}.calculate_output", str(error)))
    return found


def _model_problems(
    grader: dict[str, Any], path: str, kind: str, context: Context
) -> list[Problem]:
    found: list[Problem] = []
    if not context.endpoint.base_url:
        found.append(
            (
                f"{path}.model",
                "model graders need a grader endpoint, and none is configured on this "
                "server (its admin sets TUNEWIRE_GRADER_BASE_URL to any OpenAI-compatible "
                "/v1, Tunewire's own included)",
            )
        )
    if not isinstance(grader.get("model"), str) or not grader.get("model"):
        found.append((f"{path}.model", "required: the grader model's name"))
    messages = grader.get("input")
    if not isinstance(messages, list) or not messages:
        found.append((f"{path}.input", "required: a list of messages"))
        messages = []
    for i, message in enumerate(messages):
        where = f"{path}.input[{i}]"
        if not isinstance(message, dict):
            found.append((where, "must be a message with role and content"))
            continue
        if message.get("role") not in ROLES:
            found.append((f"{where}.role", f"must be one of {', '.join(ROLES)}"))
        text = message_text(message.get("content"))
        if text is None:
            found.append(
                (
                    f"{where}.content",
                    "must be text (a string, or input_text/output_text parts); "
                    "images and audio are not supported",
                )
            )
        else:
            found.extend((f"{where}.content", why) for why in templates.problems(text))
    if kind == "score_model":
        bounds = grader.get("range", [0, 1])
        if not (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
            and bounds[0] < bounds[1]
        ):
            found.append((f"{path}.range", "must be two numbers, low < high"))
        sampling = grader.get("sampling_params") or {}
        if not isinstance(sampling, dict):
            found.append((f"{path}.sampling_params", "must be an object"))
        else:
            found += [
                (f"{path}.sampling_params.{key}", "unknown sampling parameter")
                for key in sampling
                if key not in SAMPLING
            ]
    else:
        labels, passing = grader.get("labels"), grader.get("passing_labels")
        if (
            not isinstance(labels, list)
            or not labels
            or not all(isinstance(x, str) for x in labels)
        ):
            found.append((f"{path}.labels", "required: a list of label strings"))
            labels = []
        if not isinstance(passing, list) or not passing:
            found.append((f"{path}.passing_labels", "required: a list of labels"))
        else:
            found += [
                (f"{path}.passing_labels", f"{label!r} is not one of labels")
                for label in passing
                if label not in labels
            ]
    return found


def message_text(content: object) -> str | None:
    """A grader message's content as text, or None when it is not text."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif (
            isinstance(part, dict)
            and part.get("type") in ("input_text", "output_text")
            and isinstance(part.get("text"), str)
        ):
            texts.append(part["text"])
        else:
            return None
    return "".join(texts)


def leaf_names(grader: dict[str, Any]) -> list[str]:
    """The names of the scores a grader reports: a multi grader's keys, or its own name."""
    if grader.get("type") == "multi":
        return list(sub_graders(grader))
    return [str(grader.get("name") or grader.get("type"))]


# --- running ---------------------------------------------------------------------------------


@dataclass
class Result:
    """OpenAI's grader run result (`POST /fine_tuning/alpha/graders/run`)."""

    reward: float
    name: str
    type: str
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ERROR_FLAGS, False))
    details: dict[str, str] = field(default_factory=dict)
    """model_grader_server_error_details, python_grader_runtime_error_details and
    python_grader_server_error_type, where they apply; `message` says it in a sentence."""
    execution_time: float = 0.0
    token_usage: int = 0
    tokens_per_model: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(self.errors.values())

    @property
    def message(self) -> str:
        kinds = [flag for flag, on in self.errors.items() if on]
        said = "; ".join(self.details.values())
        return f"{', '.join(kinds)}: {said}" if said else ", ".join(kinds)

    def openai(self) -> dict[str, Any]:
        errors: dict[str, Any] = dict(self.errors)
        errors.update(
            {
                "model_grader_server_error_details": None,
                "python_grader_runtime_error_details": None,
                "python_grader_server_error_type": None,
                **{k: v for k, v in self.details.items() if k != "message"},
            }
        )
        return {
            "reward": self.reward,
            "metadata": {
                "name": self.name,
                "type": self.type,
                "errors": errors,
                "execution_time": self.execution_time,
                "scores": dict(self.sub_rewards) or {self.name: self.reward},
                "token_usage": self.token_usage or None,
                "sampled_model_name": None,
            },
            "sub_rewards": dict(self.sub_rewards),
            "model_grader_token_usage_per_model": dict(self.tokens_per_model),
        }


class _Failure(Exception):
    def __init__(self, flag: str, detail: str = "", detail_key: str = "", kind: str = ""):
        super().__init__(detail)
        self.flag, self.detail, self.detail_key, self.kind = flag, detail, detail_key, kind


def run(
    grader: dict[str, Any], output_text: str, item: Any, context: Context | None = None
) -> Result:
    """Grade one sample (`output_text`, as `{{sample.output_text}}`) against one dataset
    item; never raises for the grader's own failures (see the module docstring)."""
    context = context or Context()
    started = time.perf_counter()
    sample = templates.sample_namespace(output_text)
    result = Result(0.0, str(grader.get("name", "")), str(grader.get("type", "")))
    try:
        if grader.get("type") == "multi":
            graders = sub_graders(grader)
            tree = _formula(grader, graders)
            for key, sub in graders.items():
                result.sub_rewards[key] = _score(sub, sample, item, context, result)
            try:
                result.reward = formula.evaluate(tree, result.sub_rewards)
            except formula.FormulaError as error:
                raise _Failure("formula_parse_error", f"calculate_output {error}") from None
        else:
            result.reward = _score(grader, sample, item, context, result)
    except _Failure as failure:
        result.reward = 0.0
        result.errors[failure.flag] = True
        if failure.detail_key:
            result.details[failure.detail_key] = failure.detail
        if failure.kind:
            result.details["python_grader_server_error_type"] = failure.kind
        if not failure.detail_key and failure.detail:
            result.details["message"] = failure.detail
    result.execution_time = time.perf_counter() - started
    return result


def run_many(
    grader: dict[str, Any],
    pairs: Iterable[tuple[str, Any]],
    context: Context | None = None,
    workers: int = 4,
) -> list[Result]:
    """`run` over (output_text, item) pairs, `workers` at a time (python graders are
    subprocesses and model graders HTTP calls: they overlap well)."""
    context = context or Context()
    pairs = list(pairs)
    if workers <= 1 or len(pairs) <= 1:
        return [run(grader, text, item, context) for text, item in pairs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pair: run(grader, pair[0], pair[1], context), pairs))


def _formula(grader: dict[str, Any], graders: dict[str, Any]) -> Any:
    try:
        return formula.parse(grader.get("calculate_output"), graders)
    except formula.FormulaError as error:
        raise _Failure("formula_parse_error", f"calculate_output {error}") from None


def _render(template: str, item: Any, sample: dict[str, Any]) -> str:
    try:
        return templates.render(template, item, sample)
    except templates.TemplateError as error:
        raise _Failure("invalid_variable_error", str(error)) from None


def _score(
    grader: dict[str, Any], sample: dict[str, Any], item: Any, context: Context, result: Result
) -> float:
    kind = grader.get("type")
    if kind == "string_check":
        given = _render(grader["input"], item, sample)
        reference = _render(grader["reference"], item, sample)
        operation = grader["operation"]
        if operation == "eq":
            return float(given == reference)
        if operation == "ne":
            return float(given != reference)
        if operation == "like":
            return float(reference in given)
        return float(reference.lower() in given.lower())
    if kind == "text_similarity":
        given = _render(grader["input"], item, sample)
        reference = _render(grader["reference"], item, sample)
        metric = grader["evaluation_metric"]
        if metric == "cosine":
            return _remote(lambda: remote.cosine(context.endpoint, given, reference))
        return similarity.METRICS[metric](given, reference)
    if kind == "python":
        outcome = sandbox.run(grader["source"], sample, item, context.limits)
        if outcome.error_kind == "runtime":
            raise _Failure(
                "python_grader_runtime_error",
                outcome.message,
                "python_grader_runtime_error_details",
            )
        if outcome.error_kind is not None:
            raise _Failure(
                "python_grader_server_error",
                f"{outcome.error_kind}: {outcome.message}",
                "message",
                kind=outcome.error_kind,
            )
        return float(outcome.score or 0.0)
    if kind in ("score_model", "label_model"):
        messages = [
            {
                "role": "system" if m["role"] == "developer" else m["role"],
                "content": _render(message_text(m["content"]) or "", item, sample),
            }
            for m in grader["input"]
        ]
        sampling = grader.get("sampling_params") or {}
        text, tokens = _remote(
            lambda: remote.chat(context.endpoint, grader["model"], messages, sampling)
        )
        result.token_usage += tokens
        result.tokens_per_model[grader["model"]] = (
            result.tokens_per_model.get(grader["model"], 0) + tokens
        )
        if kind == "score_model":
            low, high = grader.get("range") or [0, 1]
            score = _remote(lambda: remote.parse_score(text))
            return min(max(score, float(low)), float(high))
        label = _remote(lambda: remote.parse_label(text, grader["labels"]))
        return float(label in grader["passing_labels"])
    raise _Failure("other_error", f"unknown grader type {kind!r}")


def _remote(call: Any) -> Any:
    try:
        return call()
    except remote.ModelGraderError as error:
        flag = {
            "server": "model_grader_server_error",
            "parse": "model_grader_parse_error",
            "refusal": "model_grader_refusal_error",
        }[error.kind]
        key = "model_grader_server_error_details" if error.kind == "server" else ""
        raise _Failure(flag, str(error), key) from None
