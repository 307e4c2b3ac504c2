"""The control plane as the bridge sees it: one grpc.aio channel, its stubs, and
the helpers every surface shares (reading all pages, cursor paging, defaults)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from bridge.errors import ApiError, Code
from server.errors import MAX_ECHOED, cut
from tunewire.v1 import (
    auth_pb2_grpc,
    conversations_pb2_grpc,
    files_pb2_grpc,
    graders_pb2_grpc,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    uploads_pb2_grpc,
)

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

# The server's own limit: larger messages are refused on both sides.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_PAGE_SIZE = 1000


@dataclass
class Backend:
    """The channel to the control plane and typed stubs over it."""

    channel: grpc.aio.Channel
    auth: auth_pb2_grpc.AuthServiceStub = field(init=False)
    files: files_pb2_grpc.FileServiceStub = field(init=False)
    jobs: jobs_pb2_grpc.JobServiceStub = field(init=False)
    models: models_pb2_grpc.ModelServiceStub = field(init=False)
    graders: graders_pb2_grpc.GraderServiceStub = field(init=False)
    conversations: conversations_pb2_grpc.ConversationServiceStub = field(init=False)
    uploads: uploads_pb2_grpc.UploadServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.files = files_pb2_grpc.FileServiceStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.models = models_pb2_grpc.ModelServiceStub(self.channel)
        self.graders = graders_pb2_grpc.GraderServiceStub(self.channel)
        self.conversations = conversations_pb2_grpc.ConversationServiceStub(self.channel)
        self.uploads = uploads_pb2_grpc.UploadServiceStub(self.channel)

    @classmethod
    def connect(cls, address: str) -> Backend:
        return cls(
            grpc.aio.insecure_channel(
                address,
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ],
            )
        )

    async def close(self) -> None:
        await self.channel.close()


async def every_page(
    call: Callable[..., Awaitable[Any]],
    request: Message,
    items: str,
    auth: Metadata,
    page_size: int = MAX_PAGE_SIZE,
) -> AsyncIterator[Any]:
    """The items of a List call, following next_page_token to the end, fetched lazily."""
    request.page_size = page_size  # type: ignore[attr-defined]
    while True:
        page = await call(request, metadata=auth)
        for item in getattr(page, items):
            yield item
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token  # type: ignore[attr-defined]


async def collect(items: AsyncIterable[T]) -> list[T]:
    return [item async for item in items]


async def each(items: Iterable[T]) -> AsyncIterator[T]:
    for item in items:
        yield item


async def cursor_page(
    call: Callable[..., Awaitable[Any]],
    request: Message,
    items: str,
    auth: Metadata,
    limit: int,
) -> tuple[list[Any], bool]:
    """OpenAI's cursor paging from the control plane's own: the first `limit` items of
    the list `request` asks for (its `after_id` and `order_by` set: a seek, not a scan),
    in server pages of up to 1000; and whether more follow."""
    got: list[Any] = []
    while True:
        request.page_size = min(limit - len(got), MAX_PAGE_SIZE)  # type: ignore[attr-defined]
        page = await call(request, metadata=auth)
        got.extend(getattr(page, items))
        if not page.next_page_token or len(got) >= limit:
            return got, bool(page.next_page_token)
        request.page_token = page.next_page_token  # type: ignore[attr-defined]
        request.after_id = ""  # type: ignore[attr-defined]  # the token holds the position


async def after_cursor(
    items: AsyncIterable[T], after: str | None, limit: int, ident: Callable[[T], str]
) -> tuple[list[T], bool]:
    """OpenAI's cursor paging over `items`: the `limit` items that follow the one
    whose id is `after` (from the start without it), and whether there are more.

    The control plane pages with opaque tokens, so a cursor by id is found by
    reading up to it; only as many items as needed are fetched. An `after` that is no
    item's id is a 400 naming `after`, never an empty page: a client paging on would
    take that for the end of the list.
    """
    page: list[T] = []
    started = after is None
    async for item in items:
        if not started:
            started = ident(item) == after
            continue
        if len(page) == limit:
            return page, True
        page.append(item)
    if not started:
        shown = cut(after or "", MAX_ECHOED)
        raise ApiError.invalid([("after", f"{shown!r} is not the id of an item of this list")])
    return page, False


def unix(ts: timestamp_pb2.Timestamp) -> int | None:
    """Unix seconds, or None for an unset timestamp."""
    return ts.seconds if ts.seconds or ts.nanos else None


def moment(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """An aware datetime, or None for an unset timestamp."""
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


async def default_base_model(backend: Backend, auth: Metadata, configured: str) -> str:
    """The base model for surfaces whose requests may name none: the configured one,
    else the first causal LM the server has."""
    if configured:
        return configured
    listed = await backend.models.ListBaseModels(models_pb2.ListBaseModelsRequest(), metadata=auth)
    for model in listed.base_models:
        if model.kind == models_pb2.BaseModel.KIND_CAUSAL_LM:
            return model.id
    raise ApiError.of(
        Code.FAILED_PRECONDITION,
        "the server has no causal LM base model; run 'tunewire models init-tiny'",
    )


# Struct numbers are doubles; these keys are counts, shown as integers.
INTEGER_KEYS = frozenset({"step", "total_steps", "epoch", "n_epochs", "batch_size", "examples"})


def struct_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    values = json_format.MessageToDict(struct)
    return {
        key: int(value) if key in INTEGER_KEYS and isinstance(value, float) else value
        for key, value in values.items()
    }
