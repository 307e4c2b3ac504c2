"""Helix's session API at `/api/v1`: text fine-tuning sessions from raw documents
(the multipart form of Helix's docs) and inference sessions that chat with a model;
each is listed, read with its interactions, continued and deleted as Helix does.

A session is a conversation the control plane stores (ConversationService), so the
bridge keeps no state: its interactions are the conversation's messages, told apart by
their metadata `kind`. A fine-tuning session's conversation belongs to its job, and the
interaction that reports the fine-tune shows the job as it is when read.

The documents of a fine-tuning session are joined into one `.txt` upload. When a
question-answer generator is configured (TUNEWIRE_QA_GENERATOR_*, bridge/qa.py) they are
turned into question-answer pairs first, as Helix does: the pairs are the session's
interactions and the job trains on them as chat examples. Without one, or when it yields
too few pairs, the job trains on the raw text (continued training), and the session says
so.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal, TypeVar

import grpc
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ValidationError

from bridge import qa
from bridge.backend import Backend, Metadata, collect, default_base_model, every_page, moment
from bridge.deps import Auth, BackendDep, SettingsDep
from bridge.errors import ApiError, Code
from bridge.routing import route_class
from bridge.settings import BridgeSettings
from bridge.uploads import BINARY, Destination, Form, form_openapi, streamed_form
from server.job_spec import MIN_EXAMPLES
from server.states import FINAL_JOB_STATES
from server.validation import describe
from tunewire.v1 import conversations_pb2, files_pb2, jobs_pb2, models_pb2

File = files_pb2.File
Job = jobs_pb2.Job
Conversation = conversations_pb2.Conversation
Message = conversations_pb2.ConversationMessage
M = TypeVar("M", bound=BaseModel)

DOCUMENTS = "documents.txt"
QA_PAIRS = "qa-pairs.jsonl"
# Documents are joined by a blank line, so one's last line never runs into the next.
SEPARATOR = b"\n\n"
NAME_KEY, DOCUMENTS_KEY = "name", "documents"  # the job's metadata
MAX_METADATA_VALUE = 512  # a job's or conversation's metadata value
MAX_MESSAGE_VALUE = 4096  # a message's metadata value (server/conversations.py)
MAX_TITLE = 256
# A session is created in one call of at most 1000 messages: the documents, two per
# pair, and the fine-tune's own.
MAX_PAIRS = 400
HISTORY = 20  # earlier chat messages sent with a follow-up
JOB_LOOKUPS = 16  # GetJob calls at once while listing

# Metadata of a session's conversation.
DOCUMENTS_FILE, MODEL_NAME, LORA_DIR, SUMMARY = (
    "documents_file",
    "model_name",
    "lora_dir",
    "summary",
)
# Metadata of its messages: what each one is, and what it carries.
KIND = "kind"
DOCUMENTS_KIND, PAIR_KIND, FINETUNE_KIND, CHAT_KIND = "documents", "qa_pair", "finetune", "chat"
FILES, DOCUMENT, CHUNK = "files", "document", "chunk"
DATA_PREP, GENERATOR, CHUNKS = "data_prep", "generator", "chunks"
TOTAL_CHUNKS, LIMITED, LIMIT = "total_chunks", "limited", "limit"
QA_DATA, RAW_TEXT = "qa_pairs", "raw_text"
PROMPT_NAME = "tunewire-qa"  # Helix's data_prep_chunks name the prompt used
# Internal to the fine-tune message: shown through data_prep_*, not as metadata.
HIDDEN = frozenset({KIND, CHUNKS, TOTAL_CHUNKS, LIMITED, LIMIT})

# Helix's lora_dir of a fine-tuning session; clients send it back to chat with it.
LORA_PATH = re.compile(r"^/?sessions/(?P<session>[^/]+)/lora(?:/[^/]*)?/?$")


# Helix's names for our resources: a fine-tuning job, and a stored conversation, is a
# session.
ERROR_NOUNS = {"job": "session", "conversation": "session"}


def problem(error: ApiError) -> dict[str, Any]:
    """RFC 7807 problem details, as Helix answers errors, naming resources as Helix does."""
    try:
        title = HTTPStatus(error.http_status).phrase
    except ValueError:
        title = "Client Closed Request" if error.http_status == 499 else "Error"
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": error.http_status,
        "detail": error.message_in(ERROR_NOUNS),
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
Mode = Literal["inference", "finetune"]


class DataPrepChunk(BaseModel):
    """What the generator made of one chunk of a document."""

    index: int
    prompt_name: str = PROMPT_NAME
    question_count: int
    error: str = ""


class Interaction(BaseModel):
    id: str
    created: datetime
    updated: datetime
    scheduled: datetime | None = None
    completed: datetime | None = None
    creator: Literal["user", "system"]
    mode: Mode
    runner: str = ""
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
    data_prep_chunks: dict[str, list[DataPrepChunk]] = {}
    data_prep_stage: str = ""
    data_prep_limited: bool = False
    data_prep_limit: int = 0
    data_prep_total_chunks: int = 0
    rag_results: list[dict[str, Any]] = []


class RagSettings(BaseModel):
    """Helix's defaults; this server does no retrieval (`rag_enabled` is false)."""

    distance_function: str = "cosine"
    threshold: float = 0.2
    results_count: int = 3
    chunk_size: int = 512
    chunk_overflow: int = 32


class SessionOrigin(BaseModel):
    type: str = "user_created"
    cloned_session_id: str = ""
    cloned_interaction_id: str = ""


class SessionConfig(BaseModel):
    """Every key of Helix's session `config`: values this server has (mode, files, its
    features) and Helix's empty defaults for what it has no counterpart of."""

    active_tools: list[str] = []
    app_query_params: dict[str, str] = {}
    assistant_id: str = ""
    avatar: str = ""
    document_group_id: str = ""
    document_ids: dict[str, str] = {}
    eval_automatic_reason: str = ""
    eval_automatic_score: str = ""
    eval_manual_reason: str = ""
    eval_manual_score: str = ""
    eval_original_user_prompts: list[str] = []
    eval_run_id: str = ""
    eval_user_reason: str = ""
    eval_user_score: str = ""
    finetune_data_entity_id: str = ""
    helix_version: str = ""
    manually_review_questions: bool = False
    origin: SessionOrigin = SessionOrigin()
    original_mode: Mode | Literal[""] = ""
    priority: bool = False
    rag_enabled: bool = False
    rag_settings: RagSettings = RagSettings()
    rag_source_data_entity_id: str = ""
    shared: bool = False
    stream: bool = False
    system_prompt: str = ""
    text_finetune_enabled: bool = True
    uploaded_data_entity_id: str = ""


class Session(BaseModel):
    id: str
    name: str
    created: datetime
    updated: datetime
    parent_session: str = ""
    parent_app: str = ""
    config: SessionConfig = SessionConfig()
    mode: Mode
    type: Literal["text"] = "text"
    model_name: str
    lora_dir: str = ""
    interactions: list[Interaction]
    owner: str
    owner_type: Literal["user"] = "user"


class SessionSummary(BaseModel):
    """A session in Helix's list: its latest interaction's times and id."""

    created: datetime
    updated: datetime
    scheduled: datetime | None = None
    completed: datetime | None = None
    session_id: str
    name: str
    interaction_id: str
    model_name: str
    mode: Mode
    type: Literal["text"] = "text"
    owner: str
    lora_dir: str = ""
    summary: str = ""
    priority: bool = False


class SessionCounter(BaseModel):
    count: int


class SessionsList(BaseModel):
    counter: SessionCounter
    sessions: list[SessionSummary]


class InferenceIn(BaseModel):
    input: str
    mode: Literal["inference"]
    type: Literal["text"]
    model_name: str | None = None
    lora_dir: str | None = None
    """A fine-tuning session's `lora_dir` (or a fine-tuned model's name): chat with it."""


class FollowUpIn(BaseModel):
    """A follow-up message of a session (Helix's `PUT /sessions/{id}`)."""

    input: str
    mode: Literal["inference"] | None = None
    type: Literal["text"] | None = None


# --- reading a session --------------------------------------------------------------------


def lora_dir_of(session_id: str) -> str:
    """Helix's path-like `lora_dir` of a fine-tuning session's adapter."""
    return f"/sessions/{session_id}/lora"


def _when(ts: Any) -> datetime:
    return moment(ts) or datetime.now(UTC)


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


def _number(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _chunks_shown(report: str) -> dict[str, list[DataPrepChunk]]:
    """Helix's data_prep_chunks from the fine-tune message's report of them."""
    shown: dict[str, list[DataPrepChunk]] = {}
    for document, index, count, error in json.loads(report) if report else []:
        shown.setdefault(document, []).append(
            DataPrepChunk(index=index, question_count=count, error=error)
        )
    return shown


def _finetune(message: Message, session_id: str, job: Job | None) -> Interaction:
    """The interaction that reports the fine-tune: the stored note on what it trains on,
    and the job's state, progress and adapter as they are now."""
    created = _when(message.create_time)
    meta = dict(message.metadata)
    shown = {k: v for k, v in meta.items() if k not in HIDDEN}
    if job is None:
        state, finished, status, error = "error", True, "deleted", "its fine-tuning job is gone"
        completed, progress, lora = None, 0, ""
    else:
        state, finished, status = _state(job), job.state in FINAL_JOB_STATES, _status(job)
        error = job.error.message or ("cancelled" if job.state == Job.STATE_CANCELLED else "")
        completed, progress = moment(job.finish_time), _progress(job)
        lora = lora_dir_of(session_id) if job.state == Job.STATE_SUCCEEDED else ""
        shown["job_id"] = job.id
        shown["training_file"] = job.training_file
        if job.fine_tuned_model:
            # The model's name, for clients that chat by name (OpenAI's API, `model`).
            shown["fine_tuned_model"] = job.fine_tuned_model
    return Interaction(
        id=message.id,
        created=created,
        updated=completed or created,
        scheduled=created,
        completed=completed,
        creator="system",
        mode="finetune",
        message=message.content,
        display_message=message.content,
        progress=progress,
        finished=finished,
        metadata=shown,
        state=state,
        status=status,
        error=error,
        lora_dir=lora,
        data_prep_chunks=_chunks_shown(meta.get(CHUNKS, "")),
        data_prep_stage="complete" if state == "complete" else "finetune",
        data_prep_limited=meta.get(LIMITED) == "true",
        data_prep_limit=_number(meta.get(LIMIT, "")),
        data_prep_total_chunks=_number(meta.get(TOTAL_CHUNKS, "")),
    )


def _interaction(message: Message, session_id: str, job: Job | None) -> Interaction:
    kind = message.metadata.get(KIND, CHAT_KIND)
    if kind == FINETUNE_KIND:
        return _finetune(message, session_id, job)
    created = _when(message.create_time)
    files = message.metadata.get(FILES, "")
    return Interaction(
        id=message.id,
        created=created,
        updated=created,
        completed=created,
        creator="user" if message.role == "user" else "system",
        mode="inference" if kind == CHAT_KIND else "finetune",
        message=message.content,
        display_message=message.content,
        progress=100,
        files=files.split("\n") if files else [],
        finished=True,
        metadata={k: v for k, v in message.metadata.items() if k not in (KIND, FILES)},
        state="complete",
    )


def _model_name(conversation: Conversation) -> str:
    return conversation.metadata.get(MODEL_NAME) or conversation.model


def _lora_dir(conversation: Conversation, job: Job | None) -> str:
    if conversation.job_id:
        succeeded = job is not None and job.state == Job.STATE_SUCCEEDED
        return lora_dir_of(conversation.id) if succeeded else ""
    return conversation.metadata.get(LORA_DIR, "")


def render(conversation: Conversation, messages: Sequence[Message], job: Job | None) -> Session:
    mode: Mode = "finetune" if conversation.job_id else "inference"
    updated = _when(conversation.update_time)
    if job is not None and (finished := moment(job.finish_time)):
        updated = max(updated, finished)
    return Session(
        id=conversation.id,
        name=conversation.title or conversation.id,
        created=_when(conversation.create_time),
        updated=updated,
        config=SessionConfig(
            original_mode=mode,
            uploaded_data_entity_id=conversation.metadata.get(DOCUMENTS_FILE, ""),
            finetune_data_entity_id=job.training_file if job is not None else "",
        ),
        mode=mode,
        model_name=_model_name(conversation),
        lora_dir=_lora_dir(conversation, job),
        interactions=[_interaction(m, conversation.id, job) for m in messages],
        owner=conversation.organization,
    )


async def _job(backend: Backend, auth: Metadata, job_id: str) -> Job | None:
    """A session's job; None once it is gone (deleted)."""
    if not job_id:
        return None
    try:
        return await backend.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def _read(
    backend: Backend, auth: Metadata, session_id: str
) -> tuple[Conversation, list[Message], Job | None]:
    """A session's conversation, all its messages (at most 10,000) and its job."""
    conversation = await backend.conversations.GetConversation(
        conversations_pb2.GetConversationRequest(conversation_id=session_id), metadata=auth
    )
    listed = conversations_pb2.ListConversationMessagesRequest(conversation_id=conversation.id)
    messages = await collect(
        every_page(backend.conversations.ListConversationMessages, listed, "messages", auth)
    )
    return conversation, messages, await _job(backend, auth, conversation.job_id)


@router.get("/sessions/{session_id}")
async def get_session(session_id: str, backend: BackendDep, auth: Auth) -> Session:
    """A session with its interactions: a fine-tune's documents, question-answer pairs and
    progress, and the chat that follows."""
    return render(*await _read(backend, auth, session_id))


@router.get("/sessions")
async def list_sessions(
    backend: BackendDep,
    auth: Auth,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=0, le=1000)] = 0,
) -> SessionsList:
    """Sessions, newest first, as Helix pages them: `offset` and `limit` (0, as Helix's
    default, is the most one page holds: 1000); `counter.count` counts them all."""
    listed = await backend.conversations.ListConversations(
        conversations_pb2.ListConversationsRequest(page_size=limit or 1000, skip=offset),
        metadata=auth,
    )
    gate = asyncio.Semaphore(JOB_LOOKUPS)

    async def job_of(conversation: Conversation) -> Job | None:
        async with gate:
            return await _job(backend, auth, conversation.job_id)

    jobs = await asyncio.gather(*(job_of(c) for c in listed.conversations))
    return SessionsList(
        counter=SessionCounter(count=listed.total_size),
        sessions=[_summary(c, job) for c, job in zip(listed.conversations, jobs, strict=True)],
    )


def _summary(conversation: Conversation, job: Job | None) -> SessionSummary:
    created, updated = _when(conversation.create_time), _when(conversation.update_time)
    completed = moment(job.finish_time) if job is not None else updated
    if conversation.job_id and job is None:
        completed = None
    return SessionSummary(
        created=created,
        updated=max(updated, completed) if completed else updated,
        scheduled=created,
        completed=completed,
        session_id=conversation.id,
        name=conversation.title or conversation.id,
        interaction_id=conversation.last_message_id,
        model_name=_model_name(conversation),
        mode="finetune" if conversation.job_id else "inference",
        owner=conversation.organization,
        lora_dir=_lora_dir(conversation, job),
        summary=conversation.metadata.get(SUMMARY, ""),
    )


@router.delete("/sessions/{session_id}")
async def delete_session(session_id: str, backend: BackendDep, auth: Auth) -> Session:
    """Delete a session, answering with it as it was; a fine-tune still under way is
    cancelled first (its job stays, as do a finished one's model and files)."""
    conversation, messages, job = await _read(backend, auth, session_id)
    if job is not None and job.state not in FINAL_JOB_STATES:
        try:
            job = await backend.jobs.CancelJob(
                jobs_pb2.CancelJobRequest(job_id=job.id), metadata=auth
            )
        except grpc.aio.AioRpcError as error:
            # It finished in the meantime: nothing left to cancel.
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            job = await _job(backend, auth, job.id)
    await backend.conversations.DeleteConversation(
        conversations_pb2.DeleteConversationRequest(conversation_id=conversation.id),
        metadata=auth,
    )
    return render(conversation, messages, job)


# --- fine-tuning sessions ---------------------------------------------------------------


def _listed(names: Sequence[str], limit: int) -> str:
    """As many names as fit in `limit` characters, one a line."""
    kept = ""
    for name in names:
        line = f"{kept}\n{name}" if kept else name
        if len(line) > limit:
            break
        kept = line
    return kept


def _route(part: str, filename: str | None, form: Form) -> Destination | None:
    if part != "files":
        return None
    return Destination(DOCUMENTS, File.PURPOSE_FINE_TUNE, SEPARATOR)


@dataclass
class Preparation:
    """What a fine-tuning session trains on, and what its fine-tune interaction says."""

    training: File
    note: str
    metadata: dict[str, str]
    pairs: list[qa.Pair] = field(default_factory=list)


RAW_TEXT_NOTE = "this session fine-tunes on the documents' raw text (continued training)"


def _chunk_report(prepared: qa.Prepared) -> str:
    """Each chunk asked about: [document, index, pairs, error], as JSON that fits a
    message's metadata value (errors, then chunks, dropped from the end until it does)."""
    counts = Counter((pair.document, pair.chunk) for pair in prepared.pairs)
    rows = [
        [
            c.document,
            c.index,
            counts[(c.document, c.index)],
            prepared.errors.get((c.document, c.index), ""),
        ]
        for c in prepared.chunks
    ]
    text = json.dumps(rows, ensure_ascii=False)
    if len(text) > MAX_MESSAGE_VALUE:
        rows = [[*row[:3], ""] for row in rows]
    while len(text := json.dumps(rows, ensure_ascii=False)) > MAX_MESSAGE_VALUE:
        rows.pop()
    return text


async def _upload(backend: Backend, auth: Metadata, data: bytes, name: str, chunk: int) -> File:
    async def requests() -> AsyncIterator[files_pb2.UploadFileRequest]:
        yield files_pb2.UploadFileRequest(
            metadata=files_pb2.UploadFileMetadata(filename=name, purpose=File.PURPOSE_FINE_TUNE)
        )
        for start in range(0, len(data), chunk):
            yield files_pb2.UploadFileRequest(chunk=data[start : start + chunk])

    return await backend.files.UploadFile(requests(), metadata=auth)


async def _delete_file(backend: Backend, auth: Metadata, file_id: str) -> None:
    try:
        await backend.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=file_id), metadata=auth)
    except grpc.aio.AioRpcError:
        pass  # best effort: the request is failing for another reason, which it reports


async def _prepare(
    backend: Backend,
    auth: Metadata,
    settings: BridgeSettings,
    documents: File,
    parts: Sequence[str],
    sizes: Sequence[int],
) -> Preparation:
    """Question-answer pairs from the documents when a generator is configured and they
    make enough chat examples; else the documents themselves, as raw text."""
    if not qa.configured(settings):
        note = f"No question-answer generator is configured, so {RAW_TEXT_NOTE}."
        return Preparation(documents, note, {DATA_PREP: RAW_TEXT})
    names = [name or f"document-{i + 1}" for i, name in enumerate(parts)]
    chunk_bytes = settings.qa_chunk_chars * qa.BYTES_PER_CHAR
    texts, cut = await qa.read_documents(
        backend,
        auth,
        documents.id,
        names,
        sizes,
        len(SEPARATOR),
        budget=chunk_bytes * settings.qa_max_chunks_per_document,
        total=chunk_bytes * settings.qa_max_chunks,
    )
    chunks, limited = qa.plan_chunks(
        texts, settings.qa_chunk_chars, settings.qa_max_chunks_per_document, settings.qa_max_chunks
    )
    async with qa.generator(settings, backend, auth) as (description, ask):
        prepared = await qa.generate(ask, description, chunks, settings)
    pairs = prepared.pairs[:MAX_PAIRS]
    metadata = {
        GENERATOR: description[:MAX_MESSAGE_VALUE],
        CHUNKS: _chunk_report(prepared),
        TOTAL_CHUNKS: str(len(chunks)),
        LIMITED: "true" if cut or limited or len(prepared.pairs) > MAX_PAIRS else "false",
        LIMIT: str(settings.qa_max_chunks),
    }
    found = (
        f"{description} wrote {len(pairs)} question-answer pairs from {len(chunks)} chunks "
        f"of {len(texts)} documents"
    )
    if prepared.errors:
        (first, why), *_ = prepared.errors.items()
        found += (
            f" ({len(prepared.errors)} chunks yielded none; {first[0]} chunk {first[1]}: {why})"
        )
    if len(pairs) < MIN_EXAMPLES:
        note = f"{found}, fewer than the {MIN_EXAMPLES} a chat fine-tune needs, so {RAW_TEXT_NOTE}."
        return Preparation(documents, note, {**metadata, DATA_PREP: RAW_TEXT})
    training = await _upload(
        backend, auth, qa.chat_examples(pairs), QA_PAIRS, settings.upload_chunk_bytes
    )
    note = f"{found}; this session fine-tunes on them as chat examples ({QA_PAIRS})."
    return Preparation(training, note, {**metadata, DATA_PREP: QA_DATA}, pairs)


def _messages(names: Sequence[str], prepared: Preparation) -> list[Message]:
    """The stored interactions of a new fine-tuning session: the documents, the pairs
    (a question and its answer each) and the fine-tune's own."""
    documents = Message(
        role="user", metadata={KIND: DOCUMENTS_KIND, FILES: _listed(names, MAX_MESSAGE_VALUE)}
    )
    pairs = []
    for pair in prepared.pairs:
        where = {
            KIND: PAIR_KIND,
            DOCUMENT: pair.document[:MAX_MESSAGE_VALUE],
            CHUNK: str(pair.chunk),
        }
        pairs += [
            Message(role="user", content=pair.question, metadata=where),
            Message(role="assistant", content=pair.answer, metadata=where),
        ]
    note = Message(
        role="assistant", content=prepared.note, metadata={KIND: FINETUNE_KIND, **prepared.metadata}
    )
    return [documents, *pairs, note]


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
            found = " ".join(
                describe(p.line, p.path, p.message) for p in documents.validation.problems
            )
            raise ApiError.invalid([("files", f"the documents are not usable text: {found}")])
        parts = form.filenames["files"]
        names = [n for n in parts if n] or [DOCUMENTS]
        base_model = form.fields.get("model_name") or await default_base_model(
            backend, auth, settings.default_base_model
        )
        prepared = await _prepare(
            backend, auth, settings, documents, parts, form.part_bytes["files"]
        )
        job = Job(
            base_model=base_model,
            training_file=prepared.training.id,
            metadata={
                NAME_KEY: names[0][:MAX_METADATA_VALUE],
                DOCUMENTS_KEY: _listed(names, MAX_METADATA_VALUE),
            },
        )
        try:
            job = await backend.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=job), metadata=auth)
        except BaseException:
            if prepared.training.id != documents.id:
                await _delete_file(backend, auth, prepared.training.id)
            raise
        conversation = Conversation(
            title=names[0][:MAX_TITLE],
            model=base_model,
            job_id=job.id,
            metadata={
                DOCUMENTS_FILE: documents.id,
                SUMMARY: _listed(names, MAX_METADATA_VALUE).replace("\n", ", "),
            },
            messages=_messages(names, prepared),
        )
        try:
            created = await backend.conversations.CreateConversation(
                conversations_pb2.CreateConversationRequest(conversation=conversation),
                metadata=auth,
            )
        except BaseException:
            # No session to show it: the job must not train unseen.
            await backend.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id), metadata=auth)
            raise
        return render(created, created.messages, job)


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


async def _lora_model(backend: Backend, auth: Metadata, lora_dir: str) -> tuple[str, str]:
    """The model a `lora_dir` names and its base model: a fine-tuning session's path
    (Helix's form), or a fine-tuned model's name as it stands."""
    found = LORA_PATH.match(lora_dir)
    if found is None:
        return lora_dir, ""
    try:
        conversation = await backend.conversations.GetConversation(
            conversations_pb2.GetConversationRequest(conversation_id=found["session"]),
            metadata=auth,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        raise ApiError.invalid([("lora_dir", f"no session {found['session']!r}")]) from None
    job = await _job(backend, auth, conversation.job_id)
    if job is None or not job.fine_tuned_model:
        raise ApiError.invalid([("lora_dir", f"session {conversation.id!r} has no adapter yet")])
    return job.fine_tuned_model, job.base_model


def _chat_message(role: str, content: str) -> Message:
    return Message(role=role, content=content, metadata={KIND: CHAT_KIND})


async def _reply(backend: Backend, auth: Metadata, model: str, history: Sequence[Message]) -> str:
    request = models_pb2.GenerateRequest(
        model_id=model,
        messages=[models_pb2.ChatMessage(role=m.role, content=m.content) for m in history],
    )
    text = ""
    async for reply in backend.models.Generate(request, metadata=auth):
        text += reply.text
    return text


async def _chat(body: InferenceIn, backend: Backend, auth: Metadata) -> Session:
    base = ""
    if body.lora_dir:
        model, base = await _lora_model(backend, auth, body.lora_dir)
    else:
        model = body.model_name or await _newest_model(backend, auth)
    asked = _chat_message("user", body.input)
    answered = _chat_message("assistant", await _reply(backend, auth, model, [asked]))
    metadata = {SUMMARY: body.input[:MAX_METADATA_VALUE]}
    if body.lora_dir:
        metadata[LORA_DIR] = body.lora_dir[:MAX_METADATA_VALUE]
    if body.model_name or base:
        metadata[MODEL_NAME] = (body.model_name or base)[:MAX_METADATA_VALUE]
    created = await backend.conversations.CreateConversation(
        conversations_pb2.CreateConversationRequest(
            conversation=Conversation(
                title=body.input[:64],
                model=model,
                metadata=metadata,
                messages=[asked, answered],
            )
        ),
        metadata=auth,
    )
    return render(created, created.messages, None)


async def _body(request: Request, settings: BridgeSettings, shape: type[M]) -> M:
    """A form (urlencoded or multipart) or JSON body, checked against `shape`."""
    try:
        if request.headers.get("content-type", "").startswith("application/json"):
            values: Any = await request.json()
        else:
            # The route class limits the body; Starlette refuses a bad form with an
            # HTTPException, which the route class answers as a problem too.
            form = await request.form(
                max_fields=settings.max_form_parts, max_part_size=settings.max_form_field_bytes
            )
            values = dict(form)
    except ValueError as error:
        raise ApiError.invalid([("body", f"is not a form or JSON: {error}")]) from None
    try:
        return shape.model_validate(values)
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
    """`mode=inference`: chat with a model (form or JSON), kept as a session to continue;
    a multipart form with `mode=finetune` starts a fine-tuning session, as
    `/sessions/learn` does."""
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        # With or without a boundary: without one, streamed_form says so.
        return await _learn(request, backend, auth, settings)
    return await _chat(await _body(request, settings, InferenceIn), backend, auth)


@router.put(
    "/sessions/{session_id}",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": FollowUpIn.model_json_schema()},
                "multipart/form-data": {"schema": FollowUpIn.model_json_schema()},
                "application/json": {"schema": FollowUpIn.model_json_schema()},
            },
        }
    },
)
async def continue_session(
    session_id: str, request: Request, backend: BackendDep, auth: Auth, settings: SettingsDep
) -> Session:
    """A follow-up message (`input`): the model answers with the session's earlier chat
    as context, and both are appended. A fine-tuning session chats with its fine-tuned
    model once the fine-tune has succeeded."""
    body = await _body(request, settings, FollowUpIn)
    conversation, messages, job = await _read(backend, auth, session_id)
    model = conversation.model
    if conversation.job_id:
        if job is None or job.state != Job.STATE_SUCCEEDED or not job.fine_tuned_model:
            now = _status(job) if job is not None else "deleted"
            raise ApiError.of(
                Code.FAILED_PRECONDITION,
                f"session {conversation.id!r} has not finished fine-tuning ({now}); "
                "chat with it once it has",
            )
        model = job.fine_tuned_model
    earlier = [
        m
        for m in messages
        if m.metadata.get(KIND, CHAT_KIND) == CHAT_KIND and m.role in ("user", "assistant")
    ]
    asked = _chat_message("user", body.input)
    answered = _chat_message(
        "assistant", await _reply(backend, auth, model, [*earlier[-HISTORY:], asked])
    )
    appended = await backend.conversations.AppendConversationMessages(
        conversations_pb2.AppendConversationMessagesRequest(
            conversation_id=conversation.id, messages=[asked, answered]
        ),
        metadata=auth,
    )
    conversation.update_time.CopyFrom(appended.messages[-1].create_time)
    conversation.last_message_id = appended.messages[-1].id
    return render(conversation, [*messages, *appended.messages], job)
