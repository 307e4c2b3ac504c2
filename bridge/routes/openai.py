"""OpenAI's API at `/v1`: files, fine-tuning jobs, models, chat completions and
completions, in OpenAI's object shapes and error envelope, so the official SDKs
work with `base_url="http://host:port/v1"` (as they do for vLLM and Ollama).

Lists are OpenAI's cursor pages (`after` = the last id seen), each a seek in the
control plane's index (`after_id`), so a page costs the same at any depth; an `after`
that names no object of the list is a 400 (param `after`). Jobs, checkpoints, events
and files are newest first, as OpenAI returns them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from bridge.backend import (
    Backend,
    Metadata,
    cursor_page,
    every_page,
    struct_dict,
    unix,
)
from bridge.deps import Auth, BackendDep, Int32, Int64, SettingsDep
from bridge.errors import ApiError, Code
from bridge.routing import route_class
from bridge.streams import EVENT_STREAM, HEARTBEAT, STREAM_HEADERS, compact, open_stream, sse
from bridge.uploads import BINARY, form_openapi, upload_file_form
from server.states import job_state_name
from server.validation import describe
from trainer.hyperparameters import TABLE as HYPERPARAMETERS
from trainer.hyperparameters import TARGET_MODULES
from tunewire.v1 import (
    checkpoints_pb2,
    events_pb2,
    files_pb2,
    jobs_pb2,
    models_pb2,
)

File = files_pb2.File
Job = jobs_pb2.Job
Event = events_pb2.Event
Auto = Literal["auto"]

# --- the error envelope -----------------------------------------------------------------

# Our field names where OpenAI's differ (the rest lose the request-message prefix).
PARAMS = {
    "job.base_model": "model",
    "model_id": "model",
    "metadata.filename": "file",
    "metadata.purpose": "purpose",
    "after_id": "after",
    "order_by": "order",
    "upload.filename": "filename",
    "upload.purpose": "purpose",
    "upload.bytes": "bytes",
    "upload.mime_type": "mime_type",
    "chunk": "data",  # an upload's part
}


def openai_param(field: str) -> str | None:
    return PARAMS.get(field, field.removeprefix("job.")) or None


# OpenAI's names for our resources, where they differ, in "… not found" messages.
ERROR_NOUNS = {"job": "fine-tuning job", "webhook_endpoint": "webhook"}


def openai_code(error: ApiError) -> str | None:
    """OpenAI's `code`: the server's own reason (e.g. `invalid_n_examples`), else the
    code OpenAI sends for the same failure, else null, as OpenAI sends for most errors
    (a missing file or job among them). Never a gRPC status name: clients compare it
    with OpenAI's values."""
    if error.reason:
        return error.reason
    if error.code == Code.UNAUTHENTICATED:
        return "invalid_api_key"
    if error.http_status == 413:
        return "file_too_large"
    if error.code == Code.RESOURCE_EXHAUSTED:
        return "rate_limit_exceeded"
    if error.code == Code.NOT_FOUND and (error.resource or ("",))[0] == "model":
        return "model_not_found"
    return None


def openai_error(error: ApiError) -> dict[str, Any]:
    violations = error.violations
    return {
        "error": {
            "message": violations[0][1] if len(violations) == 1 else error.message_in(ERROR_NOUNS),
            "type": "invalid_request_error" if error.http_status < 500 else "server_error",
            "param": openai_param(violations[0][0]) if violations else None,
            "code": openai_code(error),
        }
    }


OpenAIRoute = route_class(openai_error)
router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)
# Also served by TrueFoundry's surface, under its own prefix.
files_router = APIRouter(prefix="/files", tags=["openai"], route_class=OpenAIRoute)
jobs_router = APIRouter(prefix="/fine_tuning/jobs", tags=["openai"], route_class=OpenAIRoute)

# --- object shapes ----------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class JobError(BaseModel):
    code: str
    message: str
    param: str | None


class Hyperparameters(BaseModel):
    """Each is "auto" until training resolves it."""

    n_epochs: Auto | int = "auto"
    batch_size: Auto | int = "auto"
    learning_rate_multiplier: Auto | float = "auto"


class DpoHyperparameters(Hyperparameters):
    beta: Auto | float = "auto"


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters


class DpoMethod(BaseModel):
    hyperparameters: DpoHyperparameters


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class Wandb(BaseModel):
    project: str
    entity: str | None = None
    name: str | None = None
    tags: list[str] | None = None


class Mlflow(BaseModel):
    """An MLflow tracking server (Tunewire's own integration type beside OpenAI's wandb)."""

    tracking_uri: str
    experiment: str | None = None
    name: str | None = None
    tags: list[str] | None = None


class Integration(BaseModel):
    type: Literal["wandb", "mlflow"]
    wandb: Wandb | None = None
    mlflow: Mlflow | None = None


class FineTuningJob(BaseModel):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: Hyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal[
        "validating_files",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "pausing",
        "paused",
    ]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Integration] | None
    metadata: dict[str, str] | None
    method: Method
    user_provided_suffix: str | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class Checkpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Checkpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None


# --- requests ---------------------------------------------------------------------------


class Strict(BaseModel):
    # OpenAI refuses arguments it does not know; so do we, naming them.
    model_config = ConfigDict(extra="forbid")


# OpenAI's, plus Tunewire's LoRA and early-stopping settings: a field per row of the one
# table, each may be "auto" (unset). Ranges are checked by the server, from the same table.
HyperparametersIn = create_model(
    "HyperparametersIn",
    __base__=Strict,
    __doc__="OpenAI's hyperparameters, plus Tunewire's LoRA and early-stopping settings.",
    **{
        row.name: (
            Auto | (Int32 if row.type is int else float) | None,
            Field(
                default=None,
                description=f"{row.doc} Range {row.range}."
                + (f" {row.method.upper()} only (method.type {row.method})." if row.method else ""),
            ),
        )
        for row in HYPERPARAMETERS
    },
    target_modules=(
        Literal[(*TARGET_MODULES, "auto")] | None,
        Field(default=None, description="LoRA target-module preset; auto is QV."),
    ),
)


class MethodConfigIn(Strict):
    hyperparameters: HyperparametersIn | None = None


class MethodIn(Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodConfigIn | None = None
    dpo: MethodConfigIn | None = None
    reinforcement: dict[str, Any] | None = None


class MlflowIn(Mlflow):
    api_key: str | None = Field(
        default=None, description="Write-only: sent as MLflow's tracking token, never shown."
    )


class IntegrationIn(Strict):
    type: str
    wandb: Wandb | None = None
    mlflow: MlflowIn | None = None


class CreateJobRequest(Strict):
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: Int64 | None = None
    metadata: dict[str, str] | None = None
    integrations: list[IntegrationIn] | None = None
    hyperparameters: HyperparametersIn | None = Field(
        default=None, description="Deprecated in favour of method; still accepted."
    )
    method: MethodIn | None = None


class TextPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    # Declared so that a replayed tool conversation is refused rather than silently
    # rendered without its calls (see ChatRequest.unserved).
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


def _unsupported(field: str, what: str) -> tuple[str, str]:
    return field, f"{field} is not supported: {what}"


class GenerationIn(BaseModel):
    # Every argument OpenAI documents is declared. Those Tunewire serves are used; the
    # rest are refused (`unserved`) unless they hold a value that changes nothing (a zero
    # penalty, `logprobs: false`), so no client believes an option took effect when it
    # did not. Names OpenAI does not have are ignored, as vLLM does, for the clients
    # that add extras of their own.
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Int32 | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: Int64 | None = None
    n: Int32 | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # The caller's own label for abuse tracking: nothing to honour.
    user: str | None = None
    # Not served (Generate has no such options).
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def unserved(self) -> list[tuple[str, str]]:
        """(field, why) for each argument given a value Tunewire does not honour."""
        refused: list[tuple[str, str]] = []
        if self.n not in (None, 1):
            refused.append(("n", "only n=1 is supported"))
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                refused.append(_unsupported(name, "leave it out or send 0"))
        if self.logit_bias:
            refused.append(_unsupported("logit_bias", "leave it out or send {}"))
        return refused


class ChatRequest(GenerationIn):
    messages: list[ChatMessageIn]
    max_completion_tokens: Int32 | None = None
    # Tools: Generate takes none and returns text, never tool calls (nor has tiny-llama a
    # tool-calling template), so tools are refused, except with tool_choice "none",
    # which OpenAI serves as plain chat, ignoring them.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    # Generate returns text, not per-token log-probabilities.
    logprobs: bool | None = None
    top_logprobs: Int32 | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    store: bool | None = None
    # Bookkeeping and hints that leave the reply as it is: accepted, nothing to honour.
    # (`prediction` only lets OpenAI answer sooner; `metadata` tags stored completions.)
    metadata: dict[str, str] | None = None
    prediction: dict[str, Any] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None

    def unserved(self) -> list[tuple[str, str]]:
        refused = super().unserved()
        refused += _tools_unserved("tools", self.tools, "tool_choice", self.tool_choice)
        refused += _tools_unserved("functions", self.functions, "function_call", self.function_call)
        if any(m.tool_calls or m.function_call for m in self.messages):
            refused.append(
                ("messages", "tool calls in messages are not supported: tools are not served")
            )
        if self.logprobs:
            refused.append(
                _unsupported("logprobs", "Tunewire does not return token log-probabilities")
            )
        if self.top_logprobs:
            refused.append(
                _unsupported("top_logprobs", "Tunewire does not return token log-probabilities")
            )
        if self.response_format and self.response_format.get("type") != "text":
            refused.append(
                _unsupported(
                    "response_format",
                    'JSON mode and structured outputs are not served; only {"type": "text"}',
                )
            )
        if self.modalities and set(self.modalities) != {"text"}:
            refused.append(_unsupported("modalities", 'only ["text"] is served'))
        for name, what in (
            ("audio", "only text is served"),
            ("reasoning_effort", "the models served do not reason"),
            ("verbosity", "leave it out"),
            ("web_search_options", "there is no web search"),
            ("moderation", "there is no moderation"),
        ):
            if getattr(self, name) is not None:
                refused.append(_unsupported(name, what))
        if self.store:
            refused.append(_unsupported("store", "completions are not stored"))
        return refused


def _tools_unserved(
    tools_field: str, tools: list[dict[str, Any]] | None, choice_field: str, choice: Any
) -> list[tuple[str, str]]:
    """Tools (or the legacy functions) and their choice: served only when none is
    called, as OpenAI does for a choice of "none" or for no tools."""
    if tools:
        if choice == "none":
            return []
        return [
            (
                tools_field,
                f"{tools_field} are not supported: models here generate text, never tool "
                f'calls; leave {tools_field} out or send {choice_field} "none"',
            )
        ]
    if choice in (None, "none", "auto"):
        return []
    return [(choice_field, f"{choice_field} calls a tool, but tools are not supported")]


class CompletionRequest(GenerationIn):
    prompt: str | list[str]
    logprobs: Int32 | None = None
    echo: bool | None = None
    best_of: Int32 | None = None
    suffix: str | None = None

    def unserved(self) -> list[tuple[str, str]]:
        refused = super().unserved()
        if self.logprobs is not None:
            refused.append(
                _unsupported("logprobs", "Tunewire does not return token log-probabilities")
            )
        if self.echo:
            refused.append(_unsupported("echo", "leave it out or send false"))
        if self.best_of not in (None, 1):
            refused.append(_unsupported("best_of", "leave it out or send 1"))
        if self.suffix:
            refused.append(_unsupported("suffix", "text insertion is not served"))
        return refused


# --- conversions ------------------------------------------------------------------------

PURPOSES = {"fine-tune": File.PURPOSE_FINE_TUNE, "user_data": File.PURPOSE_USER_DATA}
PURPOSE_NAMES = {
    File.PURPOSE_FINE_TUNE: "fine-tune",
    File.PURPOSE_FINE_TUNE_RESULTS: "fine-tune-results",
    File.PURPOSE_USER_DATA: "user_data",
}
FILE_STATUS: dict[int, Literal["uploaded", "processed", "error"]] = {
    File.STATE_UPLOADED: "uploaded",
    File.STATE_PROCESSED: "processed",
    File.STATE_ERROR: "error",
}
LEVELS: dict[int, Literal["info", "warn", "error"]] = {
    Event.LEVEL_INFO: "info",
    Event.LEVEL_WARN: "warn",
    Event.LEVEL_ERROR: "error",
}
METRICS = [name for name in CheckpointMetrics.model_fields if name != "step"]


def file_object(record: File) -> FileObject:
    report = record.validation
    details = None
    if record.state == File.STATE_ERROR:
        found = " ".join(describe(p.line, p.path, p.message) for p in report.problems)
        details = f"{report.problem_count} problem(s): {found}"
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=unix(record.create_time) or 0,
        filename=record.filename,
        purpose=PURPOSE_NAMES.get(record.purpose, "user_data"),
        status=FILE_STATUS.get(record.state, "uploaded"),
        status_details=details,
    )


def hyperparameters_shown(job: Job) -> Hyperparameters:
    hp = job.hyperparameters

    def value(name: str) -> Any:
        return getattr(hp, name) if hp.HasField(name) else "auto"

    if job.method.type == jobs_pb2.Method.TYPE_DPO:
        return DpoHyperparameters(**{name: value(name) for name in DpoHyperparameters.model_fields})
    return Hyperparameters(**{name: value(name) for name in Hyperparameters.model_fields})


def job_object(job: Job) -> FineTuningJob:
    shown = hyperparameters_shown(job)
    if job.method.type == jobs_pb2.Method.TYPE_REINFORCEMENT:
        method = Method(**openai_graders.reinforcement_out(job, shown.model_dump()))
    elif isinstance(shown, DpoHyperparameters):
        method = Method(type="dpo", dpo=DpoMethod(hyperparameters=shown))
    else:
        method = Method(type="supervised", supervised=SupervisedMethod(hyperparameters=shown))
    failed = job.error.code or job.error.message
    return FineTuningJob(
        id=job.id,
        created_at=unix(job.create_time) or 0,
        error=JobError(
            code=job.error.code, message=job.error.message, param=openai_param(job.error.param)
        )
        if failed
        else None,
        fine_tuned_model=job.fine_tuned_model or None,
        finished_at=unix(job.finish_time),
        hyperparameters=Hyperparameters(
            **shown.model_dump(include=set(Hyperparameters.model_fields))
        ),
        model=job.base_model,
        organization_id=job.organization,
        result_files=list(job.result_files),
        seed=job.seed,
        status=job_state_name(job.state),  # type: ignore[arg-type]
        trained_tokens=job.trained_tokens or None,
        training_file=job.training_file,
        validation_file=job.validation_file or None,
        estimated_finish=unix(job.estimated_finish),
        integrations=[integration_object(i) for i in job.integrations] or None,
        metadata=dict(job.metadata) or None,
        method=method,
        user_provided_suffix=job.suffix or None,
    )


def integration_object(i: jobs_pb2.Integration) -> Integration:
    tags = list(i.tags) or None
    if i.type == "mlflow":
        mlflow = Mlflow(
            tracking_uri=i.tracking_uri,
            experiment=i.experiment or None,
            name=i.name or None,
            tags=tags,
        )
        return Integration(type="mlflow", mlflow=mlflow)
    wandb = Wandb(project=i.project, entity=i.entity or None, name=i.name or None, tags=tags)
    return Integration(type="wandb", wandb=wandb)


def integration_proto(i: IntegrationIn) -> jobs_pb2.Integration:
    if i.mlflow is not None:
        m = i.mlflow
        return jobs_pb2.Integration(
            type=i.type,
            tracking_uri=m.tracking_uri,
            experiment=m.experiment or "",
            name=m.name or "",
            tags=m.tags or [],
            api_key=m.api_key or "",
        )
    w = i.wandb
    return jobs_pb2.Integration(
        type=i.type,
        project=w.project if w else "",
        entity=(w.entity or "") if w else "",
        name=(w.name or "") if w else "",
        tags=(w.tags or []) if w else [],
    )


def job_proto(body: CreateJobRequest) -> Job:
    kind = body.method.type if body.method else "supervised"
    spec, own = None, None
    if kind == "reinforcement":  # its grader and hyperparameters: see openai_graders
        spec, job_level = openai_graders.reinforcement_in(body.method.reinforcement)  # type: ignore[union-attr]
        own = openai_graders.job_hyperparameters(HyperparametersIn, job_level)
    chosen = getattr(body.method, kind, None) if body.method and spec is None else None
    values: dict[str, Any] = {}
    for given in (body.hyperparameters, chosen.hyperparameters if chosen else None, own):
        if given is not None:
            values.update(given.model_dump(exclude_none=True))
    if (modules := values.pop("target_modules", "auto")) != "auto":
        values["target_modules"] = jobs_pb2.Hyperparameters.TargetModules.Value(
            f"TARGET_MODULES_{modules}"
        )
    job = Job(
        base_model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file or "",
        suffix=body.suffix or "",
        metadata=body.metadata or {},
        method=jobs_pb2.Method(
            type=jobs_pb2.Method.TYPE_REINFORCEMENT
            if spec is not None
            else jobs_pb2.Method.TYPE_DPO
            if kind == "dpo"
            else jobs_pb2.Method.TYPE_SUPERVISED,
            reinforcement=spec,
        ),
        hyperparameters=jobs_pb2.Hyperparameters(
            **{name: value for name, value in values.items() if value != "auto"}
        ),
        integrations=[integration_proto(i) for i in body.integrations or []],
    )
    if body.seed is not None:
        job.seed = body.seed
    return job


def event_object(event: Event) -> JobEvent:
    return JobEvent(
        id=event.id,
        created_at=unix(event.create_time) or 0,
        level=LEVELS.get(event.level, "info"),
        message=event.message,
        type="metrics" if event.type == Event.TYPE_METRICS else "message",
        data=struct_dict(event.data) if event.HasField("data") else None,
    )


def checkpoint_object(checkpoint: checkpoints_pb2.Checkpoint) -> Checkpoint:
    measured = checkpoint.metrics
    return Checkpoint(
        id=checkpoint.id,
        created_at=unix(checkpoint.create_time) or 0,
        fine_tuned_model_checkpoint=checkpoint.model,
        fine_tuning_job_id=checkpoint.job_id,
        step_number=checkpoint.step,
        metrics=CheckpointMetrics(
            step=checkpoint.step,
            **{name: getattr(measured, name) for name in METRICS if measured.HasField(name)},
        ),
    )


def model_object(model: models_pb2.FineTunedModel) -> Model:
    return Model(id=model.id, created=unix(model.create_time) or 0, owned_by=model.organization)


def base_model_object(model: models_pb2.BaseModel) -> Model:
    return Model(id=model.id, created=0, owned_by="tunewire")


# --- files ------------------------------------------------------------------------------


@files_router.post(
    "",
    openapi_extra=form_openapi(
        {"file": BINARY, "purpose": {"type": "string", "enum": list(PURPOSES)}},
        ["file", "purpose"],
    ),
)
async def create_file(
    request: Request, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> FileObject:
    """Upload a file (multipart `file` and `purpose`), streamed to the control plane."""
    return file_object(await upload_file_form(request, backend, auth, settings, PURPOSES))


@files_router.get("")
async def list_files(
    backend: BackendDep,
    auth: Auth,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    """Files, newest first (`order=asc`: oldest first): `limit` of them (1 to 10,000,
    default 10,000, as OpenAI documents) after the file `after`; each page is a seek."""
    if purpose is not None and purpose not in PURPOSE_NAMES.values():
        raise ApiError.invalid([("purpose", f"unknown purpose {purpose!r}")])
    wanted = next((k for k, v in PURPOSE_NAMES.items() if v == purpose), File.PURPOSE_UNSPECIFIED)
    request = files_pb2.ListFilesRequest(
        purpose=wanted,
        order_by="create_time" if order == "asc" else "create_time desc",
        after_id=after or "",
    )
    page, more = await cursor_page(backend.files.ListFiles, request, "files", auth, limit)
    data = [file_object(f) for f in page]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=more,
    )


@files_router.get("/{file_id}")
async def retrieve_file(file_id: str, backend: BackendDep, auth: Auth) -> FileObject:
    return file_object(
        await backend.files.GetFile(files_pb2.GetFileRequest(file_id=file_id), metadata=auth)
    )


@files_router.delete("/{file_id}")
async def delete_file(file_id: str, backend: BackendDep, auth: Auth) -> FileDeleted:
    await backend.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=file_id), metadata=auth)
    return FileDeleted(id=file_id, deleted=True)


@files_router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {"schema": BINARY}}}},
)
async def file_content(
    file_id: str, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> StreamingResponse:
    """The file's bytes, streamed as the control plane reads them."""
    call = backend.files.DownloadFile(files_pb2.DownloadFileRequest(file_id=file_id), metadata=auth)
    items = await open_stream(call, settings.sse_heartbeat_seconds, patient=True)
    first = await anext(items, None)
    headers = {"Content-Length": str(first.chunk.total_bytes if first else 0)}

    async def content() -> AsyncIterator[bytes]:
        async with aclosing(items):
            if first is None:
                return
            yield first.chunk.data
            async for reply in items:
                if reply is not None:
                    yield reply.chunk.data

    return StreamingResponse(content(), media_type="application/octet-stream", headers=headers)


router.include_router(files_router)

# --- fine-tuning jobs -------------------------------------------------------------------


@jobs_router.post("")
async def create_job(
    body: CreateJobRequest,
    backend: BackendDep,
    auth: Auth,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> FineTuningJob:
    """Create a fine-tuning job; an `Idempotency-Key` makes retries return the same job."""
    request = jobs_pb2.CreateJobRequest(job=job_proto(body), request_id=idempotency_key or "")
    return job_object(await backend.jobs.CreateJob(request, metadata=auth))


@jobs_router.get(
    "",
    openapi_extra={
        "parameters": [
            {
                "name": "metadata",
                "in": "query",
                "style": "deepObject",
                "explode": True,
                "description": "Only jobs with these metadata pairs: `metadata[key]=value`.",
                "schema": {"type": "object", "additionalProperties": {"type": "string"}},
            }
        ]
    },
)
async def list_jobs(
    request: Request,
    backend: BackendDep,
    auth: Auth,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> JobList:
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.multi_items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    request = jobs_pb2.ListJobsRequest(metadata=metadata, after_id=after or "")
    page, more = await cursor_page(backend.jobs.ListJobs, request, "jobs", auth, limit)
    return JobList(data=[job_object(j) for j in page], has_more=more)


@jobs_router.get("/{fine_tuning_job_id}")
async def retrieve_job(fine_tuning_job_id: str, backend: BackendDep, auth: Auth) -> FineTuningJob:
    job = await backend.jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=fine_tuning_job_id), metadata=auth
    )
    return job_object(job)


async def _steer(call: Callable[..., Any], request: Any, auth: Metadata) -> FineTuningJob:
    return job_object(await call(request, metadata=auth))


@jobs_router.post("/{fine_tuning_job_id}/cancel")
async def cancel_job(fine_tuning_job_id: str, backend: BackendDep, auth: Auth) -> FineTuningJob:
    return await _steer(
        backend.jobs.CancelJob, jobs_pb2.CancelJobRequest(job_id=fine_tuning_job_id), auth
    )


@jobs_router.post("/{fine_tuning_job_id}/pause")
async def pause_job(fine_tuning_job_id: str, backend: BackendDep, auth: Auth) -> FineTuningJob:
    return await _steer(
        backend.jobs.PauseJob, jobs_pb2.PauseJobRequest(job_id=fine_tuning_job_id), auth
    )


@jobs_router.post("/{fine_tuning_job_id}/resume")
async def resume_job(fine_tuning_job_id: str, backend: BackendDep, auth: Auth) -> FineTuningJob:
    return await _steer(
        backend.jobs.ResumeJob, jobs_pb2.ResumeJobRequest(job_id=fine_tuning_job_id), auth
    )


@jobs_router.get("/{fine_tuning_job_id}/events")
async def list_events(
    fine_tuning_job_id: str,
    backend: BackendDep,
    auth: Auth,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> EventList:
    """A job's events, newest first; `after` is an event id (a seek, not a scan)."""
    request = jobs_pb2.ListJobEventsRequest(
        job_id=fine_tuning_job_id, order_by="sequence desc", after_id=after or ""
    )
    page, more = await cursor_page(backend.jobs.ListJobEvents, request, "events", auth, limit)
    return EventList(data=[event_object(e) for e in page], has_more=more)


@jobs_router.get("/{fine_tuning_job_id}/checkpoints")
async def list_checkpoints(
    fine_tuning_job_id: str,
    backend: BackendDep,
    auth: Auth,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> CheckpointList:
    request = jobs_pb2.ListCheckpointsRequest(job_id=fine_tuning_job_id, after_id=after or "")
    page, more = await cursor_page(
        backend.jobs.ListCheckpoints, request, "checkpoints", auth, limit
    )
    data = [checkpoint_object(c) for c in page]
    return CheckpointList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=more,
    )


router.include_router(jobs_router)
# Graders and reinforcement fine-tuning; imported here, after this module's own names exist.
from bridge.routes import openai_graders  # noqa: E402

router.include_router(openai_graders.router)
# Files sent in parts (OpenAI's Uploads API).
from bridge.routes import openai_uploads  # noqa: E402

router.include_router(openai_uploads.router)

# --- models -----------------------------------------------------------------------------


@router.get("/models")
async def list_models(backend: BackendDep, auth: Auth) -> ModelList:
    """Base models, then fine-tuned models (checkpoint models too), newest first."""
    bases = await backend.models.ListBaseModels(models_pb2.ListBaseModelsRequest(), metadata=auth)
    tuned = every_page(backend.models.ListModels, models_pb2.ListModelsRequest(), "models", auth)
    return ModelList(
        data=[base_model_object(m) for m in bases.base_models]
        + [model_object(m) async for m in tuned]
    )


@router.get("/models/{model}")
async def retrieve_model(model: str, backend: BackendDep, auth: Auth) -> Model:
    try:
        found = await backend.models.GetModel(
            models_pb2.GetModelRequest(model_id=model), metadata=auth
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != Code.NOT_FOUND:
            raise
        bases = await backend.models.ListBaseModels(
            models_pb2.ListBaseModelsRequest(), metadata=auth
        )
        for base in bases.base_models:
            if base.id == model:
                return base_model_object(base)
        raise
    return model_object(found)


@router.delete("/models/{model}")
async def delete_model(model: str, backend: BackendDep, auth: Auth) -> ModelDeleted:
    await backend.models.DeleteModel(models_pb2.DeleteModelRequest(model_id=model), metadata=auth)
    return ModelDeleted(id=model, deleted=True)


# --- chat completions and completions ---------------------------------------------------

ROLES = {"developer": "system"}


def _text(message: ChatMessageIn) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    if any(part.type != "text" for part in message.content):
        raise ApiError.invalid([("messages", "only text content parts are supported")])
    return "".join(part.text or "" for part in message.content)


def _generate_request(body: GenerationIn, max_tokens: int | None) -> models_pb2.GenerateRequest:
    if refused := body.unserved():
        raise ApiError.invalid(refused)
    request = models_pb2.GenerateRequest(
        model_id=body.model,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop or [],
    )
    for name, value in (
        ("max_tokens", max_tokens),
        ("temperature", body.temperature),
        ("top_p", body.top_p),
        ("seed", body.seed),
    ):
        if value is not None:
            setattr(request, name, value)
    return request


def _usage(reply: models_pb2.GenerateResponse) -> Usage:
    used = reply.usage
    return Usage(
        prompt_tokens=used.prompt_tokens,
        completion_tokens=used.completion_tokens,
        total_tokens=used.prompt_tokens + used.completion_tokens,
    )


class _Shape:
    """What differs between chat completions and completions, for one mechanism."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"
        self.model = model
        self.created = int(time.time())

    def whole(self, text: str, finish: str | None, usage: Usage | None) -> BaseModel:
        fields = {"id": self.id, "created": self.created, "model": self.model, "usage": usage}
        if self.chat:
            choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=finish)
            return ChatCompletion(choices=[choice], **fields)
        return Completion(choices=[CompletionChoice(text=text, finish_reason=finish)], **fields)

    def chunk(
        self, text: str | None, finish: str | None = None, usage: Usage | None = None
    ) -> bytes:
        choices: list[dict[str, Any]] = []
        if text is not None or finish is not None:
            if self.chat:
                delta = {} if text is None else {"content": text}
                if text == "":
                    delta["role"] = "assistant"
                choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            else:
                choices = [
                    {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
                ]
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage.model_dump()
        return sse(compact(chunk))


async def _generation(
    body: GenerationIn,
    request: models_pb2.GenerateRequest,
    shape: _Shape,
    backend: Backend,
    auth: Metadata,
    heartbeat: float,
) -> Any:
    call = backend.models.Generate(request, metadata=auth)
    if not body.stream:
        text, finish, usage = "", None, None
        async for reply in call:
            text += reply.text
            if reply.finish_reason:
                finish, usage = reply.finish_reason, _usage(reply)
        return shape.whole(text, finish, usage)

    items = await open_stream(call, heartbeat)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def chunks() -> AsyncIterator[bytes]:
        async with aclosing(items):
            if shape.chat:
                yield shape.chunk("")
            usage = None
            try:
                async for reply in items:
                    if reply is None:
                        yield HEARTBEAT
                        continue
                    if reply.text:
                        yield shape.chunk(reply.text)
                    if reply.finish_reason:
                        usage = _usage(reply)
                        yield shape.chunk(None, reply.finish_reason)
            except grpc.aio.AioRpcError as error:
                # What the SDKs raise on: an error object in place of a chunk.
                yield sse(compact(openai_error(ApiError.from_rpc(error))))
                return
            if include_usage and usage is not None:
                yield shape.chunk(None, usage=usage)
            yield sse("[DONE]")

    return StreamingResponse(chunks(), media_type=EVENT_STREAM, headers=STREAM_HEADERS)


STREAMED = {
    "text/event-stream": {"schema": {"type": "string", "description": "Chunks, then [DONE]"}}
}


@router.post("/chat/completions", responses={200: {"content": STREAMED}})
async def chat_completions(
    body: ChatRequest, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> ChatCompletion:
    """Chat with a fine-tuned (or base) model; `stream: true` for chunks as they are made."""
    request = _generate_request(body, body.max_completion_tokens or body.max_tokens)
    request.messages.extend(
        models_pb2.ChatMessage(role=ROLES.get(m.role, m.role), content=_text(m))
        for m in body.messages
    )
    return await _generation(
        body, request, _Shape(True, body.model), backend, auth, settings.sse_heartbeat_seconds
    )


@router.post("/completions", responses={200: {"content": STREAMED}})
async def completions(
    body: CompletionRequest, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> Completion:
    """Complete a raw prompt (one prompt per request)."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise ApiError.invalid([("prompt", "give exactly one prompt")])
    request = _generate_request(body, body.max_tokens)
    request.prompt = prompts[0]
    return await _generation(
        body, request, _Shape(False, body.model), backend, auth, settings.sse_heartbeat_seconds
    )
