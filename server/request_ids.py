"""Request ids: one per call, so that a client, the REST bridge and the control plane's
logs can name the same request.

A caller's own id (`x-request-id`, as gRPC metadata or an HTTP header) is kept when it is
sane: 1 to 128 printable ASCII characters, which is also what gRPC metadata may carry.
Otherwise one is made up, `req_` and 24 hex digits, in the shape OpenAI's ids have.
While a call runs, `current` holds its id, and every log line written meanwhile carries
it as `request_id` (server.logs).
"""

from __future__ import annotations

import contextvars
import inspect
import re
import secrets
from collections.abc import Callable
from typing import Any

import grpc

KEY = "x-request-id"
MAX_LENGTH = 128
_SANE = re.compile(rf"[\x20-\x7e]{{1,{MAX_LENGTH}}}")

current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def new() -> str:
    return f"req_{secrets.token_hex(12)}"


def accept(given: str | None) -> str:
    """`given` if it is a sane id (surrounding blanks dropped), else a new one."""
    given = (given or "").strip()
    return given if _SANE.fullmatch(given) else new()


async def _begin(context: grpc.aio.ServicerContext) -> None:
    given = next((v for k, v in context.invocation_metadata() or () if k == KEY), None)
    ident = accept(given if isinstance(given, str) else None)
    # No reset: grpc runs each call in a task of its own, so the id ends with the call,
    # and the error boundary's log lines, written after the handler, still carry it.
    current.set(ident)
    await context.send_initial_metadata(((KEY, ident),))


def _with_id(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, run with its call's id set and sent back first."""
    if handler.request_streaming:
        original = handler.stream_stream if handler.response_streaming else handler.stream_unary
    else:
        original = handler.unary_stream if handler.response_streaming else handler.unary_unary

    if inspect.isasyncgenfunction(original):

        async def behavior(request: Any, context: grpc.aio.ServicerContext):
            await _begin(context)
            async for reply in original(request, context):
                yield reply

    elif inspect.iscoroutinefunction(original):

        async def behavior(request: Any, context: grpc.aio.ServicerContext):
            await _begin(context)
            return await original(request, context)

    else:
        return handler  # a synchronous handler: grpc runs it on a thread; none is ours

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class RequestIds(grpc.aio.ServerInterceptor):
    """Gives every call its id (the caller's `x-request-id` metadata, else a new one),
    answers it as initial metadata `x-request-id`, and holds it in `current` while the
    call runs. First among the interceptors, so that whatever the others answer
    carries it too."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        return None if handler is None else _with_id(handler)
