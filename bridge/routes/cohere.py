"""Cohere's fine-tuning API at `/cohere/v1`: datasets and finetuned-models, in
Cohere's shapes and enums, so the official SDK works with
`cohere.Client(base_url="http://host:port/cohere")`.

A dataset is a Tunewire fine-tune file; one uploaded with `eval_data` is two
files, and its id joins theirs with `~` (the evaluation file is also named
after the training file, so listings pair them). A finetuned model is a job:
its name and the base type it was asked for are kept in the job's metadata, and
deleting it deletes the job. Chat with one is `cohere_chat`'s, at `/cohere/v1/chat`
and `/cohere/v2/chat`.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import grpc
from fastapi import APIRouter, Query, Request
from google.protobuf import field_mask_pb2
from pydantic import BaseModel, ConfigDict

from bridge.backend import (
    MAX_PAGE_SIZE,
    Backend,
    Metadata,
    collect,
    default_base_model,
    every_page,
    moment,
    struct_dict,
)
from bridge.deps import Auth, BackendDep, Int32, SettingsDep
from bridge.errors import ApiError, Code
from bridge.routes import cohere_chat, cohere_classify
from bridge.routing import route_class
from bridge.uploads import BINARY, Destination, Form, form_openapi, streamed_form
from server.validation import describe
from trainer.hyperparameters import BASE_LEARNING_RATE
from trainer.hyperparameters import BY_NAME as HYPERPARAMETERS
from tunewire.v1 import events_pb2, files_pb2, jobs_pb2, models_pb2

File = files_pb2.File
Job = jobs_pb2.Job
Event = events_pb2.Event
T = TypeVar("T")

DATASET_TYPE = "chat-finetune-input"
EVAL_JOIN = "~"
EVAL_NAME = re.compile(r"^(file-[0-9a-f]+)\.eval\.jsonl$")
NAME_KEY = "name"
# The base type a chat fine-tune was asked for (chat or generative: the same training
# here), kept to be shown back as it was given.
BASE_TYPE_KEY = "base_type"
# Cohere's names for the hyperparameters of the one table it has, and the factor from
# ours to its units: Cohere takes an absolute learning rate, Tunewire a multiplier.
COHERE_HYPERPARAMETERS: dict[str, tuple[str, float]] = {
    "n_epochs": ("train_epochs", 1),
    "batch_size": ("train_batch_size", 1),
    "learning_rate_multiplier": ("learning_rate", BASE_LEARNING_RATE),
    "lora_rank": ("lora_rank", 1),
    "lora_alpha": ("lora_alpha", 1),
    "early_stopping_patience": ("early_stopping_patience", 1),
    "early_stopping_threshold": ("early_stopping_threshold", 1),
}
DEFAULT_PAGE_SIZE = 50

# Our field names as Cohere's request names them, for error messages.
FIELDS = {
    "job.base_model": "settings.base_model.name",
    "job.training_file": "settings.dataset_id",
    "job.validation_file": "settings.dataset_id",
    **{
        f"job.hyperparameters.{ours}": f"settings.hyperparameters.{theirs}"
        for ours, (theirs, _) in COHERE_HYPERPARAMETERS.items()
    },
    "job.suffix": "name",
    "job.method.type": "settings.base_model.base_type",
    "metadata.filename": "name",
    "model_id": "model",
    # Generate's, as chat names them.
    "top_p": "p",
    "stop": "stop_sequences",
}


def cohere_field(field: str) -> str:
    return FIELDS.get(field) or field.replace(
        "job.hyperparameters.", "settings.hyperparameters."
    ).removeprefix("job.")


# Cohere's names for our resources: a file is a dataset, a job a finetuned model.
ERROR_NOUNS = {"file": "dataset", "job": "finetuned model"}


def cohere_error(error: ApiError) -> dict[str, Any]:
    """Cohere's error body: a message, naming fields and resources as Cohere does."""
    violations = error.violations
    if not violations:
        return {"message": error.message_in(ERROR_NOUNS)}
    return {"message": "; ".join(f"{cohere_field(f)}: {d}" for f, d in violations)}


router = APIRouter(prefix="/cohere/v1", tags=["cohere"], route_class=route_class(cohere_error))

# --- shapes -----------------------------------------------------------------------------

ValidationStatus = Literal["unknown", "queued", "processing", "failed", "validated", "skipped"]
Status = Literal[
    "STATUS_UNSPECIFIED",
    "STATUS_FINETUNING",
    "STATUS_DEPLOYING_API",
    "STATUS_READY",
    "STATUS_FAILED",
    "STATUS_DELETED",
    "STATUS_TEMPORARILY_OFFLINE",
    "STATUS_PAUSED",
    "STATUS_QUEUED",
]
BaseType = Literal[
    "BASE_TYPE_UNSPECIFIED",
    "BASE_TYPE_GENERATIVE",
    "BASE_TYPE_CLASSIFICATION",
    "BASE_TYPE_RERANK",
    "BASE_TYPE_CHAT",
]
TargetModules = Literal[
    "LORA_TARGET_MODULES_UNSPECIFIED",
    "LORA_TARGET_MODULES_QV",
    "LORA_TARGET_MODULES_QKVO",
    "LORA_TARGET_MODULES_QKVO_FFN",
]


class DatasetPart(BaseModel):
    id: str
    name: str
    index: int
    size_bytes: int
    num_rows: int


class Dataset(BaseModel):
    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    dataset_type: str
    validation_status: ValidationStatus
    validation_error: str | None
    validation_warnings: list[str]
    dataset_parts: list[DatasetPart]


class CreateDatasetResponse(BaseModel):
    id: str


class GetDatasetResponse(BaseModel):
    dataset: Dataset


class ListDatasetsResponse(BaseModel):
    datasets: list[Dataset]


class CohereBaseModel(BaseModel):
    name: str | None = None
    version: str | None = None
    base_type: BaseType
    strategy: str | None = None


class FinetuningHyperparameters(BaseModel):
    early_stopping_patience: Int32 | None = None
    early_stopping_threshold: float | None = None
    train_batch_size: Int32 | None = None
    train_epochs: Int32 | None = None
    learning_rate: float | None = None
    lora_alpha: Int32 | None = None
    lora_rank: Int32 | None = None
    lora_target_modules: TargetModules | None = None


class WandbConfig(BaseModel):
    project: str
    api_key: str | None = None
    """Write-only: stored encrypted apart from the job, used by its trainer, never shown."""
    entity: str | None = None


class Settings(BaseModel):
    base_model: CohereBaseModel
    dataset_id: str
    hyperparameters: FinetuningHyperparameters | None = None
    multi_label: bool | None = None
    wandb: WandbConfig | None = None


class FinetunedModel(BaseModel):
    # The SDK sends its read-only fields back on update; they are ignored.
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    name: str
    creator_id: str | None = None
    organization_id: str | None = None
    settings: Settings
    status: Status | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    last_used: datetime | None = None


class FinetunedModelResponse(BaseModel):
    finetuned_model: FinetunedModel


class ListFinetunedModelsResponse(BaseModel):
    finetuned_models: list[FinetunedModel]
    next_page_token: str
    total_size: int


class CohereEvent(BaseModel):
    user_id: str | None = None
    status: Status
    created_at: datetime | None


class ListEventsResponse(BaseModel):
    events: list[CohereEvent]
    next_page_token: str
    total_size: int


class TrainingStepMetrics(BaseModel):
    created_at: datetime | None
    step_number: int
    metrics: dict[str, float]


class ListTrainingStepMetricsResponse(BaseModel):
    step_metrics: list[TrainingStepMetrics]
    next_page_token: str


# --- paging -----------------------------------------------------------------------------


def offset_page(
    items: Sequence[T], page_size: int, page_token: str | None
) -> tuple[Sequence[T], str]:
    """Cohere's paging: the page at offset `page_token`, and the next token ("" at the end)."""
    try:
        start = int(page_token or 0)
    except ValueError:
        start = -1
    # A token past the end was never issued (the last page's is ""): refused, not an
    # empty page a client would take for the end.
    if start < 0 or (start and start >= len(items)):
        raise ApiError.invalid([("page_token", "is not a token this server issued")])
    size = page_size or DEFAULT_PAGE_SIZE
    end = start + size
    return items[start:end], str(end) if end < len(items) else ""


def ascending(order_by: str | None) -> bool:
    """Cohere's `order_by`: `created_at` (the default, ascending) or `created_at desc`."""
    field, _, direction = (order_by or "created_at").strip().partition(" ")
    if field != "created_at" or direction.strip().lower() not in ("", "asc", "desc"):
        raise ApiError.invalid([("order_by", "only created_at (asc or desc) is supported")])
    return direction.strip().lower() != "desc"


PageSize = Annotated[int, Query(ge=0, le=1000)]
# An offset, as offset_page issues it: digits only (a negative one would slice from the end).
PageToken = Annotated[str | None, Query(pattern=r"^[0-9]*$", max_length=20)]
# The control plane's own page token, passed through: a keyset cursor, so a page costs
# the same at any depth. The server refuses one it did not issue.
CursorToken = Annotated[str | None, Query(max_length=512)]

# --- datasets ---------------------------------------------------------------------------

VALIDATION: dict[int, ValidationStatus] = {
    File.STATE_UPLOADED: "processing",
    File.STATE_PROCESSED: "validated",
    File.STATE_ERROR: "failed",
}


def dataset_object(data: File, evaluation: File | None) -> Dataset:
    parts = [data, evaluation] if evaluation else [data]
    states = [VALIDATION.get(part.state, "unknown") for part in parts]
    status = (
        "failed" if "failed" in states else "processing" if "processing" in states else states[0]
    )
    problems = [
        f"{part.filename}: {describe(p.line, p.path, p.message)}"
        for part in parts
        for p in part.validation.problems
    ]
    # A classifier's data: at least 2 labels, and no evaluation label it cannot predict.
    if unusable := cohere_classify.dataset_problems(data, evaluation):
        problems += [u if u.endswith(".") else f"{u}." for u in unusable]  # sentences too
        status = "failed" if status == "validated" else status
    created = moment(data.create_time) or datetime.fromtimestamp(0)
    return Dataset(
        id=EVAL_JOIN.join(part.id for part in parts),
        name=data.filename.removesuffix(".jsonl"),
        created_at=created,
        updated_at=moment((evaluation or data).create_time) or created,
        dataset_type=cohere_classify.dataset_type(data, DATASET_TYPE),
        validation_status=status,
        validation_error=" ".join(problems) or None,
        validation_warnings=[],
        dataset_parts=[
            DatasetPart(
                id=part.id,
                name=part.filename,
                index=index,
                size_bytes=part.bytes,
                num_rows=part.validation.example_count,
            )
            for index, part in enumerate(parts)
        ],
    )


def dataset_files(dataset_id: str) -> list[str]:
    ids = dataset_id.split(EVAL_JOIN)
    if not 1 <= len(ids) <= 2 or not all(ids) or len(set(ids)) < len(ids):
        raise ApiError.of(Code.NOT_FOUND, f"dataset {dataset_id!r} not found")
    return ids


@router.post(
    "/datasets",
    openapi_extra=form_openapi({"data": BINARY, "eval_data": BINARY}, ["data"]),
)
async def create_dataset(
    request: Request,
    backend: BackendDep,
    auth: Auth,
    settings: SettingsDep,
    name: Annotated[str, Query(min_length=1, max_length=200)],
    type: Annotated[str, Query()],
) -> CreateDatasetResponse:
    """Upload a chat or classification fine-tuning dataset: multipart `data` and optional
    `eval_data` (JSONL)."""
    if type != DATASET_TYPE and type not in cohere_classify.DATASET_FORMATS:
        kinds = ", ".join([DATASET_TYPE, *cohere_classify.DATASET_FORMATS])
        raise ApiError.invalid([("type", f"only {kinds} datasets can be fine-tuned here")])

    def route(part: str, filename: str | None, form: Form) -> Destination | None:
        if part == "data":
            return Destination(f"{name}.jsonl", File.PURPOSE_FINE_TUNE)
        if part == "eval_data":
            # Named after the training file (the SDK sends it first), so listings pair them.
            if "data" not in form.files:
                raise ApiError.invalid([("eval_data", "must come after data in the form")])
            return Destination(f"{form.files['data'].id}.eval.jsonl", File.PURPOSE_FINE_TUNE)
        return None

    async with streamed_form(request, backend, auth, settings, route) as form:
        if "data" not in form.files:
            raise ApiError.invalid([("data", "required: a file part named 'data'")])
        parts = [form.files[p] for p in ("data", "eval_data") if p in form.files]
    if why := cohere_classify.declared_mismatch(type, parts[0], DATASET_TYPE):
        for part in parts:  # a dataset of the wrong type is not kept
            await backend.files.DeleteFile(
                files_pb2.DeleteFileRequest(file_id=part.id), metadata=auth
            )
        raise ApiError.invalid([("type", why)])
    return CreateDatasetResponse(id=EVAL_JOIN.join(part.id for part in parts))


async def _get_files(backend: Backend, auth: Metadata, ids: list[str]) -> list[File]:
    return list(
        await asyncio.gather(
            *(
                backend.files.GetFile(files_pb2.GetFileRequest(file_id=i), metadata=auth)
                for i in ids
            )
        )
    )


@router.get("/datasets/{dataset_id}")
async def get_dataset(dataset_id: str, backend: BackendDep, auth: Auth) -> GetDatasetResponse:
    files = await _get_files(backend, auth, dataset_files(dataset_id))
    return GetDatasetResponse(
        dataset=dataset_object(files[0], files[1] if len(files) > 1 else None)
    )


@router.get("/datasets")
async def list_datasets(
    backend: BackendDep,
    auth: Auth,
    dataset_type: Annotated[str | None, Query(alias="datasetType")] = None,
    before: datetime | None = None,
    after: datetime | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    validation_status: Annotated[ValidationStatus | None, Query(alias="validationStatus")] = None,
) -> ListDatasetsResponse:
    """Datasets, newest first; an evaluation file is shown inside its training dataset.
    Files are read newest first only until `offset + limit` datasets are found (an
    evaluation file is newer than its training file, so it is met first)."""
    end = None if limit is None else offset + limit
    files = every_page(
        backend.files.ListFiles,
        files_pb2.ListFilesRequest(purpose=File.PURPOSE_FINE_TUNE),
        "files",
        auth,
        page_size=MAX_PAGE_SIZE if end is None else min(MAX_PAGE_SIZE, 2 * end + 1),
    )
    evaluations: dict[str, File] = {}
    kept: list[Dataset] = []
    async for record in files:
        named = EVAL_NAME.match(record.filename)
        if named:
            evaluations[named.group(1)] = record
            continue
        d = dataset_object(record, evaluations.pop(record.id, None))
        if (
            (dataset_type is None or d.dataset_type == dataset_type)
            and (validation_status is None or d.validation_status == validation_status)
            and (before is None or d.created_at < before)
            and (after is None or d.created_at > after)
        ):
            kept.append(d)
            if end is not None and len(kept) >= end:
                break
    return ListDatasetsResponse(datasets=kept[offset:end])


@router.delete("/datasets/{dataset_id}")
async def delete_dataset(dataset_id: str, backend: BackendDep, auth: Auth) -> dict[str, Any]:
    # Every part must exist before any is deleted: a wrong id deletes nothing.
    for part in await _get_files(backend, auth, dataset_files(dataset_id)):
        await backend.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=part.id), metadata=auth)
    return {}


# --- finetuned models -------------------------------------------------------------------

STATUS: dict[int, Status] = {
    Job.STATE_VALIDATING_FILES: "STATUS_QUEUED",
    Job.STATE_QUEUED: "STATUS_QUEUED",
    Job.STATE_RUNNING: "STATUS_FINETUNING",
    Job.STATE_PAUSING: "STATUS_FINETUNING",
    Job.STATE_PAUSED: "STATUS_PAUSED",
    Job.STATE_SUCCEEDED: "STATUS_READY",
    Job.STATE_FAILED: "STATUS_FAILED",
    # Cohere has no "cancelled": deleting is how its users stop a fine-tune.
    Job.STATE_CANCELLED: "STATUS_DELETED",
}
TargetModulesEnum = jobs_pb2.Hyperparameters.TargetModules


def _suffix(name: str) -> str:
    """A model-name suffix from a Cohere name (the suffix allows fewer characters)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:64]


def job_proto(model: FinetunedModel, base_model: str) -> Job:
    settings = model.settings
    if settings.base_model.base_type not in (
        "BASE_TYPE_CHAT",
        "BASE_TYPE_GENERATIVE",
        "BASE_TYPE_UNSPECIFIED",
        cohere_classify.BASE_TYPE,
    ):
        raise ApiError.invalid(
            [
                (
                    "settings.base_model.base_type",
                    "only chat, generative and classification fine-tunes are supported",
                )
            ]
        )
    ids = dataset_files(settings.dataset_id)
    given = settings.hyperparameters or FinetuningHyperparameters()
    hp = jobs_pb2.Hyperparameters()
    problems = []
    for ours, (theirs, scale) in COHERE_HYPERPARAMETERS.items():
        value = getattr(given, theirs)
        if value is None:
            continue
        # Checked here, in Cohere's units, by the table the server checks ours with.
        if problem := HYPERPARAMETERS[ours].problem(value, scale):
            problems.append((f"settings.hyperparameters.{theirs}", problem))
        else:
            setattr(hp, ours, value / scale if scale != 1 else value)
    if problems:
        raise ApiError.invalid(problems)
    if given.lora_target_modules:
        hp.target_modules = TargetModulesEnum.Value(given.lora_target_modules.removeprefix("LORA_"))
    job = Job(
        base_model=settings.base_model.name or base_model,
        training_file=ids[0],
        validation_file=ids[1] if len(ids) > 1 else "",
        suffix=_suffix(model.name),
        metadata={NAME_KEY: model.name},
        hyperparameters=hp,
    )
    if settings.base_model.base_type in ("BASE_TYPE_CHAT", "BASE_TYPE_GENERATIVE"):
        job.metadata[BASE_TYPE_KEY] = settings.base_model.base_type
    if settings.base_model.base_type == cohere_classify.BASE_TYPE:
        job.method.type = jobs_pb2.Method.TYPE_CLASSIFICATION
    if settings.wandb:
        job.integrations.add(  # the key is sealed apart by the control plane, never shown
            type="wandb",
            project=settings.wandb.project,
            entity=settings.wandb.entity or "",
            api_key=settings.wandb.api_key or "",
        )
    return job


def _hyperparameters(job: Job) -> FinetuningHyperparameters:
    hp = job.hyperparameters

    def value(name: str) -> Any:
        return getattr(hp, name) if hp.HasField(name) else None

    return FinetuningHyperparameters(
        **{
            theirs: None if (found := value(ours)) is None else found * scale
            for ours, (theirs, scale) in COHERE_HYPERPARAMETERS.items()
        },
        lora_target_modules="LORA_" + TargetModulesEnum.Name(hp.target_modules),
    )


async def _model_exists(backend: Backend, auth: Metadata, model_id: str) -> bool:
    try:
        await backend.models.GetModel(models_pb2.GetModelRequest(model_id=model_id), metadata=auth)
    except grpc.aio.AioRpcError as error:
        if error.code() == Code.NOT_FOUND:
            return False
        raise
    return True


def base_type(job: Job) -> BaseType:
    """The base type shown for a job: classification, else the one it was created with
    (chat for jobs that were not created through Cohere's routes)."""
    if cohere_classify.is_classification(job):
        return cohere_classify.BASE_TYPE
    asked = job.metadata.get(BASE_TYPE_KEY)
    return "BASE_TYPE_GENERATIVE" if asked == "BASE_TYPE_GENERATIVE" else "BASE_TYPE_CHAT"


async def finetuned_model(backend: Backend, auth: Metadata, job: Job) -> FinetunedModel:
    status = STATUS.get(job.state, "STATUS_UNSPECIFIED")
    if job.state == Job.STATE_SUCCEEDED and not await _model_exists(
        backend, auth, job.fine_tuned_model
    ):
        status = "STATUS_DELETED"
    created = moment(job.create_time)
    finished = moment(job.finish_time)
    wandb = next((i for i in job.integrations if i.type == "wandb"), None)
    return FinetunedModel(
        id=job.id,
        name=job.metadata.get(NAME_KEY) or job.suffix or job.id,
        # The API key that created it: Tunewire's callers are keys, not users.
        creator_id=job.creator or None,
        organization_id=job.organization,
        settings=Settings(
            base_model=CohereBaseModel(name=job.base_model, base_type=base_type(job)),
            multi_label=await cohere_classify.multi_label(backend, auth, job),
            dataset_id=EVAL_JOIN.join(filter(None, (job.training_file, job.validation_file))),
            hyperparameters=_hyperparameters(job),
            wandb=WandbConfig(project=wandb.project, entity=wandb.entity or None)
            if wandb
            else None,
        ),
        status=status,
        created_at=created,
        # Jobs from before update_time was kept show their last known change.
        updated_at=moment(job.update_time) or finished or created,
        completed_at=finished if job.state == Job.STATE_SUCCEEDED else None,
    )


@router.post("/finetuning/finetuned-models")
async def create_finetuned_model(
    body: FinetunedModel, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> FinetunedModelResponse:
    if body.settings.base_model.base_type == cohere_classify.BASE_TYPE:
        base = body.settings.base_model.name or cohere_classify.DEFAULT_BASE_MODEL
    else:
        base = body.settings.base_model.name or await default_base_model(
            backend, auth, settings.default_base_model
        )
    job = await backend.jobs.CreateJob(
        jobs_pb2.CreateJobRequest(job=job_proto(body, base)), metadata=auth
    )
    return FinetunedModelResponse(finetuned_model=await finetuned_model(backend, auth, job))


@router.get("/finetuning/finetuned-models")
async def list_finetuned_models(
    backend: BackendDep,
    auth: Auth,
    page_size: PageSize = 0,
    page_token: CursorToken = None,
    order_by: str | None = None,
) -> ListFinetunedModelsResponse:
    """Fine-tunes (jobs), oldest first by default as Cohere lists them; one page of the
    control plane's (a seek by its cursor), and the total it keeps counted."""
    page = await backend.jobs.ListJobs(
        jobs_pb2.ListJobsRequest(
            page_size=page_size or DEFAULT_PAGE_SIZE,
            page_token=page_token or "",
            order_by="create_time" if ascending(order_by) else "create_time desc",
        ),
        metadata=auth,
    )
    return ListFinetunedModelsResponse(
        finetuned_models=await asyncio.gather(
            *(finetuned_model(backend, auth, j) for j in page.jobs)
        ),
        next_page_token=page.next_page_token,
        total_size=page.total_size,
    )


async def _job(backend: Backend, auth: Metadata, model_id: str) -> Job:
    return await backend.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=model_id), metadata=auth)


@router.get("/finetuning/finetuned-models/{id}")
async def get_finetuned_model(id: str, backend: BackendDep, auth: Auth) -> FinetunedModelResponse:
    job = await _job(backend, auth, id)
    return FinetunedModelResponse(finetuned_model=await finetuned_model(backend, auth, job))


class UpdateFinetunedModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    settings: Settings
    status: Status | None = None


# What a status in an update asks of a job: pause it while it trains, or resume it
# while it is paused (a resumed job is queued, then trains, then is ready).
RESUMED = frozenset({"STATUS_READY", "STATUS_FINETUNING", "STATUS_QUEUED"})


def _steering(job: Job, asked: Status | None) -> str | None:
    """The command ("pause", "resume") a status in an update asks for; None when it
    asks for none (unset, or where the job already is or is going)."""
    shown = STATUS.get(job.state, "STATUS_UNSPECIFIED")
    if asked in (None, "STATUS_UNSPECIFIED", shown):
        return None
    if asked == "STATUS_PAUSED":
        return None if job.state == Job.STATE_PAUSING else "pause"
    if asked in RESUMED and job.state == Job.STATE_PAUSED:
        return "resume"
    if asked == "STATUS_DELETED":
        why = "delete the finetuned model instead (DELETE)"
    else:
        why = (
            "only STATUS_PAUSED (to pause a fine-tune while it trains) or STATUS_READY "
            "(to resume a paused one) can be asked for"
        )
    raise ApiError.invalid([("status", f"{why}; it is {shown}, not {asked}")])


@router.patch("/finetuning/finetuned-models/{id}")
async def update_finetuned_model(
    id: str, body: UpdateFinetunedModel, backend: BackendDep, auth: Auth
) -> FinetunedModelResponse:
    """Settings are immutable once training is asked for: an update must repeat them.
    The name lives in the job's metadata, which UpdateJob can change; `status` pauses
    a training fine-tune (STATUS_PAUSED) or resumes a paused one (STATUS_READY)."""
    job = await _job(backend, auth, id)
    wanted = job_proto(FinetunedModel(name=body.name, settings=body.settings), job.base_model)
    changed = []
    if (wanted.training_file, wanted.validation_file) != (job.training_file, job.validation_file):
        changed.append("settings.dataset_id")
    if wanted.base_model != job.base_model:
        changed.append("settings.base_model.name")
    # Unspecified is no change; chat and generative are told apart by what was stored.
    asked_type = body.settings.base_model.base_type
    if asked_type != "BASE_TYPE_UNSPECIFIED" and asked_type != base_type(job):
        changed.append("settings.base_model.base_type")
    if not _same_hyperparameters(wanted, job):
        changed.append("settings.hyperparameters")
    if changed:
        raise ApiError.invalid([(f, "cannot change once the model is created") for f in changed])
    # The status first: it is what the job's state can refuse, and then nothing changed.
    if command := _steering(job, body.status):
        steer = backend.jobs.PauseJob if command == "pause" else backend.jobs.ResumeJob
        request = jobs_pb2.PauseJobRequest if command == "pause" else jobs_pb2.ResumeJobRequest
        job = await steer(request(job_id=job.id), metadata=auth)
    if body.name != job.metadata.get(NAME_KEY):
        renamed = Job(id=job.id, metadata={**job.metadata, NAME_KEY: body.name})
        job = await backend.jobs.UpdateJob(
            jobs_pb2.UpdateJobRequest(
                job=renamed, update_mask=field_mask_pb2.FieldMask(paths=["metadata"])
            ),
            metadata=auth,
        )
    return FinetunedModelResponse(finetuned_model=await finetuned_model(backend, auth, job))


def _same_hyperparameters(wanted: Job, job: Job) -> bool:
    """Every hyperparameter the update names has the job's value (up to rounding:
    Cohere's learning rate comes back from a multiplier)."""
    return all(
        math.isclose(value, getattr(job.hyperparameters, field.name), rel_tol=1e-6)
        for field, value in wanted.hyperparameters.ListFields()
    )


@router.delete("/finetuning/finetuned-models/{id}")
async def delete_finetuned_model(id: str, backend: BackendDep, auth: Auth) -> dict[str, Any]:
    """Delete its model, then the fine-tune (the job, which the control plane cancels
    if it is still going): from then on it is in no list and answers 404."""
    job = await _job(backend, auth, id)
    if job.fine_tuned_model and await _model_exists(backend, auth, job.fine_tuned_model):
        await backend.models.DeleteModel(
            models_pb2.DeleteModelRequest(model_id=job.fine_tuned_model), metadata=auth
        )
    await backend.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job.id), metadata=auth)
    return {}


async def _state_events(backend: Backend, auth: Metadata, job_id: str) -> list[Event]:
    """A job's state events, oldest first: a handful, read from the type index however
    many metrics events the job has."""
    request = jobs_pb2.ListJobEventsRequest(job_id=job_id, types=[Event.TYPE_STATE])
    return await collect(every_page(backend.jobs.ListJobEvents, request, "events", auth))


@router.get("/finetuning/finetuned-models/{finetuned_model_id}/events")
async def list_events(
    finetuned_model_id: str,
    backend: BackendDep,
    auth: Auth,
    page_size: PageSize = 0,
    page_token: PageToken = None,
    order_by: str | None = None,
) -> ListEventsResponse:
    """Status changes, newest first (`order_by=created_at` for oldest first)."""
    changes: list[CohereEvent] = []
    for event in await _state_events(backend, auth, finetuned_model_id):
        if "state" not in event.data:
            continue
        state = Job.State.Value("STATE_" + str(event.data["state"]).upper())
        status = STATUS.get(state, "STATUS_UNSPECIFIED")
        # A change of Cohere status: ours has more states (validating_files, queued).
        if not changes or changes[-1].status != status:
            changes.append(CohereEvent(status=status, created_at=moment(event.create_time)))
    if order_by is None or not ascending(order_by):
        changes.reverse()
    page, token = offset_page(changes, page_size, page_token)
    return ListEventsResponse(events=list(page), next_page_token=token, total_size=len(changes))


@router.get("/finetuning/finetuned-models/{finetuned_model_id}/training-step-metrics")
async def list_training_step_metrics(
    finetuned_model_id: str,
    backend: BackendDep,
    auth: Auth,
    page_size: PageSize = 0,
    page_token: CursorToken = None,
) -> ListTrainingStepMetricsResponse:
    """Metrics per logged step, the most recent step first: one page of the job's
    metrics events, newest first, by the control plane's cursor."""
    page = await backend.jobs.ListJobEvents(
        jobs_pb2.ListJobEventsRequest(
            job_id=finetuned_model_id,
            types=[Event.TYPE_METRICS],
            order_by="sequence desc",
            page_size=page_size or DEFAULT_PAGE_SIZE,
            page_token=page_token or "",
        ),
        metadata=auth,
    )
    steps = []
    for event in page.events:
        data = struct_dict(event.data)
        steps.append(
            TrainingStepMetrics(
                created_at=moment(event.create_time),
                step_number=data.pop("step", 0),
                metrics={
                    k: float(v)
                    for k, v in data.items()
                    if isinstance(v, int | float) and k not in ("total_steps", "epoch")
                },
            )
        )
    return ListTrainingStepMetricsResponse(step_metrics=steps, next_page_token=page.next_page_token)


# Classification fine-tunes are called through Cohere's classify (see cohere_classify).
router.add_api_route("/classify", cohere_classify.classify, methods=["POST"])
# Chat fine-tunes through Cohere's chat, v1 here and v2 at its own prefix (see
# cohere_chat); the SDKs build both from one base_url, `http://host:port/cohere`.
router.add_api_route(
    "/chat",
    cohere_chat.chat_v1,
    methods=["POST"],
    responses={200: {"content": cohere_chat.STREAMED}},
)
router_v2 = APIRouter(prefix="/cohere/v2", tags=["cohere"], route_class=route_class(cohere_error))
router_v2.add_api_route(
    "/chat",
    cohere_chat.chat_v2,
    methods=["POST"],
    responses={200: {"content": cohere_chat.STREAMED}},
)
