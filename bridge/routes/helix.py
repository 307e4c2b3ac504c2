"""Helix's session API at `/api/v1`: a text fine-tuning session from raw documents
(the multipart form of Helix's docs), its state and progress under
`interactions`, and inference sessions that chat with a model.

A fine-tuning session is a Tunewire job: its documents are joined into one
`.txt` upload, which the trainer reads as raw text for continued training. An
inference session is answered at once and not kept.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError

from bridge.backend import Backend, Metadata, default_base_model, moment
from bridge.deps import Auth, BackendDep, SettingsDep
from bridge.errors import ApiError
from bridge.routing import route_class
from bridge.settings import BridgeSettings
from bridge.uploads import BINARY, Destination, Form, form_openapi, streamed_form
from server.states import FINAL_JOB_STATES
from tunewire.v1 import files_pb2, jobs_pb2, models_pb2

File = files_pb2.File
Job = jobs_pb2.Job

DOCUMENTS = "documents.txt"
# Documents are joined by a blank line, so one's last line never runs into the next.
SEPARATOR = b"\n\n"
NAME_KEY, DOCUMENTS_KEY = "name", "documents"
MAX_METADATA_VALUE = 512


def problem(error: ApiError) -> dict[str, Any]:
    """RFC 7807 problem details, as Helix answers errors."""
    try:
        title = HTTPStatus(error.http_status).phrase
    except ValueError:
        title = "Client Closed Request" if error.http_status == 499 else "Error"
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": error.http_status,
        "detail": error.message,
    }
    if error.violations:
        body["invalid_params"] = [{"name": f, "reason": d} for f, d in error.violations]
    return body


router = APIRouter(
    prefix="/api/v1",
    tags=["helix"],
    route_class=route_class(problem, media_type="application/problem+json"),
)

# --- shapes -----------------------------------------------------------------------------

State = Literal["waiting", "editing", "complete", "error"]


class Interaction(BaseModel):
    id: str
    created: datetime
    updated: datetime
    scheduled: datetime | None = None
    completed: datetime | None = None
    creator: Literal["user", "system"]
    mode: Literal["inference", "finetune"]
    message: str = ""
    display_message: str = ""
    progress: int = 0
    files: list[str] = []
    finished: bool
    metadata: dict[str, str] = {}
    state: State
    status: str = ""
    error: str = ""
    lora_dir: str = ""


class SessionConfig(BaseModel):
    stream: bool = False
    text_finetune_enabled: bool = True
    rag_enabled: bool = False
    system_prompt: str = ""


class Session(BaseModel):
    id: str
    name: str
    created: datetime
    updated: datetime
    parent_session: str = ""
    parent_app: str = ""
    config: SessionConfig = SessionConfig()
    mode: Literal["inference", "finetune"]
    type: Literal["text"] = "text"
    model_name: str
    lora_dir: str = ""
    interactions: list[Interaction]
    owner: str
    owner_type: Literal["user"] = "user"


class InferenceIn(BaseModel):
    input: str
    mode: Literal["inference"]
    type: Literal["text"]
    model_name: str | None = None
    lora_dir: str | None = None
    """A fine-tune session's `lora_dir`: the fine-tuned model to chat with."""


# --- fine-tuning sessions ---------------------------------------------------------------


def _state(job: Job) -> State:
    if job.state == Job.STATE_SUCCEEDED:
        return "complete"
    return "error" if job.state in (Job.STATE_FAILED, Job.STATE_CANCELLED) else "waiting"


def _status(job: Job) -> str:
    state = Job.State.Name(job.state).removeprefix("STATE_").lower()
    steps = job.progress
    if job.state == Job.STATE_RUNNING and steps.total_steps:
        return f"fine-tuning: step {steps.step}/{steps.total_steps}"
    return {"succeeded": "fine-tuning complete"}.get(state, state.replace("_", " "))


def _progress(job: Job) -> int:
    if job.state == Job.STATE_SUCCEEDED:
        return 100
    steps = job.progress
    return int(100 * steps.step / steps.total_steps) if steps.total_steps else 0


def finetune_session(job: Job) -> Session:
    created = moment(job.create_time) or datetime.now(UTC)
    finished = moment(job.finish_time)
    documents = job.metadata.get(DOCUMENTS_KEY, "")
    user = Interaction(
        id=f"{job.id}-user",
        created=created,
        updated=created,
        completed=created,
        creator="user",
        mode="finetune",
        files=documents.split("\n") if documents else [job.training_file],
        finished=True,
        state="complete",
    )
    system = Interaction(
        id=f"{job.id}-system",
        created=created,
        updated=finished or created,
        scheduled=created,
        completed=finished,
        creator="system",
        mode="finetune",
        progress=_progress(job),
        finished=job.state in FINAL_JOB_STATES,
        state=_state(job),
        status=_status(job),
        error=job.error.message or ("cancelled" if job.state == Job.STATE_CANCELLED else ""),
        lora_dir=job.fine_tuned_model,
        metadata={"job_id": job.id},
    )
    return Session(
        id=job.id,
        name=job.metadata.get(NAME_KEY) or job.id,
        created=created,
        updated=finished or created,
        mode="finetune",
        model_name=job.base_model,
        lora_dir=job.fine_tuned_model,
        interactions=[user, system],
        owner=job.organization,
    )


def _listed(names: list[str]) -> str:
    """As many document names as fit in a metadata value, one a line."""
    kept = ""
    for name in names:
        line = f"{kept}\n{name}" if kept else name
        if len(line) > MAX_METADATA_VALUE:
            break
        kept = line
    return kept


def _route(part: str, filename: str | None, form: Form) -> Destination | None:
    if part != "files":
        return None
    return Destination(DOCUMENTS, File.PURPOSE_FINE_TUNE, SEPARATOR)


async def _learn(
    request: Request, backend: Backend, auth: Metadata, settings: BridgeSettings
) -> Session:
    async with streamed_form(request, backend, auth, settings, _route) as form:
        problems = []
        if form.fields.get("mode") != "finetune":
            problems.append(("mode", "must be finetune"))
        if form.fields.get("type") != "text":
            problems.append(("type", "must be text (text fine-tuning)"))
        if "files" not in form.files:
            problems.append(("files", "at least one text file is required"))
        if problems:
            raise ApiError.invalid(problems)
        documents = form.files["files"]
        if documents.state == File.STATE_ERROR:
            found = "; ".join(p.message for p in documents.validation.problems)
            raise ApiError.invalid([("files", f"the documents are not usable text: {found}")])
        names = [n for n in form.filenames["files"] if n] or [DOCUMENTS]
        job = Job(
            base_model=form.fields.get("model_name")
            or await default_base_model(backend, auth, settings.default_base_model),
            training_file=documents.id,
            metadata={
                NAME_KEY: names[0][:MAX_METADATA_VALUE],
                DOCUMENTS_KEY: _listed(names),
            },
        )
        created = await backend.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job), metadata=auth)
        return finetune_session(created)


FINETUNE_FORM = form_openapi(
    {
        "files": {"type": "array", "items": BINARY},
        "mode": {"type": "string", "enum": ["finetune"]},
        "type": {"type": "string", "enum": ["text"]},
        "model_name": {"type": "string", "description": "Base model (default: the server's)"},
    },
    ["files", "mode", "type"],
)


@router.post("/sessions/learn", openapi_extra=FINETUNE_FORM)
async def learn(
    request: Request, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> Session:
    """Start a text fine-tuning session from uploaded documents."""
    return await _learn(request, backend, auth, settings)


@router.get("/sessions/{session_id}")
async def get_session(session_id: str, backend: BackendDep, auth: Auth) -> Session:
    """A fine-tuning session: its state and progress are under `interactions`."""
    job = await backend.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=session_id), metadata=auth)
    return finetune_session(job)


# --- inference sessions -----------------------------------------------------------------


async def _newest_model(backend: Backend, auth: Metadata) -> str:
    """The newest fine-tuned model: one row of ListModels (which lists no checkpoint
    models), however many models there are."""
    listed = await backend.models.ListModels(
        models_pb2.ListModelsRequest(page_size=1), metadata=auth
    )
    if listed.models:
        return listed.models[0].id
    raise ApiError.invalid([("model_name", "no fine-tuned model yet: name a model")])


async def _chat(body: InferenceIn, backend: Backend, auth: Metadata) -> Session:
    model = body.lora_dir or body.model_name or await _newest_model(backend, auth)
    text = ""
    async for reply in backend.models.Generate(
        models_pb2.GenerateRequest(
            model_id=model, messages=[models_pb2.ChatMessage(role="user", content=body.input)]
        ),
        metadata=auth,
    ):
        text += reply.text
    now = datetime.now(UTC)
    session_id = f"ses-{secrets.token_hex(12)}"

    def turn(creator: Literal["user", "system"], message: str) -> Interaction:
        return Interaction(
            id=f"{session_id}-{creator}",
            created=now,
            updated=now,
            completed=now,
            creator=creator,
            mode="inference",
            message=message,
            display_message=message,
            progress=100,
            finished=True,
            state="complete",
        )

    return Session(
        id=session_id,
        name=body.input[:64],
        created=now,
        updated=now,
        mode="inference",
        model_name=model,
        lora_dir=body.lora_dir or "",
        interactions=[turn("user", body.input), turn("system", text)],
        owner="",
    )


async def _inference_body(request: Request, settings: BridgeSettings) -> InferenceIn:
    if request.headers.get("content-type", "").startswith("application/json"):
        values: Any = await request.json()
    else:
        # A urlencoded form (the route class limits its body); Starlette refuses it
        # with an HTTPException, which the route class answers as a problem too.
        form = await request.form(
            max_fields=settings.max_form_parts, max_part_size=settings.max_form_field_bytes
        )
        values = dict(form)
    try:
        return InferenceIn.model_validate(values)
    except ValidationError as error:
        raise ApiError.invalid(
            [(".".join(map(str, e["loc"])) or "body", e["msg"]) for e in error.errors()]
        ) from None


@router.post(
    "/sessions",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": InferenceIn.model_json_schema()},
                "application/json": {"schema": InferenceIn.model_json_schema()},
                **FINETUNE_FORM["requestBody"]["content"],
            },
        }
    },
)
async def create_session(
    request: Request, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> Session:
    """`mode=inference`: chat with a model (form or JSON); a multipart form with
    `mode=finetune` starts a fine-tuning session, as `/sessions/learn` does."""
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        # With or without a boundary: without one, streamed_form says so.
        return await _learn(request, backend, auth, settings)
    try:
        body = await _inference_body(request, settings)
    except ValueError as error:
        raise ApiError.invalid([("body", f"is not a form or JSON: {error}")]) from None
    return await _chat(body, backend, auth)
