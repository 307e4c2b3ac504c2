"""OpenAI's graders and reinforcement fine-tuning on the bridge: `POST
/v1/fine_tuning/alpha/graders/run` and `/validate` (OpenAI's request and response shapes,
transcoded to `GraderService`), and the `method.reinforcement` of a job in both
directions. Included by `bridge.routes.openai`, whose error envelope it shares."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from google.protobuf import struct_pb2
from pydantic import BaseModel, ValidationError

from bridge.deps import Auth, BackendDep
from bridge.errors import ApiError
from bridge.routes.openai import OpenAIRoute
from server.graders import SHAPE_ONLY, from_json, to_json
from trainer import graders
from trainer.hyperparameters import REINFORCEMENT, TABLE
from tunewire.v1 import graders_pb2, jobs_pb2

router = APIRouter(prefix="/fine_tuning/alpha/graders", tags=["openai"], route_class=OpenAIRoute)
REASONING_EFFORTS = ("default", "low", "medium", "high")


def grader_proto(grader: object, param: str) -> graders_pb2.Grader:
    """OpenAI's JSON grader as the contract's message; a shape the message cannot hold
    (an unknown type or field, a non-text message) is refused naming its field."""
    if problems := graders.problems(grader, param, SHAPE_ONLY):
        raise ApiError.invalid(problems)
    return from_json(grader)  # type: ignore[arg-type]


class RunIn(BaseModel):
    grader: dict[str, Any]
    model_sample: str
    item: dict[str, Any] | None = None


class ValidateIn(BaseModel):
    grader: dict[str, Any]


@router.post("/run")
async def run_grader(body: RunIn, backend: BackendDep, auth: Auth) -> dict[str, Any]:
    """Grade one model sample against one dataset item (OpenAI's grader run)."""
    request = graders_pb2.RunGraderRequest(
        grader=grader_proto(body.grader, "grader"), model_sample=body.model_sample
    )
    if body.item is not None:
        request.item.CopyFrom(_struct(body.item))
    reply = await backend.graders.RunGrader(request, metadata=auth)
    return run_object(reply)


@router.post("/validate")
async def validate_grader(body: ValidateIn, backend: BackendDep, auth: Auth) -> dict[str, Any]:
    """Check a grader; a bad one is refused (400) naming its field."""
    request = graders_pb2.ValidateGraderRequest(grader=grader_proto(body.grader, "grader"))
    reply = await backend.graders.ValidateGrader(request, metadata=auth)
    return {"grader": to_json(reply.grader)}


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def run_object(reply: graders_pb2.RunGraderResponse) -> dict[str, Any]:
    meta = reply.metadata
    errors: dict[str, Any] = {flag: flag in meta.errors for flag in graders.ERROR_FLAGS}
    for key in (
        "model_grader_server_error_details",
        "python_grader_runtime_error_details",
        "python_grader_server_error_type",
    ):
        errors[key] = meta.error_details.get(key)
    if "message" in meta.error_details:
        errors["other_error_details"] = meta.error_details["message"]
    scores = dict(reply.sub_rewards) or {meta.name: reply.reward}
    return {
        "reward": reply.reward,
        "metadata": {
            "name": meta.name,
            "type": meta.type,
            "errors": errors,
            "execution_time": meta.execution_time,
            "scores": scores,
            "token_usage": meta.token_usage or None,
            "sampled_model_name": None,
        },
        "sub_rewards": dict(reply.sub_rewards),
        "model_grader_token_usage_per_model": dict(meta.token_usage_per_model),
    }


# --- method.reinforcement of a job --------------------------------------------------------------

# OpenAI's n_epochs, batch_size and learning_rate_multiplier, plus Tunewire's LoRA and
# early-stopping settings and target_modules, as the other methods take them.
JOB_HYPERPARAMETERS = frozenset(row.name for row in TABLE) | {"target_modules"}


def reinforcement_in(
    spec: dict[str, Any] | None,
) -> tuple[jobs_pb2.Reinforcement, dict[str, Any]]:
    """OpenAI's `method.reinforcement` as the contract's spec, and the job-level
    hyperparameters (n_epochs, batch_size, learning_rate_multiplier) it carries."""
    if not isinstance(spec, dict) or "grader" not in spec:
        raise ApiError.invalid(
            [("method.reinforcement.grader", "required: the grader that scores each sample")]
        )
    unknown = [key for key in spec if key not in ("grader", "hyperparameters")]
    if unknown:
        raise ApiError.invalid(
            [(f"method.reinforcement.{key}", "unknown argument") for key in unknown]
        )
    out = jobs_pb2.Reinforcement(grader=grader_proto(spec["grader"], "method.reinforcement.grader"))
    given = spec.get("hyperparameters") or {}
    if not isinstance(given, dict):
        raise ApiError.invalid([("method.reinforcement.hyperparameters", "must be an object")])
    own = {row.name: row for row in REINFORCEMENT}
    job_level: dict[str, Any] = {}
    problems = []
    for name, value in given.items():
        field = f"method.reinforcement.hyperparameters.{name}"
        if value is None or value == "auto":
            continue
        if name == "reasoning_effort":
            if value not in REASONING_EFFORTS:
                problems.append((field, f"must be one of {', '.join(REASONING_EFFORTS)}"))
            else:
                out.reasoning_effort = value
        elif name in own:
            if problem := own[name].problem(value):
                problems.append((field, problem))
            else:
                setattr(out, name, own[name].type(value))
        elif name in JOB_HYPERPARAMETERS:
            job_level[name] = value
        else:
            problems.append((field, "unknown argument"))
    if problems:
        raise ApiError.invalid(problems)
    return out, job_level


def reinforcement_out(job: jobs_pb2.Job, shown: dict[str, Any]) -> dict[str, Any]:
    """The job's `method` in OpenAI's shape; `shown` holds its n_epochs, batch_size and
    learning_rate_multiplier as the job reports them."""
    spec = job.method.reinforcement
    hyperparameters = dict(shown)
    for row in REINFORCEMENT:
        if row.name == "max_completion_tokens":
            continue  # Tunewire's own; not in OpenAI's shape
        hyperparameters[row.name] = getattr(spec, row.name) if spec.HasField(row.name) else "auto"
    hyperparameters["reasoning_effort"] = spec.reasoning_effort or "default"
    return {
        "type": "reinforcement",
        "reinforcement": {"grader": to_json(spec.grader), "hyperparameters": hyperparameters},
    }


def job_hyperparameters(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    """n_epochs, batch_size and learning_rate_multiplier given in method.reinforcement,
    checked as the other methods' are."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ApiError.invalid(
            [
                (
                    "method.reinforcement.hyperparameters."
                    + ".".join(str(part) for part in problem["loc"][:1]),
                    problem["msg"],
                )
                for problem in error.errors()
            ]
        ) from None
