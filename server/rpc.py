"""The wrapper every public handler goes through: authenticate, run, map errors.

Handlers read the caller's organization with `caller_org()`; domain errors
become statuses with details (server.errors); anything unexpected is logged
with its traceback and answered INTERNAL with a reference, never UNKNOWN.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import secrets
from collections.abc import Callable
from typing import Any

import grpc

from server.errors import TunewireError, to_status

log = logging.getLogger("tunewire.rpc")

_org: contextvars.ContextVar[str] = contextvars.ContextVar("org")


def caller_org() -> str:
    return _org.get()


def bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
    if not isinstance(error, TunewireError):
        ref = secrets.token_hex(4)
        log.error("unexpected error in %s (ref %s)", method, ref, exc_info=error)
        error = TunewireError(f"internal error (ref {ref})")
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


def rpc(authenticate: Callable[[Any, str | None], str]) -> Callable:
    """Decorate servicer methods (unary, client-streaming or server-streaming).

    `authenticate(servicer, authorization)` returns the caller's org or raises.
    """

    def decorate(method: Callable) -> Callable:
        name = method.__qualname__
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext):
                try:
                    _org.set(authenticate(self, bearer(context)))
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
                _org.set(authenticate(self, bearer(context)))
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # noqa: BLE001 - the one place errors are mapped
                await _abort(context, error, name)

        return unary

    return decorate
