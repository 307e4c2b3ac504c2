"""The wrapper every public handler goes through: authenticate, run, map errors.

Handlers read what authentication found with `caller()`; domain errors
become statuses with details (server.errors); a full disk is RESOURCE_EXHAUSTED
wherever it is hit (the file system or SQLite); anything unexpected is logged
with its traceback and answered INTERNAL with a reference, never UNKNOWN.
`RejectMalformedRequests` covers what happens before a handler runs: a request
that does not parse is INVALID_ARGUMENT, not grpc's UNKNOWN.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from server.errors import TunewireError, disk_full, to_status

log = logging.getLogger("tunewire.rpc")

_caller: contextvars.ContextVar[Any] = contextvars.ContextVar("caller")


def caller() -> Any:
    """What the handler's `authenticate` returned for this call."""
    return _caller.get()


def bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
    if not isinstance(error, TunewireError) and (full := disk_full(error)) is not None:
        log.warning("disk full in %s: %s", method, error)
        error = full
    if not isinstance(error, TunewireError):
        ref = secrets.token_hex(4)
        log.error("unexpected error in %s (ref %s)", method, ref, exc_info=error)
        error = TunewireError(f"internal error (ref {ref})")
    status = to_status(error)
    # Only at info: a refused call is the caller's business, not the operator's, unless
    # the operator asks (this line, with the request id, ties a client's report to it).
    log.info(
        "%s failed: %s", method, status.code.name, extra={"fields": {"code": status.code.name}}
    )
    await context.abort(status.code, status.details, status.trailing_metadata)


def rpc(authenticate: Callable[[Any, str | None], str]) -> Callable:
    """Decorate servicer methods (unary, client-streaming or server-streaming).

    `authenticate(servicer, authorization)` returns the caller (see `caller()`) or raises.
    """

    def decorate(method: Callable) -> Callable:
        name = method.__qualname__
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext):
                try:
                    _caller.set(authenticate(self, bearer(context)))
                    async for reply in method(self, request, context):
                        yield reply
                except grpc.aio.AbortError:
                    raise
                except Exception as error:  # noqa: BLE001 - the one place errors are mapped
                    await _abort(context, error, name)

            return stream

        @functools.wraps(method)
        async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext):
            try:
                _caller.set(authenticate(self, bearer(context)))
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # noqa: BLE001 - the one place errors are mapped
                await _abort(context, error, name)

        return unary

    return decorate


class _Malformed(TunewireError):
    code = grpc.StatusCode.INVALID_ARGUMENT


_MALFORMED = object()  # what a request that does not parse becomes


def _parse_in_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, with parse errors answered INVALID_ARGUMENT by the handler."""
    parse = handler.request_deserializer
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    name = descriptor.full_name if descriptor else "protobuf"
    status = to_status(_Malformed(f"the request is not a valid {name} message"))

    def lenient(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - DecodeError and whatever a parser raises
            return _MALFORMED

    async def refuse(context: grpc.aio.ServicerContext) -> None:
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext):
        async for request in requests:
            if request is _MALFORMED:
                await refuse(context)
            yield request

    streaming = handler.request_streaming
    if streaming:
        original = handler.stream_stream if handler.response_streaming else handler.stream_unary
    else:
        original = handler.unary_stream if handler.response_streaming else handler.unary_unary

    def before(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return checked(request, context) if streaming else request

    if inspect.isasyncgenfunction(original):

        async def behavior(request: Any, context: grpc.aio.ServicerContext):
            if request is _MALFORMED:
                await refuse(context)
            async for reply in original(before(request, context), context):
                yield reply

    elif inspect.iscoroutinefunction(original):

        async def behavior(request: Any, context: grpc.aio.ServicerContext):
            if request is _MALFORMED:
                await refuse(context)
            return await original(before(request, context), context)

    else:
        return handler  # a synchronous handler: grpc runs it elsewhere; leave it be

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        behavior, request_deserializer=lenient, response_serializer=handler.response_serializer
    )


class RejectMalformedRequests(grpc.aio.ServerInterceptor):
    """grpc parses a request before any handler runs and answers a parse error UNKNOWN,
    with the parser's exception text; with this interceptor it is INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _parse_in_handler(handler)
