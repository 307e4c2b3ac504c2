"""GraderService: validate and run graders (OpenAI's `/fine_tuning/alpha/graders/*`), and
the one translation between the contract's `Grader` message and the JSON shape that
`trainer.graders` checks and runs (OpenAI's own), which jobs carry to their trainer.

Graders are pure Python and run here, except python graders, which always run in their
sandbox subprocess (`trainer.graders.sandbox`); model graders call the endpoint the
admin configured. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf import json_format

from server.control_plane import ControlPlane, authenticated
from server.errors import InvalidArgument
from trainer import graders
from trainer.graders import remote
from trainer.hyperparameters import REINFORCEMENT
from tunewire.v1 import graders_pb2, graders_pb2_grpc

Grader = graders_pb2.Grader
KINDS = ("string_check", "text_similarity", "python", "score_model", "label_model", "multi")

# Every check that needs no server configuration: what the bridge runs before it builds the
# contract's message, so a shape the message cannot hold is refused naming its field.
SHAPE_ONLY = graders.Context(
    endpoint=remote.Endpoint(base_url="configured", embedding_model="configured")
)


def to_json(grader: Grader) -> dict[str, Any]:
    """The contract's grader in OpenAI's JSON shape."""
    kind = grader.WhichOneof("kind") or ""
    out: dict[str, Any] = {"type": kind, "name": grader.name}
    if not kind:
        return out
    body = getattr(grader, kind)
    if kind == "multi":
        out["graders"] = {key: to_json(sub) for key, sub in body.graders.items()}
        out["calculate_output"] = body.calculate_output
        return out
    fields = json_format.MessageToDict(body, preserving_proto_field_name=True)
    if kind in ("score_model", "label_model"):
        fields["input"] = [
            {"role": m.role, "content": m.content, "type": "message"} for m in body.input
        ]
        for key in ("labels", "passing_labels"):
            if key in fields:
                fields[key] = list(fields[key])
    if kind == "string_check":
        fields.setdefault("operation", "")
    out.update(fields)
    return out


def from_json(grader: dict[str, Any]) -> Grader:
    """OpenAI's JSON grader as the contract's message; check it with
    `graders.problems(grader, context=SHAPE_ONLY)` first."""
    kind = grader["type"]
    message = Grader(name=grader.get("name", ""))
    if kind == "multi":
        for key, sub in graders.sub_graders(grader).items():
            message.multi.graders[key].CopyFrom(from_json(sub))
        message.multi.calculate_output = grader["calculate_output"]
        return message
    fields = {k: v for k, v in grader.items() if k not in ("type", "name")}
    if kind in ("score_model", "label_model"):
        fields["input"] = [
            {"role": m["role"], "content": graders.message_text(m["content"]) or ""}
            for m in fields.get("input", [])
        ]
    if kind == "python" and fields.get("image_tag") is None:
        fields.pop("image_tag", None)
    json_format.ParseDict(fields, getattr(message, kind))
    return message


def check(grader: Grader, field: str) -> dict[str, Any]:
    """The grader as JSON, or InvalidArgument with every problem, each naming its field
    under `field` (`job.method.reinforcement.grader.graders.a.source`)."""
    if not grader.WhichOneof("kind"):
        raise InvalidArgument.field(f"{field}.kind", f"required: one of {', '.join(KINDS)}")
    as_json = to_json(grader)
    if problems := graders.problems(as_json, field):
        raise InvalidArgument(problems)
    return as_json


def run_reply(result: graders.Result) -> graders_pb2.RunGraderResponse:
    reply = graders_pb2.RunGraderResponse(reward=result.reward, sub_rewards=result.sub_rewards)
    meta = reply.metadata
    meta.name, meta.type = result.name, result.type
    meta.errors.extend(flag for flag, on in result.errors.items() if on)
    meta.error_details.update(result.details)
    meta.execution_time = result.execution_time
    meta.token_usage = result.token_usage
    meta.token_usage_per_model.update(result.tokens_per_model)
    return reply


class GraderServicer(graders_pb2_grpc.GraderServiceServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    @authenticated
    async def ValidateGrader(self, request: graders_pb2.ValidateGraderRequest, context):
        check(request.grader, "grader")
        return graders_pb2.ValidateGraderResponse(grader=request.grader)

    @authenticated
    async def RunGrader(self, request: graders_pb2.RunGraderRequest, context):
        grader = check(request.grader, "grader")
        item = json_format.MessageToDict(request.item) if request.HasField("item") else {}
        # Off the event loop: python graders wait on their subprocess, model graders on HTTP.
        result = await asyncio.to_thread(graders.run, grader, request.model_sample, item)
        return run_reply(result)


def check_job(job: Any, method: str) -> list[tuple[str, str]]:
    """A reinforcement job's spec (its grader, each hyperparameter of its own in range);
    a spec on a job of another method is refused."""
    field = "job.method.reinforcement"
    if method != "reinforcement":
        if job.method.HasField("reinforcement"):
            return [(field, f"only for method type REINFORCEMENT; this job's is {method}")]
        return []
    if not job.method.HasField("reinforcement") or not job.method.reinforcement.HasField("grader"):
        return [(f"{field}.grader", "required: the grader that scores each completion")]
    spec = job.method.reinforcement
    problems: list[tuple[str, str]] = []
    try:
        check(spec.grader, f"{field}.grader")
    except InvalidArgument as error:
        problems += error.violations
    for row in REINFORCEMENT:
        if spec.HasField(row.name) and (problem := row.problem(getattr(spec, row.name))):
            problems.append((f"{field}.{row.name}", problem))
    return problems


def spec_json(job: Any) -> dict[str, Any]:
    """A reinforcement job's spec as the trainer takes it (`TrainArgs.reinforcement`):
    the grader in OpenAI's shape and each set hyperparameter of the spec."""
    spec = job.method.reinforcement
    out: dict[str, Any] = {"grader": to_json(spec.grader)}
    for row in REINFORCEMENT:
        if spec.HasField(row.name):
            out[row.name] = getattr(spec, row.name)
    return out


def format_problem(file_id: str, fmt: str, method: str) -> str:
    """Why a file does not fit a job: reinforcement prompts for another method, or other
    data for a reinforcement job."""
    if method == "reinforcement":
        return (
            f"file {file_id!r} holds {fmt or 'no valid'} examples; method REINFORCEMENT trains "
            "on prompts: chat messages that end before the answer, beside the reference "
            "fields its grader reads"
        )
    return (
        f"file {file_id!r} holds reinforcement prompts (messages without an answer), which "
        f"train with method REINFORCEMENT; a {method} job needs examples with answers"
    )
