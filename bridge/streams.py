"""gRPC server streams as HTTP streams: NDJSON, or server-sent events with ids,
heartbeats and a real HTTP status for failures that come before any data."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import grpc

from bridge.errors import ApiError, Envelope

T = TypeVar("T")

HEARTBEAT = b": keep-alive\n\n"
NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"
# Proxies (nginx) must pass events on as they come, not buffer them.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_END = object()


def wants_events(accept: str | None) -> bool:
    return EVENT_STREAM in (accept or "")


def sse(data: str, event_id: str | None = None) -> bytes:
    """One server-sent event; `data` must be a single line (JSON is)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {data}\n\n".encode()


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def json_line(value: Any) -> bytes:
    return compact(value).encode() + b"\n"


async def ticking(messages: AsyncIterable[T], every: float) -> AsyncIterator[T | None]:
    """The messages as they come, and None after every `every` seconds without one.

    The pending read is kept (not cancelled) across ticks: cancelling a read
    would cancel the gRPC call.
    """
    iterator = aiter(messages)
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                message = finished.result()
            except StopAsyncIteration:
                return
            yield message
    finally:
        if pending is not None:
            pending.cancel()


async def open_stream(
    call: grpc.aio.UnaryStreamCall, every: float, *, patient: bool = False
) -> AsyncIterator[Any]:
    """Start a server stream and wait for its first message, or (unless `patient`)
    its first idle tick: an event stream should start, and its heartbeats flow,
    before a proxy gives up on it.

    A failure before then (unknown job, bad key) raises ApiError here, so the
    route answers with a real HTTP status; later failures come out of the
    returned iterator as AioRpcError. Closing the iterator cancels the call.
    """
    items = ticking(call, every)
    try:
        first = await anext(items, _END)
        while patient and first is None:
            first = await anext(items, _END)
    except grpc.aio.AioRpcError as error:
        raise ApiError.from_rpc(error) from None
    except BaseException:
        await items.aclose()
        call.cancel()
        raise

    async def rest() -> AsyncIterator[Any]:
        try:
            if first is not _END:
                yield first
                async for item in items:
                    yield item
        finally:
            await items.aclose()
            call.cancel()

    return rest()


async def ndjson_frames(
    items: AsyncIterator[Any], render: Callable[[Any], Any], envelope: Envelope
) -> AsyncIterator[bytes]:
    """`{"result": …}` per message, `{"error": …}` if the stream fails (grpc-gateway's shape)."""
    async with aclosing(items):
        try:
            async for item in items:
                if item is not None:
                    yield json_line({"result": render(item)})
        except grpc.aio.AioRpcError as error:
            yield json_line({"error": envelope(ApiError.from_rpc(error))})


async def sse_frames(
    items: AsyncIterator[Any],
    render: Callable[[Any], Any],
    envelope: Envelope,
    event_id: Callable[[Any], str | None],
) -> AsyncIterator[bytes]:
    """The NDJSON frames as events, `id:` set for resuming, comments while idle."""
    async with aclosing(items):
        try:
            async for item in items:
                if item is None:
                    yield HEARTBEAT
                else:
                    yield sse(compact({"result": render(item)}), event_id(item))
        except grpc.aio.AioRpcError as error:
            yield sse(compact({"error": envelope(ApiError.from_rpc(error))}))
