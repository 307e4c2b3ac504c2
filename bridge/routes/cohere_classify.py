"""Cohere's classification fine-tunes on the bridge: the dataset types
(`single-label-classification-finetune-input`, `multi-label-classification-finetune-input`),
their checks across a dataset's two parts, finetuned models of BASE_TYPE_CLASSIFICATION,
and `POST /cohere/v1/classify` (`model` = the finetuned model's id) in Cohere's shapes.

A classification finetuned model is a job of method TYPE_CLASSIFICATION on the packaged
all-MiniLM-L6-v2 unless the request names another encoder; `settings.multi_label` is read
off its training file. `cohere.py` mounts the route and calls the helpers; this module
imports nothing of it.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from fastapi import Body
from pydantic import BaseModel, ConfigDict, Field

from bridge.backend import Backend, Metadata
from bridge.deps import Auth, BackendDep
from bridge.errors import ApiError, Code
from trainer import labels
from trainer.models import MINILM
from tunewire.v1 import files_pb2, jobs_pb2, models_pb2

File = files_pb2.File
Job = jobs_pb2.Job

BASE_TYPE = "BASE_TYPE_CLASSIFICATION"
SINGLE_LABEL_TYPE = "single-label-classification-finetune-input"
MULTI_LABEL_TYPE = "multi-label-classification-finetune-input"
# Cohere's dataset types for classification data -> the format the file must be in; the
# short names are the ones Cohere's own classify fine-tuning guide passes.
DATASET_FORMATS = {
    SINGLE_LABEL_TYPE: "single_label_classification",
    "single-label-finetune-input": "single_label_classification",
    MULTI_LABEL_TYPE: "multi_label_classification",
    "multi-label-finetune-input": "multi_label_classification",
}
DEFAULT_BASE_MODEL = MINILM
MODEL_SUFFIX = "-ft"
"""Cohere's guide calls a fine-tune as `model=ft.id + "-ft"`; both spellings work."""


def dataset_type(data: File, chat_type: str) -> str:
    """A dataset's Cohere type, from its training file's format."""
    fmt = data.validation.format
    if fmt == "multi_label_classification":
        return MULTI_LABEL_TYPE
    if fmt == "single_label_classification":
        return SINGLE_LABEL_TYPE
    return chat_type


def declared_mismatch(declared: str, data: File, chat_type: str) -> str | None:
    """Why an uploaded training file is not the data its declared type says, or None; a
    file that failed validation says why in its dataset instead."""
    if data.state != File.STATE_PROCESSED:
        return None
    fmt = data.validation.format
    wanted = DATASET_FORMATS.get(declared)
    if wanted is None:  # a chat dataset
        if labels.is_labelled(fmt):
            return (
                f"the data is classification data ({fmt.replace('_', '-')}); create it as "
                f"{dataset_type(data, chat_type)}"
            )
        return None
    if fmt == wanted:
        return None
    if labels.is_labelled(fmt):
        shape = "a list of labels" if fmt == "multi_label_classification" else "one label"
        first = min((x.first_line for x in data.validation.labels), default=1)
        return (
            f"{declared} data has {'one label' if 'single' in wanted else 'a list of labels'} "
            f"per example, but this data has {shape} per example (line {first}); create it "
            f"as {dataset_type(data, chat_type)}"
        )
    return f'{declared} data is {{"text", "label"}} rows, but this data is {fmt or "not"}'


def dataset_problems(data: File, evaluation: File | None) -> list[str]:
    """What makes a valid classification dataset unusable for a classifier: a training
    part with fewer than 2 labels, an evaluation part of the other kind or with a label the
    training part lacks. Each names its part and line."""
    fmt = data.validation.format
    if data.state != File.STATE_PROCESSED or not labels.is_labelled(fmt):
        return []
    stats = [
        labels.LabelStat(x.label, x.example_count, x.first_line) for x in data.validation.labels
    ]
    problems = []
    if why := labels.training_problem(stats):
        problems.append(f"{data.filename}: {why}")
    if evaluation is None or evaluation.state != File.STATE_PROCESSED:
        return problems
    if why := labels.kind_mismatch(fmt, evaluation.validation.format):
        return [*problems, f"eval_data {why}"]
    unknown = labels.unknown_labels(
        [s.label for s in stats],
        [
            labels.LabelStat(x.label, x.example_count, x.first_line)
            for x in evaluation.validation.labels
        ],
    )
    return problems + [f"eval_data {problem}" for problem in unknown]


def is_classification(job: Job) -> bool:
    return job.method.type == jobs_pb2.Method.TYPE_CLASSIFICATION


async def multi_label(backend: Backend, auth: Metadata, job: Job) -> bool | None:
    """Cohere's read-only `settings.multi_label`: set for classification models only."""
    if not is_classification(job):
        return None
    data = await backend.files.GetFile(
        files_pb2.GetFileRequest(file_id=job.training_file), metadata=auth
    )
    return data.validation.format == "multi_label_classification"


# --- classify ---------------------------------------------------------------------------


class ClassifyExample(BaseModel):
    text: str | None = None
    label: str | None = None


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: list[str] = Field(min_length=1, max_length=96)
    examples: list[ClassifyExample] | None = None
    model: str | None = None
    preset: str | None = None
    truncate: Literal["NONE", "START", "END"] | None = None


class LabelConfidence(BaseModel):
    confidence: float


class Classification(BaseModel):
    id: str
    input: str
    prediction: str | None
    predictions: list[str]
    confidence: float | None
    confidences: list[float]
    labels: dict[str, LabelConfidence]
    classification_type: Literal["single-label", "multi-label"]


class ApiVersion(BaseModel):
    version: str = "1"


class ApiMeta(BaseModel):
    api_version: ApiVersion = ApiVersion()


class ClassifyResponse(BaseModel):
    id: str
    classifications: list[Classification]
    meta: ApiMeta = ApiMeta()


def _id() -> str:
    """Cohere's ids are UUIDs; a random one, formatted as one."""
    raw = secrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


async def _model_id(backend: Backend, auth: Metadata, model: str) -> str:
    """The Tunewire model a Cohere `model` names: a finetuned model's id (the job's), with
    or without Cohere's `-ft`, or a Tunewire model id as it is."""
    if not model.startswith("ftjob-"):
        return model
    job = await backend.jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=model.removesuffix(MODEL_SUFFIX)), metadata=auth
    )
    if not is_classification(job):
        raise ApiError.invalid([("model", f"{model!r} is not a classification fine-tune")])
    if not job.fine_tuned_model:
        raise ApiError.of(
            Code.FAILED_PRECONDITION,
            f"finetuned model {model!r} is not ready yet (its training has not succeeded)",
        )
    return job.fine_tuned_model


async def classify(
    body: Annotated[ClassifyRequest, Body()], backend: BackendDep, auth: Auth
) -> ClassifyResponse:
    """Classify `inputs` with a classification fine-tune (`model`); Cohere's few-shot
    `examples` (a classifier built from examples at call time) are not offered."""
    if body.examples:
        raise ApiError.invalid(
            [("examples", "not supported: classify with a classification fine-tune (`model`)")]
        )
    if not body.model:
        raise ApiError.invalid([("model", "required: a classification fine-tune's id")])
    model_id = await _model_id(backend, auth, body.model)
    reply = await backend.models.Classify(
        models_pb2.ClassifyRequest(model_id=model_id, inputs=body.inputs), metadata=auth
    )
    return ClassifyResponse(
        id=_id(), classifications=[_classification(c) for c in reply.classifications]
    )


def _classification(found: models_pb2.Classification) -> Classification:
    every = {x.label: x.confidence for x in found.labels}
    single = not found.multi_label
    top = found.predictions[0] if single and found.predictions else None
    return Classification(
        id=_id(),
        input=found.input,
        prediction=top,
        predictions=list(found.predictions),
        confidence=every[top] if top is not None else None,
        confidences=[every[label] for label in found.predictions],
        labels={label: LabelConfidence(confidence=p) for label, p in every.items()},
        classification_type="single-label" if single else "multi-label",
    )
