"""Cohere's chat on the bridge: `POST /cohere/v1/chat` (a `message`, a `preamble` and a
`chat_history`) and `POST /cohere/v2/chat` (OpenAI-like `messages`), each whole or
streamed in Cohere's own events, so `co.chat(model=ft.id, …)` and
`cohere.ClientV2(…).chat(model=ft.id, …)` talk to a fine-tune.

Both are the control plane's Generate, as OpenAI's chat completions are; `model` is a
finetuned model's id (its job's, with or without Cohere's `-ft`), or any model name the
server knows. `cohere.py` mounts the routes; this module imports nothing of it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Annotated, Any, Literal

import grpc
from fastapi import Body, Header
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bridge.backend import Backend, Metadata, default_base_model
from bridge.deps import Auth, BackendDep, Int32, Int64, SettingsDep
from bridge.errors import ApiError, Code
from bridge.routes import cohere_classify
from bridge.streams import (
    EVENT_STREAM,
    HEARTBEAT,
    NDJSON,
    STREAM_HEADERS,
    compact,
    json_line,
    open_stream,
)
from tunewire.v1 import jobs_pb2, models_pb2

# Cohere's documented defaults where they differ from the control plane's (which are
# OpenAI's): a chat request that names no temperature or p gets Cohere's behaviour.
DEFAULT_TEMPERATURE = 0.3
DEFAULT_P = 0.75
# The control plane's finish reasons as Cohere names them. A stop sequence also ends
# as `stop`, so it is reported as COMPLETE (the two cannot be told apart here).
FINISH = {"stop": "COMPLETE", "length": "MAX_TOKENS"}
# Cohere v1's chat_history roles (any case) -> the control plane's.
V1_ROLES = {"USER": "user", "CHATBOT": "assistant", "SYSTEM": "system"}
V1_ROLE_NAMES = {"user": "USER", "assistant": "CHATBOT", "system": "SYSTEM"}

# --- shapes -----------------------------------------------------------------------------


class Tokens(BaseModel):
    input_tokens: int
    output_tokens: int


class ApiVersion(BaseModel):
    version: str


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: Tokens
    tokens: Tokens


class HistoryMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    message: str = ""


class ChatV1Response(BaseModel):
    response_id: str
    generation_id: str
    text: str
    finish_reason: str
    chat_history: list[HistoryMessage]
    meta: Meta | None = None


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: list[TextContent]


class Usage(BaseModel):
    billed_units: Tokens
    tokens: Tokens


class ChatV2Response(BaseModel):
    id: str
    finish_reason: str
    message: AssistantMessage
    usage: Usage | None = None


class Sampling(BaseModel):
    """What both versions take; fields Cohere has and Tunewire cannot honour are
    accepted only at their no-op values, so no request is silently answered otherwise."""

    # The SDK sends only what the caller set; unknown fields are ignored, as Cohere does.
    model_config = ConfigDict(extra="ignore")

    stream: bool = False
    max_tokens: Int32 | None = None
    temperature: float | None = None
    p: float | None = None
    k: Int32 | None = None
    seed: Int64 | None = None
    stop_sequences: list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    tools: list[Any] | None = None
    documents: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if self.k:
            found.append(("k", "top-k sampling is not supported: leave k unset or 0"))
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                found.append((name, "not supported: leave it unset or 0"))
        for name in ("tools", "documents"):
            if getattr(self, name):
                found.append((name, "not supported by fine-tuned models here"))
        if self.response_format and self.response_format.get("type", "text") != "text":
            found.append(("response_format", "only text responses are supported"))
        return found


class ChatV1Request(Sampling):
    message: str
    model: str | None = None
    preamble: str | None = None
    chat_history: list[HistoryMessage] | None = None
    conversation_id: str | None = None
    connectors: list[Any] | None = None
    tool_results: list[Any] | None = None
    search_queries_only: bool | None = None


class MessagePart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessageV2(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[MessagePart] | None = None
    tool_calls: list[Any] | None = None


class ChatV2Request(Sampling):
    model: str
    messages: Annotated[list[ChatMessageV2], Field(min_length=1)]
    logprobs: bool | None = None


# --- the model and the request ------------------------------------------------------------


async def _model_id(backend: Backend, auth: Metadata, model: str | None, configured: str) -> str:
    """The Tunewire model a Cohere `model` names: a finetuned model's id (its job's, with
    or without `-ft`) is its fine-tuned model once trained; any other name is passed on."""
    if not model:
        return await default_base_model(backend, auth, configured)
    if not model.startswith("ftjob-"):
        return model
    job = await backend.jobs.GetJob(
        jobs_pb2.GetJobRequest(job_id=model.removesuffix(cohere_classify.MODEL_SUFFIX)),
        metadata=auth,
    )
    if cohere_classify.is_classification(job):
        raise ApiError.invalid(
            [("model", f"{model!r} is a classification fine-tune: call classify with it")]
        )
    if not job.fine_tuned_model:
        raise ApiError.of(
            Code.FAILED_PRECONDITION,
            f"finetuned model {model!r} is not ready yet (its training has not succeeded)",
        )
    return job.fine_tuned_model


def _request(body: Sampling, model_id: str) -> models_pb2.GenerateRequest:
    request = models_pb2.GenerateRequest(model_id=model_id, stop=body.stop_sequences or [])
    request.temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    request.top_p = DEFAULT_P if body.p is None else body.p
    if body.max_tokens is not None:
        request.max_tokens = body.max_tokens
    if body.seed is not None:
        request.seed = body.seed
    return request


def _v1_messages(body: ChatV1Request) -> list[models_pb2.ChatMessage]:
    problems = body.problems()
    for name in ("conversation_id", "connectors", "tool_results", "search_queries_only"):
        if getattr(body, name):
            problems.append((name, "not supported by fine-tuned models here"))
    messages = []
    if body.preamble:
        messages.append(models_pb2.ChatMessage(role="system", content=body.preamble))
    for i, said in enumerate(body.chat_history or []):
        role = V1_ROLES.get(said.role.upper())
        if role is None:
            problems.append((f"chat_history[{i}].role", "must be USER, CHATBOT or SYSTEM"))
        else:
            messages.append(models_pb2.ChatMessage(role=role, content=said.message))
    if problems:
        raise ApiError.invalid(problems)
    messages.append(models_pb2.ChatMessage(role="user", content=body.message))
    return messages


def _v2_messages(body: ChatV2Request) -> list[models_pb2.ChatMessage]:
    problems = body.problems()
    if body.logprobs:
        problems.append(("logprobs", "not supported: leave it unset or false"))
    messages = []
    for i, message in enumerate(body.messages):
        if message.role == "tool" or message.tool_calls:
            problems.append((f"messages[{i}]", "tool calls and results are not supported"))
            continue
        content = message.content
        if isinstance(content, list):
            if any(part.type != "text" for part in content):
                problems.append((f"messages[{i}].content", "only text content is supported"))
                continue
            content = "".join(part.text or "" for part in content)
        messages.append(models_pb2.ChatMessage(role=message.role, content=content or ""))
    if problems:
        raise ApiError.invalid(problems)
    return messages


def _tokens(reply: models_pb2.GenerateResponse | None) -> Tokens:
    used = reply.usage if reply is not None else models_pb2.Usage()
    return Tokens(input_tokens=used.prompt_tokens, output_tokens=used.completion_tokens)


class _Answer:
    """A reply as it is generated: the text so far and, once done, the last message."""

    def __init__(self) -> None:
        self.id = str(uuid.uuid4())
        self.text = ""
        self.last: models_pb2.GenerateResponse | None = None

    def add(self, reply: models_pb2.GenerateResponse) -> None:
        self.text += reply.text
        if reply.finish_reason:
            self.last = reply

    @property
    def finish_reason(self) -> str:
        return FINISH.get(self.last.finish_reason, "COMPLETE") if self.last else "ERROR"


async def _whole(call: grpc.aio.UnaryStreamCall) -> _Answer:
    answer = _Answer()
    async for reply in call:
        answer.add(reply)
    return answer


async def _streamed(
    call: grpc.aio.UnaryStreamCall,
    answer: _Answer,
    heartbeat: float,
    start: list[bytes],
    delta: Callable[[str], bytes],
    end: Callable[[str | None], list[bytes]],
    idle: bytes,
    media_type: str = EVENT_STREAM,
) -> StreamingResponse:
    """A Generate stream as Cohere's events: `start`, a `delta` per piece of text, and
    `end` (given why it failed, if it did); `idle` while the model is silent. A failure
    before the first piece is a real HTTP error (see `open_stream`)."""
    items = await open_stream(call, heartbeat)

    async def frames() -> AsyncIterator[bytes]:
        async with aclosing(items):
            for frame in start:
                yield frame
            try:
                async for reply in items:
                    if reply is None:
                        yield idle
                        continue
                    answer.add(reply)
                    if reply.text:
                        yield delta(reply.text)
            except grpc.aio.AioRpcError as error:
                for frame in end(ApiError.from_rpc(error).message):
                    yield frame
                return
            for frame in end(None):
                yield frame

    return StreamingResponse(frames(), media_type=media_type, headers=STREAM_HEADERS)


def _event(name: str, event: dict[str, Any]) -> bytes:
    """A server-sent event named as its data's type says (Cohere's `event:` lines)."""
    return f"event: {name}\ndata: {compact(event)}\n\n".encode()


# --- v1 ---------------------------------------------------------------------------------


def _v1_response(messages: list[models_pb2.ChatMessage], answer: _Answer) -> ChatV1Response:
    """The whole reply; its chat_history is the conversation so far, this answer last."""
    tokens = _tokens(answer.last)
    history = [HistoryMessage(role=V1_ROLE_NAMES[m.role], message=m.content) for m in messages]
    return ChatV1Response(
        response_id=str(uuid.uuid4()),
        generation_id=answer.id,
        text=answer.text,
        finish_reason=answer.finish_reason,
        chat_history=[*history, HistoryMessage(role="CHATBOT", message=answer.text)],
        meta=Meta(api_version=ApiVersion(version="1"), billed_units=tokens, tokens=tokens),
    )


# `stream: true` answers one of these instead of the JSON body (what OpenAPI tells clients).
STREAMED = {
    "application/x-ndjson": {"schema": {"type": "string", "description": "One event per line"}},
    "text/event-stream": {"schema": {"type": "string", "description": "Server-sent events"}},
}


async def chat_v1(
    body: Annotated[ChatV1Request, Body()],
    backend: BackendDep,
    auth: Auth,
    settings: SettingsDep,
    accepts: Annotated[str | None, Header()] = None,
) -> ChatV1Response:
    """Chat with a fine-tune: `message`, an optional `preamble` and `chat_history`.
    `stream: true` answers Cohere's v1 events, one JSON object a line (server-sent
    events with `Accepts: text/event-stream`): stream-start, text-generation…,
    stream-end with the whole response."""
    messages = _v1_messages(body)
    model_id = await _model_id(backend, auth, body.model, settings.default_base_model)
    request = _request(body, model_id)
    request.messages.extend(messages)
    call = backend.models.Generate(request, metadata=auth)
    if not body.stream:
        return _v1_response(messages, await _whole(call))

    events = EVENT_STREAM in (accepts or "")

    def frame(event: dict[str, Any]) -> bytes:
        return _event(event["event_type"], event) if events else json_line(event)

    answer = _Answer()

    def end(error: str | None) -> list[bytes]:
        event = {
            "is_finished": True,
            "event_type": "stream-end",
            "finish_reason": "ERROR" if error else answer.finish_reason,
            "response": _v1_response(messages, answer).model_dump(exclude_none=True),
        }
        if error:
            event["error"] = error
        return [frame(event)]

    return await _streamed(  # type: ignore[return-value]
        call,
        answer,
        settings.sse_heartbeat_seconds,
        [frame({"is_finished": False, "event_type": "stream-start", "generation_id": answer.id})],
        lambda text: frame({"is_finished": False, "event_type": "text-generation", "text": text}),
        end,
        HEARTBEAT if events else b"\n",  # the SDK skips blank lines
        EVENT_STREAM if events else NDJSON,
    )


# --- v2 ---------------------------------------------------------------------------------


def _usage(answer: _Answer) -> Usage:
    tokens = _tokens(answer.last)
    return Usage(billed_units=tokens, tokens=tokens)


async def chat_v2(
    body: Annotated[ChatV2Request, Body()],
    backend: BackendDep,
    auth: Auth,
    settings: SettingsDep,
) -> ChatV2Response:
    """Chat with a fine-tune (`model`, `messages`); `stream: true` answers Cohere's v2
    server-sent events: message-start, content-start, content-delta…, content-end,
    message-end with the finish reason and usage."""
    messages = _v2_messages(body)
    model_id = await _model_id(backend, auth, body.model, settings.default_base_model)
    request = _request(body, model_id)
    request.messages.extend(messages)
    call = backend.models.Generate(request, metadata=auth)
    if not body.stream:
        answer = await _whole(call)
        return ChatV2Response(
            id=answer.id,
            finish_reason=answer.finish_reason,
            message=AssistantMessage(content=[TextContent(text=answer.text)]),
            usage=_usage(answer),
        )

    answer = _Answer()
    start = [
        _event(
            "message-start",
            {
                "type": "message-start",
                "id": answer.id,
                "delta": {"message": {"role": "assistant", "content": [], "tool_calls": []}},
            },
        ),
        _event(
            "content-start",
            {
                "type": "content-start",
                "index": 0,
                "delta": {"message": {"content": {"type": "text", "text": ""}}},
            },
        ),
    ]

    def delta(text: str) -> bytes:
        return _event(
            "content-delta",
            {
                "type": "content-delta",
                "index": 0,
                "delta": {"message": {"content": {"text": text}}},
            },
        )

    def end(error: str | None) -> list[bytes]:
        done: dict[str, Any] = {"finish_reason": "ERROR" if error else answer.finish_reason}
        if error:
            done["error"] = error
        done["usage"] = _usage(answer).model_dump()
        return [
            _event("content-end", {"type": "content-end", "index": 0}),
            _event("message-end", {"type": "message-end", "id": answer.id, "delta": done}),
        ]

    return await _streamed(  # type: ignore[return-value]
        call, answer, settings.sse_heartbeat_seconds, start, delta, end, HEARTBEAT
    )
